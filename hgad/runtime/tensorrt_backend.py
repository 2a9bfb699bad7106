"""The TensorRT backend: the same module compiled by torch-tensorrt's dynamo frontend.

Path: torch.export.export (static shapes) -> torch_tensorrt.dynamo.compile -> torch_tensorrt.save into
the engine cache; later runs load it with torch.export.load. FP16 is the default; INT8 quantises the
backbone with NVIDIA ModelOpt post-training calibration on real frames (the flows and the scoring stay
in floating point: their exp/log-sum-exp arithmetic does not survive 8 bits). At load, golden frames
must agree with the eager reference (parity.py) or the engine is refused.

torch-tensorrt renamed arguments across releases (inputs -> arg_inputs; enabled_precisions ->
explicit typing with autocast), so the compile call is built from the installed version's signature.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import BadInputError, HgadError
from ..groups import InferenceModel
from ..model_dir import LoadedModel
from .backend import Backend, BackendInfo, Inference
from .engine_cache import EngineCache, EngineKey
from .parity import compare, golden_frames, require
from .torch_backend import resolve_device

log = logging.getLogger(__name__)


class TensorRTUnavailable(HgadError):
    """torch-tensorrt cannot run here (not installed, no CUDA); `auto` falls back to torch."""


def tensorrt_status() -> tuple[bool, str]:
    """(usable, explanation) without raising."""
    try:
        import tensorrt
        import torch_tensorrt
    except Exception as exc:  # ImportError, or a missing shared library raising OSError
        return False, f"torch_tensorrt does not import ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    return True, f"torch-tensorrt {torch_tensorrt.__version__}, TensorRT {tensorrt.__version__}"


class EngineInput(nn.Module):
    """The compiled graph's entry: float frames (0..255, BGR, [B, S, S, 3]) rather than uint8, because
    uint8 engine inputs are not supported by every TensorRT release; the cast happens on the GPU."""

    def __init__(self, model: InferenceModel):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, class_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_head(self.model.forward_features(self.model.preprocess(frames)), class_bias)


def engine_key(loaded: LoadedModel, precision: str, batch: int, device: torch.device) -> EngineKey:
    import tensorrt
    import torch_tensorrt

    major, minor = torch.cuda.get_device_capability(device)
    return EngineKey(
        model_id=loaded.model_id,
        runtime="tensorrt",
        device=f"{torch.cuda.get_device_name(device)} (compute {major}.{minor})",
        versions=f"hgad-edge={__version__} "
        + " ".join(f"{m.__name__}={m.__version__}" for m in (tensorrt, torch, torch_tensorrt)),
        precision=precision,
        batch=batch,
        image_size=loaded.model.cfg.image_size,
    )


def _inputs_kw(func: Any) -> str:
    return "arg_inputs" if "arg_inputs" in inspect.signature(func).parameters else "inputs"


def _quantise_int8(module: EngineInput, calibration: np.ndarray, device: torch.device) -> None:
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise BadInputError("--precision int8 needs NVIDIA ModelOpt: pip install nvidia-modelopt") from None
    cfg = {**mtq.INT8_DEFAULT_CFG, "quant_cfg": dict(mtq.INT8_DEFAULT_CFG["quant_cfg"])}
    cfg["quant_cfg"]["*flow.*"] = {"enable": False}
    cfg["quant_cfg"]["*prior.*"] = {"enable": False}
    k = len(module.model.classes)

    def loop(m: nn.Module) -> None:
        for i in range(0, len(calibration), 8):
            x = torch.from_numpy(calibration[i : i + 8]).to(device).float()
            m(x, torch.zeros(x.shape[0], k, device=device))

    mtq.quantize(module, cfg, forward_loop=loop)


def compile_engine(
    model: InferenceModel, precision: str, batch: int, device: torch.device, calibration: np.ndarray | None = None
) -> nn.Module:
    import torch_tensorrt

    # Folded afresh for the trace (a traced flow cannot tell whether its weights changed since they were
    # folded: HGAD.fold); INT8 quantises the flow's Linear layers, so that engine is built from the flow itself.
    model = model.unfold() if precision == "int8" else model.fold()
    module = EngineInput(model).eval().to(device)
    s = model.cfg.image_size
    example = (torch.zeros(batch, s, s, 3, device=device), model.class_bias(None, batch).to(device))
    compile_fn = torch_tensorrt.dynamo.compile
    params = inspect.signature(compile_fn).parameters
    kwargs: dict[str, Any] = {_inputs_kw(compile_fn): list(example), "min_block_size": 1}
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise BadInputError("--precision int8 needs calibration images (--calibration DIR)")
        _quantise_int8(module, calibration, device)
        from modelopt.torch.quantization.utils import export_torch_mode

        with torch.no_grad(), export_torch_mode():
            program = torch.export.export(module, example, strict=False)
        kwargs["enabled_precisions"] = {torch.int8, torch.float16, torch.float32}
    else:
        with torch.no_grad():
            program = torch.export.export(module, example)
        if precision == "fp16":
            if "enable_autocast" in params:
                kwargs.update(use_explicit_typing=True, enable_autocast=True, autocast_low_precision_type=torch.float16)
            else:
                kwargs["enabled_precisions"] = {torch.float16, torch.float32}
    return compile_fn(program, **kwargs)


def save_engine(engine: nn.Module, path: Path, batch: int, size: int, n_classes: int, device: torch.device) -> None:
    import torch_tensorrt

    example = [torch.zeros(batch, size, size, 3, device=device), torch.zeros(batch, n_classes, device=device)]
    torch_tensorrt.save(
        engine, str(path), output_format="exported_program", **{_inputs_kw(torch_tensorrt.save): example}
    )


def load_engine(path: Path) -> nn.Module:
    import torch_tensorrt  # noqa: F401 - registers the TensorRT runtime ops the program calls

    return torch.export.load(str(path)).module()


class TensorRTBackend(Backend):
    def __init__(
        self,
        loaded: LoadedModel,
        cache_dir: Path,
        precision: str = "fp16",
        batch: int = 1,
        device: str = "cuda",
        calibration: np.ndarray | None = None,
    ):
        ok, why = tensorrt_status()
        if not ok:
            raise TensorRTUnavailable(f"tensorrt backend: {why}")
        if precision not in ("fp32", "fp16", "int8"):
            raise BadInputError(f"--precision: {precision!r} is not one of fp32, fp16, int8")
        self.device = resolve_device(device)
        if self.device.type != "cuda":
            raise BadInputError(f"--device: the tensorrt backend runs on CUDA, not {self.device}")
        self.loaded = loaded
        self.batch = batch
        self.precision = precision
        self.image_size = loaded.model.cfg.image_size
        self.classes = loaded.model.classes
        self.cache = EngineCache(cache_dir)
        self.key = engine_key(loaded, precision, batch, self.device)
        reference = loaded.model.to(self.device).eval()
        engine = self.cache.load(self.key, load_engine)
        built = engine is None
        if built:
            log.warning(
                "building TensorRT engine (minutes on a Jetson)",
                extra={"fields": {"precision": precision, "batch": batch, "model_id": loaded.model_id}},
            )
            engine = compile_engine(reference, precision, batch, self.device, calibration)
            self.cache.store(
                self.key, lambda p: save_engine(engine, p, batch, self.image_size, len(self.classes), self.device)
            )
        self.engine = engine
        discard = lambda: self.cache.discard(self.key)  # noqa: E731
        self.parity = require(self._check_parity(reference), f"the TensorRT engine ({precision})", discard)
        self.info = BackendInfo(
            "tensorrt",
            f"{self.device} ({self.key.device})",
            precision,
            loaded.model_id,
            f"engine {self.cache.path(self.key).name} ({'built' if built else 'cached'})",
        )

    def _run(self, frames: np.ndarray, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        n = frames.shape[0]
        if n > self.batch:
            maps, scores = zip(
                *(self._run(frames[i : i + self.batch], bias[i : i + self.batch]) for i in range(0, n, self.batch)),
                strict=True,
            )
            return np.concatenate(maps), np.concatenate(scores)
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float()
        if n < self.batch:  # static engine shape: pad, frames are scored independently
            x = torch.cat([x, x[-1:].expand(self.batch - n, *x.shape[1:])])
            bias = torch.cat([bias, bias[-1:].expand(self.batch - n, -1)])
        with torch.inference_mode():
            amap, score = self.engine(x, bias.to(self.device))
        return amap[:n].float().cpu().numpy(), score[:n].float().cpu().numpy()

    def _check_parity(self, reference: InferenceModel):
        frames = golden_frames(self.image_size, max(2, self.batch))
        bias = reference.class_bias(None, frames.shape[0])
        with torch.inference_mode():
            ref_maps, ref_scores = reference(torch.from_numpy(frames).to(self.device), bias)
        maps, scores = self._run(frames, bias)
        return compare(ref_scores.float().cpu().numpy(), ref_maps.float().cpu().numpy(), scores, maps, self.precision)

    def runs_on(self) -> str:
        return str(self.device)

    def infer(self, frames: np.ndarray, line: str | None = None) -> Inference:
        self.check_line(line)
        bias = self.loaded.model.class_bias(line, frames.shape[0])
        maps, scores = self._run(frames, bias)
        return Inference(maps, scores)
