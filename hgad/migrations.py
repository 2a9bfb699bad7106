"""Older model formats, converted in this one place or refused.

Each step turns a model directory's metadata and tensors of format N into format N + 1, in memory, at load
time (the files are never rewritten). A step converts a model only where its network and statistics carry
over exactly; a model built with a recipe this version no longer runs is refused with one line saying to
retrain it.

- 1 -> 2: one feature grid instead of a list of levels (tensor names lose their level index), the recipe's
  switches gone from the configuration. Exact for a model of format 1 whose switches were the recipe's:
  fused stages pooled on the grid and standardised, scored by the latent density with position statistics,
  the likelihood map alone, the map's maximum as the image score. Format 2 keeps the anomaly map in log
  space (scoring.py), so a converted model's scores are not its old ones: it gets a new model id, and the
  calibration profiles and engines of the old id are refused ("recalibrate the line") rather than applied
  to scores they were not made for.
- 2 -> 3: format 3 adds a grown model's `groups` (groups.py); a model of format 2 is a model of one group,
  read as it is (same tensors, same model id).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from .errors import ModelFormatError
from .model_id import model_id

Tensors = dict[str, torch.Tensor]
Step = Callable[[dict[str, Any], Tensors, str], tuple[dict[str, Any], Tensors]]

# What format 1 assumed for a key missing from an older model.json (the recipe before that key existed).
_V1_MISSING = {
    "backbone": {"pool": 1, "fuse_stride": 0, "pool_on_grid": False, "standardise": False},
    "score": {"logdet": True, "position_stats": False, "combine": "likelihood", "image_score": "max"},
}
# Format 1's switches, with the value the current recipe has (anything else is a retired recipe).
_V1_RECIPE = {
    ("backbone", "pool_on_grid"): True,
    ("backbone", "standardise"): True,
    ("score", "logdet"): False,
    ("score", "position_stats"): True,
    ("score", "combine"): "likelihood",
    ("score", "image_score"): "max",
}
_V1_DROPPED = {
    "backbone": ("fuse_stride", "pool_on_grid", "standardise"),
    "prior": ("centres",),  # only the starting layout; a trained model keeps its centres
    "score": ("logdet", "position_stats", "combine", "image_score", "topk", "top_fraction"),
}
_V1_RENAMED = (
    ("levels.shift0", "features.shift"),
    ("levels.scale0", "features.scale"),
    ("pos_mean0", "pos_mean"),
    ("pos_var0", "pos_var"),
    ("flows.0.", "flow."),
    ("priors.0.", "prior."),
)
_V1_SCALARS = ("ll_ref", "ll_centre", "ll_spread")


def _retired(config: dict[str, Any]) -> str | None:
    """Why a format-1 configuration cannot be converted exactly, or None."""
    sections = {s: {**_V1_MISSING.get(s, {}), **config.get(s, {})} for s in ("backbone", "score")}
    if not sections["backbone"]["fuse_stride"]:
        return "one flow per backbone stage"
    for (section, key), wanted in _V1_RECIPE.items():
        if sections[section][key] != wanted:
            return f"{section}.{key} = {sections[section][key]!r}"
    return None


def v1_to_v2(meta: dict[str, Any], state: Tensors, source: str) -> tuple[dict[str, Any], Tensors]:
    config = meta["config"]
    why = _retired(config)
    if why is not None:
        raise ModelFormatError(
            f"{source}: this model (format 1) was built with a recipe this hgad-edge no longer runs ({why}); "
            "retrain it with `hgad-edge train`"
        )
    new = copy.deepcopy(meta)
    cfg = new["config"]
    cfg["backbone"]["grid_stride"] = cfg["backbone"]["fuse_stride"]
    cfg["backbone"].setdefault("pool", _V1_MISSING["backbone"]["pool"])
    for section, keys in _V1_DROPPED.items():
        for key in keys:
            cfg[section].pop(key, None)
    new["normalisation"] = {k: v for k, v in meta["normalisation"].items() if k != "entropy_ref"}
    new["normalisation"]["ll_ref"] = meta["normalisation"]["ll_ref"][0]
    tensors: Tensors = {}
    for name, value in state.items():
        if name == "entropy_ref":
            continue
        if name in _V1_SCALARS:
            value = value.reshape(())
        for old, renamed in _V1_RENAMED:
            if name.startswith(old):
                name = renamed + name[len(old) :]
                break
        tensors[name] = value
    new["format_version"] = 2
    new["model_id"] = model_id(new["weights_sha256"], new["config"], new["normalisation"])
    return new, tensors


def v2_to_v3(meta: dict[str, Any], state: Tensors, source: str) -> tuple[dict[str, Any], Tensors]:
    return meta | {"format_version": 3}, state


# STEPS[n] converts format n to n + 1.
STEPS: dict[int, Step] = {1: v1_to_v2, 2: v2_to_v3}


def migrate(meta: dict[str, Any], state: Tensors, current: int, source: str) -> tuple[dict[str, Any], Tensors]:
    """Apply the steps from the model's format up to `current`."""
    version = meta["format_version"]
    while version < current:
        meta, state = STEPS[version](meta, state, source)
        version = meta["format_version"]
    return meta, state
