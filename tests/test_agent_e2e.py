"""The agent end to end: a real broker (Mosquitto on a free port), a real video written with OpenCV,
the real model, `hgad-edge run` as its own process; MQTT observed as an operator would subscribe."""

from __future__ import annotations

import json
import re
import sqlite3

from .rig import build_stream, check_stream, make_rig, wait_until, write_stream

REQUIRED = {
    "event_id",
    "type",
    "device",
    "camera",
    "line",
    "ts",
    "score",
    "threshold",
    "p_value",
    "model_id",
    "calibration_id",
    "frame_index",
    "regions",
    "heatmap_topic",
    "latency_ms",
}


def test_one_alert_per_defect_episode(broker, collector_factory, tiny_model, tiny_model_dir, calibrated_db, tmp_path):
    stream = build_stream([("normal", 12), ("defect", 6), ("normal", 15), ("defect", 5), ("normal", 12)])
    video = write_stream(tmp_path / "line.avi", stream)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    check_stream(tiny_model, rig.db, video, stream)
    col = collector_factory(broker.port)
    rig.start(rig.config(video, backend="auto"), "--exit-when-done")
    assert rig.wait() == 0, rig.output()
    # A clean run of a recording to its end: nothing an operator must act on, so no warning (the backend `auto`
    # chose on a machine without TensorRT, the end of the recording and the final disconnect are information).
    out = rig.output()
    assert "level=warning" not in out and re.search(r"level=info logger=agent.daemon msg=backend backend=", out), out

    alerts = col.wait_for(lambda ms: sum(m.topic.endswith("/alert") and b'"end"' in m.payload for m in ms) >= 2)
    alerts = [m.json() for m in alerts if m.topic.endswith("/alert")]
    new = [a for a in alerts if a["type"] == "new"]
    end = [a for a in alerts if a["type"] == "end"]
    assert len(new) == 2 and len(end) == 2, alerts
    for a, ep in zip(new, stream.episodes, strict=True):
        assert set(a) >= REQUIRED, REQUIRED - set(a)
        assert ep.first <= a["frame_index"] <= ep.last
        assert a["score"] > a["threshold"] and 0 < a["p_value"] <= 1
        assert a["camera"] == "cam1" and a["device"] == "rig" and a["line"] == "fabric"
        assert a["regions"] and all(set(r) >= {"x", "y", "w", "h", "peak"} for r in a["regions"])
        assert all(0 <= r["x"] < 192 and 0 <= r["y"] < 192 for r in a["regions"])  # pixels of the frame
        assert a["latency_ms"] >= 0
    assert {a["event_id"] for a in new} == {a["event_id"] for a in end}
    assert len({a["event_id"] for a in new}) == 2
    # No alert during the normal stretches.
    for a in alerts:
        assert any(ep.first <= a["frame_index"] <= ep.last for ep in stream.episodes), a

    heatmaps = col.on("/cam1/heatmap")
    assert heatmaps and all(m.payload[:2] == b"\xff\xd8" and len(m.payload) <= 256 * 1024 for m in heatmaps)
    assert {a["heatmap_topic"] for a in new} == {"hgad/rig/cam1/heatmap"}

    con = sqlite3.connect(rig.db)
    rows = con.execute("SELECT event_id, status, heatmap_path FROM events ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [a["event_id"] for a in new]
    assert all(r[1] == "closed" and r[2] for r in rows)
    assert con.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    col.wait_stopped()
    status = [m.payload for m in col.on("/status")]
    assert status[0] == b"online" and status[-1] == b"stopped"
    stats = [m.json() for m in col.on("/stats")]
    assert stats and {"uptime_s", "cameras", "queue_depth", "broker", "disk"} <= set(stats[-1])
    cam = stats[-1]["cameras"]["cam1"]
    assert {"fps_in", "fps_processed", "skipped", "latency_ms", "reconnects"} <= set(cam)
    h, w = stream.frames[0].shape[:2]
    assert cam["frame"] == f"{w}x{h}"  # the size the camera delivers, as read from the recording


def test_commands_switch_line_and_recalibrate_live(
    broker, collector_factory, tiny_model, tiny_model_dir, calibrated_db, tmp_path
):
    stream = build_stream([("normal", 30)])
    video = write_stream(tmp_path / "loop.avi", stream)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    col = collector_factory(broker.port)
    rig.start(rig.config(video, camera={"loop": True}, calibration={"live_frames": 25}))
    base = "hgad/rig/cam1"
    try:
        col.wait_for(lambda ms: any(m.topic == "hgad/rig/status" and m.payload == b"online" for m in ms), 60)
        before = json.loads(col.on("/line/state")[-1].payload)
        assert before["ok"] and before["line"] == "fabric"

        # Bad commands: one error each on the state topic, nothing changes.
        for payload, expect in [
            (b"{oops", "not valid JSON"),
            (b'{"line": "bottle"}', "no active calibration"),
            (b'{"line": 7}', "not a line name"),
            (b"x" * 10000, "too large"),
        ]:
            n = len(col.on("/line/state"))
            col.publish(f"{base}/line/set", payload)
            msgs = col.wait_for(lambda ms, n=n: sum(m.topic.endswith("/cam1/line/state") for m in ms) > n)
            reply = json.loads([m for m in msgs if m.topic.endswith("/cam1/line/state")][-1].payload)
            assert reply["ok"] is False and expect in reply["error"], reply
            assert reply["line"] == "fabric" and reply["calibration_id"] == before["calibration_id"]

        n = len(col.on("/calibrate/state"))
        col.publish(f"{base}/calibrate/set", b'{"frames": 3}')
        msgs = col.wait_for(lambda ms: sum(m.topic.endswith("/calibrate/state") for m in ms) > n)
        assert (
            "between 20" in json.loads([m for m in msgs if m.topic.endswith("/calibrate/state")][-1].payload)["error"]
        )

        # A live recalibration from the next 25 frames: a new profile, active, announced.
        col.publish(f"{base}/calibrate/set", b'{"frames": 25, "far": 0.05}')
        done = col.wait_for(
            lambda ms: any(m.topic.endswith("/calibrate/state") and b'"done"' in m.payload for m in ms), 120
        )
        state = json.loads([m for m in done if m.topic.endswith("/calibrate/state")][-1].payload)
        assert state["n"] == 25 and state["far"] == 0.05 and state["version"] == 2
        line_state = col.wait_for(
            lambda ms: any(
                m.topic.endswith("/line/state") and state["calibration_id"].encode() in m.payload for m in ms
            )
        )
        assert line_state
        con = sqlite3.connect(rig.db)
        assert con.execute("SELECT version FROM calibrations WHERE active=1").fetchall() == [(2,)]
        assert con.execute("SELECT count(*) FROM calibrations").fetchone()[0] == 2
        wait_until(
            lambda: any(
                json.loads(m.payload).get("calibration_id") == state["calibration_id"] for m in col.on("/cam1/state")
            ),
            30,
            "state with the new calibration",
        )
        assert state["warning"] is None and state["error"] is None

        # A changeover to a product the model was not trained on calibrates, and says what that is worth.
        col.publish(f"{base}/calibrate/set", b'{"frames": 25, "far": 0.05, "line": "bottle"}')
        done = col.wait_for(
            lambda ms: any(
                m.topic.endswith("/calibrate/state") and b'"bottle"' in m.payload and b'"done"' in m.payload for m in ms
            ),
            120,
        )
        bottle = [
            json.loads(m.payload) for m in done if m.topic.endswith("/calibrate/state") and b'"bottle"' in m.payload
        ]
        assert bottle[0]["state"] == "collecting" and bottle[-1]["state"] == "done"
        for s in bottle:
            assert "line bottle is not one of the model's lines (fabric, pcb)" in s["warning"]
        # Every calibrate/state message has the same keys, whatever its state (one schema per topic).
        schemas = {tuple(sorted(json.loads(m.payload))) for m in col.on("/cam1/calibrate/state")}
        assert len(schemas) == 1, schemas
        assert con.execute("SELECT line, version FROM calibrations WHERE active=1 ORDER BY line").fetchall() == [
            ("bottle", 1),
            ("fabric", 2),
        ]
    finally:
        assert rig.stop() == 0, rig.output()
    col.wait_stopped()
    assert col.on("/status")[-1].payload == b"stopped"


def test_profile_of_another_model_stops_the_agent_with_one_error(tiny_model_dir, calibrated_db, tmp_path, broker):
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    con = sqlite3.connect(rig.db)
    con.execute("UPDATE calibrations SET model_id='0000000000000000'")
    con.commit()
    con.close()
    rig.start(rig.config(write_stream(tmp_path / "line.avi", build_stream([("normal", 3)]))))
    assert rig.wait(60) == 2
    out = rig.output()
    assert "belongs to model 0000000000000000" in out and "Traceback" not in out
