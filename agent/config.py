"""The agent's configuration: typed dataclasses loaded from YAML, each rule beside its field.

Every problem is one `ConfigError` naming the file, the key path (e.g. `cameras[1].line`), the value and what
would be valid. Defaults are the embedded defaults documented in config.example.yaml. Loading imports neither
torch nor OpenCV, so a bad file is reported in a fraction of a second.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from calibration.threshold import MIN_IMAGES
from hgad.errors import BadInputError
from hgad.typed_config import Checked, at_least, between, load, one_of, positive, rate, setting, valid_name

from . import paths

BACKENDS = ("auto", "torch", "tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")
CAMERA_TYPES = ("auto", "device", "file", "folder", "url", "gstreamer")
LOG_LEVELS = ("debug", "info", "warning", "error")
TCP_PORT = between(1, 65535, "is not a TCP port (1-65535)")


class ConfigError(BadInputError):
    pass


def _existing_file(v: str) -> str | None:
    if Path(v).is_dir():
        return f"{v} is a directory; give a file"
    return None if Path(v).is_file() else f"{v} does not exist"


def _prefix(v: str) -> str | None:
    bad = not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/")
    return f"{v!r} is not a valid topic prefix (no +, #, leading or trailing /)" if bad else None


def _not_empty(v: str) -> str | None:
    return None if v.strip() else "empty value"


def _device(v: str) -> str | None:
    ok = re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)
    return None if ok else f"{v!r} is not a device; use cpu, cuda, cuda:N or auto"


def _model_dir(v: str) -> str | None:
    return None if paths.is_model_dir(v) else f"{v} is not a model directory (no model.json there)"


@dataclass(frozen=True)
class TLSConfig(Checked):
    enabled: bool = False
    ca_file: str | None = setting(None, check=_existing_file)
    cert_file: str | None = setting(None, check=_existing_file)
    key_file: str | None = setting(None, check=_existing_file)
    # Skip the broker's hostname check (certificate still verified against ca_file). For test rigs only.
    insecure: bool = False

    def relations(self) -> Iterable[tuple[str, str]]:
        if self.enabled and bool(self.cert_file) != bool(self.key_file):
            yield "key_file", "a client certificate needs both cert_file and key_file"


@dataclass(frozen=True)
class MQTTConfig(Checked):
    host: str = setting("127.0.0.1", check=_not_empty)
    port: int = setting(1883, check=TCP_PORT)
    prefix: str = setting("hgad", check=_prefix)
    client_id: str | None = None  # default: hgad-edge-<device_id>
    username: str | None = None
    # repr=False: a logged or printed configuration never shows the password.
    password: str | None = setting(None, repr=False)
    # A file holding the password (e.g. systemd LoadCredential: ${CREDENTIALS_DIRECTORY}/mqtt-password).
    password_file: str | None = setting(None, check=_existing_file)
    keepalive_s: int = setting(30, check=at_least(5, "; shorter keepalives make a busy link look dead"))
    reconnect_min_s: float = setting(1.0, check=positive)
    reconnect_max_s: float = setting(30.0, check=positive)
    tls: TLSConfig = setting(factory=TLSConfig)
    # Alerts in flight (sent, not yet acknowledged) at once; order is kept within this window.
    max_inflight: int = setting(20, check=at_least(1))

    def relations(self) -> Iterable[tuple[str, str]]:
        if self.password and self.password_file:
            yield "password_file", "give either mqtt.password or mqtt.password_file, not both"
        if self.reconnect_max_s < self.reconnect_min_s:
            yield "reconnect_max_s", f"{self.reconnect_max_s} must be >= reconnect_min_s ({self.reconnect_min_s})"


def _fourcc(v: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9 ]{4}", v):
        return None
    return f"{v!r} is not a four-character code (e.g. MJPG or YUYV)"


@dataclass(frozen=True)
class CameraConfig(Checked):
    name: str = setting(check=valid_name)
    source: str = setting(check=_not_empty)
    line: str = setting(check=valid_name)
    # auto: a number is a device index, a URL (rtsp/http/https) a stream, text with '!' a GStreamer
    # pipeline, a directory a folder of images, anything else a video file.
    type: str = setting("auto", check=one_of(*CAMERA_TYPES))
    # Files only: start again at the end.
    loop: bool = False
    # Files only: false processes every frame (a recording is not a live camera); true plays the file at
    # its own frame rate and lets the newest frame win, as a live camera does.
    realtime: bool = False
    # A stalled source (no frame for this long) is reopened, with exponential backoff up to reopen_max_s.
    stall_timeout_s: float = setting(5.0, check=positive)
    reopen_min_s: float = setting(0.5, check=positive)
    reopen_max_s: float = setting(30.0, check=positive)
    enabled: bool = True
    # Devices only: the mode to ask the camera for (a USB camera opens in its driver's default, often 640x480
    # YUYV). Unset keeps the default. A stream or a GStreamer pipeline sets its own (its caps, its URL).
    width: int | None = setting(None, check=positive)
    height: int | None = setting(None, check=positive)
    fps: float | None = setting(None, check=positive)
    fourcc: str | None = setting(None, check=_fourcc)

    def relations(self) -> Iterable[tuple[str, str]]:
        if self.reopen_max_s < self.reopen_min_s:
            yield "reopen_max_s", f"{self.reopen_max_s} must be >= reopen_min_s ({self.reopen_min_s})"
        if (self.width is None) != (self.height is None):
            key = "height" if self.height is None else "width"
            yield key, f"camera {self.name}: give width and height together (e.g. width: 1280, height: 720)"
        asked = [k for k in ("width", "height", "fps", "fourcc") if getattr(self, k) is not None]
        if asked and self.kind != "device":
            yield (
                asked[0],
                (
                    f"camera {self.name}: {', '.join(asked)} set the mode of a device camera (a device index); "
                    f"a {self.kind} source brings its own"
                ),
            )
        problem = self._local_source_problem() if self.enabled else None
        if problem:
            yield "source", f"camera {self.name}: {problem}"

    @property
    def kind(self) -> str:
        """device, url, gstreamer, folder or file: `type`, or what `source` looks like under `auto`."""
        if self.type != "auto":
            return self.type
        s = self.source.strip()
        if s.isdigit():
            return "device"
        if "://" in s:
            return "url"
        if "!" in s:
            return "gstreamer"
        return "folder" if Path(s).is_dir() else "file"

    def _local_source_problem(self) -> str | None:
        """A recording must be there when the agent starts: a mistyped path is the commonest setup mistake,
        and a live source (device, stream) that fails is retried instead."""
        path = Path(self.source)
        if self.kind == "file":
            if path.is_dir():
                return f"{self.source} is a directory; for a folder of images use type: folder (or auto)"
            if not path.exists():
                return f"{self.source} does not exist (a video file source must exist when the agent starts)"
        if self.kind == "folder" and not path.is_dir():
            what = "is a file; a folder source needs a directory of images" if path.exists() else "does not exist"
            return f"{self.source} {what}"
        return None


@dataclass(frozen=True)
class DecisionConfig(Checked):
    # Hysteresis: an alert opens after this many consecutive anomalous frames ...
    open_after: int = setting(3, check=at_least(1))
    # ... and closes after this many consecutive normal frames. One alert per event, not per frame.
    close_after: int = setting(5, check=at_least(1))
    # While open, an `update` is sent when the peak score grows by this factor, at most this often.
    update_growth: float = setting(1.25, check=at_least(1.0))
    update_interval_s: float = setting(5.0, check=at_least(0.0))
    max_regions: int = setting(10, check=at_least(1))


@dataclass(frozen=True)
class StorageConfig(Checked):
    # Default: $STATE_DIRECTORY (systemd StateDirectory=) or ./hgad-edge-state.
    state_dir: str | None = None
    database: str | None = None  # default: <state_dir>/hgad-edge.sqlite
    heatmaps_dir: str | None = None  # default: <state_dir>/heatmaps
    max_age_days: float = setting(30.0, check=positive)
    max_events: int = setting(10000, check=at_least(1))
    # Below this much free space, the oldest events and heatmaps go first.
    min_free_mb: float = setting(200.0, check=at_least(0.0))
    retention_interval_s: float = setting(60.0, check=positive)
    heatmap_max_kb: int = setting(256, check=between(16, 4096))


@dataclass(frozen=True)
class CalibrationConfig(Checked):
    far: float = setting(0.01, check=rate)
    # Frames a `calibrate/set` command collects when it does not say.
    live_frames: int = setting(200, check=at_least(MIN_IMAGES, " (too few to calibrate)"))
    drift_window: int = setting(200, check=at_least(20))


@dataclass(frozen=True)
class HealthConfig(Checked):
    stats_interval_s: float = setting(10.0, check=positive)
    state_interval_s: float = setting(1.0, check=positive)
    # Prometheus /metrics on this port (0 or null: off).
    prometheus_port: int | None = setting(None, check=between(0, 65535, "is not a TCP port (0-65535)"))
    prometheus_host: str = "127.0.0.1"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class WebConfig(Checked):
    """The operator console served by the agent (README, "Web console")."""

    enabled: bool = True
    host: str = setting("127.0.0.1", check=_not_empty)
    # 0 takes a free port (the log says which, at -v).
    port: int = setting(8080, check=between(0, 65535, "is not a TCP port (0-65535)"))
    # Files holding the passwords of the two roles: a viewer reads, an operator may also act. With either set,
    # every page asks for a login; bound beyond loopback, one must be set.
    viewer_password_file: str | None = setting(None, check=_existing_file)
    operator_password_file: str | None = setting(None, check=_existing_file)
    session_hours: float = setting(12.0, check=positive)
    # Frames per second the cameras page asks for (the console must not slow inference).
    live_fps: float = setting(2.0, check=between(0.2, 10.0))

    @property
    def login_required(self) -> bool:
        return bool(self.viewer_password_file or self.operator_password_file)

    def relations(self) -> Iterable[tuple[str, str]]:
        loopback = self.host in LOOPBACK or self.host.startswith("127.")
        if self.enabled and not loopback and not self.login_required:
            yield (
                "host",
                (
                    f"{self.host} is reachable from other machines: set web.operator_password_file (and "
                    "web.viewer_password_file) so the console asks for a login, or bind it to 127.0.0.1"
                ),
            )


@dataclass(frozen=True)
class FeedbackConfig(Checked):
    """Alerts an operator marks `false alarm` keep their frame as a normal sample of the line."""

    keep_false_alarms: bool = True
    max_per_line: int = setting(200, check=at_least(1))
    max_mb: float = setting(500.0, check=positive)
    max_age_days: float = setting(180.0, check=positive)


@dataclass(frozen=True)
class AgentConfig(Checked):
    model: str = setting(check=_model_dir)
    cameras: list[CameraConfig] = setting(check=lambda v: None if v else "at least one camera is needed")
    device_id: str | None = setting(None, check=valid_name)  # default: the host name
    backend: str = setting("auto", check=one_of(*BACKENDS))
    device: str = setting("auto", check=_device)  # auto | cpu | cuda | cuda:N
    precision: str | None = setting(None, check=one_of(*PRECISIONS))  # default: fp16 on tensorrt, fp32 on torch
    engine_cache: str | None = None  # default: paths.engine_cache()
    batch: int = setting(1, check=between(1, 64))
    mqtt: MQTTConfig = setting(factory=MQTTConfig)
    decision: DecisionConfig = setting(factory=DecisionConfig)
    storage: StorageConfig = setting(factory=StorageConfig)
    calibration: CalibrationConfig = setting(factory=CalibrationConfig)
    health: HealthConfig = setting(factory=HealthConfig)
    web: WebConfig = setting(factory=WebConfig)
    feedback: FeedbackConfig = setting(factory=FeedbackConfig)
    log_level: str = setting("warning", check=one_of(*LOG_LEVELS))

    def relations(self) -> Iterable[tuple[str, str]]:
        seen: set[str] = set()
        for i, cam in enumerate(self.cameras):
            if cam.name in seen:
                yield f"cameras[{i}].name", f"{cam.name!r} is used by two cameras"
            seen.add(cam.name)

    # ------------------------------------------------------------------ derived
    @property
    def device_name(self) -> str:
        return self.device_id or socket.gethostname()

    @property
    def state_dir(self) -> Path:
        return paths.state_dir(self.storage.state_dir)

    @property
    def database_path(self) -> Path:
        return Path(self.storage.database) if self.storage.database else paths.database(self.state_dir)

    @property
    def heatmaps_path(self) -> Path:
        return Path(self.storage.heatmaps_dir) if self.storage.heatmaps_dir else self.state_dir / "heatmaps"

    @property
    def engine_cache_path(self) -> Path:
        return paths.engine_cache(self.engine_cache)

    @property
    def normals_path(self) -> Path:
        """Frames of alerts marked false alarms, kept as normal samples: <state_dir>/normals/LINE/."""
        return self.state_dir / "normals"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"hgad-edge-{self.device_name}"


# -------------------------------------------------------------------------------------- loading


def _resolve(data: Any, base: Path) -> Any:
    """Relative paths in the file are relative to the file's folder, not to wherever the agent starts."""
    if not isinstance(data, dict):
        return data

    def rel(p: Any) -> Any:
        if not isinstance(p, str):
            return p
        p = os.path.expandvars(os.path.expanduser(p))
        return p if os.path.isabs(p) else str((base / p).resolve())

    out = dict(data)
    for key in ("model", "engine_cache"):
        if key in out:
            out[key] = rel(out[key])
    sections = (
        ("storage", ("state_dir", "database", "heatmaps_dir")),
        ("mqtt", ("password_file",)),
        ("web", ("viewer_password_file", "operator_password_file")),
    )
    for section, keys in sections:
        if isinstance(out.get(section), dict):
            out[section] = {**out[section], **{k: rel(out[section][k]) for k in keys if k in out[section]}}
    mqtt = out.get("mqtt")
    if isinstance(mqtt, dict) and isinstance(mqtt.get("tls"), dict):
        tls = mqtt["tls"]
        out["mqtt"] = {
            **mqtt,
            "tls": {**tls, **{k: rel(tls[k]) for k in ("ca_file", "cert_file", "key_file") if k in tls}},
        }
    if isinstance(out.get("cameras"), list):
        out["cameras"] = [_resolve_camera(c, rel) for c in out["cameras"]]
    return out


def _resolve_camera(cam: Any, rel) -> Any:
    if not isinstance(cam, dict) or not isinstance(cam.get("source"), str):
        return cam
    src, kind = cam["source"], cam.get("type", "auto")
    local = kind in ("file", "folder") or (kind == "auto" and not src.isdigit() and "://" not in src and "!" not in src)
    return {**cam, "source": rel(src)} if local else cam


def parse_config(data: Any, source: str = "config", base: Path | None = None) -> AgentConfig:
    cfg = load(AgentConfig, _resolve(data, base or Path.cwd()), source, ConfigError)
    _check_device(cfg, source)
    return cfg


def _check_device(cfg: AgentConfig, source: str) -> None:
    """A CUDA device asked for on a machine without one. Only a file that passed every other check gets
    here: asking needs torch, which takes seconds to import."""
    if not cfg.device.startswith("cuda"):
        return
    from hgad.runtime.torch_backend import resolve_device

    try:
        resolve_device(cfg.device, what=f"{source}: device")
    except BadInputError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: Path) -> AgentConfig:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give the configuration file (e.g. {path / 'config.yaml'})")
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
    except PermissionError:
        raise ConfigError(f"{path}: not readable by this user (uid {os.getuid()})") from None
    return parse_config(data, str(path), path.parent.resolve())


def read_password(cfg: MQTTConfig) -> str | None:
    if cfg.password_file:
        try:
            return Path(cfg.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {cfg.password_file}: {exc.strerror}") from None
    return cfg.password
