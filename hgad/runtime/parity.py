"""Golden-image parity: a compiled or exported model must agree with the eager torch reference.

Golden frames are rendered deterministically (no files to ship): a normal and a defective image of a
synthetic line, so that both low and high map values are compared. Tolerances are relative to the
reference's score scale and are stated here, in the README and in the bench JSON.
"""

from __future__ import annotations

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


def compare(
    ref_scores: np.ndarray, ref_maps: np.ndarray, scores: np.ndarray, maps: np.ndarray, precision: str
) -> ParityResult:
    scale = max(float(np.abs(ref_scores).max()), 1e-6)
    score_err = float(np.abs(scores - ref_scores).max()) / scale
    map_err = float(np.abs(maps - ref_maps).max()) / scale
    tol = TOLERANCE[precision]
    return ParityResult(score_err, map_err, tol, score_err <= tol and map_err <= tol)
