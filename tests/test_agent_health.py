"""Health around a running agent: systemd notifications, Prometheus metrics, SIGHUP reload.

systemd itself is not running here; the notify socket is a real AF_UNIX datagram socket, exactly what
systemd provides through $NOTIFY_SOCKET, read by the test.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import urllib.request

from agent.health import Latencies, Rate, SystemdNotifier
from calibration.calibrate import calibrate_folder
from calibration.db import open_database
from calibration.store import ProfileStore
from hgad.runtime.torch_backend import TorchBackend

from .conftest import free_port
from .rig import build_stream, make_rig, wait_until, write_stream


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_ready_watchdog_and_stopping(tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory):
    notify = NotifySocket(tmp_path / "notify.sock")
    col = collector_factory(broker.port)
    video = write_stream(tmp_path / "v.avi", build_stream([("normal", 10)]))
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    port = free_port()
    cfg = rig.config(video, camera={"loop": True, "realtime": True}, health={"prometheus_port": port})
    rig.start(cfg, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1500000"})
    try:
        wait_until(lambda: any(m.startswith("READY=1") for m in notify.messages), 90, "READY=1")
        # READY only after a camera is up: the camera's state says so by then.
        col.wait_for(lambda ms: any(m.topic.endswith("/cam1/state") and b'"camera": "up"' in m.payload for m in ms))
        wait_until(lambda: sum(m == "WATCHDOG=1" for m in notify.messages) >= 3, 30, "watchdog pings")

        def metrics() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        # The exporter mirrors the stats payload, refreshed every stats interval.
        wait_until(lambda: 'hgad_camera_fps_processed{camera="cam1"}' in metrics(), 30, "camera metrics")
        assert 'hgad_camera_up{camera="cam1"} 1.0' in metrics()
        assert "hgad_broker_connected 1.0" in metrics()
    finally:
        assert rig.stop() == 0, rig.output()
        notify.close()
    assert "STOPPING=1" in notify.messages
    first_ready = next(i for i, m in enumerate(notify.messages) if m.startswith("READY=1"))
    first_ping = notify.messages.index("WATCHDOG=1")
    assert first_ping > 0 and first_ready >= 0


def test_sighup_reloads_a_recalibrated_profile(
    tmp_path, tiny_model, tiny_model_dir, calibrated_db, broker, collector_factory
):
    col = collector_factory(broker.port)
    video = write_stream(tmp_path / "v.avi", build_stream([("normal", 10)]))
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    rig.start(rig.config(video, camera={"loop": True, "realtime": True}))
    try:
        col.wait_for(lambda ms: any(m.topic == "hgad/rig/status" and m.payload == b"online" for m in ms), 90)
        old = json.loads(col.on("/line/state")[-1].payload)["calibration_id"]
        # Recalibrate the line with the library while the agent runs (as `hgad-edge calibrate` would).
        folder = tmp_path / "normals2"
        folder.mkdir()
        src = sorted((calibrated_db.parent / "normals").iterdir())[:30]
        for f in src:
            (folder / f.name).write_bytes(f.read_bytes())
        result = calibrate_folder(tiny_model, TorchBackend(tiny_model), "fabric", folder, far=0.1)
        new = ProfileStore(open_database(rig.db)).save(result.profile).calibration_id
        assert new != old
        rig.proc.send_signal(signal.SIGHUP)
        col.wait_for(lambda ms: any(m.topic.endswith("/line/state") and new.encode() in m.payload for m in ms), 30)
        assert rig.proc.poll() is None
    finally:
        assert rig.stop() == 0, rig.output()
    con = sqlite3.connect(rig.db)
    assert con.execute("SELECT calibration_id FROM calibrations WHERE active=1").fetchone()[0] == new


def test_the_notifier_speaks_systemds_datagrams(tmp_path, monkeypatch):
    sock = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        n = SystemdNotifier()
        assert n.enabled and n.watchdog_s == 3.0
        n.ready("running")
        n.ready("again")  # READY is sent once
        n.watchdog()
        n.stopping()
        wait_until(lambda: len(sock.messages) >= 3, 10, "three datagrams")
        assert sock.messages == ["READY=1\nSTATUS=running", "WATCHDOG=1", "STOPPING=1"]
    finally:
        sock.close()


def test_latencies_and_rates():
    lat = Latencies(n=100)
    assert lat.summary() == {"p50": None, "p99": None, "n": 0}
    for ms in range(1, 201):
        lat.add(float(ms))
    s = lat.summary()
    assert s["n"] == 100 and 150 <= s["p50"] <= 151 and s["p99"] >= 199  # the last 100 only
    rate = Rate(window_s=10.0)
    rate.tick(100.0, n=50)
    assert rate.per_second(105.0) == 5.0 and rate.per_second(111.0) == 0.0
