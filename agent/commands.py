"""Validating MQTT commands before anything changes.

`.../CAMERA/line/set`: `{"line": "NAME"}` (a bare line name is accepted too).
`.../CAMERA/calibrate/set`: `{"frames": N, "far": A, "line": "NAME", "include_false_alarms": B}`, every key
optional.
The console's device-wide commands: `{"calibration_id": ID}` (activate a profile), `{"event_id": ID,
"label": "defect" | "false_alarm"}` (an operator's verdict on an alert).
A bad command (not JSON, wrong types, unknown keys, oversize, unknown camera or line) raises
CommandError with one line that is sent back on the command's state topic; nothing changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from calibration.threshold import MIN_IMAGES
from hgad.typed_config import valid_name

MAX_BYTES = 4096
MAX_FRAMES = 5000


class CommandError(ValueError):
    pass


@dataclass(frozen=True)
class LineSet:
    camera: str
    line: str


@dataclass(frozen=True)
class CalibrateSet:
    camera: str
    frames: int
    far: float
    line: str | None
    include_false_alarms: bool = False


@dataclass(frozen=True)
class ActivateProfile:
    calibration_id: str


@dataclass(frozen=True)
class Feedback:
    event_id: str
    label: str


def _text(payload: bytes) -> str:
    if len(payload) > MAX_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes is too large (at most {MAX_BYTES})")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None
    if not text:
        raise CommandError("empty payload")
    return text


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"payload is not valid JSON ({exc.msg} at column {exc.colno})") from None


def _line_name(value: object, key: str) -> str:
    """The same rule as a camera's `line` in the configuration and `calibrate --line`."""
    problem = valid_name(value) if isinstance(value, str) else f"{value!r} is not a line name"
    if problem:
        raise CommandError(f"{key}: {problem}")
    return value  # type: ignore[return-value]


def parse_line_set(camera: str, payload: bytes, known_lines: set[str]) -> LineSet:
    text = _text(payload)
    # A bare, unquoted line name is what people type into mosquitto_pub.
    bare = not text.startswith(("{", "[", '"')) and not any(c.isspace() for c in text)
    try:
        data = _json(text)
    except CommandError:
        if not bare:
            raise
        data = {"line": text}
    if isinstance(data, str):
        data = {"line": data}
    if not isinstance(data, dict):
        raise CommandError('expected a JSON object like {"line": "NAME"}')
    unknown = sorted(set(data) - {"line"})
    if unknown:
        raise CommandError(f'unknown key(s) {", ".join(unknown)}; expected {{"line": "NAME"}}')
    if "line" not in data:
        raise CommandError('missing key "line"')
    line = _line_name(data["line"], "line")
    if line not in known_lines:
        known = ", ".join(sorted(known_lines)) or "none"
        raise CommandError(f"line {line!r} has no active calibration profile for this model (calibrated: {known})")
    return LineSet(camera, line)


def parse_calibrate_set(camera: str, payload: bytes, default_frames: int, default_far: float) -> CalibrateSet:
    data = _json(_text(payload)) if payload.strip() else {}
    if not isinstance(data, dict):
        raise CommandError('expected a JSON object like {"frames": 200, "far": 0.01}')
    unknown = sorted(set(data) - {"frames", "far", "line", "include_false_alarms"})
    if unknown:
        raise CommandError(f"unknown key(s) {', '.join(unknown)}; expected frames, far, line, include_false_alarms")
    frames = data.get("frames", default_frames)
    if not isinstance(frames, int) or isinstance(frames, bool) or not MIN_IMAGES <= frames <= MAX_FRAMES:
        raise CommandError(f"frames: {frames!r} must be a whole number between {MIN_IMAGES} and {MAX_FRAMES}")
    far = data.get("far", default_far)
    if isinstance(far, bool) or not isinstance(far, (int, float)) or not math.isfinite(far) or not 0 < far < 1:
        raise CommandError(f"far: {far!r} must be a rate between 0 and 1")
    if far < 1.0 / (frames + 1) and frames < 100:
        raise CommandError(f"far {far} needs more than {frames} frames (at least {math.ceil(1 / far) - 1})")
    line = data.get("line")
    if line is not None:
        line = _line_name(line, "line")
    include = data.get("include_false_alarms", False)
    if not isinstance(include, bool):
        raise CommandError(f"include_false_alarms: {include!r} must be true or false")
    return CalibrateSet(camera, frames, float(far), line, include)


def _object(payload: bytes, keys: tuple[str, ...], example: str) -> dict:
    data = _json(_text(payload))
    if not isinstance(data, dict):
        raise CommandError(f"expected a JSON object like {example}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise CommandError(f"unknown key(s) {', '.join(unknown)}; expected {example}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise CommandError(f"missing key(s) {', '.join(missing)}; expected {example}")
    return data


def _hex_id(value: object, key: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 or not all(c in "0123456789abcdef" for c in value):
        raise CommandError(f"{key}: {value!r} is not an id (lowercase hexadecimal)")
    return value


def parse_activate_profile(payload: bytes) -> ActivateProfile:
    data = _object(payload, ("calibration_id",), '{"calibration_id": "ID"}')
    return ActivateProfile(_hex_id(data["calibration_id"], "calibration_id"))


def parse_feedback(payload: bytes, labels: tuple[str, ...]) -> Feedback:
    data = _object(payload, ("event_id", "label"), '{"event_id": "ID", "label": "defect"}')
    if data["label"] not in labels:
        raise CommandError(f"label: {data['label']!r} is not one of {', '.join(labels)}")
    return Feedback(_hex_id(data["event_id"], "event_id"), data["label"])
