"""The agent's wiring: which line each camera judges at start (and why, in the log), and what `open()`
refuses before any thread starts. Running it end to end is in test_agent_e2e.py and test_faults.py."""

from __future__ import annotations

import logging
import shutil
import sqlite3

import numpy as np
import pytest

from agent.config import parse_config
from agent.daemon import Agent
from calibration.db import open_database
from calibration.store import ProfileStore
from hgad.errors import BadInputError

from .conftest import write_video
from .test_agent_dispatcher import save_profile


def config_data(tmp_path, tiny_model, calibrated_db, cameras) -> dict:
    """An agent configuration on the tiny model (torch, no console) with calibrated lines, as a dict."""
    shutil.copyfile(calibrated_db, tmp_path / "db.sqlite")
    save_profile(ProfileStore(open_database(tmp_path / "db.sqlite")), tiny_model.model_id, "pcb")
    video = write_video(tmp_path / "v.avi", [np.zeros((64, 64, 3), np.uint8)] * 2)
    return {
        "model": str(tiny_model.path),
        "backend": "torch",
        "storage": {"database": str(tmp_path / "db.sqlite"), "state_dir": str(tmp_path / "state")},
        "cameras": [{"name": n, "source": str(video), "line": line} for n, line in cameras],
        "web": {"enabled": False},
    }


def _config(tmp_path, tiny_model, calibrated_db, cameras):
    return parse_config(config_data(tmp_path, tiny_model, calibrated_db, cameras))


def test_a_line_switched_at_run_time_stands_until_the_configuration_is_edited(
    tmp_path, tiny_model, calibrated_db, caplog
):
    cfg = _config(
        tmp_path,
        tiny_model,
        calibrated_db,
        [("cam1", "fabric"), ("cam2", "pcb"), ("cam3", "fabric"), ("old", "fabric")],
    )
    agent = Agent(cfg)
    agent.engine = open_database(cfg.database_path)
    from agent.store import AgentStore

    store = AgentStore(agent.engine, tmp_path / "hm", cfg.storage)
    store.set_line("cam1", "pcb", "fabric")  # switched by an operator; the file still says fabric
    store.set_line("cam2", "fabric", "fabric")  # switched back to fabric, and the file was then edited to pcb
    store.set_line("old", "pcb", "fabric")
    con = sqlite3.connect(cfg.database_path)
    con.execute("UPDATE camera_state SET config_line = NULL WHERE camera = 'old'")  # a row of an older agent
    con.commit()
    con.close()
    agent.engine.dispose()
    with caplog.at_level(logging.INFO, logger="agent.daemon"):
        agent.open()
    try:
        assert {n: rt.line for n, rt in agent.runtimes.items()} == {
            "cam1": "pcb",
            "cam2": "pcb",
            "cam3": "fabric",
            "old": "pcb",
        }
        why = {r.fields["camera"]: r.fields["why"] for r in caplog.records if r.msg == "camera line"}
        assert why["cam1"].startswith("switched at run time") and "configuration says fabric" in why["cam1"]
        assert why["cam2"].startswith("the configuration, edited since the switch to fabric")
        assert why["cam3"] == "the configuration" and why["old"].startswith("switched at run time")
    finally:
        agent.engine.dispose()


def test_open_refuses_a_camera_whose_line_has_no_profile(tmp_path, tiny_model, calibrated_db):
    cfg = _config(tmp_path, tiny_model, calibrated_db, [("cam1", "fabric"), ("cam2", "bottle")])
    agent = Agent(cfg)
    with pytest.raises(
        BadInputError, match=r"camera cam2: line 'bottle' has no calibration profile; run: hgad-edge calibrate"
    ):
        agent.open()
    agent.engine.dispose()


def test_a_run_over_recordings_that_a_fault_cut_short_exits_1_naming_the_camera(
    tmp_path, tiny_model_dir, calibrated_db, broker, monkeypatch, caplog
):
    import yaml

    from agent import camera

    from .rig import make_rig
    from .test_agent_camera import _Breaks

    video = write_video(tmp_path / "v.avi", [np.zeros((64, 64, 3), np.uint8)] * 4)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    data = yaml.safe_load(rig.config(video).read_text())
    monkeypatch.setattr(camera, "open_capture", lambda *a: _Breaks(2))  # a fault after two frames
    agent = Agent(parse_config(data), exit_when_done=True)
    with caplog.at_level(logging.ERROR, logger="agent.daemon"):
        assert agent.run() == 1
    (cut,) = [r for r in caplog.records if r.msg == "recordings ended by a fault, not judged to their end"]
    ((name, why),) = cut.fields.items()
    assert name in agent.runtimes and why == "internal error: ValueError: unexpected"
    assert agent.runtimes[name].frames == 2


def test_a_profile_made_live_from_mjpg_frames_by_an_older_agent_is_warned_about_once(tmp_path, caplog):
    from agent.camera_runtime import CameraRuntime
    from agent.daemon import Supervisor

    from .test_agent_alerts import _agent_cfg
    from .test_agent_camera_runtime import _opened, as_0_3_kept

    video = write_video(tmp_path / "v.avi", [np.full((48, 64, 3), 100, np.uint8)] * 3)
    made_now = save_profile(ProfileStore(open_database(tmp_path / "p.sqlite")), "m", "fabric", source="live:cam1")
    made_before = as_0_3_kept(made_now)
    cfg = _agent_cfg(tmp_path, video)
    rt = CameraRuntime.create(_opened(video), made_before, cfg, ("fabric",))
    supervisor = Supervisor(agent=None)  # the check needs only the camera's runtime
    with caplog.at_level(logging.WARNING, logger="agent.daemon"):
        for _ in range(3):
            supervisor._check_profile(rt)
        rt.use(made_now, cfg)  # calibrated again
        supervisor._check_profile(rt)
    (warned,) = [r for r in caplog.records if "calibrate the line again" in r.msg]
    assert warned.levelname == "WARNING" and "hgad-edge 0.3 or earlier" in warned.msg
    assert warned.fields == {"camera": "cam1", "line": "fabric", "profile": f"v{made_before.version}"}
