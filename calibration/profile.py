"""A calibration profile: what the agent needs to decide on one product line with one model."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import numpy as np

from hgad import __version__

from .threshold import Threshold, p_value

MODES = ("class-agnostic", "class-aware")
HISTOGRAM_BINS = 30


@dataclass(frozen=True)
class Profile:
    calibration_id: str
    model_id: str
    line: str
    mode: str  # the scoring mode the scores were computed in; the agent scores the line the same way
    created: str
    source: str  # "folder:PATH" or "live:CAMERA"
    far: float
    threshold: float
    method: str
    method_detail: str
    pixel_threshold: float
    pixel_far: float
    scores: tuple[float, ...]  # sorted normal scores, for p-values and drift
    n: int
    images_hash: str
    image_shape: tuple[int, ...]
    normalisation: dict[str, Any]  # frozen constants: the model's level references and score median/MAD
    histogram: dict[str, list[float]]
    order_index: int | None = None
    far_bound: float | None = None
    confidence: float | None = None
    tail: dict[str, float] = field(default_factory=dict)
    version: int = 0
    active: bool = False
    made_by: str = ""  # the hgad-edge version that made it ("" for profiles made before 0.4)

    @cached_property
    def sorted_scores(self) -> np.ndarray:
        return np.asarray(self.scores, dtype=np.float64)

    def p_value(self, score: float) -> float:
        return p_value(self.sorted_scores, score)

    @property
    def class_line(self) -> str | None:
        """The model class to score with, or None for class-agnostic scoring."""
        return self.line if self.mode == "class-aware" else None

    def to_dict(self, with_scores: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_scores:
            d.pop("scores")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["scores"] = tuple(values["scores"])
        values["image_shape"] = tuple(values["image_shape"])
        return cls(**values)

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes)


def histogram(scores: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    counts, edges = np.histogram(scores, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def pixel_threshold(normal_maps: np.ndarray, image_threshold: float, pixel_far: float) -> float:
    """The map level that a fraction `pixel_far` of normal pixels exceeds, never above the image threshold,
    so that every alerting frame has at least one region."""
    q = float(np.quantile(normal_maps.reshape(-1), 1.0 - pixel_far))
    return min(q, image_threshold)


def build_profile(
    *,
    model_id: str,
    line: str,
    mode: str,
    source: str,
    threshold: Threshold,
    scores: np.ndarray,
    normal_maps: np.ndarray,
    pixel_far: float,
    images_hash: str,
    image_shape: tuple[int, ...],
    model_normalisation: dict[str, Any],
) -> Profile:
    s = np.sort(np.asarray(scores, dtype=np.float64))
    median = float(np.median(s))
    mad = float(np.median(np.abs(s - median)))
    return Profile(
        calibration_id=uuid.uuid4().hex,
        model_id=model_id,
        line=line,
        mode=mode,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=source,
        far=threshold.far,
        threshold=threshold.value,
        method=threshold.method,
        method_detail=threshold.describe(),
        pixel_threshold=pixel_threshold(normal_maps, threshold.value, pixel_far),
        pixel_far=pixel_far,
        scores=tuple(float(v) for v in s),
        n=int(s.size),
        images_hash=images_hash,
        image_shape=tuple(int(v) for v in image_shape),
        normalisation={**model_normalisation, "score_median": median, "score_mad": mad},
        histogram=histogram(s),
        order_index=threshold.order_index,
        far_bound=threshold.far_bound,
        confidence=threshold.confidence,
        tail=dict(threshold.tail),
        made_by=__version__,
    )
