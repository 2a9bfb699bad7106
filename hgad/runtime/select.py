"""Choosing a backend: `torch`, `tensorrt`, `onnxruntime`, or `auto`.

`auto` takes TensorRT where it loads and passes its parity check (a CUDA GPU with torch-tensorrt), else ONNX
Runtime on a CPU (fp32), else eager torch, and says which and why in one line kept for the logs and the
status payload. A runtime that is simply not there is information; one that is there and fails (a build or
parity failure) is a warning: the agent runs, but slower than it should.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BadInputError, HgadError
from ..model_dir import LoadedModel
from .backend import Backend
from .torch_backend import TorchBackend, resolve_device

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "tensorrt", "onnxruntime")


class _Unavailable(Exception):
    """A runtime that is not installed or cannot run here: `auto` moves on quietly."""


def _tensorrt(loaded, device, precision, batch, cache_dir, calibration) -> tuple[Backend, str]:
    from .tensorrt_backend import TensorRTBackend, TensorRTUnavailable, tensorrt_status

    ok, why = tensorrt_status()
    if not ok:
        raise _Unavailable(why)
    try:
        dev = "cuda" if device == "auto" else device
        return TensorRTBackend(loaded, cache_dir, precision or "fp16", batch, dev, calibration), f"tensorrt: {why}"
    except TensorRTUnavailable as exc:
        raise _Unavailable(str(exc)) from None
    except HgadError:
        raise
    except Exception as exc:  # a TensorRT build failure must not take the agent down under auto
        raise HgadError(f"tensorrt backend: engine build failed: {type(exc).__name__}: {exc}") from exc


def _onnxruntime(loaded, device, precision, batch, cache_dir, named: bool) -> tuple[Backend, str]:
    """`named`: asked for by name, where `device: auto` means the CPU it runs on; under `backend: auto` a CUDA
    GPU that `device: auto` finds is left to torch, which runs there."""
    from .onnx_backend import OnnxRuntimeBackend, OnnxRuntimeUnavailable, onnxruntime_status

    if not (named and device == "auto") and resolve_device(device).type != "cpu":
        raise _Unavailable(f"it runs on the CPU, and device {device} was asked for")
    if precision not in (None, "fp32"):
        raise _Unavailable(f"it runs fp32, and {precision} was asked for")
    try:
        return OnnxRuntimeBackend(loaded, cache_dir, batch), f"onnxruntime: {onnxruntime_status()[1]}"
    except OnnxRuntimeUnavailable as exc:
        raise _Unavailable(str(exc)) from None


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
    cache = cache_dir or Path("engines")
    if kind == "torch":
        return TorchBackend(loaded, device, _torch_precision(precision)), "torch (configured)"
    attempts = {
        "tensorrt": lambda: _tensorrt(loaded, device, precision, batch, cache, calibration),
        "onnxruntime": lambda: _onnxruntime(loaded, device, precision, batch, cache, kind == "onnxruntime"),
    }
    skipped = []
    for name in attempts if kind == "auto" else (kind,):
        try:
            return attempts[name]()
        except _Unavailable as exc:
            if kind != "auto":
                raise HgadError(f"{name} backend: {exc}") from None
            skipped.append(f"{name} unavailable: {exc}")
        except HgadError as exc:
            if kind != "auto":
                raise
            log.warning("backend failed, trying the next", extra={"fields": {"backend": name, "error": str(exc)}})
            skipped.append(f"{name} failed: {exc}")
    # Normal with `backend: auto` where no compiled runtime is installed: information, nothing to act on.
    log.info("falling back to torch", extra={"fields": {"reason": "; ".join(skipped)}})
    return TorchBackend(loaded, device, _torch_precision(precision)), f"torch ({'; '.join(skipped)})"


def _torch_precision(precision: str | None) -> str:
    return precision if precision in ("fp32", "fp16") else "fp32"
