"""Golden-image parity: a compiled or exported model must agree with the eager torch reference.

Golden frames are rendered deterministically (no files to ship): a normal and a defective image of a
synthetic line, so that both low and high map values are compared. Tolerances are relative to the
reference's score scale and are stated here, in the README and in the bench JSON. For a model of other
lines a golden frame can be so far from normal that its whole map sits at the cap (scoring.MAX_ANOMALY),
where any graph agrees; a graph that also returns the log-likelihood grid is compared on it too, at the
positions within the scoring range (below the cap): beyond it the flow's numbers run to 1e12, where float32
rounding alone differs by percents between two correct graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data import synth
from ..errors import HgadError

# Maximum |difference| / max(|reference score|, 1e-6), for image scores and for map values.
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}


class ParityError(HgadError):
    """A compiled engine disagrees with the reference; it is refused."""


@dataclass(frozen=True)
class ParityResult:
    max_score_error: float
    max_map_error: float
    tolerance: float
    ok: bool

    def to_dict(self) -> dict:
        return {
            "max_score_error": self.max_score_error,
            "max_map_error": self.max_map_error,
            "tolerance": self.tolerance,
            "ok": self.ok,
        }


def golden_frames(size: int, n: int = 2) -> np.ndarray:
    """uint8 BGR [n, size, size, 3]: alternately a normal and a defective fabric image."""
    spec = synth.SynthSpec(classes=1, size=size, seed=1234)
    style = synth.line_style(spec, 0)
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(synth.render_normal("fabric", style, 100 + i, size))
        else:
            out.append(synth.render_defective("fabric", style, 100 + i, size, "hole")[0])
    return np.stack(out)


def _relative(value: np.ndarray, reference: np.ndarray, scale: float) -> float:
    return float(np.abs(value - reference).max()) / max(scale, 1e-6)


def compare(
    ref_scores: np.ndarray,
    ref_maps: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    precision: str,
    ref_ll: np.ndarray | None = None,
    ll: np.ndarray | None = None,
) -> ParityResult:
    scale = float(np.abs(ref_scores).max())
    score_err = _relative(scores, ref_scores, scale)
    map_err = _relative(maps, ref_maps, scale)
    if ref_ll is not None and ll is not None and ref_ll.size:
        map_err = max(map_err, _relative(ll, ref_ll, float(np.abs(ref_ll).max())))
    tol = TOLERANCE[precision]
    return ParityResult(score_err, map_err, tol, score_err <= tol and map_err <= tol)


def require(result: ParityResult, what: str, discard: Callable[[], None]) -> ParityResult:
    """A compiled graph that disagrees with the eager model is removed from the cache and refused."""
    if not result.ok:
        discard()
        raise ParityError(
            f"{what} disagrees with the torch reference on golden frames: score error {result.max_score_error:.3g}, "
            f"map error {result.max_map_error:.3g} > tolerance {result.tolerance}; removed from the cache"
        )
    return result
