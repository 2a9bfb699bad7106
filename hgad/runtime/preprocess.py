"""Camera frames to model input on the CPU: resize to the square model size and stack into a batch.

Normalisation is not done here: it is part of the model's graph (uint8 in), so that the same bytes reach
torch and TensorRT and the copy to the device is four times smaller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.images import resize_square


def to_batch(frames: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 BGR [B, size, size, 3] from frames of any size (grey frames are expanded to three channels)."""
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        if f.ndim == 2:
            f = np.repeat(f[..., None], 3, axis=2)
        elif f.shape[2] == 4:
            f = f[..., :3]
        out[i] = resize_square(f, size)
    return out
