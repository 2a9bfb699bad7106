"""The schemas of the agent's state messages: every message on one topic has the same keys, null where a key
does not apply (README, "MQTT"). The web console's JSON API returns the same objects."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from calibration.profile import Profile


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def to_json(message: Any) -> bytes:
    data = dataclasses.asdict(message) if dataclasses.is_dataclass(message) else message
    return json.dumps(rounded(data)).encode()


@dataclass(frozen=True)
class LineState:
    """`CAMERA/line/state`: the line a camera judges, or why a `line/set` was refused (nothing changed)."""

    ok: bool
    line: str | None
    calibration_id: str | None
    error: str | None
    ts: str

    @classmethod
    def unknown_camera(cls, error: str) -> LineState:
        return cls(False, None, None, error, now_iso())

    @classmethod
    def of(cls, profile: Profile) -> LineState:
        return cls(True, profile.line, profile.calibration_id, None, now_iso())

    def refused(self, error: str) -> LineState:
        return dataclasses.replace(self, ok=False, error=error, ts=now_iso())


@dataclass(frozen=True)
class CalibrateState:
    """`CAMERA/calibrate/state`: a live recalibration's progress. `state` is idle, collecting, building, done or
    failed; `ok` is false when the latest `calibrate/set` was refused (`error` says why, nothing changed) or
    the calibration failed. `warning` is set on every report of a calibration of a line the model was not
    trained on."""

    ok: bool
    state: str
    line: str | None
    frames: int | None
    collected: int | None
    far: float | None
    calibration_id: str | None
    version: int | None
    threshold: float | None
    n: int | None
    error: str | None
    warning: str | None
    ts: str

    @classmethod
    def idle(cls) -> CalibrateState:
        return cls(True, "idle", None, None, None, None, None, None, None, None, None, None, now_iso())

    def but(self, **changes: Any) -> CalibrateState:
        return dataclasses.replace(self, **changes, ts=now_iso())


@dataclass(frozen=True)
class CameraState:
    """`CAMERA/state` (retained) and an item of `GET /api/cameras` (with `name`)."""

    camera_name: str
    line: str
    calibration_id: str
    model_id: str
    mode: str
    last_score: float | None
    threshold: float
    p_value: float | None
    anomalous: bool
    alert_open: bool
    event_id: str | None
    camera: str  # up, down or ended
    camera_error: str | None
    calibrating: bool
    drift: dict | None
    frames: int
    backend: str
    ts: str
