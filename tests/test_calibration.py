"""Calibration: conformal thresholds and p-values, tail model, profiles in a real SQLite file, the CLI."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3

import cv2
import numpy as np
import pytest
from scipy import stats

from calibration.db import open_database
from calibration.drift import DriftMonitor
from calibration.profile import build_profile
from calibration.store import ProfileMismatchError, ProfileStore
from calibration.threshold import (
    choose_threshold,
    conformal_index,
    far_upper_bound,
    gpd_threshold,
    p_value,
    pac_index,
)
from hgad.errors import BadInputError

from .conftest import SIZE, hgad_cli

# ------------------------------------------------------------------------------------------ statistics


def test_conformal_index_is_the_documented_order_statistic():
    assert conformal_index(200, 0.01) == 199
    assert conformal_index(200, 0.05) == 191
    assert conformal_index(99, 0.01) == 99
    assert conformal_index(98, 0.01) == 99  # > n: no order statistic exists


def test_marginal_false_alarm_rate_is_at_most_the_target():
    """Over many calibration sets, a new normal score exceeds the threshold with probability <= far."""
    rng = np.random.default_rng(0)
    for far in (0.01, 0.05):
        exceed = []
        for _ in range(4000):
            cal = rng.gamma(2.0, 1.0, 200)
            t = choose_threshold(cal, far).value
            exceed.append(stats.gamma.sf(t, 2.0))  # exact false-alarm rate of this threshold
        mean = float(np.mean(exceed))
        assert mean <= far * 1.03, (far, mean)  # E[rate] = (n + 1 - k) / (n + 1) <= far
        assert mean >= far * 0.8  # and not needlessly conservative


def test_p_values_are_uniform_over_calibration_draws():
    """Held-out normal p-values are uniform (super-uniform, discrete) when the calibration set varies."""
    rng = np.random.default_rng(1)
    p = []
    for _ in range(2000):
        cal = np.sort(rng.normal(size=200))
        p.append(p_value(cal, rng.normal()))
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert p_value(np.array([1.0, 2.0, 3.0]), 10.0) == pytest.approx(0.25)
    assert p_value(np.array([1.0, 2.0, 3.0]), 0.0) == pytest.approx(1.0)


def test_pac_threshold_holds_with_the_stated_confidence():
    rng = np.random.default_rng(2)
    k = pac_index(500, 0.01, 0.9)
    assert k is not None and k > conformal_index(500, 0.01)
    bad = 0
    for _ in range(2000):
        cal = np.sort(rng.uniform(size=500))
        bad += (1.0 - cal[k - 1]) > 0.01
    assert bad / 2000 <= 0.1 + 0.02
    assert pac_index(200, 0.01, 0.9) is None  # 200 images cannot promise 1 % with 90 % confidence


def test_far_bound_is_the_beta_quantile():
    rng = np.random.default_rng(3)
    k = conformal_index(200, 0.01)
    rates = [1.0 - np.sort(rng.uniform(size=200))[k - 1] for _ in range(4000)]
    assert np.mean(np.asarray(rates) <= far_upper_bound(200, k)) == pytest.approx(0.9, abs=0.02)


def test_target_below_one_over_n_uses_the_tail_model():
    rng = np.random.default_rng(4)
    scores = rng.exponential(1.0, 400)
    th = choose_threshold(scores, 0.0005)
    assert th.method == "gpd-tail"
    assert th.value >= scores.max()
    # For an exponential tail the true 1 - 0.0005 quantile is log(2000) = 7.6.
    assert th.value == pytest.approx(math.log(2000), rel=0.35)
    _t, tail = gpd_threshold(scores, 0.0005)
    assert tail["exceedances"] == 40


def test_too_few_images_for_the_target_is_a_clear_error():
    with pytest.raises(BadInputError, match="at least 99 normal images"):
        choose_threshold(np.arange(50.0), 0.01)
    with pytest.raises(BadInputError, match="too few"):
        choose_threshold(np.arange(10.0), 0.2)


def test_drift_monitor_warns_on_shifted_scores_only():
    rng = np.random.default_rng(5)
    cal = rng.normal(size=300)
    from calibration.threshold import Threshold

    th = Threshold(float(np.sort(cal)[297]), "conformal", 0.01, 300, 298)
    prof = build_profile(
        model_id="m",
        line="l",
        mode="class-agnostic",
        source="test",
        threshold=th,
        scores=cal,
        normal_maps=np.zeros((2, 4, 4)),
        pixel_far=0.001,
        images_hash="h",
        image_shape=(4, 4, 3),
        model_normalisation={},
    )
    same = DriftMonitor(prof, window=200)
    shifted = DriftMonitor(prof, window=200)
    out_same = [same.update(v) for v in rng.normal(size=200)][-1]
    out_shift = [shifted.update(v) for v in rng.normal(2.0, 1.0, 200)][-1]
    assert out_same is not None and not out_same.drifting
    assert out_shift is not None and out_shift.drifting


# ------------------------------------------------------------------------------------------ store


def _profile(line="fabric", model_id="m1", threshold=1.0):
    from calibration.threshold import Threshold

    scores = np.linspace(0, 1, 50)
    return build_profile(
        model_id=model_id,
        line=line,
        mode="class-agnostic",
        source="test",
        threshold=Threshold(threshold, "conformal", 0.05, 50, 49),
        scores=scores,
        normal_maps=np.zeros((2, 4, 4)),
        pixel_far=0.001,
        images_hash="h",
        image_shape=(4, 4, 3),
        model_normalisation={},
    )


def test_second_calibration_supersedes_without_losing_the_first(tmp_path):
    db = tmp_path / "agent.sqlite"
    store = ProfileStore(open_database(db))
    first = store.save(_profile(threshold=1.0))
    second = store.save(_profile(threshold=2.0))
    assert (first.version, second.version) == (1, 2)
    assert store.active("fabric").calibration_id == second.calibration_id
    history = store.history("fabric")
    assert [p.version for p in history] == [1, 2]
    assert [p.active for p in history] == [False, True]
    # A real file, readable by other tools, in WAL mode.
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM calibrations WHERE line='fabric' AND active=1").fetchone()[0] == 1
    # Rollback to the first version.
    store.activate(first.calibration_id)
    assert store.active("fabric").version == 1


def test_the_database_refuses_two_active_profiles_for_a_line(tmp_path):
    db = tmp_path / "a.sqlite"
    ProfileStore(open_database(db)).save(_profile())
    con = sqlite3.connect(db)
    row = con.execute("SELECT * FROM calibrations").fetchone()
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(
            "INSERT INTO calibrations (calibration_id, model_id, line, version, active, created, mode, far, "
            "threshold, n, method, payload) VALUES ('x', 'm1', 'fabric', 9, 1, 'now', 'a', 0.1, 1, 5, 'c', '{}')"
        )
    assert row is not None


def test_profile_of_another_model_is_refused(tmp_path):
    store = ProfileStore(open_database(tmp_path / "a.sqlite"))
    store.save(_profile(model_id="m1"))
    with pytest.raises(ProfileMismatchError, match="belongs to model m1, not to the loaded model m2"):
        store.active_for("fabric", "m2")
    with pytest.raises(BadInputError, match="no calibration profile"):
        store.active_for("pcb", "m1")


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BadInputError, match="not an SQLite database"):
        ProfileStore(open_database(bad))


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def normals(tiny_data, tmp_path_factory):
    """40 normal images of the fabric line the model has not trained on (rendered with new seeds)."""
    from hgad.data import synth

    folder = tmp_path_factory.mktemp("normals")
    spec = synth.SynthSpec(classes=2, size=SIZE, seed=3)
    style = synth.line_style(spec, 0)
    for i in range(40):
        cv2.imwrite(str(folder / f"{i:03d}.png"), synth.render_normal("fabric", style, 10_000 + i, SIZE))
    return folder


def _active(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT calibration_id, version FROM calibrations WHERE active=1").fetchall()
    finally:
        con.close()


def _calibrate(model_dir, images, db, line: str = "fabric", *extra: str):
    """`hgad-edge calibrate` as a user runs it, at far 0.05 (what 40 normal images allow)."""
    return hgad_cli(
        "calibrate",
        "--model",
        str(model_dir),
        "--line",
        line,
        "--images",
        str(images),
        "--far",
        "0.05",
        "--db",
        str(db),
        *extra,
    )


def test_calibrate_cli_writes_profile_report_and_json(tiny_model_dir, normals, tiny_data, tmp_path):
    db = tmp_path / "agent.sqlite"
    out = tmp_path / "cal.json"
    r = _calibrate(
        tiny_model_dir, normals, db, "fabric", "--json", str(out), "--anomalies", str(tiny_data / "fabric/test/hole")
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["n"] == 40 and data["method"] == "conformal" and data["version"] == 1
    assert data["threshold"] == pytest.approx(
        sorted(json.loads(sqlite3.connect(db).execute("SELECT payload FROM calibrations").fetchone()[0])["scores"])[38]
    )
    assert 0.0 <= data["anomalies"]["recall"] <= 1.0
    report = tmp_path / "reports" / "fabric" / "v1"
    assert (report / "histogram.png").stat().st_size > 5000
    assert len(list(report.glob("example_*.jpg"))) == 4
    # A second calibration supersedes the first; the first stays in the database.
    r2 = hgad_cli(
        "calibrate",
        "--model",
        str(tiny_model_dir),
        "--line",
        "fabric",
        "--images",
        str(normals),
        "--far",
        "0.1",
        "--db",
        str(db),
    )
    assert r2.returncode == 0, r2.stderr
    assert [v for _, v in _active(db)] == [2]
    assert sqlite3.connect(db).execute("SELECT count(*) FROM calibrations").fetchone()[0] == 2


def test_calibrating_a_line_the_model_does_not_know_warns_and_still_calibrates(tiny_model_dir, normals, tmp_path):
    db = tmp_path / "agent.sqlite"
    r = _calibrate(tiny_model_dir, normals, db, "bottle")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "line bottle is not one of the model's lines (fabric, pcb)" in warnings[0]
    assert "train a model that includes this line" in warnings[0]
    mode = json.loads(sqlite3.connect(db).execute("SELECT payload FROM calibrations").fetchone()[0])["mode"]
    assert mode == "class-agnostic"
    known = _calibrate(tiny_model_dir, normals, tmp_path / "other.sqlite")
    assert known.returncode == 0 and "warning:" not in known.stderr


@pytest.fixture(scope="module")
def calibrated_db(tiny_model_dir, normals, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "agent.sqlite"
    ok = _calibrate(tiny_model_dir, normals, db)
    assert ok.returncode == 0, ok.stderr
    # One file, no WAL side files, so that a plain copy is the whole database.
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("too_few", "too few"),
        ("unreadable", "not a readable image"),
        ("other_size", "all calibration images must come from the same camera setup"),
        ("grey", "channel"),
        ("far_too_low", "at least 99 normal images"),
        ("unknown_line_aware", "class-aware scoring needs one of the model's classes"),
        ("report_is_a_file", "--report: "),
        ("json_is_a_folder", "--json: "),
        ("db_not_a_database", "is not an SQLite database"),
    ],
)
def test_calibrate_bad_input_changes_nothing(case, expect, tiny_model_dir, normals, calibrated_db, tmp_path):
    db = tmp_path / "agent.sqlite"
    shutil.copyfile(calibrated_db, db)
    before = _active(db)
    assert len(before) == 1
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = sorted(normals.iterdir())
    args = ["--line", "fabric", "--far", "0.05"]
    n = 10 if case == "too_few" else 40
    for f in files[:n]:
        (folder / f.name).write_bytes(f.read_bytes())
    if case == "unreadable":
        (folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
    elif case == "other_size":
        cv2.imwrite(str(folder / "zz_big.png"), np.zeros((SIZE * 2, SIZE * 2, 3), np.uint8))
    elif case == "grey":
        cv2.imwrite(str(folder / "zz_grey.png"), np.zeros((SIZE, SIZE), np.uint8))
    elif case == "far_too_low":
        args = ["--line", "fabric", "--far", "0.01"]
    elif case == "unknown_line_aware":
        args = ["--line", "bottle", "--mode", "class-aware"]
    elif case == "report_is_a_file":
        (tmp_path / "report").write_text("not a folder")
        args += ["--report", str(tmp_path / "report")]
    elif case == "json_is_a_folder":
        args += ["--json", str(folder)]
    elif case == "db_not_a_database":
        db = tmp_path / "notes.txt"
        db.write_text("a line engineer's notes, not a database\n" * 200)
    r = hgad_cli("calibrate", "--model", str(tiny_model_dir), "--images", str(folder), "--db", str(db), *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    if case == "db_not_a_database":
        assert db.read_text().startswith("a line engineer's notes")
        return
    assert _active(db) == before


def test_maps_kept_in_half_precision_are_capped_not_infinite():
    from calibration.calibrate import half

    maps = np.array([[0.0, 1.5, 7e4, 1e9]], dtype=np.float32)
    out = half(maps)
    assert out.dtype == np.float16 and np.isfinite(out).all() and out[0, 1] == 1.5 and out[0, 3] == 65504
