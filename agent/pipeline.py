"""The inference loop: newest frames of every camera -> one backend call -> a decision per camera.

It owns each camera's mutable state (line, profile, hysteresis, live calibration, drift) and is the only
thread that changes it: MQTT commands and reloads arrive through a queue and are applied here, between
batches. Storing and publishing are handed to the writer; this loop never waits for disk or broker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibration.calibrate import LiveCalibration
from calibration.drift import DriftMonitor, DriftStatus
from calibration.profile import Profile
from hgad.runtime.backend import Backend
from hgad.runtime.preprocess import to_batch

from .camera import Camera, Frame
from .decision import AlertEvent, Hysteresis, Observation
from .health import Latencies, Rate

log = logging.getLogger(__name__)


@dataclass
class CameraRuntime:
    camera: Camera
    profile: Profile
    hysteresis: Hysteresis
    drift: DriftMonitor
    latency: Latencies = field(default_factory=Latencies)
    ack_latency: Latencies = field(default_factory=Latencies)
    processed: Rate = field(default_factory=Rate)
    frames: int = 0
    first_mono: float | None = None  # when the first and latest frames were judged: processing rate
    last_mono: float | None = None
    alerts: int = 0
    last_score: float | None = None
    last_p: float | None = None
    anomalous: bool = False
    drift_status: DriftStatus | None = None
    live: LiveCalibration | None = None
    live_state: dict[str, Any] = field(default_factory=lambda: {"state": "idle"})
    line_state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.camera.name

    @property
    def line(self) -> str:
        return self.profile.line


class Pipeline:
    def __init__(
        self,
        backend: Backend,
        cameras: list[CameraRuntime],
        batch: int,
        on_alert: Callable[[CameraRuntime, AlertEvent, float], None],
        on_calibrated: Callable[[CameraRuntime, LiveCalibration], None],
        on_progress: Callable[[CameraRuntime], None],
    ):
        self.backend = backend
        self.cameras = cameras
        self.batch = batch
        self.on_alert = on_alert
        self.on_calibrated = on_calibrated
        self.on_progress = on_progress
        self.tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.heartbeat = time.monotonic()
        self.batches = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def call(self, task: Callable[[], None]) -> None:
        """Run `task` on the pipeline thread, between batches."""
        self.tasks.put(task)

    @property
    def idle(self) -> bool:
        """Every camera is a finished recording and every frame has been judged."""
        return all(c.camera.finished for c in self.cameras)

    def _run_tasks(self) -> None:
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                return
            try:
                task()
            except Exception:
                log.exception("pipeline task failed")

    def _gather(self) -> list[tuple[CameraRuntime, Frame]]:
        got = []
        for rt in self.cameras:
            f = rt.camera.take()
            if f is not None:
                got.append((rt, f))
                if len(got) >= self.batch:
                    break
        return got

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            self._run_tasks()
            items = self._gather()
            if not items:
                # Wait on one camera at a time, briefly, so commands and the heartbeat stay responsive.
                for rt in self.cameras:
                    rt.camera.wait_any(0.05)
                continue
            try:
                self._process(items)
            except Exception:
                self.errors += 1
                log.exception("inference failed; frames skipped", extra={"fields": {"frames": len(items)}})

    def _process(self, items: list[tuple[CameraRuntime, Frame]]) -> None:
        # One backend call per scoring mode (class-agnostic, or class-aware for a given line).
        groups: dict[str | None, list[tuple[CameraRuntime, Frame]]] = {}
        for rt, f in items:
            groups.setdefault(rt.profile.class_line, []).append((rt, f))
        for class_line, group in groups.items():
            out = self.backend.infer(to_batch([f.image for _, f in group], self.backend.image_size), class_line)
            now = time.monotonic()
            for i, (rt, f) in enumerate(group):
                self._judge(rt, f, float(out.scores[i]), out.maps[i], now)
        self.batches += 1

    def _judge(self, rt: CameraRuntime, f: Frame, score: float, amap: np.ndarray, now: float) -> None:
        p = rt.profile
        rt.frames += 1
        rt.first_mono = rt.first_mono or now
        rt.last_mono = now
        rt.processed.tick(now)
        rt.latency.add((now - f.captured_mono) * 1000.0)
        rt.last_score = score
        rt.last_p = p.p_value(score)
        rt.anomalous = score > p.threshold
        if rt.live is not None:
            self._collect(rt, f, score, amap)
            return
        obs = Observation(
            f.index,
            f.captured,
            f.captured_mono,
            score,
            p.threshold,
            rt.last_p,
            rt.anomalous,
            (f.image, amap) if rt.anomalous or rt.hysteresis.is_open else None,
        )
        event = rt.hysteresis.observe(obs)
        if event is not None:
            rt.alerts += 1
            self.on_alert(rt, event, now)
        if not rt.anomalous and not rt.hysteresis.is_open:
            status = rt.drift.update(score)
            if status is not None:
                if status.drifting and not (rt.drift_status and rt.drift_status.drifting):
                    log.warning(
                        "score drift: recalibrate the line if the product or setup changed",
                        extra={"fields": {"camera": rt.name, "line": p.line, **status.to_dict()}},
                    )
                rt.drift_status = status

    def _collect(self, rt: CameraRuntime, f: Frame, score: float, amap: np.ndarray) -> None:
        live = rt.live
        assert live is not None
        try:
            live.add(f.image, score, amap)
        except Exception as exc:
            rt.live = None
            rt.live_state = {"state": "failed", "line": live.line, "error": str(exc)}
            self.on_progress(rt)
            return
        step = max(1, live.n // 10)
        if live.done:
            rt.live = None
            rt.live_state = {"state": "building", "line": live.line, "collected": live.collected, "frames": live.n}
            self.on_progress(rt)
            self.on_calibrated(rt, live)
        elif live.collected % step == 0:
            rt.live_state = {
                "state": "collecting",
                "line": live.line,
                "collected": live.collected,
                "frames": live.n,
                "far": live.far,
            }
            self.on_progress(rt)
