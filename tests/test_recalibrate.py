"""`hgad-edge recalibrate`: after a new model, every line calibrated from a folder is calibrated again from that
folder with its own settings; lines it cannot redo are named, and the exit code says so."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from calibration.db import open_database
from calibration.recalibrate import LEFT, plan
from calibration.store import ProfileStore
from hgad.model_dir import load_model, save_model

from .conftest import hgad_cli
from .test_agent_dispatcher import save_profile


@pytest.fixture(scope="module")
def new_model(tiny_model, tmp_path_factory):
    """Another model of the same lines (a retraining would give one): the tiny model's statistics moved a little,
    so it has its own id and scores the lines a little differently."""
    out = tmp_path_factory.mktemp("new-model")
    model = load_model(tiny_model.path).model
    with torch.no_grad():
        model.pos_mean += 0.05
    save_model(model, out)
    assert load_model(out).model_id != tiny_model.model_id
    return out


def _folder(tiny_data, line, dest):
    shutil.copytree(tiny_data / line / "train" / "good", dest)
    return dest


def _live_profile(db, model_id: str, line: str) -> None:
    save_profile(ProfileStore(open_database(db)), model_id, line, source="live:cam3", mode="class-agnostic")


def _active(db):
    return {line: (p.calibration_id, p.model_id) for line, p in ProfileStore(open_database(db)).active_lines().items()}


def test_lines_calibrated_from_folders_are_redone_with_their_settings(tiny_model, new_model, tiny_data, tmp_path):
    db = tmp_path / "state" / "hgad-edge.sqlite"
    fabric = _folder(tiny_data, "fabric", tmp_path / "fabric-normals")
    pcb = _folder(tiny_data, "pcb", tmp_path / "pcb-normals")
    model = str(tiny_model.path)
    for line, folder, extra in (("fabric", fabric, ["--mode", "class-agnostic"]), ("pcb", pcb, [])):
        r = hgad_cli("calibrate", "--model", model, "--line", line, "--images", str(folder), "--far", "0.05",
                     "--db", str(db), *extra)  # fmt: skip
        assert r.returncode == 0, r.stderr
    _live_profile(db, tiny_model.model_id, "wood")
    shutil.rmtree(pcb)  # pcb's images are gone: it cannot be redone from them
    before = _active(db)

    dry = hgad_cli("recalibrate", "--model", str(new_model), "--db", str(db), "--dry-run")
    assert dry.returncode == 1, dry.stderr
    assert f"line fabric: would recalibrate from {fabric}" in dry.stdout
    assert f"line pcb: {pcb}, the folder it was calibrated from, is gone" in dry.stderr
    assert "line wood: calibrated live on cam3: recalibrate it there" in dry.stderr
    assert _active(db) == before  # a dry run changes nothing

    r = hgad_cli("recalibrate", "--model", str(new_model), "--db", str(db), "--json", str(tmp_path / "r.json"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "recalibrated 1 line(s) (fabric); left for you: pcb, wood" in r.stdout
    store = ProfileStore(open_database(db))
    old, new = store.history("fabric")[0], store.active("fabric")
    new_id = load_model(new_model).model_id
    assert (new.model_id, new.version, old.active) == (new_id, 2, False)
    # The same settings and the same images: only the model differs, and with it the scores.
    assert (new.far, new.mode, new.source, new.images_hash, new.n) == (
        old.far, old.mode, old.source, old.images_hash, old.n,
    )  # fmt: skip
    assert new.mode == "class-agnostic" and new.threshold != old.threshold
    assert _active(db)["pcb"] == before["pcb"] and _active(db)["wood"] == before["wood"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["lines"]["fabric"]["now"]["calibration_id"] == new.calibration_id
    assert data["lines"]["fabric"]["was"]["model_id"] == tiny_model.model_id
    assert [data["lines"][x]["action"] for x in ("pcb", "wood")] == ["left", "left"]
    assert (db.parent / "reports" / "fabric" / "v2" / "summary.json").is_file()

    again = hgad_cli("recalibrate", "--model", str(new_model), "--db", str(db), "--lines", "fabric")
    assert again.returncode == 0, again.stderr
    assert "line fabric: its calibration" in again.stdout and "holds for this model" in again.stdout
    assert store.active("fabric").version == 2  # nothing redone


def test_a_line_of_the_model_without_a_profile_is_named_not_failed(tiny_model, tiny_data, tmp_path):
    db = tmp_path / "hgad-edge.sqlite"
    r = hgad_cli("calibrate", "--model", str(tiny_model.path), "--line", "fabric", "--images",
                 str(tiny_data / "fabric" / "train" / "good"), "--far", "0.05", "--db", str(db))  # fmt: skip
    assert r.returncode == 0, r.stderr
    same = hgad_cli("recalibrate", "--model", str(tiny_model.path), "--db", str(db))
    assert same.returncode == 0, same.stderr
    assert "line fabric: its calibration" in same.stdout
    assert "line pcb: no profile yet; run: hgad-edge calibrate" in same.stdout
    assert "recalibrated 0 line(s)" in same.stdout


def test_bad_input_is_one_line(tiny_model, tmp_path):
    missing = hgad_cli("recalibrate", "--model", str(tiny_model.path), "--db", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 2 and "does not exist; no line has been calibrated there" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    db = tmp_path / "db.sqlite"
    _live_profile(db, tiny_model.model_id, "wood")
    typo = hgad_cli("recalibrate", "--model", str(tiny_model.path), "--db", str(db), "--lines", "fabrc")
    assert typo.returncode == 2
    assert "--lines: fabrc neither a line of the model (fabric, pcb) nor calibrated in this database (wood)" in (
        typo.stderr
    )


def test_a_class_aware_profile_of_a_line_the_model_lacks_is_left(tiny_model, tmp_path):
    store = ProfileStore(open_database(tmp_path / "db.sqlite"))
    save_profile(store, "an-older-model", "wood", source=f"folder:{tmp_path}", mode="class-aware")
    (step,) = plan(tiny_model, store, ["wood"])
    assert step.action == LEFT and "calibrated class-aware, and the model has no line wood" in step.why
