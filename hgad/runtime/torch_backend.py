"""The reference backend: the eager PyTorch model on CPU or CUDA, in inference mode."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from ..errors import BadInputError
from ..model_dir import LoadedModel
from .backend import Backend, BackendInfo, Inference


def resolve_device(device: str, what: str = "--device") -> torch.device:
    """`what` names where the value came from in the error: the flag, or a config file's key."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BadInputError(f"{what}: {device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"{what}: {device} was asked for but CUDA is not available here; use cpu or auto")
    return dev


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return "cpu"


class TorchBackend(Backend):
    def __init__(
        self, loaded: LoadedModel, device: str = "cpu", precision: str = "fp32", channels_last: bool | None = None
    ):
        if precision not in ("fp32", "fp16"):
            raise BadInputError(
                f"--precision: {precision} is not available on the torch backend; use fp32 or fp16 "
                f"(int8 needs --backend tensorrt)"
            )
        self.device = resolve_device(device)
        self.model = loaded.model.to(self.device).eval()
        self.precision = precision
        # channels-last helps cuDNN's fp16 convolutions; on the CPU the default layout measured faster.
        self.channels_last = (self.device.type == "cuda") if channels_last is None else channels_last
        if self.channels_last:
            self.model.backbone.to(memory_format=torch.channels_last)
        self.image_size = loaded.model.cfg.image_size
        self.classes = loaded.model.classes
        self.info = BackendInfo(
            "torch", device_name(self.device), precision, loaded.model_id, "channels-last" if self.channels_last else ""
        )

    def _autocast(self):
        if self.precision == "fp16":
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def runs_on(self) -> str:
        return str(self.device)

    @torch.inference_mode()
    def infer(self, frames: np.ndarray, line: str | None = None) -> Inference:
        self.check_line(line)
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device, non_blocking=True)
        with self._autocast():
            amap, score = self.model(x, self.model.class_bias(line, x.shape[0]))
        return Inference(amap.float().cpu().numpy(), score.float().cpu().numpy())

    @torch.inference_mode()
    def infer_staged(self, frames: np.ndarray, line: str | None = None) -> Inference:
        """As `infer`, with wall-clock milliseconds per stage (synchronised on CUDA) for the benchmark."""
        self.check_line(line)
        m = self.model
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        with self._autocast():
            x = m.preprocess(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self._sync()
            t1 = time.perf_counter()
            feats = m.forward_features(x)
            self._sync()
            t2 = time.perf_counter()
            ll = m.forward_ll(feats, m.class_bias(line, x.shape[0]))
            self._sync()
            t3 = time.perf_counter()
            amap, score = m.forward_map(ll)
            maps, scores = amap.float().cpu().numpy(), score.float().cpu().numpy()
        t4 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "backbone": t2 - t1, "flow": t3 - t2, "postprocess": t4 - t3}
        return Inference(maps, scores, {k: v * 1000.0 for k, v in timings.items()})
