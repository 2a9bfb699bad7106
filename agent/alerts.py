"""From a decision's AlertEvent to what is stored and published: JSON payload, regions, heatmap JPEG.

Rendering (regions, overlay, JPEG) runs on the writer thread, not on the inference loop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from calibration.profile import Profile
from hgad.maps import encode_jpeg, find_regions, overlay

from .decision import AlertEvent
from .mqtt import Topics
from .store import AlertRecord, event_values


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AlertContext:
    device: str
    camera: str
    model_id: str
    profile: Profile
    topics: Topics
    max_regions: int
    heatmap_max_bytes: int


def render(ctx: AlertContext, ev: AlertEvent, created_mono: float) -> AlertRecord:
    """Build the alert's payload, heatmap and event-row values (writer thread)."""
    obs = ev.observation
    image, amap = obs.payload if obs.payload is not None else (None, None)
    p = ctx.profile
    regions = []
    jpeg = None
    if image is not None and amap is not None:
        regs = find_regions(amap, p.pixel_threshold, p.threshold, image.shape[:2], ctx.max_regions)
        regions = [r.to_dict() for r in regs]
        if ev.type != "end":
            jpeg = encode_jpeg(overlay(image, amap, p.pixel_threshold, p.threshold, regs), ctx.heatmap_max_bytes)
    heatmap_topic = ctx.topics.camera(ctx.camera, "heatmap")
    now = time.time()
    payload: dict[str, Any] = {
        "event_id": ev.event_id,
        "type": ev.type,
        "seq": ev.seq,
        "device": ctx.device,
        "camera": ctx.camera,
        "line": p.line,
        "ts": iso(now if ev.type == "end" else obs.captured),
        "score": round(obs.score, 6),
        "peak_score": round(ev.peak_score, 6),
        "threshold": round(p.threshold, 6),
        "p_value": round(obs.p_value, 6),
        "model_id": ctx.model_id,
        "calibration_id": p.calibration_id,
        "mode": p.mode,
        "frame_index": obs.frame_index,
        "first_frame_index": ev.first_frame_index,
        "last_frame_index": ev.last_frame_index,
        "anomalous_frames": ev.anomalous_frames,
        "started": iso(ev.started),
        "regions": regions,
        "heatmap_topic": heatmap_topic,
        "latency_ms": round((created_mono - obs.captured_mono) * 1000.0, 2),
    }
    if ev.type == "end":
        payload["duration_s"] = round(now - ev.started, 3)
        payload["reason"] = ev.reason
    messages = [(ctx.topics.camera(ctx.camera, "alert"), json.dumps(payload).encode(), 1, False, "alert")]
    if jpeg is not None:
        messages.append((heatmap_topic, jpeg, 1, True, "heatmap"))
    row = event_values(
        event_id=ev.event_id,
        camera=ctx.camera,
        line=p.line,
        model_id=ctx.model_id,
        calibration_id=p.calibration_id,
        status="closed" if ev.type == "end" else "open",
        opened_at=iso(ev.started),
        closed_at=iso(now) if ev.type == "end" else None,
        created_ts=ev.started,
        first_frame_index=ev.first_frame_index,
        last_frame_index=ev.last_frame_index,
        frame_index=obs.frame_index,
        score=float(obs.score),
        peak_score=float(ev.peak_score),
        threshold=float(p.threshold),
        p_value=float(obs.p_value),
        regions=regions,
        messages=ev.seq + 1,
        end_reason=ev.reason or None,
        latency_ms=payload["latency_ms"],
    )
    return AlertRecord(row, jpeg, messages, obs.captured_mono)


def state_payload(**fields: Any) -> bytes:
    return json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in fields.items()}).encode()
