"""`hgad-edge export`: a deployable artifact of the whole inference graph, checked against eager.

- torch: a `torch.export` program (.pt2) with static shapes, runnable without this package's model code
  by `torch.export.load(path).module()(frames_uint8, class_bias)`.
- onnxruntime: an ONNX graph in the engine cache (and at --out), the one the agent's CPU backend loads; the
  same file feeds TensorRT's `trtexec --onnx` on a Jetson.
- tensorrt: a torch-tensorrt engine, written into the engine cache (or to --out) with its key.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError
from ..model_dir import LoadedModel
from .parity import ParityResult, compare, golden_frames, require


@dataclass
class ExportResult:
    path: Path
    backend: str
    precision: str
    batch: int
    parity: ParityResult


def export_program(loaded: LoadedModel, batch: int = 1) -> torch.export.ExportedProgram:
    # Folded afresh: a traced flow cannot tell whether its weights changed since they were folded (HGAD.fold).
    model = loaded.model.eval().cpu().fold()
    s = model.cfg.image_size
    example = (torch.zeros(batch, s, s, 3, dtype=torch.uint8), model.class_bias(None, batch))
    with torch.no_grad():
        return torch.export.export(model, example)


@torch.inference_mode()
def program_parity(loaded: LoadedModel, module: torch.nn.Module, batch: int, precision: str = "fp32") -> ParityResult:
    model = loaded.model.eval().cpu()
    frames = torch.from_numpy(golden_frames(model.cfg.image_size, batch))
    bias = model.class_bias(None, batch)
    ref_maps, ref_scores = model(frames, bias)
    maps, scores = module(frames, bias)
    return compare(ref_scores.numpy(), ref_maps.numpy(), scores.numpy(), maps.numpy(), precision)


def export_torch(loaded: LoadedModel, out: Path, batch: int = 1) -> ExportResult:
    program = export_program(loaded, batch)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out))
    parity = program_parity(loaded, torch.export.load(str(out)).module(), batch)
    require(parity, "the exported program", lambda: out.unlink(missing_ok=True))
    return ExportResult(out, "torch", "fp32", batch, parity)


def _copy_out(path: Path, out: Path | None, suffix: str, what: str) -> Path:
    if out is None:
        return path
    if out.suffix != suffix:
        raise BadInputError(f"--out: {out} should end in {suffix} ({what})")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out)
    return out


def export_onnxruntime(loaded: LoadedModel, cache_dir: Path, out: Path | None, batch: int) -> ExportResult:
    from .onnx_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(loaded, cache_dir, batch)
    path = _copy_out(backend.cache.path(backend.key), out, ".onnx", "an ONNX graph")
    return ExportResult(path, "onnxruntime", "fp32", batch, backend.parity)


def export_tensorrt(
    loaded: LoadedModel, cache_dir: Path, out: Path | None, precision: str, batch: int, calibration: np.ndarray | None
) -> ExportResult:
    from .tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(loaded, cache_dir, precision, batch, "cuda", calibration)
    path = _copy_out(backend.cache.path(backend.key), out, ".ep", "a torch-tensorrt exported program")
    return ExportResult(path, "tensorrt", precision, batch, backend.parity)
