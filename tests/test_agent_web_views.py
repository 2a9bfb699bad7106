"""What the console reads: the latest frame encoded once per judged frame, alerts filtered newest first (also
events stored before payloads were kept), profiles per line."""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from agent.camera import Camera
from agent.camera_runtime import CameraRuntime
from agent.config import CameraConfig, FeedbackConfig, StorageConfig
from agent.feedback import FeedbackStore
from agent.store import AgentStore
from agent.web.views import ConsoleData
from calibration.db import open_database
from calibration.store import ProfileStore

from .test_agent_alerts import _agent_cfg
from .test_agent_dispatcher import save_profile
from .test_agent_store import _record


def _data(tmp_path):
    engine = open_database(tmp_path / "a.sqlite")
    profiles = ProfileStore(engine)
    fabric = save_profile(profiles, "m", "fabric")
    save_profile(profiles, "m", "fabric", seed=1)
    save_profile(profiles, "m", "pcb")
    store = AgentStore(engine, tmp_path / "hm", StorageConfig())
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    rt = CameraRuntime.create(
        Camera(CameraConfig("cam1", str(video), "fabric")), fabric, _agent_cfg(tmp_path, video), ("fabric",)
    )
    feedback = FeedbackStore(engine, tmp_path / "normals", FeedbackConfig())
    return ConsoleData({"cam1": rt}, "m", "torch", profiles, engine, feedback, lambda: {"uptime_s": 1}), rt, store


def test_the_live_frame_is_encoded_once_per_judged_frame(tmp_path):
    data, rt, _ = _data(tmp_path)
    assert data.frame_jpeg("cam1", True) is None and data.frame_jpeg("cam9", False) is None
    rt.latest = (np.full((60, 80, 3), 100, np.uint8), np.zeros((16, 16), np.float32), 7)
    first = data.frame_jpeg("cam1", True)
    assert first[:2] == b"\xff\xd8" and data.frame_jpeg("cam1", True) is first  # cached, not encoded again
    rt.latest = (np.full((60, 80, 3), 50, np.uint8), np.zeros((16, 16), np.float32), 8)
    assert data.frame_jpeg("cam1", True) is not first
    rt.recent_scores.extend([(1.0, 0.5), (2e9, 0.7)])
    assert data.scores("cam1", 60)["points"] == [[2e9, 0.7]]


def test_alerts_newest_first_filtered_with_their_verdict(tmp_path):
    data, _, store = _data(tmp_path)
    for i in range(4):
        rec = _record(i)
        rec.event["payload"] = json.dumps({"event_id": rec.event["event_id"], "type": "end" if i % 2 else "new"})
        store.record_alert(rec)
    con = sqlite3.connect(tmp_path / "a.sqlite")
    con.execute("UPDATE events SET payload = NULL WHERE event_id = 'e0000'")  # stored by an older agent
    con.commit()
    data.feedback.mark("e0003", "defect", "operator")
    found = data.alerts(10)
    assert [a["event_id"] for a in found] == ["e0003", "e0002", "e0001", "e0000"]
    assert found[0]["feedback"] == "defect" and found[-1]["camera"] == "cam1"  # the old row's own columns
    assert [a["event_id"] for a in data.alerts(10, type="end")] == ["e0003", "e0001"]
    assert [a["event_id"] for a in data.alerts(10, since=1002.0)] == ["e0003", "e0002"]
    assert data.alerts(10, camera="cam9") == [] and data.alert("nope") is None


def test_profiles_by_line_with_history_newest_first(tmp_path):
    data, _, _ = _data(tmp_path)
    lines = {entry["line"]: entry for entry in data.profiles_by_line()}
    assert list(lines) == ["fabric", "pcb"]
    assert [p["version"] for p in lines["fabric"]["history"]] == [2, 1] and lines["fabric"]["active"]["version"] == 2
    assert lines["fabric"]["cameras"] == ["cam1"] and lines["pcb"]["cameras"] == []
    assert data.health() == {"uptime_s": 1, "drift": {"cam1": None}}
