"""State and stats builders, and what the publisher retains after a reconnect."""

from __future__ import annotations

import dataclasses
import json
import time

from agent.camera import Camera
from agent.camera_runtime import CameraRuntime
from agent.config import CameraConfig
from agent.health import Latencies
from agent.messages import CameraState
from agent.mqtt import Topics
from agent.status import StatePublisher, StatsSources, camera_state, stats
from calibration.db import open_database
from calibration.store import ProfileStore

from .test_agent_alerts import _agent_cfg
from .test_agent_dispatcher import save_profile


def _runtime(tmp_path):
    profile = save_profile(ProfileStore(open_database(tmp_path / "p.sqlite")), "m", "fabric")
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    cfg = _agent_cfg(tmp_path, video)
    return CameraRuntime.create(Camera(CameraConfig("cam1", str(video), "fabric")), profile, cfg, ("fabric",))


def test_camera_state_has_the_documented_keys_and_values(tmp_path):
    rt = _runtime(tmp_path)
    rt.last_score, rt.frames = 0.5, 7
    state = camera_state(rt, "m", "torch")
    assert set(dataclasses.asdict(state)) == {f.name for f in dataclasses.fields(CameraState)}
    assert (state.camera_name, state.line, state.frames, state.camera, state.backend) == (
        "cam1",
        "fabric",
        7,
        "down",
        "torch",
    )
    assert state.threshold == rt.profile.threshold and not state.alert_open and not state.calibrating


def test_stats_carry_cameras_queues_broker_and_disk(tmp_path):
    rt = _runtime(tmp_path)
    db = tmp_path / "p.sqlite"
    message = stats(
        StatsSources(
            device="d", model_id="m", backend={"name": "torch"}, started_mono=time.monotonic() - 5,
            state_dir=tmp_path, database=db, runtimes=[rt], outbox_depth=lambda: 3,
            queues=lambda: {"writer": 0}, broker=lambda: {"connected": False, "address": "h:1"},
            disk=lambda: {"full": False}, pipeline=lambda: {"batches": 0}, alert_ack_latency=Latencies(),
        )
    )  # fmt: skip
    assert message["uptime_s"] >= 5 and message["outbox_depth"] == 3 == message["queue_depth"]["outbox"]
    assert message["broker"] == {"connected": False, "address": "h:1"} and message["disk"]["db_mb"] > 0
    assert set(message["cameras"]["cam1"]) >= {"fps_in", "fps_processed", "skipped", "latency_ms", "reconnects"}
    # A failing outbox read is reported as -1, not as a crash of the stats.
    broken = StatsSources(**message_sources(tmp_path, rt) | {"outbox_depth": _raise})
    assert stats(broken)["outbox_depth"] == -1


def _raise() -> int:
    raise RuntimeError("database is locked")


def message_sources(tmp_path, rt) -> dict:
    return dict(
        device="d", model_id="m", backend={}, started_mono=0.0, state_dir=tmp_path, database=tmp_path / "p.sqlite",
        runtimes=[rt], outbox_depth=lambda: 0, queues=dict, broker=dict, disk=dict, pipeline=dict,
        alert_ack_latency=Latencies(),
    )  # fmt: skip


def test_what_is_retained_after_a_reconnect(tmp_path):
    rt = _runtime(tmp_path)
    heatmap = tmp_path / "h.jpg"
    heatmap.write_bytes(b"\xff\xd8jpeg")
    sent = []
    pub = StatePublisher(Topics("hgad", "d"), lambda *m: sent.append(m), "m", "torch")
    retained = pub.retained([rt], {"cam1": str(heatmap)})
    topics = [t for t, _, _ in retained]
    assert topics == [
        "hgad/d/cam1/state",
        "hgad/d/cam1/line/state",
        "hgad/d/cam1/calibrate/state",
        "hgad/d/cam1/heatmap",
    ]
    assert json.loads(retained[2][1])["state"] == "idle" and retained[3][1] == b"\xff\xd8jpeg"
    assert [t for t, _, _ in pub.retained([rt], {"cam1": str(tmp_path / "gone.jpg")})][-1].endswith("calibrate/state")
    pub.camera(rt)
    assert sent[-1][0] == "hgad/d/cam1/state" and sent[-1][2:] == (0, True)
