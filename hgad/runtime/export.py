"""`hgad-edge export`: a deployable artifact of the whole inference graph, checked against eager.

- torch: a `torch.export` program (.pt2) with static shapes, runnable without this package's model code
  by `torch.export.load(path).module()(frames_uint8, class_bias)`.
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
from .parity import ParityError, ParityResult, compare, golden_frames


@dataclass
class ExportResult:
    path: Path
    backend: str
    precision: str
    batch: int
    parity: ParityResult


def export_program(loaded: LoadedModel, batch: int = 1) -> torch.export.ExportedProgram:
    model = loaded.model.eval().cpu()
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
    if not parity.ok:
        out.unlink(missing_ok=True)
        raise ParityError(f"exported program disagrees with eager (score error {parity.max_score_error:.3g})")
    return ExportResult(out, "torch", "fp32", batch, parity)


def export_tensorrt(
    loaded: LoadedModel, cache_dir: Path, out: Path | None, precision: str, batch: int, calibration: np.ndarray | None
) -> ExportResult:
    from .tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend(loaded, cache_dir, precision, batch, "cuda", calibration)
    path = backend.cache.path(backend.key)
    if out is not None:
        if out.suffix != ".ep":
            raise BadInputError(f"--out: {out} should end in .ep (a torch-tensorrt exported program)")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        path = out
    return ExportResult(path, "tensorrt", precision, batch, backend.parity)
