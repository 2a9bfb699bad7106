"""The model directory: `model.safetensors` (every tensor, backbone included, never pickle) and
`model.json` (full configuration, classes, backbone, input size, normalisation constants, format version,
content hash; for a model grown by adding lines, each group's configuration: groups.py). The model id is that
content hash: it changes whenever weights or constants change, and calibration profiles and TensorRT engines
are keyed by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import BadInputError, ModelFormatError
from .groups import GroupedHGAD, InferenceModel
from .migrations import migrate
from .model import HGAD
from .model_id import model_id
from .replay import Replay
from .replay import save as save_replay

FORMAT = "hgad-edge-model"
# Format 3 adds `groups`. A model of one group is written as format 2, which it is, so that an agent of the
# version before reads it.
FORMAT_VERSION = 3
WEIGHTS = "model.safetensors"
META = "model.json"
# Readable by every user: the model is copied to a service user's folder (systemd/README.md), and it holds
# no secret.
FILE_MODE = 0o644


@dataclass
class LoadedModel:
    model: InferenceModel
    model_id: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def profile_models(self, line: str) -> set[str]:
        """The models whose calibration profiles of `line` hold for this one: itself, and for a line kept when
        lines were added (add_lines.py), the model it grew from (and that one's, in turn)."""
        ids, lineage = {self.model_id}, self.meta.get("lineage")
        while lineage and line in lineage.get("kept", []):
            ids.add(lineage["from"])
            lineage = lineage.get("before")
        return ids


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights and engines are large)."""
    h = hashlib.sha256()
    with readable(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def readable(path: Path) -> Path:
    """`path` (a file, or a folder to look into), or one line saying why this user cannot read it."""
    folder = path.is_dir() if os.access(path.parent, os.X_OK) else False
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        fix = f"chmod a+rx {path}" if folder else f"chmod a+r {path}"
        raise BadInputError(f"{path}: not readable by this user (uid {os.getuid()}); e.g. {fix}")
    return path


def normalisation_of(model: InferenceModel) -> dict[str, Any]:
    return {
        "mean": list(model.cfg.backbone.mean),
        "std": list(model.cfg.backbone.std),
        "ll_ref": round(float(model.ll_ref), 6),
    }


def save_model(
    model: InferenceModel,
    out: Path,
    training: dict[str, Any] | None = None,
    replay: Replay | None = None,
    **meta_extra: Any,
) -> str:
    """Write the model directory (with the replay sample, when given); returns the model id."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, out.stat().st_mode | 0o755)  # a service user must be able to look inside
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    # One metadata key: safetensors writes the metadata map in hash order, which varies from run to run, so
    # two keys made the same model's file, and with it the model id, differ between saves. The format
    # version lives in model.json, which is what loading checks.
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.chmod(tmp, FILE_MODE)
    tmp.replace(weights)
    config = model.cfg.to_dict()
    norm = normalisation_of(model)
    weights_sha = file_sha256(weights)
    groups = [g.cfg.to_dict() for g in model.groups] if isinstance(model, GroupedHGAD) else None
    mid = model_id(weights_sha, config, norm, groups)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if groups else 2,
        "model_id": mid,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(model.cfg.classes),
        "backbone": model.cfg.backbone.name,
        "image_size": model.cfg.image_size,
        "prior": model.cfg.prior.kind,
        "normalisation": norm,
        "weights_sha256": weights_sha,
        "config": config,
        "training": training or {},
        **({"groups": groups} if groups else {}),
        **meta_extra,
    }
    if replay is not None:
        save_replay(replay, out)
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    os.chmod(out / META, FILE_MODE)
    return mid


def read_meta(path: Path) -> dict[str, Any]:
    """model.json, checked for being ours and of a version we read."""
    if not path.is_dir():
        raise ModelFormatError(f"{path}: model directory does not exist")
    readable(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise ModelFormatError(f"{path}: not an hgad-edge model directory (no {META})")
    try:
        meta = json.loads(readable(meta_path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{meta_path}: not valid JSON ({exc}); the file is damaged or not ours") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFormatError(f"{meta_path}: not an hgad-edge model (format is not {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{meta_path}: model format {version} was written by a newer hgad-edge; this one reads formats "
            f"1 to {FORMAT_VERSION}: upgrade hgad-edge"
        )
    if version not in range(1, FORMAT_VERSION + 1):
        raise ModelFormatError(f"{meta_path}: model format version {version!r} is not one this hgad-edge knows")
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
    # The id is checked on the metadata as written, before any conversion of an older format.
    if model_id(meta["weights_sha256"], meta["config"], meta["normalisation"], meta.get("groups")) != meta["model_id"]:
        raise ModelFormatError(f"{path / META}: model_id does not match the content (the file was edited)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelFormatError(f"{weights}: not a readable safetensors file ({exc})") from None
    meta, state = migrate(meta, state, FORMAT_VERSION, str(path / META))
    source = str(path / META)
    if "groups" in meta:
        groups = meta["groups"]
        if not isinstance(groups, list) or len(groups) < 2 or not all(isinstance(g, dict) for g in groups):
            raise ModelFormatError(f"{source}: 'groups' must be a list of two or more group configurations")
        model = GroupedHGAD([HGAD(ModelConfig.from_dict(g, source=source), False) for g in meta["groups"]])
    else:
        model = HGAD(ModelConfig.from_dict(meta["config"], source=source), pretrained_backbone=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelFormatError(
            f"{weights}: tensors do not fit the configuration (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval().fold().to(device)
    return LoadedModel(model=model, model_id=meta["model_id"], path=path, meta=meta)
