"""Faults, each with a real broker, real files and real processes: nothing lost, nothing crashes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import StorageConfig
from agent.store import AgentStore
from calibration.db import open_database

from .conftest import Broker, hgad_cli, mosquitto_binary
from .rig import build_stream, make_rig, normal_frame, wait_until, write_stream

OUTAGE_S = 60.0


def _outbox_alerts(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT payload FROM outbox WHERE kind='alert' ORDER BY id").fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) for r in rows]


def _key(a: dict) -> tuple:
    return a["event_id"], a["type"], a["seq"]


def _received(col) -> list[dict]:
    return [m.json() for m in col.on("/alert")]


def _first_occurrences(alerts: list[dict]) -> list[tuple]:
    seen, out = set(), []
    for a in alerts:
        if _key(a) not in seen:
            seen.add(_key(a))
            out.append(_key(a))
    return out


def _looping_stream(tmp_path: Path) -> Path:
    # An episode every 2.4 s at 10 frames/s, for as long as the test needs.
    stream = build_stream([("normal", 12), ("defect", 4), ("normal", 8)])
    return write_stream(tmp_path / "loop.avi", stream)


def test_broker_outage_of_a_minute_loses_nothing(tmp_path, tiny_model_dir, calibrated_db, collector_factory):
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", persistent=True)
    broker.start()
    col = collector_factory(broker.port, persistent=True)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    rig.start(rig.config(_looping_stream(tmp_path), camera={"loop": True, "realtime": True}))
    try:
        col.wait_for(lambda ms: sum(m.topic.endswith("/alert") for m in ms) >= 2, 90)
        broker.stop()
        t0 = time.monotonic()
        # Alerts keep being raised during the outage and wait in the outbox.
        wait_until(lambda: len(_outbox_alerts(rig.db)) >= 6, OUTAGE_S, "alerts raised during the outage")
        threading.Event().wait(max(0.0, OUTAGE_S - (time.monotonic() - t0)))
        during = _outbox_alerts(rig.db)
        assert rig.proc.poll() is None, "the agent died during the outage"
        n_before = len(col.on("/status"))
        broker.start()
        col.wait_for(lambda ms: {_key(a) for a in _received_from(ms)} >= {_key(a) for a in during}, 120)
        # Retained status and state were published again by the agent after it reconnected.
        col.wait_for(
            lambda ms: (
                any(m.topic == "hgad/rig/status" and m.payload == b"online" and not m.retain for m in ms[n_before:])
                or sum(m.topic.endswith("/status") for m in ms) > n_before
            )
        )
        col.wait_for(lambda ms: any(m.topic.endswith("/cam1/line/state") for m in ms[-200:]))
    finally:
        assert rig.stop() == 0, rig.output()
        broker.stop()
    got = _first_occurrences(_received(col))
    # In order: the alerts raised during the outage arrive in the order they were raised.
    order = [k for k in got if k in {_key(a) for a in during}]
    assert order == [_key(a) for a in during]
    # Nothing twice, except as QoS 1 allows: a repeat is the same message (same event_id, type, seq).
    alerts = _received(col)
    by_key: dict[tuple, str] = {}
    for a in alerts:
        assert by_key.setdefault(_key(a), json.dumps(a, sort_keys=True)) == json.dumps(a, sort_keys=True)
    # Every event the agent stored was announced and ended.
    con = sqlite3.connect(rig.db)
    events = [r[0] for r in con.execute("SELECT event_id FROM events")]
    assert set(events) == {a["event_id"] for a in alerts if a["type"] == "new"}
    assert set(events) == {a["event_id"] for a in alerts if a["type"] == "end"}
    assert con.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def _received_from(messages) -> list[dict]:
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/alert")]


def test_sigkill_mid_stream_then_restart(tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory):
    col = collector_factory(broker.port)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    cfg = rig.config(_looping_stream(tmp_path), camera={"loop": True, "realtime": True})
    rig.start(cfg)
    col.wait_for(lambda ms: sum(m.topic.endswith("/alert") for m in ms) >= 1, 90)
    broker.stop()
    wait_until(lambda: len(_outbox_alerts(rig.db)) >= 3, 60, "unpublished alerts in the outbox")
    rig.proc.send_signal(signal.SIGKILL)
    assert rig.proc.wait(10) == -signal.SIGKILL
    con = sqlite3.connect(rig.db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    pending = _outbox_alerts(rig.db)
    assert len(pending) >= 3
    broker.start()
    col2 = collector_factory(broker.port)
    rig.start(cfg)
    try:
        col2.wait_for(lambda ms: {_key(a) for a in _received_from(ms)} >= {_key(a) for a in pending}, 120)
    finally:
        assert rig.stop() == 0, rig.output()
    got = [k for k in _first_occurrences(_received(col2)) if k in {_key(a) for a in pending}]
    assert got == [_key(a) for a in pending]


class MJPEGServer:
    """A camera's HTTP MJPEG stream that can be switched off and on again on the same port."""

    def __init__(self, port: int = 0):
        self.running = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while outer.running.is_set():
                        _ok, buf = cv2.imencode(".jpg", normal_frame(40_000 + i % 20))
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(buf)).encode()
                            + b"\r\n\r\n"
                            + buf.tobytes()
                            + b"\r\n"
                        )
                        i += 1
                        outer.running.wait(0.05)  # 20 frames/s, like a small IP camera
                        if not outer.running.is_set():
                            break
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.handler = Handler
        self.port = port
        self.server = None

    def start(self) -> None:
        self.running.set()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.allow_reuse_address = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.running.clear()
        self.server.shutdown()
        self.server.server_close()


def _state(col) -> dict:
    return json.loads(col.on("/cam1/state")[-1].payload)


def test_file_source_removed_and_back(tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory):
    col = collector_factory(broker.port)
    video = write_stream(tmp_path / "short.avi", build_stream([("normal", 10)]))
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    rig.start(rig.config(video, camera={"loop": True, "realtime": True, "reopen_min_s": 0.2, "reopen_max_s": 1.0}))
    try:
        col.wait_for(lambda ms: any(m.topic.endswith("/cam1/state") and b'"camera": "up"' in m.payload for m in ms), 90)
        video.rename(tmp_path / "away.avi")
        col.wait_for(lambda ms: ms[-1:] and _state(col)["camera"] == "down", 30)
        frames_down = _state(col)["frames"]
        assert rig.proc.poll() is None
        (tmp_path / "away.avi").rename(video)
        col.wait_for(lambda ms: _state(col)["camera"] == "up" and _state(col)["frames"] > frames_down + 5, 30)
    finally:
        assert rig.stop() == 0, rig.output()


def test_http_stream_stopped_and_back(tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory):
    server = MJPEGServer()
    server.start()
    col = collector_factory(broker.port)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    url = f"http://127.0.0.1:{server.port}/stream.mjpg"
    rig.start(rig.config(url, camera={"stall_timeout_s": 2.0, "reopen_min_s": 0.2, "reopen_max_s": 1.0}))
    try:
        col.wait_for(lambda ms: bool(col.on("/cam1/state")) and _state(col)["frames"] > 10, 90)
        server.stop()
        col.wait_for(lambda ms: _state(col)["camera"] == "down", 30)
        frames_down = _state(col)["frames"]
        assert rig.proc.poll() is None
        server = MJPEGServer(server.port)
        server.start()
        col.wait_for(lambda ms: _state(col)["camera"] == "up" and _state(col)["frames"] > frames_down + 10, 60)
        # stats go out on their own interval, so the one counting the reopen may come after the state.
        col.wait_for(lambda ms: any(m.json()["cameras"]["cam1"]["reconnects"] >= 1 for m in col.on("/stats")), 30)
    finally:
        assert rig.stop() == 0, rig.output()
        server.stop()


def test_undecodable_images_are_counted_and_skipped(tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:03d}.png"), normal_frame(50_000 + i))
    for name in ("003b.png", "007b.jpg"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    col = collector_factory(broker.port)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    rig.start(rig.config(folder), "--exit-when-done")
    assert rig.wait() == 0, rig.output()
    col.wait_stopped()
    final = col.on("/stats")[-1].json()["cameras"]["cam1"]  # the agent publishes its stats once more on exit
    assert final["processed"] == 12
    assert final["corrupt"] == 2


def test_corrupt_frame_inside_a_recording(tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory):
    stream = build_stream([("normal", 20)])
    video = write_stream(tmp_path / "v.avi", stream)
    data = bytearray(video.read_bytes())
    # Damage the 10th JPEG frame's entropy-coded data.
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    s = starts[10]
    data[s + 600 : s + 1400] = b"\x00" * 800
    video.write_bytes(bytes(data))
    col = collector_factory(broker.port)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    rig.start(rig.config(video), "--exit-when-done")
    assert rig.wait() == 0, rig.output()
    # Either the decoder repaired the frame (judged) or it failed (counted as corrupt): none is lost silently.
    col.wait_stopped()
    final = col.on("/stats")[-1].json()["cameras"]["cam1"]
    assert final["processed"] + final["corrupt"] >= 20 and final["processed"] >= 19


@pytest.mark.parametrize("damage", ["truncated", "foreign", "missing"])
def test_damaged_model_is_one_clear_error(damage, tmp_path, tiny_model_dir, calibrated_db, broker):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    if damage == "truncated":
        w = model / "model.safetensors"
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "foreign":
        (model / "model.json").write_text('{"format": "onnx-something", "version": 3}')
    else:
        (model / "model.safetensors").unlink()
    rig = make_rig(tmp_path, model, broker.port, calibrated_db)
    rig.start(rig.config(write_stream(tmp_path / "line.avi", build_stream([("normal", 3)]))))
    assert rig.wait(60) == 2
    out = rig.output().strip().splitlines()
    assert "Traceback" not in rig.output()
    assert out[-1].startswith("hgad-edge: error: ") and str(model) in out[-1]
    r = hgad_cli("eval", "--model", str(model), "--data", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["train", "eval", "synth", "bench"])
def test_an_output_path_that_cannot_be_written_fails_before_the_work(command, tmp_path, tiny_model_dir, tiny_data):
    """A file where a folder is wanted (or the reverse) is refused up front, not after minutes of work."""
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    args = {
        "train": ["train", "--data", str(tiny_data), "--out", str(blocker / "model"), "--epochs", "1"],
        "eval": ["eval", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--json", str(tmp_path)],
        "synth": ["synth", str(blocker), "--classes", "1", "--train", "1", "--test", "1", "--size", "64"],
        "bench": ["bench", "--model", str(tiny_model_dir), "--backend", "torch", "--json", str(blocker / "b.json")],
    }[command]
    r = hgad_cli(*args)
    assert r.returncode == 2, r.stderr
    # One line, and no sign of work started: no "training ..." line, no progress, no results table.
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("hgad-edge: error: "), r.stderr
    assert str(blocker if command != "eval" else tmp_path) in r.stderr
    assert r.stdout == ""
    assert blocker.read_text() == "in the way"


def test_dataset_naming_a_missing_image_is_one_clear_error(tmp_path, tiny_model_dir, tiny_data):
    """A VisA split file that lists an image no longer on disk: one line naming it (OpenCV says nothing)."""
    rows = ["object,split,label,image,mask"]
    for cls in ("fabric", "pcb"):
        for split in ("train", "test"):
            sub = "train/good" if split == "train" else "test/good"
            for p in sorted((tiny_data / cls / sub).iterdir())[:3]:
                rows.append(f"{cls},{split},normal,{p},")
    rows.append(f"pcb,test,anomaly,{tmp_path / 'gone.png'},")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    r = hgad_cli("eval", "--model", str(tiny_model_dir), "--data", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"hgad-edge: error: {tmp_path / 'gone.png'}: no such image file"]


def test_disk_nearly_full_frees_space_oldest_first(tmp_path):
    """Real free space against a floor set just above it: deleting the oldest heatmaps makes room."""
    from .test_agent_store import _record

    store = AgentStore(open_database(tmp_path / "a.sqlite"), tmp_path / "hm", StorageConfig(min_free_mb=0))
    blob = os.urandom(1 << 20)
    for i in range(60):
        rec = _record(i)
        rec.heatmap_jpeg = blob  # 1 MB each: 60 MB of heatmaps
        store.record_alert(rec)
    free = shutil.disk_usage(tmp_path).free / 2**20
    store.cfg = StorageConfig(min_free_mb=free + 30.0, max_age_days=1e6)  # 30 MB short of the floor
    out = store.retention()
    left = [e.event_id for e in store.events()]
    assert out["disk"] >= 30 and out["disk"] < 60
    assert left == [f"e{i:04d}" for i in range(60 - len(left), 60)]  # the newest are kept
    assert shutil.disk_usage(tmp_path).free / 2**20 >= free + 29.0


def test_agent_keeps_running_when_the_disk_is_nearly_full(
    tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory
):
    col = collector_factory(broker.port)
    stream = build_stream([("normal", 8), ("defect", 4), ("normal", 8), ("defect", 4), ("normal", 8)])
    video = write_stream(tmp_path / "v.avi", stream)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    free = shutil.disk_usage(tmp_path).free / 2**20
    rig.start(rig.config(video, storage={"min_free_mb": free + 1e6, "retention_interval_s": 0.5}), "--exit-when-done")
    assert rig.wait() == 0, rig.output()
    col.wait_stopped()
    alerts = [a for a in _received(col) if a["type"] == "new"]
    assert len(alerts) == 2  # alerts still go out; their stored events are what retention frees
    freed = [int(m) for m in re.findall(r"msg=retention age=\d+ count=\d+ disk=(\d+)", rig.output())]
    assert sum(freed) >= 1, rig.output()[-2000:]  # events were deleted to make room, while the agent ran on


def test_password_never_in_logs_or_stats(tmp_path, tiny_model_dir, calibrated_db, collector_factory):
    secret = "Zq8-very-secret-pw"
    pwfile = tmp_path / "passwd"
    passwd = shutil.which("mosquitto_passwd") or str(Path(mosquitto_binary()).with_name("mosquitto_passwd"))
    subprocess.run([passwd, "-b", "-c", str(pwfile), "agent", secret], check=True, capture_output=True)
    subprocess.run([passwd, "-b", str(pwfile), "observer", "obs"], check=True, capture_output=True)
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", extra_conf=f"password_file {pwfile}\nallow_anonymous false\n")
    broker.start()
    try:
        col = collector_factory(broker.port, auth=("observer", "obs"))
        cred = tmp_path / "mqtt-password"  # what systemd's LoadCredential= provides
        cred.write_text(secret + "\n")
        rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
        video = write_stream(tmp_path / "v.avi", build_stream([("normal", 5), ("defect", 4), ("normal", 5)]))
        mqtt_cfg = {"username": "agent", "password_file": str(cred)}
        rig.start(rig.config(video, mqtt=mqtt_cfg, log_level="debug"), "--exit-when-done")
        assert rig.wait() == 0, rig.output()
        col.wait_stopped()
        assert col.on("/alert"), "the agent did not log in"
        everything = rig.output() + "".join(m.payload.decode("latin-1") for m in col.messages)
        assert "agent" in rig.output() or col.on("/stats")  # the output is not empty
        assert secret not in everything
        # A wrong password: refused and logged, still without the password.
        cred.write_text("wrong-" + secret)
        rig.start(rig.config(video, mqtt=mqtt_cfg, log_level="debug"))
        wait_until(lambda: "refused" in rig.output(), 30, "the refusal to be logged")
        assert rig.stop() == 0
        assert secret not in rig.output()
    finally:
        broker.stop()


def test_soak_ten_thousand_frames_with_bounded_memory(
    tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory
):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(100):
        cv2.imwrite(str(folder / f"{i:03d}.png"), normal_frame(60_000 + i))
    col = collector_factory(broker.port)
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    rig.start(rig.config(folder, camera={"loop": True}))
    rss = {}

    def sample(at: int) -> bool:
        frames = _state(col)["frames"] if col.on("/cam1/state") else 0
        if frames >= at:
            rss[at] = int(
                next(
                    ln.split()[1]
                    for ln in Path(f"/proc/{rig.proc.pid}/status").read_text().splitlines()
                    if ln.startswith("VmRSS")
                )
            )
            return True
        return False

    try:
        wait_until(lambda: sample(1000), 600, "1000 frames")
        wait_until(lambda: sample(10_000), 1800, "10000 frames")
    finally:
        assert rig.stop() == 0, rig.output()
    growth_mb = (rss[10_000] - rss[1000]) / 1024
    print(
        f"soak: RSS {rss[1000] / 1024:.0f} MB at 1000 frames, {rss[10_000] / 1024:.0f} MB at 10000 "
        f"(+{growth_mb:.1f} MB)"
    )
    assert growth_mb < 64, rss
    assert np.isfinite(growth_mb)
