"""Agent parts on their own: hysteresis, commands, cameras on real files, the store and its writer."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
from sqlalchemy import event

from agent.camera import Camera, source_type
from agent.commands import CommandError, parse_calibrate_set, parse_line_set
from agent.config import CameraConfig, DecisionConfig, StorageConfig
from agent.decision import Hysteresis, Observation
from agent.mqtt import Topics
from agent.store import AgentStore, AlertRecord, Writer, event_values
from calibration.db import open_database

from .conftest import write_video

# ------------------------------------------------------------------------------------------ decision


def _run(flags: list[int]):
    h = Hysteresis(DecisionConfig(open_after=3, close_after=2, update_interval_s=0.0))
    events = []
    for i, a in enumerate(flags):
        ev = h.observe(Observation(i, float(i), float(i), 1.0 + a * (1 + i / 100), 1.0, 0.5, bool(a)))
        if ev:
            events.append((ev.type, i, ev.event_id))
    return events, h


def test_one_alert_per_episode_with_hysteresis():
    flags = [0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    events, _ = _run(flags)
    types = [(t, i) for t, i, _ in events]
    # Two anomalous frames are not an episode; three are. One normal frame inside does not close it.
    assert types == [("new", 7), ("end", 12), ("new", 16), ("end", 18)]
    assert events[0][2] == events[1][2] != events[2][2]


def test_update_only_when_the_peak_grows_enough():
    cfg = DecisionConfig(open_after=1, close_after=1, update_growth=1.5, update_interval_s=0.0)
    h = Hysteresis(cfg)
    kinds = []
    for i, s in enumerate([2.0, 2.5, 3.1, 3.2, 4.8, 0.5]):
        ev = h.observe(Observation(i, 0.0, float(i), s, 1.0, 0.1, s > 1.0))
        kinds.append(ev.type if ev else None)
    assert kinds == ["new", None, "update", None, "update", "end"]


def test_close_on_demand():
    events, h = _run([1, 1, 1])
    assert [t for t, _, _ in events] == ["new"]
    ev = h.close("line changed")
    assert ev.type == "end" and ev.reason == "line changed" and not h.is_open
    assert h.close("again") is None


# ------------------------------------------------------------------------------------------ commands


def test_line_set_accepts_json_and_bare_names():
    assert parse_line_set("c", b'{"line": "pcb"}', {"pcb"}).line == "pcb"
    assert parse_line_set("c", b"pcb", {"pcb"}).line == "pcb"
    assert parse_line_set("c", b'"pcb"', {"pcb"}).line == "pcb"


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"line": 3}', "is not a line name"),
        (b'{"line": "bottle"}', "no active calibration profile"),
        (b'{"line": "pcb", "extra": 1}', "unknown key(s) extra"),
        (b"[1, 2]", "expected a JSON object"),
        (b"x" * 5000, "too large"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "empty payload"),
    ],
)
def test_bad_line_commands(payload, expect):
    with pytest.raises(CommandError, match=None) as info:
        parse_line_set("c", payload, {"pcb"})
    assert expect in str(info.value)


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b'{"frames": "many"}', "frames"),
        (b'{"frames": 5}', "between 20"),
        (b'{"far": 2}', "far"),
        (b'{"far": true}', "far"),
        (b'{"frames": 30, "far": 0.001}', "needs more than 30 frames"),
        (b'{"colour": "red"}', "unknown key"),
    ],
)
def test_bad_calibrate_commands(payload, expect):
    with pytest.raises(CommandError) as info:
        parse_calibrate_set("c", payload, 200, 0.01)
    assert expect in str(info.value)


def test_calibrate_defaults():
    cmd = parse_calibrate_set("c", b"{}", 200, 0.01)
    assert (cmd.frames, cmd.far, cmd.line) == (200, 0.01, None)


def test_topics():
    t = Topics("hgad", "dev1")
    assert t.camera("cam1", "alert") == "hgad/dev1/cam1/alert"
    assert t.parse_command("hgad/dev1/cam1/line/set") == ("cam1", "line")
    assert t.parse_command("hgad/dev1/cam1/calibrate/set") == ("cam1", "calibrate")
    assert t.parse_command("hgad/dev2/cam1/line/set") is None
    assert t.parse_command("hgad/dev1/cam1/line/state") is None


# ------------------------------------------------------------------------------------------ cameras


def _frames(n, size=64):
    return [np.full((size, size, 3), (i * 7) % 255, np.uint8) for i in range(n)]


def _drain(cam: Camera, until, timeout=20.0):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(cam, got):
        f = cam.take()
        if f is None:
            cam.wait_any(0.1)
        else:
            got.append(f)
    return got


def test_recording_is_read_losslessly(tmp_path):
    video = write_video(tmp_path / "v.avi", _frames(40))
    cam = Camera(CameraConfig(name="c", source=str(video), line="l"))
    assert source_type(cam.cfg) == "file" and cam.lossless
    cam.start()
    got = _drain(cam, lambda c, g: c.finished)
    cam.stop()
    assert [f.index for f in got] == list(range(40))
    assert cam.stats.dropped == 0 and cam.stats.ended


def test_live_like_source_drops_old_frames_and_counts_them(tmp_path):
    video = write_video(tmp_path / "v.avi", _frames(60), fps=200.0)
    cam = Camera(CameraConfig(name="c", source=str(video), line="l", realtime=True))
    cam.start()
    # A slow consumer: the camera keeps only the newest frame.
    got = []
    while not cam.stats.ended:
        f = cam.take()
        if f is not None:
            got.append(f)
        cam.wait_any(0.05)
        time.sleep(0.02)  # the consumer's own work; drops are the point of this test
    cam.stop()
    assert cam.stats.dropped > 0
    assert cam.stats.frames_in == 60
    assert len(got) + cam.stats.dropped >= 59  # every frame was either delivered or counted as dropped


def test_folder_source_counts_undecodable_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(_frames(5)):
        cv2.imwrite(str(folder / f"{i:02d}.png"), f)
    (folder / "02b.png").write_bytes(b"garbage, not a png")
    cam = Camera(CameraConfig(name="c", source=str(folder), line="l"))
    assert cam.kind == "folder"
    cam.start()
    got = _drain(cam, lambda c, g: c.finished)
    cam.stop()
    assert len(got) == 5 and cam.stats.corrupt == 1


def test_missing_source_is_down_and_recovers_when_it_appears(tmp_path):
    video = tmp_path / "late.avi"
    cam = Camera(CameraConfig(name="c", source=str(video), line="l", reopen_min_s=0.1, reopen_max_s=0.2))
    cam.start()
    deadline = time.monotonic() + 10
    while cam.stats.last_error == "" and time.monotonic() < deadline:
        cam.wait_any(0.05)
    assert not cam.stats.up and "cannot open" in cam.stats.last_error
    write_video(video, _frames(5))
    got = _drain(cam, lambda c, g: len(g) == 5)
    cam.stop()
    assert len(got) == 5


# ------------------------------------------------------------------------------------------ store


def _record(i: int, event_id: str | None = None) -> AlertRecord:
    eid = event_id or f"e{i:04d}"
    row = event_values(
        event_id=eid,
        camera="cam1",
        line="l",
        model_id="m",
        calibration_id="c",
        status="open",
        opened_at="t",
        closed_at=None,
        created_ts=1000.0 + i,
        first_frame_index=i,
        last_frame_index=i,
        frame_index=i,
        score=2.0,
        peak_score=2.0,
        threshold=1.0,
        p_value=0.01,
        regions=[],
        messages=1,
        end_reason=None,
        latency_ms=1.0,
    )
    payload = json.dumps({"event_id": eid, "n": i}).encode()
    return AlertRecord(row, b"\xff\xd8jpeg" * 100, [("hgad/d/cam1/alert", payload, 1, False, "alert")], 0.0)


def test_outbox_keeps_order_and_acks(tmp_path):
    store = AgentStore(open_database(tmp_path / "a.sqlite"), tmp_path / "hm", StorageConfig())
    ids = [store.record_alert(_record(i))[0] for i in range(5)]
    assert ids == sorted(ids)
    store.ack(ids[:2])
    pending = store.pending(0, 10)
    assert [json.loads(m.payload)["n"] for m in pending] == [2, 3, 4]
    # Ids are never reused after deletes: a new alert sorts after every older one.
    store.ack([m.id for m in pending])
    assert store.record_alert(_record(9))[0] > ids[-1]


def test_retention_by_age_and_count_removes_heatmaps(tmp_path):
    store = AgentStore(
        open_database(tmp_path / "a.sqlite"),
        tmp_path / "hm",
        StorageConfig(max_age_days=1.0, max_events=3, min_free_mb=0),
    )
    for i in range(6):
        store.record_alert(_record(i))
    now = 1000.0 + 5 + 86400 * 1.0 - 2.5  # events 0..2 are older than a day
    out = store.retention(now=now)
    assert out["age"] == 3 and out["count"] == 0
    for i in range(6, 10):
        store.record_alert(_record(i))
    out = store.retention(now=now)
    assert out["count"] == 4
    left = [e.event_id for e in store.events()]
    assert left == ["e0007", "e0008", "e0009"]
    assert sorted(p.name for p in (tmp_path / "hm").iterdir()) == left
    assert store.outbox_depth() == 10  # undelivered alerts are never deleted by retention


def test_writer_survives_a_full_database_and_loses_nothing(tmp_path):
    """SQLite's max_page_count makes the database really full (SQLITE_FULL), as a full disk would."""
    engine = open_database(tmp_path / "a.sqlite")
    store = AgentStore(engine, tmp_path / "hm", StorageConfig(min_free_mb=0))
    for i in range(40):
        store.record_alert(_record(i))
    pages = engine.connect().exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_connection, _record_):
        dbapi_connection.execute(f"PRAGMA max_page_count={pages + 2}")

    engine.dispose()
    writer = Writer(store, retry_s=0.05)
    writer.start()
    done = []
    for i in range(40, 60):
        writer.submit(lambda i=i: store.record_alert(_record(i)), done.append)
    assert writer.flush(60)
    writer.stop()
    assert len(done) == 20, writer.last_error
    # Space was made by deleting the oldest events; every new alert is in the outbox, in order.
    events = [e.event_id for e in store.events()]
    assert "e0000" not in events and "e0059" in events
    pending = [json.loads(m.payload)["n"] for m in store.pending(0, 100)]
    assert pending == list(range(60))
