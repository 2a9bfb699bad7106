"""From a decision's AlertEvent to what is stored and published: JSON payload, regions, heatmap JPEG.

`AlertEmitter` hands each event to the writer thread, where `render` finds the regions, draws the heatmap and
builds the event row and the outbox messages: none of that runs on the inference loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.profile import Profile
from hgad.maps import Region, encode_jpeg, find_regions, overlay

from .camera_runtime import CameraRuntime
from .decision import AlertEvent
from .health import StageTimes
from .messages import iso
from .mqtt import Topics
from .store import AlertRecord, Writer, event_values

log = logging.getLogger(__name__)

# The frame an alert shows, kept whole for the console and as a normal sample if it was a false alarm.
FRAME_MAX_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class AlertContext:
    device: str
    camera: str
    model_id: str
    profile: Profile
    topics: Topics
    max_regions: int
    heatmap_max_bytes: int


def _regions_and_images(ctx: AlertContext, ev: AlertEvent) -> tuple[list[Region], bytes | None, bytes | None]:
    """The regions, the heatmap JPEG and the frame itself (kept: marked a false alarm, it becomes a normal
    sample of its line)."""
    image, amap = ev.observation.payload if ev.observation.payload is not None else (None, None)
    if image is None or amap is None:
        return [], None, None
    p = ctx.profile
    regions = find_regions(np.asarray(amap), p.pixel_threshold, p.threshold, image.shape[:2], ctx.max_regions)
    if ev.type == "end":
        return regions, None, None
    heatmap = encode_jpeg(overlay(image, amap, p.pixel_threshold, p.threshold, regions), ctx.heatmap_max_bytes)
    return regions, heatmap, encode_jpeg(image, FRAME_MAX_BYTES, max_side=4096)


def alert_payload(ctx: AlertContext, ev: AlertEvent, regions: list[dict], created_mono: float, now: float) -> dict:
    """The MQTT alert message (README, "MQTT": the same keys for new and update; end adds two)."""
    obs, p = ev.observation, ctx.profile
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
        "heatmap_topic": ctx.topics.camera(ctx.camera, "heatmap"),
        "latency_ms": round((created_mono - obs.captured_mono) * 1000.0, 2),
    }
    if ev.type == "end":
        payload["duration_s"] = round(now - ev.started, 3)
        payload["reason"] = ev.reason
    return payload


def _event_row(ctx: AlertContext, ev: AlertEvent, payload: dict, now: float) -> dict[str, Any]:
    obs, p = ev.observation, ctx.profile
    return event_values(
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
        regions=payload["regions"],
        messages=ev.seq + 1,
        end_reason=ev.reason or None,
        latency_ms=payload["latency_ms"],
    )


def render(ctx: AlertContext, ev: AlertEvent, created_mono: float) -> AlertRecord:
    """The alert's payload, heatmap, event-row values and outbox messages (writer thread)."""
    regions, jpeg, frame = _regions_and_images(ctx, ev)
    now = time.time()
    payload = alert_payload(ctx, ev, [r.to_dict() for r in regions], created_mono, now)
    text = json.dumps(payload)
    messages = [(ctx.topics.camera(ctx.camera, "alert"), text.encode(), 1, False, "alert")]
    if jpeg is not None:
        messages.append((payload["heatmap_topic"], jpeg, 1, True, "heatmap"))
    row = _event_row(ctx, ev, payload, now) | {
        "payload": text,
        "scores": json.dumps([[i, round(s, 6)] for i, s in ev.scores]),
    }
    return AlertRecord(row, jpeg, messages, ev.observation.captured_mono, frame)


class AlertEmitter:
    """Hands every alert event of every camera to the writer, and counts it."""

    def __init__(
        self,
        device: str,
        model_id: str,
        topics: Topics,
        max_regions: int,
        heatmap_max_kb: int,
        writer: Writer,
        record: Callable[[AlertRecord], list[int]],
        stored: Callable[[list[int]], None],
        counted: Callable[[str, str], None] = lambda camera, kind: None,
        stages: StageTimes | None = None,
    ):
        self.stages = stages or StageTimes()
        self.device, self.model_id, self.topics = device, model_id, topics
        self.max_regions = max_regions
        # MQTT payloads stay within 256 KB whatever the configured size.
        self.heatmap_max_bytes = min(heatmap_max_kb, 256) * 1024
        self.writer, self.record, self.stored, self.counted = writer, record, stored, counted

    def emit(self, rt: CameraRuntime, ev: AlertEvent, created_mono: float) -> None:
        ctx = AlertContext(
            self.device, rt.name, self.model_id, rt.profile, self.topics, self.max_regions, self.heatmap_max_bytes
        )
        self.writer.submit(lambda: self.record(self._render(ctx, ev, created_mono)), self.stored)
        self.counted(rt.name, ev.type)
        fields = {"camera": rt.name, "type": ev.type, "event_id": ev.event_id, "score": round(ev.observation.score, 5)}
        log.info("alert", extra={"fields": fields | {"frame": ev.observation.frame_index}})

    def _render(self, ctx: AlertContext, ev: AlertEvent, created_mono: float) -> AlertRecord:
        t0 = time.monotonic()
        record = render(ctx, ev, created_mono)
        self.stages.add("render", (time.monotonic() - t0) * 1000.0)
        return record

    def close(self, rt: CameraRuntime, reason: str) -> None:
        """End the camera's open alert, if any (a line change, a recalibration, a stop)."""
        ev = rt.hysteresis.close(reason)
        if ev is not None:
            self.emit(rt, ev, time.monotonic())
