"""Health: systemd notifications, latency percentiles, and the optional Prometheus endpoint.

systemd's notify protocol is one datagram to $NOTIFY_SOCKET (READY=1, WATCHDOG=1, STATUS=..., STOPPING=1);
it is small enough to speak directly rather than depend on an unmaintained package.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque

import numpy as np

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.address = ("\0" + addr[1:]) if addr and addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.address)
                s.sendall(message.encode())
            return True
        except OSError as exc:
            log.warning("systemd notify failed", extra={"fields": {"error": str(exc)}})
            return False

    def ready(self, status: str) -> None:
        if not self.ready_sent:
            self.ready_sent = self.notify(f"READY=1\nSTATUS={status}") or not self.enabled

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")


class Latencies:
    """Last N latencies in milliseconds; thread-safe; percentiles on demand."""

    def __init__(self, n: int = 1000):
        self._values: deque[float] = deque(maxlen=n)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def summary(self) -> dict[str, float | None]:
        with self._lock:
            v = np.asarray(self._values, dtype=np.float64)
        if v.size == 0:
            return {"p50": None, "p99": None, "n": 0}
        return {
            "p50": round(float(np.percentile(v, 50)), 2),
            "p99": round(float(np.percentile(v, 99)), 2),
            "n": int(v.size),
        }


class StageTimes:
    """Milliseconds per stage of the frames' way through the agent (decode, resize, wait, infer, judge,
    render), each over its last N values; the stats and the bench report their medians."""

    def __init__(self, n: int = 500):
        self.n = n
        self._stages: dict[str, Latencies] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            latencies = self._stages.setdefault(stage, Latencies(self.n))
        latencies.add(ms)

    def summary(self) -> dict[str, float | None]:
        with self._lock:
            stages = dict(self._stages)
        return {name: lat.summary()["p50"] for name, lat in stages.items()}


class Rate:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float, n: int = 1) -> None:
        with self._lock:
            for _ in range(n):
                self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def per_second(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            return round(len(self._times) / self.window_s, 2)


class PrometheusExporter:
    """Gauges mirrored from the stats payload on the configured port (prometheus-client)."""

    def __init__(self, host: str, port: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        labels = ["camera"]
        self.fps_in = Gauge(
            "hgad_camera_fps_in", "frames per second read from the camera", labels, registry=self.registry
        )
        self.fps_done = Gauge("hgad_camera_fps_processed", "frames per second judged", labels, registry=self.registry)
        self.dropped = Gauge(
            "hgad_camera_frames_dropped", "frames skipped (newest frame wins)", labels, registry=self.registry
        )
        self.up = Gauge("hgad_camera_up", "1 when the camera delivers frames", labels, registry=self.registry)
        self.latency = Gauge(
            "hgad_latency_ms", "frame capture to decision latency", ["camera", "quantile"], registry=self.registry
        )
        self.outbox = Gauge(
            "hgad_outbox_depth", "alert messages not yet acknowledged by the broker", registry=self.registry
        )
        self.connected = Gauge("hgad_broker_connected", "1 when connected to the MQTT broker", registry=self.registry)
        self.alerts = Counter("hgad_alerts", "alert messages raised", ["camera", "type"], registry=self.registry)
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)

    def count_alert(self, camera: str, kind: str) -> None:
        self.alerts.labels(camera, kind).inc()

    def update(self, stats: dict) -> None:
        for cam, s in stats["cameras"].items():
            self.fps_in.labels(cam).set(s["fps_in"])
            self.fps_done.labels(cam).set(s["fps_processed"])
            self.dropped.labels(cam).set(s["skipped"])
            self.up.labels(cam).set(1 if s["up"] else 0)
            for q in ("p50", "p99"):
                if s["latency_ms"][q] is not None:
                    self.latency.labels(cam, q).set(s["latency_ms"][q])
        self.outbox.set(stats["outbox_depth"])
        self.connected.set(1 if stats["broker"]["connected"] else 0)

    def close(self) -> None:
        self.server.shutdown()
