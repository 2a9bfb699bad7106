"""Adding a line to a trained model: the new line gets a group of its own, the old line's scores do not move,
its profiles carry over when its frames stay in its group, and the agent's profile check follows the lineage."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from calibration.db import open_database
from calibration.store import ProfileMismatchError, ProfileStore
from hgad.add_lines import add_lines
from hgad.config import ModelConfig, TrainConfig
from hgad.data.datasets import load_split
from hgad.data.images import read_image
from hgad.groups import GroupedHGAD
from hgad.model_dir import FORMAT_VERSION, load_model, save_model
from hgad.replay import GRIDS, Replay
from hgad.replay import load as load_replay
from hgad.replay import save as save_replay
from hgad.runtime.onnx_backend import OnnxRuntimeBackend
from hgad.runtime.torch_backend import TorchBackend
from hgad.train import train

from .conftest import EPOCHS, SIZE, hgad_cli
from .rig import build_stream, check_stream, make_rig, write_stream
from .test_agent_dispatcher import save_profile


@pytest.fixture(scope="module")
def fabric_model(tiny_data, tmp_path_factory):
    """The recipe trained on fabric alone, saved with its replay sample."""
    out = tmp_path_factory.mktemp("fabric-model")
    cfg = ModelConfig(classes=("fabric",), image_size=SIZE, train=TrainConfig(epochs=EPOCHS))
    model, report = train(cfg, load_split(tiny_data, "train", ["fabric"]))
    save_model(model, out, report.to_dict(), report.replay)
    return out


@pytest.fixture(scope="module")
def grown(fabric_model, tiny_data, tmp_path_factory):
    """pcb added to fabric's model, saved as `train --from` saves it."""
    base = load_model(fabric_model)
    model, report = add_lines(base, load_split(tiny_data, "train", ["pcb"]), load_replay(fabric_model))
    out = tmp_path_factory.mktemp("grown")
    lineage = {"from": base.model_id, "kept": report.kept, "before": None}
    save_model(model, out, report.to_dict(), report.replay, lineage=lineage)
    return out, model, report


def frames_of(data, line: str, split: str = "test") -> np.ndarray:
    return np.stack([read_image(s.path, SIZE) for s in load_split(data, split, [line])])


def test_the_new_line_gets_a_group_and_the_old_line_scores_as_before(fabric_model, tiny_data, grown):
    _, model, report = grown
    base = load_model(fabric_model).model
    assert isinstance(model, GroupedHGAD) and [g.classes for g in model.groups] == [("fabric",), ("pcb",)]
    assert model.classes == ("fabric", "pcb") and report.added == ["pcb"]
    # The old group is the base model, weights and statistics untouched; the new one runs on its backbone.
    old = model.groups[0].state_dict()
    assert all(torch.equal(v, old[k]) for k, v in base.state_dict().items())
    new = model.groups[1].backbone.state_dict()
    assert all(torch.equal(v, new[k]) for k, v in base.backbone.state_dict().items())
    fabric = torch.from_numpy(frames_of(tiny_data, "fabric"))
    with torch.inference_mode():
        for line in ("fabric", None):  # class-aware, and class-agnostic where fabric's frames go to its group
            before = base(fabric, base.class_bias(line, len(fabric)))
            after = model(fabric, model.class_bias(line, len(fabric)))
            assert torch.allclose(after[0], before[0], atol=1e-4) and torch.allclose(after[1], before[1], atol=1e-4)
        chosen = model.route(model.forward_features(model.preprocess(fabric)), model.class_bias(None, len(fabric)))
    assert (chosen == 0).all()
    assert report.confused["fabric"] == 0.0 and report.kept == ["fabric"]


def test_each_line_is_scored_by_its_group(tiny_data, grown):
    """Class-agnostic, pcb's frames go to pcb's group; class-aware, the line's group scores whatever it is shown."""
    _, model, report = grown
    pcb = torch.from_numpy(frames_of(tiny_data, "pcb"))
    with torch.inference_mode():
        feats = model.forward_features(model.preprocess(pcb))
        assert (model.route(feats, model.class_bias(None, len(pcb))) == 1).float().mean() > 0.9
        assert (model.route(feats, model.class_bias("fabric", len(pcb))) == 0).all()
        # pcb's own group, alone, gives the grown model's class-aware scores
        group = model.groups[1]
        alone = group(pcb, group.class_bias("pcb", len(pcb)))[1]
        assert torch.allclose(model(pcb, model.class_bias("pcb", len(pcb)))[1], alone, atol=1e-4)
    assert set(report.confused) == {"fabric", "pcb"}


def test_a_grown_model_is_saved_and_read_back_as_it_scores(tiny_data, grown):
    out, model, _ = grown
    loaded = load_model(out)
    assert isinstance(loaded.model, GroupedHGAD) and loaded.meta["format_version"] == FORMAT_VERSION
    assert [g["classes"] for g in json.loads((out / "model.json").read_text())["groups"]] == [["fabric"], ["pcb"]]
    frames = torch.from_numpy(frames_of(tiny_data, "pcb")[:4])
    folded = copy.deepcopy(model).fold()  # as load_model hands a model over
    with torch.inference_mode():
        assert torch.equal(loaded.model(frames, loaded.model.class_bias(None, 4))[1],
                           folded(frames, folded.class_bias(None, 4))[1])  # fmt: skip
    # The grown sample holds both lines, each standardised as its group does: pcb can be judged next time.
    replay = load_replay(out)
    assert replay.classes == ("fabric", "pcb") and replay.grid_lines.tolist() == [0] * GRIDS + [1] * GRIDS


def test_an_edited_group_configuration_is_refused(grown, tmp_path):
    out = tmp_path / "edited"
    shutil.copytree(grown[0], out)
    meta = json.loads((out / "model.json").read_text())
    meta["groups"][1]["classes"] = ["pcb-b"]
    (out / "model.json").write_text(json.dumps(meta))
    from hgad.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="model_id does not match the content"):
        load_model(out)


def test_a_one_group_model_is_still_written_in_the_format_before(fabric_model):
    assert load_model(fabric_model).meta["format_version"] == FORMAT_VERSION
    assert json.loads((fabric_model / "model.json").read_text())["format_version"] == 2


def test_a_grown_model_runs_on_onnx_runtime_and_torch(tiny_data, grown, tmp_path):
    """The exported graph routes as eager torch does: its golden-frame parity check passes at load, and the
    agent's backends give the same scores on real frames."""
    loaded = load_model(grown[0])
    ort = OnnxRuntimeBackend(loaded, tmp_path / "engines")
    frames = np.concatenate([frames_of(tiny_data, "fabric")[:3], frames_of(tiny_data, "pcb")[:3]])
    eager = TorchBackend(loaded).infer(frames)
    assert np.allclose(ort.infer(frames).scores, eager.scores, rtol=1e-4, atol=1e-4)
    assert np.allclose(ort.infer(frames, "pcb").scores, TorchBackend(loaded).infer(frames, "pcb").scores, rtol=1e-4)


def test_a_sample_saved_without_grids_adds_lines_but_keeps_no_profile(fabric_model, tiny_data, tmp_path):
    """A replay sample saved before grids were kept: the old line cannot be checked, so none is kept and the
    command line says why it must be recalibrated."""
    older = tmp_path / "older"
    shutil.copytree(fabric_model, older)
    full = load_replay(fabric_model)
    save_replay(Replay(full.classes), older)
    r = hgad_cli("train", "--from", str(older), "--data", str(tiny_data), "--classes", "pcb",
                 "--out", str(tmp_path / "grown"), "--epochs", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "recalibrate fabric" in r.stdout and "no whole images of fabric" in r.stderr
    assert load_model(tmp_path / "grown").meta["lineage"]["kept"] == []
    assert load_replay(tmp_path / "grown").grid_lines.tolist() == [1] * GRIDS  # pcb can be checked next time


@pytest.mark.parametrize("kept", [["fabric"], []])
def test_the_profile_check_follows_the_lineage(fabric_model, grown, tmp_path, kept):
    """A line kept when lines were added finds the old model's profile; a line not kept, or new, must
    recalibrate. (Both verdicts are written here as add_lines would.)"""
    base = load_model(fabric_model)
    lineage = {"from": base.model_id, "kept": kept, "before": None}
    save_model(grown[1], tmp_path / "grown", lineage=lineage)
    model = load_model(tmp_path / "grown")
    store = ProfileStore(open_database(tmp_path / "db.sqlite"))
    save_profile(store, base.model_id, "fabric")
    save_profile(store, base.model_id, "pcb")  # a profile of the old model for a line it never had
    if kept:
        assert model.profile_models("fabric") == {model.model_id, base.model_id}
        assert store.active_for("fabric", model.model_id, model.profile_models("fabric")).model_id == base.model_id
    else:
        with pytest.raises(ProfileMismatchError, match="recalibrate the line"):
            store.active_for("fabric", model.model_id, model.profile_models("fabric"))
    with pytest.raises(ProfileMismatchError, match="recalibrate the line"):
        store.active_for("pcb", model.model_id, model.profile_models("pcb"))


def test_train_from_through_the_command_line(fabric_model, tiny_data, tmp_path):
    out = tmp_path / "grown"
    r = hgad_cli("train", "--from", str(fabric_model), "--data", str(tiny_data), "--classes", "pcb",
                 "--out", str(out), "--epochs", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["fabric", "pcb"] and meta["lineage"]["from"] == load_model(fabric_model).model_id
    assert meta["training"]["group"]["epochs"] == 2 and "2 groups" in r.stdout and "profiles of" in r.stdout
    evaluated = hgad_cli("eval", "--model", str(out), "--data", str(tiny_data))
    assert evaluated.returncode == 0, evaluated.stderr
    again = hgad_cli(
        "train", "--from", str(out), "--data", str(tiny_data), "--classes", "pcb", "--out", str(tmp_path / "x")
    )
    assert again.returncode == 2 and "pcb already in the model" in again.stderr
    none = hgad_cli("train", "--from", str(fabric_model), "--data", str(tiny_data), "--out", str(tmp_path / "y"))
    assert none.returncode == 2 and "name the lines to add with --classes" in none.stderr


def test_a_line_like_one_the_model_has_is_named_as_confused(fabric_model, tiny_data, grown, tmp_path):
    """A third group for a copy of pcb's images: the two pcb groups are indistinguishable, so class-agnostic
    scoring sends one line's images to the other's group, and the command says so."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "pcb", data / "pcb-copy")
    r = hgad_cli("train", "--from", str(grown[0]), "--data", str(data), "--classes", "pcb-copy",
                 "--out", str(tmp_path / "three"), "--epochs", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    model = load_model(tmp_path / "three")
    lineage = model.meta["lineage"]
    assert len(model.model.groups) == 3 and lineage["from"] == load_model(grown[0]).model_id
    assert lineage["before"]["from"] == load_model(fabric_model).model_id
    confused = model.meta["training"]["confused"]
    assert max(confused["pcb"], confused["pcb-copy"]) > 0 and confused["fabric"] == 0.0
    assert "confuses lines across groups" in r.stderr and "fabric" in model.meta["lineage"]["kept"]


def test_the_agent_runs_a_grown_model_on_a_kept_lines_old_profile(
    broker, collector_factory, tiny_model, tiny_model_dir, calibrated_db, tiny_data, tmp_path
):
    """The agent reads a grown model, takes the old model's profile of a line the add kept (the lineage), and
    alerts on that line's defects as before: one alert for one defect episode, from the grown model."""
    pcb = [dataclasses.replace(s, class_name="pcb-b") for s in load_split(tiny_data, "train", ["pcb"])]
    base = tiny_model.model.cpu().eval()
    group, _ = train(dataclasses.replace(base.cfg, classes=("pcb-b",)), pcb, backbone=base.backbone)
    grown_id = save_model(GroupedHGAD([base, group.eval()]), tmp_path / "grown",
                          lineage={"from": tiny_model.model_id, "kept": ["fabric"], "before": None})  # fmt: skip
    stream = build_stream([("normal", 10), ("defect", 6), ("normal", 10)])
    video = write_stream(tmp_path / "line.avi", stream)
    rig = make_rig(tmp_path / "rig", tmp_path / "grown", broker.port, calibrated_db)
    check_stream(tiny_model, rig.db, video, stream)
    col = collector_factory(broker.port)
    rig.start(rig.config(video), "--exit-when-done")
    assert rig.wait() == 0, rig.output()
    messages = col.wait_for(lambda ms: any(m.topic.endswith("/alert") and b'"end"' in m.payload for m in ms))
    new = [a for a in (m.json() for m in messages if m.topic.endswith("/alert")) if a["type"] == "new"]
    assert len(new) == 1 and new[0]["line"] == "fabric" and new[0]["model_id"] == grown_id
    episode = stream.episodes[0]
    assert episode.first <= new[0]["frame_index"] <= episode.last
