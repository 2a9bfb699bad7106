"""The agent's configuration: typed dataclasses loaded from YAML and validated on load.

Every problem is one `ConfigError` naming the file, the key path (e.g. `cameras[1].line`), the value and
what would be valid. Defaults are the embedded defaults documented in config.example.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from calibration.threshold import MIN_IMAGES
from hgad.errors import BadInputError


class ConfigError(BadInputError):
    pass


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Skip the broker's hostname check (certificate still verified against ca_file). For test rigs only.
    insecure: bool = False


@dataclass(frozen=True)
class MQTTConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "hgad"
    client_id: str | None = None  # default: hgad-edge-<device_id>
    username: str | None = None
    # repr=False: a logged or printed configuration never shows the password.
    password: str | None = field(default=None, repr=False)
    # A file holding the password (e.g. systemd LoadCredential: ${CREDENTIALS_DIRECTORY}/mqtt-password).
    password_file: str | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    tls: TLSConfig = field(default_factory=TLSConfig)
    # Alerts in flight (sent, not yet acknowledged) at once; order is kept within this window.
    max_inflight: int = 20


@dataclass(frozen=True)
class CameraConfig:
    name: str
    source: str
    line: str
    # auto: a number is a device index, a URL (rtsp/http/https) a stream, text with '!' a GStreamer
    # pipeline, a directory a folder of images, anything else a video file.
    type: str = "auto"
    # Files only: start again at the end.
    loop: bool = False
    # Files only: false processes every frame (a recording is not a live camera); true plays the file at
    # its own frame rate and lets the newest frame win, as a live camera does.
    realtime: bool = False
    # A stalled source (no frame for this long) is reopened, with exponential backoff up to reopen_max_s.
    stall_timeout_s: float = 5.0
    reopen_min_s: float = 0.5
    reopen_max_s: float = 30.0
    enabled: bool = True


@dataclass(frozen=True)
class DecisionConfig:
    # Hysteresis: an alert opens after this many consecutive anomalous frames ...
    open_after: int = 3
    # ... and closes after this many consecutive normal frames. One alert per event, not per frame.
    close_after: int = 5
    # While open, an `update` is sent when the peak score grows by this factor, at most this often.
    update_growth: float = 1.25
    update_interval_s: float = 5.0
    max_regions: int = 10


@dataclass(frozen=True)
class StorageConfig:
    # Default: $STATE_DIRECTORY (systemd StateDirectory=) or ./hgad-edge-state.
    state_dir: str | None = None
    database: str | None = None  # default: <state_dir>/hgad-edge.sqlite
    heatmaps_dir: str | None = None  # default: <state_dir>/heatmaps
    max_age_days: float = 30.0
    max_events: int = 10000
    # Below this much free space, the oldest events and heatmaps go first.
    min_free_mb: float = 200.0
    retention_interval_s: float = 60.0
    heatmap_max_kb: int = 256


@dataclass(frozen=True)
class CalibrationConfig:
    far: float = 0.01
    # Frames a `calibrate/set` command collects when it does not say.
    live_frames: int = 200
    drift_window: int = 200


@dataclass(frozen=True)
class HealthConfig:
    stats_interval_s: float = 10.0
    state_interval_s: float = 1.0
    # Prometheus /metrics on this port (0 or null: off).
    prometheus_port: int | None = None
    prometheus_host: str = "127.0.0.1"


@dataclass(frozen=True)
class AgentConfig:
    model: str
    cameras: list[CameraConfig]
    device_id: str | None = None  # default: the host name
    backend: str = "auto"  # auto | torch | tensorrt
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str | None = None  # default: fp16 on tensorrt, fp32 on torch
    engine_cache: str | None = None  # default: $CACHE_DIRECTORY/engines or <state_dir>/engines
    batch: int = 1
    mqtt: MQTTConfig = field(default_factory=MQTTConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log_level: str = "warning"

    # ------------------------------------------------------------------ derived paths
    @property
    def device_name(self) -> str:
        return self.device_id or socket.gethostname()

    @property
    def state_dir(self) -> Path:
        base = self.storage.state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "hgad-edge-state"
        return Path(base)

    @property
    def database_path(self) -> Path:
        return Path(self.storage.database) if self.storage.database else self.state_dir / "hgad-edge.sqlite"

    @property
    def heatmaps_path(self) -> Path:
        return Path(self.storage.heatmaps_dir) if self.storage.heatmaps_dir else self.state_dir / "heatmaps"

    @property
    def engine_cache_path(self) -> Path:
        if self.engine_cache:
            return Path(self.engine_cache)
        cache = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
        return Path(cache) / "engines" if cache else self.state_dir / "engines"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"hgad-edge-{self.device_name}"


# -------------------------------------------------------------------------------------- loading

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CAMERA_TYPES = ("auto", "device", "file", "folder", "url", "gstreamer")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", str: "a string", int: "an integer", float: "a number", bool: "true/false"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {where}: {value!r} is not {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a device index written as a number
    raise ConfigError(f"{source}: {where}: {value!r} is not {_type_name(tp)}")


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    prefix = f"{where}." if where else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(fields)})"
            raise ConfigError(f"{source}: {prefix}{key}: unknown key{hint}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], f"{prefix}{name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: {prefix}{name}: required key is missing")
    return cls(**values)


def _check(cfg: AgentConfig, source: str, base: Path) -> None:
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{source}: {key}: {msg}")

    if cfg.backend not in ("auto", "torch", "tensorrt"):
        bad("backend", f"{cfg.backend!r} is not one of auto, torch, tensorrt")
    if cfg.precision not in (None, "fp32", "fp16", "int8"):
        bad("precision", f"{cfg.precision!r} is not one of fp32, fp16, int8")
    # Checked here so that the error names this file's key, not a command-line flag (torch is imported
    # only now: parsing a config should not need it otherwise).
    from hgad.runtime.torch_backend import resolve_device

    try:
        resolve_device(cfg.device, what=f"{source}: device")
    except BadInputError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.batch < 1 or cfg.batch > 64:
        bad("batch", f"{cfg.batch} must be between 1 and 64")
    if cfg.log_level not in LOG_LEVELS:
        bad("log_level", f"{cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if cfg.device_id is not None and not _NAME.match(cfg.device_id):
        bad("device_id", f"{cfg.device_id!r} must be letters, digits, '_', '.', '-' (it is an MQTT topic level)")
    model = Path(cfg.model)
    if not (model / "model.json").is_file():
        bad("model", f"{cfg.model} is not a model directory (no model.json there)")
    if not cfg.cameras:
        bad("cameras", "at least one camera is needed")
    names = set()
    for i, cam in enumerate(cfg.cameras):
        key = f"cameras[{i}]"
        if not _NAME.match(cam.name):
            bad(f"{key}.name", f"{cam.name!r} must be letters, digits, '_', '.', '-' (it is an MQTT topic level)")
        if cam.name in names:
            bad(f"{key}.name", f"{cam.name!r} is used by two cameras")
        names.add(cam.name)
        if cam.type not in CAMERA_TYPES:
            bad(f"{key}.type", f"{cam.type!r} is not one of {', '.join(CAMERA_TYPES)}")
        if not cam.line or "/" in cam.line or "+" in cam.line or "#" in cam.line:
            bad(f"{key}.line", f"{cam.line!r} is not a valid line name")
        if not cam.source:
            bad(f"{key}.source", "empty source")
        if cam.stall_timeout_s <= 0 or cam.reopen_min_s <= 0 or cam.reopen_max_s < cam.reopen_min_s:
            bad(f"{key}.reopen_max_s", "timeouts must be positive and reopen_max_s >= reopen_min_s")
    m = cfg.mqtt
    if not 0 < m.port < 65536:
        bad("mqtt.port", f"{m.port} is not a TCP port (1-65535)")
    if not m.prefix or any(c in m.prefix for c in "+#") or m.prefix.startswith("/") or m.prefix.endswith("/"):
        bad("mqtt.prefix", f"{m.prefix!r} is not a valid topic prefix (no +, #, leading or trailing /)")
    if m.password and m.password_file:
        bad("mqtt.password_file", "give either mqtt.password or mqtt.password_file, not both")
    if m.password_file and not Path(m.password_file).is_file():
        bad("mqtt.password_file", f"{m.password_file} does not exist")
    if m.keepalive_s < 5:
        bad("mqtt.keepalive_s", f"{m.keepalive_s} is too short; use at least 5")
    if m.reconnect_min_s <= 0 or m.reconnect_max_s < m.reconnect_min_s:
        bad("mqtt.reconnect_max_s", "reconnect delays must be positive and reconnect_max_s >= reconnect_min_s")
    if m.max_inflight < 1:
        bad("mqtt.max_inflight", f"{m.max_inflight} must be at least 1")
    for k in ("ca_file", "cert_file", "key_file"):
        v = getattr(m.tls, k)
        if v and not Path(v).is_file():
            bad(f"mqtt.tls.{k}", f"{v} does not exist")
    if m.tls.enabled and bool(m.tls.cert_file) != bool(m.tls.key_file):
        bad("mqtt.tls.key_file", "a client certificate needs both cert_file and key_file")
    d = cfg.decision
    if d.open_after < 1 or d.close_after < 1:
        bad("decision.open_after", "open_after and close_after must be at least 1")
    if d.update_growth < 1.0:
        bad("decision.update_growth", f"{d.update_growth} must be >= 1")
    if d.max_regions < 1:
        bad("decision.max_regions", f"{d.max_regions} must be at least 1")
    s = cfg.storage
    if s.max_age_days <= 0 or s.max_events < 1 or s.min_free_mb < 0:
        bad("storage.max_events", "retention limits must be positive")
    if not 16 <= s.heatmap_max_kb <= 4096:
        bad("storage.heatmap_max_kb", f"{s.heatmap_max_kb} must be between 16 and 4096")
    c = cfg.calibration
    if not 0 < c.far < 1:
        bad("calibration.far", f"{c.far} is not a rate between 0 and 1")
    if c.live_frames < MIN_IMAGES:
        bad("calibration.live_frames", f"{c.live_frames} is too few; use at least {MIN_IMAGES}")
    if c.drift_window < 20:
        bad("calibration.drift_window", f"{c.drift_window} is too small; use at least 20")
    h = cfg.health
    if h.stats_interval_s <= 0 or h.state_interval_s <= 0:
        bad("health.stats_interval_s", "intervals must be positive")
    if h.prometheus_port is not None and not 0 <= h.prometheus_port < 65536:
        bad("health.prometheus_port", f"{h.prometheus_port} is not a TCP port")


def _resolve(cfg: AgentConfig, base: Path) -> AgentConfig:
    """Relative paths in the file are relative to the file's folder, not to wherever the agent starts."""

    def rel(p: str | None) -> str | None:
        if p is None:
            return None
        p = os.path.expandvars(os.path.expanduser(p))
        return p if os.path.isabs(p) else str((base / p).resolve())

    cams = []
    for cam in cfg.cameras:
        src = cam.source
        is_file = cam.type in ("file", "folder") or (
            cam.type == "auto" and not src.isdigit() and "://" not in src and "!" not in src
        )
        cams.append(dataclasses.replace(cam, source=rel(src) if is_file else src))
    tls = dataclasses.replace(
        cfg.mqtt.tls,
        ca_file=rel(cfg.mqtt.tls.ca_file),
        cert_file=rel(cfg.mqtt.tls.cert_file),
        key_file=rel(cfg.mqtt.tls.key_file),
    )
    mqtt = dataclasses.replace(cfg.mqtt, password_file=rel(cfg.mqtt.password_file), tls=tls)
    storage = dataclasses.replace(
        cfg.storage,
        state_dir=rel(cfg.storage.state_dir),
        database=rel(cfg.storage.database),
        heatmaps_dir=rel(cfg.storage.heatmaps_dir),
    )
    return dataclasses.replace(
        cfg, model=rel(cfg.model), cameras=cams, mqtt=mqtt, storage=storage, engine_cache=rel(cfg.engine_cache)
    )


def parse_config(data: Any, source: str = "config", base: Path | None = None) -> AgentConfig:
    base = base or Path.cwd()
    cfg = _resolve(_build(AgentConfig, data, "", source), base)
    _check(cfg, source, base)
    return cfg


def load_config(path: Path) -> AgentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    return parse_config(data, str(path), path.parent.resolve())


def read_password(cfg: MQTTConfig) -> str | None:
    if cfg.password_file:
        try:
            return Path(cfg.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {cfg.password_file}: {exc.strerror}") from None
    return cfg.password
