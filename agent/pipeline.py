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

import numpy as np

from hgad.runtime.backend import Backend
from hgad.runtime.preprocess import to_batch

from .camera import Frame
from .camera_runtime import CameraRuntime
from .decision import AlertEvent, Observation
from .health import StageTimes

log = logging.getLogger(__name__)

# Batches before the first look at how the cameras and the model share the CPU (the stage times have
# settled by then), and between later looks (cameras come and go, lines change).
SHARE_FIRST, SHARE_EVERY = 50, 500


class Pipeline:
    def __init__(
        self,
        backend: Backend,
        cameras: list[CameraRuntime],
        batch: int,
        on_alert: Callable[[CameraRuntime, AlertEvent, float], None],
        on_calibration: Callable[[CameraRuntime], None],
        on_collected: Callable[[CameraRuntime], None],
        stages: StageTimes | None = None,
    ):
        self.stages = stages or StageTimes()
        self.backend = backend
        self.cameras = cameras
        self.batch = batch
        self.on_alert = on_alert
        # A live calibration's progress to report, and its last frame in (the profile is built elsewhere).
        self.on_calibration = on_calibration
        self.on_collected = on_collected
        self.tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.heartbeat = time.monotonic()
        self.batches = 0
        self.errors = 0
        self._share_at, self._share_from = SHARE_FIRST, (0.0, 0)
        self._next_camera = 0
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
        """Up to a batch of newest frames, the cameras asked in turn from the one after the last served: live
        cameras faster than the model always have a frame, and asking from the first every time would judge
        the first camera's alone."""
        got = []
        n, first = len(self.cameras), self._next_camera
        for k in range(n):
            i = (first + k) % n
            rt = self.cameras[i]
            f = rt.camera.take()
            if f is not None:
                got.append((rt, f))
                self._next_camera = (i + 1) % n
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
            t0 = time.monotonic()
            for _, f in group:
                self.stages.add("wait", (t0 - f.captured_mono) * 1000.0)
            out = self.backend.infer(self._inputs([f for _, f in group]), class_line)
            now = time.monotonic()
            self.stages.add("infer", (now - t0) * 1000.0 / len(group))
            for i, (rt, f) in enumerate(group):
                self._judge(rt, f, float(out.scores[i]), out.maps[i], now)
            self.stages.add("judge", (time.monotonic() - now) * 1000.0 / len(group))
        self.batches += 1
        if self.batches >= self._share_at:
            self._share_cores()

    def _share_cores(self) -> None:
        """Tell the backend the cameras' CPU time per judged frame since the last look."""
        self._share_at = self.batches + SHARE_EVERY
        cpu_s = sum(rt.camera.stats.cpu_s for rt in self.cameras)
        judged = sum(rt.frames for rt in self.cameras)
        (cpu_before, judged_before), self._share_from = self._share_from, (cpu_s, judged)
        if judged > judged_before:
            self.backend.share_cores((cpu_s - cpu_before) * 1000.0 / (judged - judged_before))

    def _inputs(self, frames: list[Frame]) -> np.ndarray:
        """The batch at the model's size: resized on the camera threads, or here for a camera that did not."""
        size = self.backend.image_size
        ready = [f.model_input if f.model_input is not None else to_batch([f.image], size)[0] for f in frames]
        return np.stack(ready)

    def _judge(self, rt: CameraRuntime, f: Frame, score: float, amap: np.ndarray, now: float) -> None:
        p = rt.profile
        rt.frames += 1
        if rt.first_mono is None:
            rt.first_mono, rt.first_wall = now, time.time()
        rt.last_mono = now
        rt.processed.tick(now)
        rt.latency.add((now - f.captured_mono) * 1000.0)
        rt.last_score = score
        rt.last_p = p.p_value(score)
        rt.anomalous = score > p.threshold
        rt.latest = (f.image, amap, f.index)
        rt.recent_scores.append((f.captured, score))
        if rt.calibration.collecting:
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
            self._watch_drift(rt, score)

    def _watch_drift(self, rt: CameraRuntime, score: float) -> None:
        status = rt.drift.update(score)
        if status is None:
            return
        if status.drifting and not (rt.drift_status and rt.drift_status.drifting):
            log.warning(
                "score drift: recalibrate the line if the product or setup changed",
                extra={"fields": {"camera": rt.name, "line": rt.line, **status.to_dict()}},
            )
        rt.drift_status = status

    def _collect(self, rt: CameraRuntime, f: Frame, score: float, amap: np.ndarray) -> None:
        message = rt.calibration.add(f.image, score, amap)
        if message is None:
            return
        self.on_calibration(rt)
        if message.state == "building":
            self.on_collected(rt)
