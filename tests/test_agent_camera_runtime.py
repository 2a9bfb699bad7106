"""A camera's runtime state: created judging its line's profile, reset whole when the profile changes."""

from __future__ import annotations

import time

import numpy as np

from agent.camera import Camera
from agent.camera_runtime import CameraRuntime
from agent.config import CameraConfig
from agent.decision import Observation
from calibration.db import open_database
from calibration.profile import Profile
from calibration.store import ProfileStore
from hgad import __version__

from .conftest import write_video
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


def as_0_3_kept(profile: Profile) -> Profile:
    """`profile` as hgad-edge 0.3 stored it: without the version that made it."""
    return Profile.from_dict({k: v for k, v in profile.to_dict().items() if k != "made_by"})


def _opened(video) -> Camera:
    """A camera that has opened `video` (and is stopped again)."""
    camera = Camera(CameraConfig("cam1", str(video), "fabric"))
    camera.start()
    deadline = time.monotonic() + 10
    while not camera.stats.up and time.monotonic() < deadline:
        camera.wait_any(0.1)
    camera.stop()
    camera.join()
    assert camera.stats.up
    return camera


def test_a_profile_made_live_from_mjpg_frames_by_an_older_agent_is_flagged(tmp_path):
    """0.3 and earlier decoded MJPG streams with FFmpeg; a profile it made live from one does not fit libjpeg's
    frames. Profiles made since carry the version that made them."""
    store = ProfileStore(open_database(tmp_path / "p.sqlite"))
    made_now = save_profile(store, "m", "fabric", source="live:cam1")
    assert made_now.made_by == __version__
    made_before = as_0_3_kept(made_now)
    assert made_before.made_by == ""
    frames = [np.full((48, 64, 3), 100, np.uint8)] * 3
    mjpg = write_video(tmp_path / "mjpg.avi", frames)
    ffv1 = write_video(tmp_path / "ffv1.avi", frames, fourcc="FFV1")
    cfg = _agent_cfg(tmp_path, mjpg)
    flagged = {}
    for name, video in (("mjpg", mjpg), ("ffv1", ffv1)):
        rt = CameraRuntime.create(_opened(video), made_before, cfg, ("fabric",))
        flagged[name] = rt.profile_predates_libjpeg
        rt.use(made_now, cfg)
        assert not rt.profile_predates_libjpeg  # made by this version
        rt.use(made_before.replace(source="folder:/data/fabric-ok"), cfg)
        assert not rt.profile_predates_libjpeg  # a folder's JPEGs were always read by libjpeg
    assert flagged == {"mjpg": True, "ffv1": False}
