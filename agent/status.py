"""What the agent says about itself: each camera's state, the state topics of its commands, and the stats.

Builders are plain functions of what they read; `StatePublisher` sends their messages on the right topics
(retained where the MQTT contract says so). Both the MQTT link and the web console use the same builders.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .camera_runtime import CameraRuntime
from .health import Latencies
from .messages import CameraState, now_iso, rounded, to_json
from .mqtt import Topics
from .store import free_mb

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], None]  # topic, payload, qos, retain


def camera_state(rt: CameraRuntime, model_id: str, backend: str) -> CameraState:
    p = rt.profile
    s = rt.camera.stats
    return CameraState(
        camera_name=rt.name,
        line=p.line,
        calibration_id=p.calibration_id,
        model_id=model_id,
        mode=p.mode,
        last_score=rt.last_score,
        threshold=p.threshold,
        p_value=rt.last_p,
        anomalous=rt.anomalous,
        alert_open=rt.hysteresis.is_open,
        event_id=rt.hysteresis.open_event,
        camera=rt.camera_status,
        camera_error=s.last_error or None,
        calibrating=rt.calibration.busy,
        drift=rt.drift_status.to_dict() if rt.drift_status else None,
        frames=rt.frames,
        backend=backend,
        ts=now_iso(),
    )


def camera_stats(rt: CameraRuntime, now: float) -> dict[str, Any]:
    s = rt.camera.stats
    return {
        "line": rt.line,
        "up": s.up,
        "fps_in": rt.camera.rate.per_second(now),
        "fps_processed": rt.processed.per_second(now),
        "frames_in": s.frames_in,
        "decoded": s.decoded,
        "frame": s.frame,
        "cpu_s": round(s.cpu_s, 3),
        "processed": rt.frames,
        "active_s": round(rt.last_mono - rt.first_mono, 3) if rt.first_mono and rt.last_mono else 0.0,
        "first_judged_ts": rt.first_wall,
        "skipped": s.dropped,
        "corrupt": s.corrupt,
        "reconnects": s.reconnects,
        "alerts": rt.alerts,
        "latency_ms": rt.latency.summary(),
        "alert_ack_latency_ms": rt.ack_latency.summary(),
    }


@dataclass
class StatsSources:
    """Everything the stats message reads, each owned by another room of the agent."""

    device: str
    model_id: str
    backend: dict[str, str]
    started_mono: float
    state_dir: Path
    database: Path
    runtimes: Sequence[CameraRuntime]
    outbox_depth: Callable[[], int]
    queues: Callable[[], dict[str, int]]
    broker: Callable[[], dict[str, Any]]
    disk: Callable[[], dict[str, Any]]
    pipeline: Callable[[], dict[str, Any]]
    alert_ack_latency: Latencies
    stages_ms: Callable[[], dict[str, float | None]] = dict


def stats(src: StatsSources) -> dict[str, Any]:
    now = time.monotonic()
    try:
        depth = src.outbox_depth()
    except Exception:  # a busy or damaged database must not stop the stats
        depth = -1
    db = src.database
    db_mb = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()) / 2**20
    return rounded(
        {
            "ts": now_iso(),
            "device": src.device,
            "uptime_s": round(now - src.started_mono, 1),
            "backend": src.backend,
            "model_id": src.model_id,
            "cameras": {rt.name: camera_stats(rt, now) for rt in src.runtimes},
            "outbox_depth": depth,
            "queue_depth": {"outbox": depth, **src.queues()},
            "broker": src.broker(),
            "disk": {"free_mb": round(free_mb(src.state_dir), 1), "db_mb": round(db_mb, 2), **src.disk()},
            "alert_ack_latency_ms": src.alert_ack_latency.summary(),
            "pipeline": src.pipeline(),
            # Median milliseconds per frame of each stage: decode and resize (camera threads), wait (captured to
            # taken for inference), infer, judge (pipeline thread), render (writer thread, alerts only).
            "stages_ms": src.stages_ms(),
        }
    )


class StatePublisher:
    def __init__(self, topics: Topics, publish: Publish, model_id: str, backend: str):
        self.topics = topics
        self._publish = publish
        self.model_id = model_id
        self.backend = backend

    def camera(self, rt: CameraRuntime) -> None:
        self._publish(self.topics.camera(rt.name, "state"), self.camera_payload(rt), 0, True)

    def camera_payload(self, rt: CameraRuntime) -> bytes:
        return to_json(camera_state(rt, self.model_id, self.backend))

    def line(self, rt: CameraRuntime) -> None:
        self._publish(self.topics.camera(rt.name, "line/state"), to_json(rt.line_state), 1, True)

    def calibrate(self, rt: CameraRuntime) -> None:
        self._publish(self.topics.camera(rt.name, "calibrate/state"), to_json(rt.calibration.message), 1, True)

    def unknown_camera(self, camera: str, verb: str, message: Any) -> None:
        """A command for a camera this agent does not have: answered on its state topic, not retained."""
        self._publish(self.topics.camera(camera, f"{verb}/state"), to_json(message), 1, False)

    def stats(self, message: dict[str, Any], qos: int = 0) -> None:
        self._publish(self.topics.stats, to_json(message), qos, False)

    def retained(self, runtimes: Sequence[CameraRuntime], heatmaps: dict[str, str]) -> list[tuple[str, bytes, int]]:
        """What must be retained on the broker after every (re)connect, before `online`."""
        out = []
        for rt in runtimes:
            out.append((self.topics.camera(rt.name, "state"), self.camera_payload(rt), 0))
            out.append((self.topics.camera(rt.name, "line/state"), to_json(rt.line_state), 1))
            out.append((self.topics.camera(rt.name, "calibrate/state"), to_json(rt.calibration.message), 1))
            path = heatmaps.get(rt.name)
            if path and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    out.append((self.topics.camera(rt.name, "heatmap"), Path(path).read_bytes(), 1))
        return out
