"""What the console shows, read from the agent's rooms: cameras (state, latest frame, recent scores), alerts
from SQLite, profiles per line, health. Reads only; actions go through the dispatcher (app.py).

Frames are encoded only when a page asks, at most once per judged frame however many pages look (a small
cache), so an open console costs the agent a JPEG a few times a second, off the inference thread.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from calibration.store import ProfileStore
from hgad.maps import encode_jpeg, find_regions, overlay

from ..camera_runtime import CameraRuntime
from ..feedback import FeedbackStore
from ..messages import rounded
from ..status import camera_state
from ..store import EventRow

ALERT_TYPES = ("new", "update", "end")
LIVE_MAX_SIDE = 960  # the live view's frame: enough to see a defect, cheap to encode


class ConsoleData:
    def __init__(
        self,
        runtimes: dict[str, CameraRuntime],
        model_id: str,
        backend: str,
        profiles: ProfileStore,
        engine,
        feedback: FeedbackStore,
        stats: Callable[[], dict[str, Any]],
    ):
        self.runtimes, self.model_id, self.backend = runtimes, model_id, backend
        self.profiles, self.engine, self.feedback, self.stats = profiles, engine, feedback, stats
        self._frames: dict[tuple[str, bool], tuple[int, bytes]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ cameras
    def cameras(self) -> list[dict[str, Any]]:
        out = []
        for rt in self.runtimes.values():
            state = dataclasses.asdict(camera_state(rt, self.model_id, self.backend))
            calibrate = dataclasses.asdict(rt.calibration.message)
            out.append(
                rounded(state | {"name": rt.name, "calibrate": calibrate, "profile_version": rt.profile.version})
            )
        return out

    def frame_jpeg(self, name: str, heatmap: bool) -> bytes | None:
        rt = self.runtimes.get(name)
        if rt is None or rt.latest is None:
            return None
        image, amap, index = rt.latest
        with self._lock:
            cached = self._frames.get((name, heatmap))
            if cached and cached[0] == index:
                return cached[1]
        if heatmap:
            p = rt.profile
            regions = find_regions(amap, p.pixel_threshold, p.threshold, image.shape[:2]) if rt.anomalous else []
            image = overlay(image, amap, p.pixel_threshold, p.threshold, regions)
        jpeg = encode_jpeg(image, 512 * 1024, max_side=LIVE_MAX_SIDE)
        with self._lock:
            self._frames[(name, heatmap)] = (index, jpeg)
        return jpeg

    def scores(self, name: str, seconds: float) -> dict[str, Any] | None:
        rt = self.runtimes.get(name)
        if rt is None:
            return None
        since = time.time() - seconds
        points = [[round(t, 3), round(s, 6)] for t, s in list(rt.recent_scores) if t >= since]
        return {"camera": name, "threshold": round(rt.profile.threshold, 6), "points": points}

    # ------------------------------------------------------------------ alerts
    def alerts(self, limit: int = 50, camera: str | None = None, line: str | None = None, **when: Any) -> list[dict]:
        """Newest first; `type`, `since` and `until` (epoch seconds of the event's start) narrow it further."""
        with Session(self.engine) as s:
            q = select(EventRow).order_by(EventRow.id.desc())
            if camera:
                q = q.where(EventRow.camera == camera)
            if line:
                q = q.where(EventRow.line == line)
            if when.get("since") is not None:
                q = q.where(EventRow.created_ts >= when["since"])
            if when.get("until") is not None:
                q = q.where(EventRow.created_ts <= when["until"])
            rows = list(s.scalars(q.limit(limit if not when.get("type") else limit * 4)))
        items = [self._alert(r) for r in rows]
        if when.get("type"):
            items = [a for a in items if a["type"] == when["type"]][:limit]
        labels = self.feedback.labels([a["event_id"] for a in items])
        return [a | {"feedback": labels.get(a["event_id"])} for a in items]

    @staticmethod
    def _alert(row: EventRow) -> dict[str, Any]:
        if row.payload:
            return json.loads(row.payload)
        # An event stored before payloads were kept: the keys its row has.
        return {
            "event_id": row.event_id, "type": "end" if row.status == "closed" else "new", "camera": row.camera,
            "line": row.line, "ts": row.opened_at, "score": row.score, "peak_score": row.peak_score,
            "threshold": row.threshold, "p_value": row.p_value, "model_id": row.model_id,
            "calibration_id": row.calibration_id, "frame_index": row.frame_index,
            "regions": json.loads(row.regions or "[]"), "latency_ms": row.latency_ms,
        }  # fmt: skip

    def alert(self, event_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            row = s.scalar(select(EventRow).where(EventRow.event_id == event_id))
        if row is None:
            return None
        return self._alert(row) | {
            "status": row.status,
            "scores": json.loads(row.scores or "[]"),
            "feedback": self.feedback.labels([event_id]).get(event_id),
            "has_heatmap": bool(row.heatmap_path and Path(row.heatmap_path).is_file()),
            "has_frame": bool(row.frame_path and Path(row.frame_path).is_file()),
        }

    def alert_file(self, event_id: str, which: str) -> Path | None:
        with Session(self.engine) as s:
            row = s.scalar(select(EventRow).where(EventRow.event_id == event_id))
        path = getattr(row, f"{which}_path", None) if row is not None else None
        return Path(path) if path and Path(path).is_file() else None

    # ------------------------------------------------------------------ profiles and health
    def profiles_by_line(self) -> list[dict[str, Any]]:
        out = []
        for line in self.profiles.lines():
            history = self.profiles.history(line)
            active = next((p for p in history if p.active), None)
            out.append(
                {
                    "line": line,
                    "active": _profile_summary(active) if active else None,
                    "histogram": active.histogram if active else None,
                    "history": [_profile_summary(p) for p in reversed(history)],
                    "cameras": [rt.name for rt in self.runtimes.values() if rt.line == line],
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        stats = self.stats()
        drift = {rt.name: rt.drift_status.to_dict() if rt.drift_status else None for rt in self.runtimes.values()}
        return stats | {"drift": drift}


def _profile_summary(p) -> dict[str, Any]:
    keys = ("calibration_id", "version", "created", "n", "far", "far_bound", "method", "method_detail")
    extra = {"threshold": round(p.threshold, 6), "model_id": p.model_id, "active": p.active, "mode": p.mode}
    return {k: getattr(p, k) for k in keys} | extra
