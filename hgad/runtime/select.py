"""Choosing a backend: `torch`, `tensorrt`, or `auto` (TensorRT where it loads and passes parity, else
torch, with the reason logged and kept for the status payload)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BadInputError, HgadError
from ..model_dir import LoadedModel
from .backend import Backend
from .torch_backend import TorchBackend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "tensorrt")


def open_backend(
    loaded: LoadedModel,
    kind: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    batch: int = 1,
    cache_dir: Path | None = None,
    calibration: np.ndarray | None = None,
) -> tuple[Backend, str]:
    """The backend and a one-line reason for the choice (shown in logs and the agent's status)."""
    if kind not in BACKENDS:
        raise BadInputError(f"backend: {kind!r} is not one of {', '.join(BACKENDS)}")
    if kind in ("auto", "tensorrt"):
        from .tensorrt_backend import TensorRTBackend, TensorRTUnavailable, tensorrt_status

        ok, why = tensorrt_status()
        if ok:
            try:
                backend = TensorRTBackend(
                    loaded,
                    cache_dir or Path("engines"),
                    precision or "fp16",
                    batch,
                    "cuda" if device == "auto" else device,
                    calibration,
                )
                return backend, f"tensorrt: {why}"
            except HgadError as exc:
                if kind == "tensorrt":
                    raise
                why = str(exc)
            except Exception as exc:  # a TensorRT build failure must not take the agent down under auto
                if kind == "tensorrt":
                    raise HgadError(f"tensorrt backend: engine build failed: {type(exc).__name__}: {exc}") from exc
                why = f"engine build failed: {type(exc).__name__}: {exc}"
        elif kind == "tensorrt":
            raise TensorRTUnavailable(f"tensorrt backend: {why}")
        log.warning("tensorrt not used, falling back to torch", extra={"fields": {"reason": why}})
        reason = f"torch (tensorrt unavailable: {why})"
    else:
        reason = "torch (configured)"
    torch_precision = precision if precision in ("fp32", "fp16") else "fp32"
    return TorchBackend(loaded, device, torch_precision), reason
