"""Alert rendering: the MQTT payload's keys, regions in pixels of the frame, a bounded heatmap JPEG, the event
row and the outbox messages; the emitter hands it all to the writer and the events table."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from agent.alerts import AlertContext, AlertEmitter, render
from agent.camera import Camera
from agent.camera_runtime import CameraRuntime
from agent.config import CameraConfig, DecisionConfig, StorageConfig, parse_config
from agent.decision import AlertEvent, Observation
from agent.mqtt import Topics
from agent.store import AgentStore, Writer
from calibration.db import open_database

from .test_agent_dispatcher import save_profile

REQUIRED = {"event_id", "type", "device", "camera", "line", "ts", "score", "threshold", "p_value", "model_id"}
REQUIRED |= {"calibration_id", "frame_index", "regions", "heatmap_topic", "latency_ms"}


@pytest.fixture
def profile(tmp_path):
    from calibration.store import ProfileStore

    return save_profile(ProfileStore(open_database(tmp_path / "p.sqlite")), "m1", "fabric")


def _event(kind: str, profile, frame_shape=(360, 640)) -> AlertEvent:
    image = np.full((*frame_shape, 3), 120, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[10:20, 40:50] = profile.threshold * 3  # one blob, top right of the frame
    obs = Observation(42, 1_700_000_000.0, 100.0, profile.threshold * 3, profile.threshold, 0.01, True, (image, amap))
    return AlertEvent(
        kind,
        "e" * 32,
        0 if kind == "new" else 2,
        obs,
        obs.score,
        40,
        42,
        3,
        1_699_999_999.5,
        "normal" if kind == "end" else "",
    )


def test_a_new_alert_has_every_key_regions_in_frame_pixels_and_a_bounded_heatmap(profile):
    ctx = AlertContext("dev", "cam1", "m1", profile, Topics("hgad", "dev"), 5, 64 * 1024)
    rec = render(ctx, _event("new", profile), created_mono=100.25)
    (alert_topic, payload, qos, retain, kind), (heat_topic, jpeg, hqos, hretain, hkind) = rec.messages
    alert = json.loads(payload)
    assert set(alert) >= REQUIRED and alert["type"] == "new" and alert["latency_ms"] == 250.0
    assert (alert_topic, qos, retain, kind) == ("hgad/dev/cam1/alert", 1, False, "alert")
    assert (heat_topic, hqos, hretain, hkind) == ("hgad/dev/cam1/heatmap", 1, True, "heatmap")
    (region,) = alert["regions"]
    # Map cells 40-50 of 64 across a 640 px frame, 10-20 of 64 down a 360 px one.
    assert 380 <= region["x"] <= 410 and 50 <= region["y"] <= 60 and region["w"] >= 90
    assert len(jpeg) <= 64 * 1024 and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (
        360,
        640,
    )
    assert rec.event["status"] == "open" and json.loads(rec.event["regions"]) == alert["regions"]


def test_an_end_alert_says_why_and_how_long_and_sends_no_heatmap(profile):
    ctx = AlertContext("dev", "cam1", "m1", profile, Topics("hgad", "dev"), 5, 64 * 1024)
    rec = render(ctx, _event("end", profile), created_mono=100.0)
    ((_, payload, *_),) = rec.messages
    alert = json.loads(payload)
    assert alert["type"] == "end" and alert["reason"] == "normal" and alert["duration_s"] > 0
    assert rec.heatmap_jpeg is None and rec.event["status"] == "closed" and rec.event["end_reason"] == "normal"


def test_the_emitter_stores_every_event_through_the_writer(profile, tmp_path):
    store = AgentStore(open_database(tmp_path / "a.sqlite"), tmp_path / "hm", StorageConfig())
    writer = Writer(store)
    writer.start()
    counted, stored = [], []
    emitter = AlertEmitter(
        "dev",
        "m1",
        Topics("hgad", "dev"),
        5,
        256,
        writer,
        store.record_alert,
        stored.append,
        lambda c, k: counted.append((c, k)),
    )
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    rt = CameraRuntime.create(
        Camera(CameraConfig("cam1", str(video), "fabric")), profile, _agent_cfg(tmp_path, video), ("fabric",)
    )
    for obs in [_event("new", profile).observation] * DecisionConfig().open_after:
        ev = rt.hysteresis.observe(obs)
    emitter.emit(rt, ev, 100.0)
    emitter.close(rt, "stopped")
    emitter.close(rt, "stopped")  # nothing open any more: nothing sent
    assert writer.flush(10)
    writer.stop()
    assert counted == [("cam1", "new"), ("cam1", "end")] and len(stored) == 2
    (event,) = store.events("cam1")
    assert event.status == "closed" and event.end_reason == "stopped" and event.heatmap_path
    assert [json.loads(m.payload)["type"] for m in store.pending(0, 10) if m.kind == "alert"] == ["new", "end"]


def _agent_cfg(tmp_path, video):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "model.json").write_text("{}")
    data = {"model": str(tmp_path / "model"), "cameras": [{"name": "cam1", "source": str(video), "line": "fabric"}]}
    return parse_config(data)
