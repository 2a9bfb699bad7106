"""`hgad-edge run`: the agent. Threads: one per camera, the pipeline (inference and decisions), the writer
(SQLite and files), paho's network loop and the outbox publisher; the main thread supervises (camera
watchdog, systemd, state and stats, retention, signals).

Everything that can fail on bad input (config, model, database, profiles) fails in `open()`, before any
thread starts, with one clear error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from calibration.calibrate import LiveCalibration, resolve_mode, unknown_line_warning
from calibration.db import open_database
from calibration.drift import DriftMonitor
from calibration.profile import Profile
from calibration.report import write_report
from calibration.store import ProfileStore
from hgad.errors import BadInputError
from hgad.model_dir import load_model
from hgad.runtime.select import open_backend

from .alerts import AlertContext, render, state_payload
from .camera import Camera, gstreamer_available, source_type
from .commands import CommandError, parse_calibrate_set, parse_line_set
from .config import AgentConfig
from .decision import AlertEvent, Hysteresis
from .health import Latencies, PrometheusExporter, SystemdNotifier
from .mqtt import MQTTLink, Topics
from .pipeline import CameraRuntime, Pipeline
from .store import AgentStore, OutboxMessage, Writer, free_mb

log = logging.getLogger(__name__)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _line_ok(profile: Profile) -> dict:
    """The `line/state` of a camera judging with `profile`."""
    return {"ok": True, "line": profile.line, "calibration_id": profile.calibration_id, "ts": _now_iso()}


@dataclass
class RunResult:
    exit_code: int
    reason: str


class Agent:
    def __init__(self, cfg: AgentConfig, exit_when_done: bool = False):
        self.cfg = cfg
        self.exit_when_done = exit_when_done
        self.topics = Topics(cfg.mqtt.prefix, cfg.device_name)
        self.notifier = SystemdNotifier()
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.started_mono = time.monotonic()
        self.e2e_latency = Latencies()
        self.prometheus: PrometheusExporter | None = None
        self.stop_reason = ""

    # ------------------------------------------------------------------ setup
    def open(self) -> None:
        cfg = self.cfg
        self.loaded = load_model(Path(cfg.model))
        self.model_id = self.loaded.model_id
        engine = open_database(cfg.database_path)
        self.engine = engine
        self.profiles = ProfileStore(engine)
        self.store = AgentStore(engine, cfg.heatmaps_path, cfg.storage)
        for i, cam_cfg in enumerate(cfg.cameras):
            if cam_cfg.enabled and source_type(cam_cfg) == "gstreamer" and not gstreamer_available():
                raise BadInputError(
                    f"cameras[{i}].source: a GStreamer pipeline needs OpenCV built with GStreamer (on a Jetson, "
                    f"JetPack's python3-opencv); this OpenCV has none"
                )
        persisted = self.store.camera_lines()
        self.runtimes: list[CameraRuntime] = []
        for cam_cfg in cfg.cameras:
            if not cam_cfg.enabled:
                continue
            line = persisted.get(cam_cfg.name, cam_cfg.line)
            try:
                profile = self.profiles.active_for(line, self.model_id)
            except BadInputError as exc:
                raise BadInputError(f"camera {cam_cfg.name}: {exc}") from None
            self.runtimes.append(self._runtime(Camera(cam_cfg), profile))
        if not self.runtimes:
            raise BadInputError(f"{cfg.model}: no enabled camera in the configuration")
        self.backend, self.backend_reason = open_backend(
            self.loaded, cfg.backend, cfg.device, cfg.precision, cfg.batch, cfg.engine_cache_path
        )
        log.info(
            "backend",
            extra={
                "fields": {
                    "backend": self.backend.info.name,
                    "device": self.backend.info.device,
                    "reason": self.backend_reason,
                }
            },
        )
        self.writer = Writer(self.store)
        self.link = MQTTLink(cfg, self.store, self.writer, self._on_command, self._retained_state, self._on_acked)
        self.pipeline = Pipeline(
            self.backend, self.runtimes, cfg.batch, self._emit, self._on_calibrated, self._publish_calibrate_state
        )
        if cfg.health.prometheus_port:
            try:
                self.prometheus = PrometheusExporter(cfg.health.prometheus_host, cfg.health.prometheus_port)
            except OSError as exc:
                raise BadInputError(
                    f"health.prometheus_port: cannot listen on {cfg.health.prometheus_port}: {exc.strerror}"
                ) from None

    def _runtime(self, camera: Camera, profile: Profile) -> CameraRuntime:
        rt = CameraRuntime(
            camera, profile, Hysteresis(self.cfg.decision), DriftMonitor(profile, self.cfg.calibration.drift_window)
        )
        rt.line_state = _line_ok(profile)
        return rt

    def rt(self, camera: str) -> CameraRuntime | None:
        return next((r for r in self.runtimes if r.name == camera), None)

    # ------------------------------------------------------------------ alerts
    def _emit(self, rt: CameraRuntime, ev: AlertEvent, created_mono: float) -> None:
        ctx = AlertContext(
            self.cfg.device_name,
            rt.name,
            self.model_id,
            rt.profile,
            self.topics,
            self.cfg.decision.max_regions,
            min(self.cfg.storage.heatmap_max_kb, 256) * 1024,
        )
        self.writer.submit(
            lambda: self.store.record_alert(render(ctx, ev, created_mono)), lambda _ids: self.link.wake()
        )
        if self.prometheus:
            self.prometheus.alerts.labels(rt.name, ev.type).inc()
        log.info(
            "alert",
            extra={
                "fields": {
                    "camera": rt.name,
                    "type": ev.type,
                    "event_id": ev.event_id,
                    "score": round(ev.observation.score, 5),
                    "frame": ev.observation.frame_index,
                }
            },
        )

    def _close_alert(self, rt: CameraRuntime, reason: str) -> None:
        ev = rt.hysteresis.close(reason)
        if ev is not None:
            self._emit(rt, ev, time.monotonic())

    def _on_acked(self, msg: OutboxMessage, now: float) -> None:
        ms = (now - msg.captured_mono) * 1000.0
        if 0.0 < ms < 86_400_000.0:  # monotonic clocks are only comparable within one boot
            self.e2e_latency.add(ms)
            camera = msg.topic.split("/")[-2]
            rt = self.rt(camera)
            if rt is not None:
                rt.ack_latency.add(ms)

    # ------------------------------------------------------------------ commands (pipeline thread)
    def _on_command(self, camera: str, kind: str, payload: bytes) -> None:
        self.pipeline.call(lambda: self._apply_command(camera, kind, payload))

    def _known_lines(self) -> set[str]:
        return {line for line, p in self.profiles.active_lines().items() if p.model_id == self.model_id}

    def _apply_command(self, camera: str, kind: str, payload: bytes) -> None:
        rt = self.rt(camera)
        if rt is None:
            err = state_payload(ok=False, error=f"unknown camera {camera!r}", ts=_now_iso())
            self.link.publish(self.topics.camera(camera, f"{kind}/state"), err, qos=1, retain=False)
            return
        try:
            if kind == "line":
                self._line_set(rt, payload)
            else:
                self._calibrate_set(rt, payload)
        except (CommandError, BadInputError) as exc:
            log.warning("command refused", extra={"fields": {"camera": camera, "command": kind, "error": str(exc)}})
            if kind == "line":
                rt.line_state = {
                    "ok": False,
                    "error": str(exc),
                    "line": rt.line,
                    "calibration_id": rt.profile.calibration_id,
                    "ts": _now_iso(),
                }
                self._publish_line_state(rt)
            else:
                state = {k: v for k, v in rt.live_state.items() if k != "error"}
                rt.live_state = state | {"ok": False, "error": str(exc), "ts": _now_iso()}
                self._publish_calibrate_state(rt)

    def _switch(self, rt: CameraRuntime, profile: Profile, reason: str) -> None:
        self._close_alert(rt, reason)
        rt.profile = profile
        rt.hysteresis = Hysteresis(self.cfg.decision)
        rt.drift = DriftMonitor(profile, self.cfg.calibration.drift_window)
        rt.drift_status = None
        rt.line_state = _line_ok(profile)
        self.writer.submit(lambda: self.store.set_line(rt.name, profile.line))
        self._publish_line_state(rt)
        self._publish_state(rt)

    def _line_set(self, rt: CameraRuntime, payload: bytes) -> None:
        cmd = parse_line_set(rt.name, payload, self._known_lines())
        if rt.live is not None:
            raise CommandError("a live calibration is in progress on this camera; wait for it to finish")
        profile = self.profiles.active_for(cmd.line, self.model_id)
        self._switch(rt, profile, "line changed")
        log.info("line switched", extra={"fields": {"camera": rt.name, "line": cmd.line}})

    def _calibrate_set(self, rt: CameraRuntime, payload: bytes) -> None:
        c = self.cfg.calibration
        cmd = parse_calibrate_set(rt.name, payload, c.live_frames, c.far)
        if rt.live is not None:
            raise CommandError("a live calibration is already in progress on this camera")
        line = cmd.line or rt.line
        mode = rt.profile.mode if line == rt.line else resolve_mode(self.loaded.model.classes, line, None)
        if mode == "class-aware" and line not in self.loaded.model.classes:
            mode = "class-agnostic"
        rt.live = LiveCalibration(self.loaded, line, cmd.frames, cmd.far, mode, f"live:{rt.name}")
        self._close_alert(rt, "calibrating")
        rt.live_state = {
            "ok": True,
            "state": "collecting",
            "line": line,
            "collected": 0,
            "frames": cmd.frames,
            "far": cmd.far,
            "ts": _now_iso(),
        }
        if line not in self.loaded.model.classes:
            log.warning(
                "calibrating a line the model does not know", extra={"fields": {"camera": rt.name, "line": line}}
            )
        self._publish_calibrate_state(rt)
        log.info("live calibration started", extra={"fields": {"camera": rt.name, "line": line, "frames": cmd.frames}})

    def _on_calibrated(self, rt: CameraRuntime, live: LiveCalibration) -> None:
        """Frames collected (pipeline thread): build, store and activate on the writer thread, then switch."""

        def build() -> Profile:
            result = live.build()
            stored = self.profiles.save(result.profile, activate=True)
            result.profile = stored
            try:
                write_report(self.cfg.state_dir / "reports" / stored.line / f"v{stored.version}", result)
            except OSError as exc:
                log.warning("calibration report not written", extra={"fields": {"error": str(exc)}})
            return stored

        def done(profile: Profile) -> None:
            def apply() -> None:
                self._switch(rt, profile, "recalibrated")
                rt.live_state = {
                    "ok": True,
                    "state": "done",
                    "line": profile.line,
                    "calibration_id": profile.calibration_id,
                    "version": profile.version,
                    "threshold": profile.threshold,
                    "n": profile.n,
                    "far": profile.far,
                    "ts": _now_iso(),
                }
                self._publish_calibrate_state(rt)
                log.info(
                    "live calibration done",
                    extra={
                        "fields": {"camera": rt.name, "line": profile.line, "calibration_id": profile.calibration_id}
                    },
                )

            self.pipeline.call(apply)

        def job() -> Profile | None:
            try:
                return build()
            except BadInputError as exc:
                error = str(exc)  # `exc` is unbound once the except block ends; the closure runs later

                def fail() -> None:
                    rt.live_state = {
                        "ok": False,
                        "state": "failed",
                        "line": live.line,
                        "error": error,
                        "ts": _now_iso(),
                    }
                    self._publish_calibrate_state(rt)

                self.pipeline.call(fail)
                return None

        self.writer.submit(job, lambda p: p is not None and done(p))

    # ------------------------------------------------------------------ state and stats
    def _state(self, rt: CameraRuntime) -> bytes:
        p = rt.profile
        return state_payload(
            camera_name=rt.name,
            line=p.line,
            calibration_id=p.calibration_id,
            model_id=self.model_id,
            mode=p.mode,
            last_score=rt.last_score,
            threshold=p.threshold,
            p_value=rt.last_p,
            anomalous=rt.anomalous,
            alert_open=rt.hysteresis.is_open,
            event_id=rt.hysteresis.open_event,
            camera="up" if rt.camera.stats.up else ("ended" if rt.camera.stats.ended else "down"),
            camera_error=rt.camera.stats.last_error or None,
            calibrating=rt.live is not None,
            drift=rt.drift_status.to_dict() if rt.drift_status else None,
            frames=rt.frames,
            backend=self.backend.info.name,
            ts=_now_iso(),
        )

    def _publish_state(self, rt: CameraRuntime) -> None:
        self.link.publish(self.topics.camera(rt.name, "state"), self._state(rt), qos=0, retain=True)

    def _publish_line_state(self, rt: CameraRuntime) -> None:
        self.link.publish(self.topics.camera(rt.name, "line/state"), state_payload(**rt.line_state), qos=1, retain=True)

    def _calibrate_state(self, rt: CameraRuntime) -> bytes:
        state = rt.live_state
        # Every report of a calibration that goes ahead on a line the model was not trained on says what
        # that is worth (a refused command's or a failure's error needs no second message).
        warning = unknown_line_warning(self.loaded.model.classes, state["line"]) if "line" in state else None
        if warning and state.get("ok", True) and state.get("state") != "failed":
            state = state | {"warning": warning}
        return state_payload(**state)

    def _publish_calibrate_state(self, rt: CameraRuntime) -> None:
        self.link.publish(self.topics.camera(rt.name, "calibrate/state"), self._calibrate_state(rt), qos=1, retain=True)

    def _retained_state(self) -> list[tuple[str, bytes, int]]:
        """Called on every successful connect: what must be retained on the broker, then `online` follows."""
        out = []
        heatmaps = {}
        try:
            heatmaps = self.store.latest_heatmaps()
        except Exception:
            log.exception("could not read the latest heatmaps")
        for rt in self.runtimes:
            out.append((self.topics.camera(rt.name, "state"), self._state(rt), 0))
            out.append((self.topics.camera(rt.name, "line/state"), state_payload(**rt.line_state), 1))
            out.append((self.topics.camera(rt.name, "calibrate/state"), self._calibrate_state(rt), 1))
            path = heatmaps.get(rt.name)
            if path and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    out.append((self.topics.camera(rt.name, "heatmap"), Path(path).read_bytes(), 1))
        return out

    def stats(self) -> dict:
        now = time.monotonic()
        cams = {}
        for rt in self.runtimes:
            s = rt.camera.stats
            cams[rt.name] = {
                "line": rt.line,
                "up": s.up,
                "fps_in": rt.camera.rate.per_second(now),
                "fps_processed": rt.processed.per_second(now),
                "frames_in": s.frames_in,
                "processed": rt.frames,
                "active_s": round(rt.last_mono - rt.first_mono, 3) if rt.first_mono and rt.last_mono else 0.0,
                "skipped": s.dropped,
                "corrupt": s.corrupt,
                "reconnects": s.reconnects,
                "alerts": rt.alerts,
                "latency_ms": rt.latency.summary(),
                "alert_ack_latency_ms": rt.ack_latency.summary(),
            }
        try:
            depth = self.store.outbox_depth()
        except Exception:
            depth = -1
        db = self.cfg.database_path
        db_mb = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()) / 2**20
        return {
            "ts": _now_iso(),
            "device": self.cfg.device_name,
            "uptime_s": round(now - self.started_mono, 1),
            "backend": {
                "name": self.backend.info.name,
                "device": self.backend.info.device,
                "precision": self.backend.info.precision,
                "reason": self.backend_reason,
            },
            "model_id": self.model_id,
            "cameras": cams,
            "outbox_depth": depth,
            "queue_depth": {
                "outbox": depth,
                "inflight": self.link.inflight(),
                "writer": self.writer.depth(),
                "commands": self.pipeline.tasks.qsize(),
            },
            "broker": {
                "connected": self.link.connected.is_set(),
                "connects": self.link.connects,
                "disconnects": self.link.disconnects,
                "error": self.link.last_error or None,
            },
            "disk": {
                "free_mb": round(free_mb(self.cfg.state_dir), 1),
                "db_mb": round(db_mb, 2),
                "full": self.writer.disk_full,
                "write_errors": self.writer.errors,
            },
            "alert_ack_latency_ms": self.e2e_latency.summary(),
            "pipeline": {"batches": self.pipeline.batches, "errors": self.pipeline.errors},
        }

    # ------------------------------------------------------------------ reload (SIGHUP)
    def reload_profiles(self) -> None:
        def apply() -> None:
            for rt in self.runtimes:
                try:
                    profile = self.profiles.active_for(rt.line, self.model_id)
                except BadInputError as exc:
                    log.error("reload: profile kept", extra={"fields": {"camera": rt.name, "error": str(exc)}})
                    continue
                if profile.calibration_id != rt.profile.calibration_id:
                    self._switch(rt, profile, "profile reloaded")
                    log.info(
                        "reload: new profile",
                        extra={"fields": {"camera": rt.name, "calibration_id": profile.calibration_id}},
                    )

        self.pipeline.call(apply)

    # ------------------------------------------------------------------ run
    def _signals(self) -> None:
        def stop(signum, _frame) -> None:
            self.stop_reason = signal.Signals(signum).name
            self.stop_event.set()

        def hup(_signum, _frame) -> None:
            self.reload_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def run(self) -> int:
        self.open()
        if threading.current_thread() is threading.main_thread():
            self._signals()
        self.writer.start()
        self.link.start()
        for rt in self.runtimes:
            rt.camera.start()
        self.pipeline.start()
        h = self.cfg.health
        last_stats = last_state = last_retention = last_ping = 0.0
        self.notifier.status("starting: waiting for a camera")
        try:
            while not self.stop_event.wait(0.2):
                now = time.monotonic()
                for rt in self.runtimes:
                    if rt.camera.check_stall(now):
                        self._publish_state(rt)
                if not self.notifier.ready_sent and any(rt.camera.stats.up for rt in self.runtimes):
                    self.notifier.ready(f"running: {len(self.runtimes)} camera(s), backend {self.backend.info.name}")
                wd = self.notifier.watchdog_s
                if wd and now - last_ping >= wd / 3 and now - self.pipeline.heartbeat < wd / 2:
                    # Pinged only while the inference loop turns: a hung inference gets the service restarted.
                    self.notifier.watchdog()
                    last_ping = now
                if now - last_state >= h.state_interval_s:
                    for rt in self.runtimes:
                        self._publish_state(rt)
                    last_state = now
                if now - last_stats >= h.stats_interval_s:
                    stats = self.stats()
                    self.link.publish(self.topics.stats, state_payload(**stats), qos=0, retain=False)
                    if self.prometheus:
                        self.prometheus.update(stats)
                    last_stats = now
                if now - last_retention >= self.cfg.storage.retention_interval_s:
                    self.writer.submit(self.store.retention)
                    last_retention = now
                if self.reload_event.is_set():
                    self.reload_event.clear()
                    self.notifier.reloading()
                    self.reload_profiles()
                    self.notifier.ready("running (profiles reloaded)")
                if self.exit_when_done and self.pipeline.idle and self.pipeline.tasks.empty():
                    self.writer.flush()
                    if self.store.outbox_depth() == 0 and self.link.inflight() == 0:
                        self.stop_reason = "recordings finished"
                        break
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping", extra={"fields": {"reason": self.stop_reason or "stop"}})
        self.pipeline.stop()
        for rt in self.runtimes:
            rt.camera.stop()
        for rt in self.runtimes:
            self._close_alert(rt, "stopped")
            rt.camera.join(2.0)
        self.writer.flush()
        # Final counters (frames, corrupt, alerts) for whoever watches the stats topic.
        self.link.publish(self.topics.stats, state_payload(**self.stats()), qos=1, retain=False)
        self.link.stop()
        self.writer.stop()
        if self.prometheus:
            self.prometheus.close()
        self.engine.dispose()
