"""Models of format 1: converted exactly at load where they ran the current recipe, refused otherwise.

The format-1 directory is written here the way format 1 wrote it (one level per list entry: `levels.shift0`,
`flows.0.*`, `ll_ref` of shape [1], `entropy_ref`, the recipe's switches in model.json) from the tiny model's
tensors, so the test knows exactly what the converted model must score.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hgad.errors import ModelFormatError
from hgad.model_dir import FORMAT_VERSION, file_sha256, load_model
from hgad.model_id import model_id
from hgad.runtime.parity import golden_frames

from .conftest import SIZE

V1_KEYS = (("features.shift", "levels.shift0"), ("features.scale", "levels.scale0"), ("pos_mean", "pos_mean0"))
V1_KEYS += (("pos_var", "pos_var0"), ("flow.", "flows.0."), ("prior.", "priors.0."))


def write_v1(src, dst, **switches) -> str:
    """The model in `src` (format 2) as format 1 stored it, in `dst`; `switches` override the score section."""
    dst.mkdir()
    state = {}
    for name, value in load_file(str(src / "model.safetensors")).items():
        if name in ("ll_ref", "ll_centre", "ll_spread"):
            value = value.reshape(1)
        for new, old in V1_KEYS:
            if name.startswith(new):
                name = old + name[len(new) :]
                break
        state[name] = value
    state["entropy_ref"] = torch.zeros(1)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "hgad-edge-model"})
    meta = copy.deepcopy(json.loads((src / "model.json").read_text()))
    cfg = meta["config"]
    cfg["backbone"] |= {"fuse_stride": cfg["backbone"].pop("grid_stride"), "pool_on_grid": True, "standardise": True}
    cfg["prior"]["centres"] = "axes"
    score = {"combine": "likelihood", "logdet": False, "position_stats": True, "image_score": "max", "topk": 10}
    cfg["score"] |= score | {"top_fraction": 0.015} | switches
    meta["normalisation"] = {**meta["normalisation"], "ll_ref": [meta["normalisation"]["ll_ref"]], "entropy_ref": [0.0]}
    meta["format_version"] = 1
    meta["weights_sha256"] = file_sha256(dst / "model.safetensors")
    meta["model_id"] = model_id(meta["weights_sha256"], meta["config"], meta["normalisation"])
    (dst / "model.json").write_text(json.dumps(meta))
    return meta["model_id"]


def _scores(loaded, line=None):
    frames = torch.from_numpy(golden_frames(SIZE, 2))
    with torch.inference_mode():
        return loaded.model(frames, loaded.model.class_bias(line, 2))


def test_a_format_1_model_of_the_recipe_is_converted_exactly(tiny_model, tiny_model_dir, tmp_path):
    v1_id = write_v1(tiny_model_dir, tmp_path / "v1")
    old = load_model(tmp_path / "v1")
    # Its network and statistics carry over exactly; its scores are the current recipe's, not format 1's, so
    # it gets an id of its own (profiles of the old id are refused, not applied to other scores) ...
    assert old.model_id not in (v1_id, tiny_model.model_id) and load_model(tmp_path / "v1").model_id == old.model_id
    assert old.meta["format_version"] == FORMAT_VERSION and old.model.cfg == tiny_model.model.cfg
    for line in (None, "pcb"):
        (m1, s1), (m2, s2) = _scores(old, line), _scores(tiny_model, line)
        assert torch.equal(s1, s2) and torch.equal(m1, m2)


@pytest.mark.parametrize(
    ("switches", "why"),
    [
        ({"logdet": True}, "score.logdet = True"),
        ({"combine": "product"}, "score.combine = 'product'"),
        ({"image_score": "top_fraction"}, "score.image_score = 'top_fraction'"),
        ({"position_stats": False}, "score.position_stats = False"),
    ],
)
def test_a_format_1_model_of_a_retired_recipe_is_refused(switches, why, tiny_model_dir, tmp_path):
    write_v1(tiny_model_dir, tmp_path / "v1", **switches)
    with pytest.raises(ModelFormatError) as info:
        load_model(tmp_path / "v1")
    msg = str(info.value)
    assert why in msg and "retrain it with `hgad-edge train`" in msg and "\n" not in msg


def test_a_format_1_model_from_before_fusion_is_refused(tiny_model_dir, tmp_path):
    """model.json of the first releases had no fusion keys: one flow per backbone stage."""
    write_v1(tiny_model_dir, tmp_path / "v1")
    meta = json.loads((tmp_path / "v1" / "model.json").read_text())
    for key in ("fuse_stride", "pool_on_grid", "standardise", "pool"):
        del meta["config"]["backbone"][key]
    meta["model_id"] = model_id(meta["weights_sha256"], meta["config"], meta["normalisation"])
    (tmp_path / "v1" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="one flow per backbone stage"):
        load_model(tmp_path / "v1")
