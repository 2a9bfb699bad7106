"""The model directory: `model.safetensors` (every tensor, backbone included, never pickle) and
`model.json` (full configuration, classes, backbone, input size, normalisation constants, format version,
content hash). The model id is that content hash: it changes whenever weights or constants change, and
calibration profiles and TensorRT engines are keyed by it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import ModelFormatError
from .model import HGAD

FORMAT = "hgad-edge-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class LoadedModel:
    model: HGAD
    model_id: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights and engines are large)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_id(weights_sha: str, config: dict[str, Any], normalisation: dict[str, Any]) -> str:
    payload = json.dumps(
        {"weights": weights_sha, "config": config, "normalisation": normalisation},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def normalisation_of(model: HGAD) -> dict[str, Any]:
    return {
        "mean": list(model.cfg.backbone.mean),
        "std": list(model.cfg.backbone.std),
        "ll_ref": [round(float(v), 6) for v in model.ll_ref.cpu()],
        "entropy_ref": [round(float(v), 6) for v in model.entropy_ref.cpu()],
    }


def save_model(model: HGAD, out: Path, training: dict[str, Any] | None = None) -> str:
    """Write the model directory; returns the model id."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    # One metadata key: safetensors writes the metadata map in hash order, which varies from run to run, so
    # two keys made the same model's file, and with it the model id, differ between saves. The format
    # version lives in model.json, which is what loading checks.
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(weights)
    config = model.cfg.to_dict()
    norm = normalisation_of(model)
    weights_sha = file_sha256(weights)
    model_id = _model_id(weights_sha, config, norm)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(model.cfg.classes),
        "backbone": model.cfg.backbone.name,
        "image_size": model.cfg.image_size,
        "prior": model.cfg.prior.kind,
        "normalisation": norm,
        "weights_sha256": weights_sha,
        "config": config,
        "training": training or {},
    }
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return model_id


def read_meta(path: Path) -> dict[str, Any]:
    """model.json, checked for being ours and of a version we read."""
    if not path.is_dir():
        raise ModelFormatError(f"{path}: model directory does not exist")
    meta_path = path / META
    if not meta_path.is_file():
        raise ModelFormatError(f"{path}: not an hgad-edge model directory (no {META})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{meta_path}: not valid JSON ({exc}); the file is damaged or not ours") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFormatError(f"{meta_path}: not an hgad-edge model (format is not {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{meta_path}: model format version {version} is not supported; this hgad-edge reads version "
            f"{FORMAT_VERSION} (retrain the model with this version)"
        )
    for key in ("model_id", "config", "weights_sha256", "normalisation"):
        if key not in meta:
            raise ModelFormatError(f"{meta_path}: missing key {key!r}")
    return meta


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    meta = read_meta(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ModelFormatError(f"{path}: {WEIGHTS} is missing")
    if file_sha256(weights) != meta["weights_sha256"]:
        raise ModelFormatError(
            f"{weights}: content does not match {META} (truncated, damaged or replaced); copy the model again"
        )
    cfg = ModelConfig.from_dict(meta["config"], source=str(path / META))
    # Hash the configuration as written, not as re-read: keys added since (with defaults that keep old
    # models as they were built) must not make an older model look edited.
    if _model_id(meta["weights_sha256"], meta["config"], meta["normalisation"]) != meta["model_id"]:
        raise ModelFormatError(f"{path / META}: model_id does not match the content (the file was edited)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelFormatError(f"{weights}: not a readable safetensors file ({exc})") from None
    model = HGAD(cfg, pretrained_backbone=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFormatError(
            f"{weights}: tensors do not fit the configuration (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval().to(device)
    return LoadedModel(model=model, model_id=meta["model_id"], path=path, meta=meta)
