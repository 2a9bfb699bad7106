"""A camera's runtime state: created judging its line's profile, reset whole when the profile changes."""

from __future__ import annotations

from agent.camera import Camera
from agent.camera_runtime import CameraRuntime
from agent.config import CameraConfig
from agent.decision import Observation
from calibration.db import open_database
from calibration.store import ProfileStore

from .test_agent_alerts import _agent_cfg
from .test_agent_dispatcher import save_profile


def test_a_new_profile_resets_the_hysteresis_drift_and_line_state(tmp_path):
    store = ProfileStore(open_database(tmp_path / "p.sqlite"))
    fabric, pcb = save_profile(store, "m", "fabric"), save_profile(store, "m", "pcb")
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    cfg = _agent_cfg(tmp_path, video)
    rt = CameraRuntime.create(Camera(CameraConfig("cam1", str(video), "fabric")), fabric, cfg, ("fabric", "pcb"))
    assert rt.name == "cam1" and rt.line == "fabric" and rt.line_state.calibration_id == fabric.calibration_id
    assert rt.camera_status == "down" and not rt.calibration.busy
    rt.hysteresis.observe(Observation(0, 0.0, 0.0, 9.0, 1.0, 0.01, True))
    rt.drift.update(1.0)
    rt.use(pcb, cfg)
    assert rt.line == "pcb" and rt.line_state.line == "pcb" and rt.line_state.ok
    assert rt.hysteresis._run == [] and len(rt.drift.recent) == 0 and rt.drift.profile is pcb
