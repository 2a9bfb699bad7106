"""`hgad-edge run`: the agent. It wires the rooms together and supervises them:

    cameras (one thread each) -> pipeline (inference, decisions) -> alerts -> writer (SQLite, files)
                                     ^                                          |
    MQTT link / web console -> dispatcher (commands)              outbox -> MQTT link

The main thread watches the cameras, pings systemd, publishes state and stats, runs retention and handles
signals. Everything that can fail on bad input (config, model, database, profiles) fails in `open()`, before
any thread starts, with one clear error.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from calibration.calibrate import score_frames
from calibration.db import open_database
from calibration.profile import Profile
from calibration.report import write_report
from calibration.store import ProfileStore
from hgad.errors import BadInputError
from hgad.model_dir import load_model
from hgad.runtime.backend import Backend
from hgad.runtime.select import open_backend
from hgad.runtime.threads import on_passing_thread

from . import paths
from .alerts import AlertEmitter
from .camera import Camera, gstreamer_available
from .camera_runtime import CameraRuntime
from .config import AgentConfig
from .dispatcher import Dispatcher
from .feedback import FeedbackStore
from .health import Latencies, PrometheusExporter, StageTimes, SystemdNotifier
from .mqtt import MQTTLink, Topics
from .pipeline import Pipeline
from .status import StatePublisher, StatsSources, stats
from .store import AgentStore, OutboxMessage, Writer

log = logging.getLogger(__name__)


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
        self.stages = StageTimes()
        self.prometheus: PrometheusExporter | None = None
        self.web = None
        self.stop_reason = ""

    # ------------------------------------------------------------------ setup
    def open(self) -> None:
        cfg = self.cfg
        # Model and backend are loaded on threads that end here, so that the pipeline thread's OpenMP pool
        # is the process's only one (hgad/runtime/threads.py).
        self.loaded = on_passing_thread(lambda: load_model(Path(cfg.model)), "load-model")
        self.model_id = self.loaded.model_id
        self.engine = open_database(cfg.database_path)
        self.profiles = ProfileStore(self.engine)
        self.store = AgentStore(self.engine, cfg.heatmaps_path, cfg.storage)
        self.feedback = FeedbackStore(self.engine, cfg.normals_path, cfg.feedback)
        self.runtimes = {rt.name: rt for rt in self._open_cameras()}
        self.backend, self.backend_reason = on_passing_thread(self._open_backend, "open-backend")
        info = self.backend.info
        log.info(
            "backend", extra={"fields": {"backend": info.name, "device": info.device, "reason": self.backend_reason}}
        )
        if cfg.health.prometheus_port:
            try:
                self.prometheus = PrometheusExporter(cfg.health.prometheus_host, cfg.health.prometheus_port)
            except OSError as exc:
                raise BadInputError(
                    f"health.prometheus_port: cannot listen on {cfg.health.prometheus_port}: {exc.strerror}"
                ) from None
        self._wire()

    def _open_backend(self) -> tuple[Backend, str]:
        cfg = self.cfg
        cache = cfg.engine_cache_path
        backend, reason = open_backend(self.loaded, cfg.backend, cfg.device, cfg.precision, cfg.batch, cache)
        backend.time_alone()  # the cameras have not started: the model is alone on the cores
        return backend, reason

    def _open_cameras(self) -> list[CameraRuntime]:
        """Each enabled camera with the profile of the line it judges (README, "Which line a camera judges")."""
        persisted = self.store.camera_lines()
        runtimes = []
        for i, cam in enumerate(self.cfg.cameras):
            if not cam.enabled:
                continue
            if cam.kind == "gstreamer" and not gstreamer_available():
                raise BadInputError(
                    f"cameras[{i}].source: a GStreamer pipeline needs OpenCV built with GStreamer (on a Jetson, "
                    f"JetPack's python3-opencv); this OpenCV has none"
                )
            line, why = persisted.line_for(cam.name, cam.line)
            try:
                profile = self.profiles.active_for(line, self.model_id, self.loaded.profile_models(line))
            except BadInputError as exc:
                raise BadInputError(f"camera {cam.name}: {exc}") from None
            log.info("camera line", extra={"fields": {"camera": cam.name, "line": line, "why": why}})
            camera = Camera(cam, self.loaded.model.cfg.image_size, self.stages)
            runtimes.append(CameraRuntime.create(camera, profile, self.cfg, self.loaded.model.classes))
        if not runtimes:
            raise BadInputError(f"{self.cfg.model}: no enabled camera in the configuration")
        return runtimes

    def _wire(self) -> None:
        cfg, rts = self.cfg, list(self.runtimes.values())
        self.writer = Writer(self.store)
        self.link = MQTTLink(cfg, self.store, self.writer, self._on_command, self._retained_state, self._on_acked)
        self.publisher = StatePublisher(self.topics, self.link.publish_state, self.model_id, self.backend.info.name)
        count = self.prometheus.count_alert if self.prometheus else (lambda camera, kind: None)
        self.alerts = AlertEmitter(
            cfg.device_name, self.model_id, self.topics, cfg.decision.max_regions, cfg.storage.heatmap_max_kb,
            self.writer, self.store.record_alert, lambda _ids: self.link.wake(), count, self.stages,
        )  # fmt: skip
        self.pipeline = Pipeline(
            self.backend, rts, cfg.batch, self.alerts.emit, self.publisher.calibrate, self._on_collected, self.stages
        )
        self.dispatcher = Dispatcher(
            cfg, self.loaded, self.profiles, self.runtimes, self.pipeline.call, self.publisher, self.alerts,
            self.writer, lambda camera, line: self.store.set_line(camera, line, self._config_line(camera)),
            self._build_profile, self.feedback, self._score,
        )  # fmt: skip
        self.link.verbs = self.dispatcher.verbs
        if cfg.web.enabled:
            self.web = self._console()

    def _console(self):
        """The web console, its port bound now: a port in use is a configuration error before any thread."""
        from .web.app import Console, build_app
        from .web.auth import Auth
        from .web.server import WebServer
        from .web.views import ConsoleData

        w = self.cfg.web
        data = ConsoleData(
            self.runtimes, self.model_id, self.backend.info.name, self.profiles, self.engine, self.feedback, self.stats
        )
        console = Console(data, self.dispatcher, Auth(w, self.cfg.state_dir / "web-secret"), w.live_fps)
        return WebServer(build_app(console), w.host, w.port)

    def _config_line(self, camera: str) -> str:
        return next(c.line for c in self.cfg.cameras if c.name == camera)

    # ------------------------------------------------------------------ callbacks
    def _on_command(self, camera: str, verb: str, payload: bytes) -> None:
        self.dispatcher.submit(camera, verb, payload)

    def _on_collected(self, rt: CameraRuntime) -> None:
        self.dispatcher.calibration_collected(rt)

    def _build_profile(self, rt: CameraRuntime) -> Profile:
        """Writer thread: the collected frames' profile, stored and activated, with its report."""
        collector = rt.calibration.collector
        assert collector is not None
        result = collector.build()
        result.profile = self.profiles.save(result.profile, activate=True)
        folder = paths.reports(self.cfg.database_path) / result.profile.line / f"v{result.profile.version}"
        try:
            write_report(folder, result)
        except OSError as exc:
            log.warning("calibration report not written", extra={"fields": {"folder": str(folder), "error": str(exc)}})
        return result.profile

    def _score(self, frames: list, line: str | None) -> tuple:
        """Scores and maps of frames through the agent's backend (the pipeline thread calls it)."""
        scored = score_frames(self.backend, frames, line, [str(i) for i in range(len(frames))])
        return scored.scores, scored.maps.astype("float32")

    def _on_acked(self, msg: OutboxMessage, now: float) -> None:
        ms = (now - msg.captured_mono) * 1000.0
        if 0.0 < ms < 86_400_000.0:  # monotonic clocks are only comparable within one boot
            self.e2e_latency.add(ms)
            rt = self.runtimes.get(msg.topic.split("/")[-2])
            if rt is not None:
                rt.ack_latency.add(ms)

    def _retained_state(self) -> list[tuple[str, bytes, int]]:
        heatmaps = {}
        try:
            heatmaps = self.store.latest_heatmaps()
        except Exception:
            log.exception("could not read the latest heatmaps")
        return self.publisher.retained(list(self.runtimes.values()), heatmaps)

    def stats(self) -> dict:
        info = self.backend.info
        return stats(
            StatsSources(
                device=self.cfg.device_name,
                model_id=self.model_id,
                backend={
                    "name": info.name,
                    "device": info.device,
                    "precision": info.precision,
                    "reason": self.backend_reason,
                },
                started_mono=self.started_mono,
                state_dir=self.cfg.state_dir,
                database=self.cfg.database_path,
                runtimes=list(self.runtimes.values()),
                outbox_depth=self.store.outbox_depth,
                queues=lambda: {
                    "inflight": self.link.inflight(),
                    "writer": self.writer.depth(),
                    "commands": self.pipeline.tasks.qsize(),
                },
                broker=self.link.status,
                disk=lambda: {"full": self.writer.disk_full, "write_errors": self.writer.errors},
                pipeline=lambda: {"batches": self.pipeline.batches, "errors": self.pipeline.errors},
                alert_ack_latency=self.e2e_latency,
                stages_ms=self.stages.summary,
            )
        )

    # ------------------------------------------------------------------ run
    def _signals(self) -> None:
        def stop(signum, _frame) -> None:
            self.stop_reason = signal.Signals(signum).name
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda _s, _f: self.reload_event.set())

    def start(self) -> None:
        self.open()
        if threading.current_thread() is threading.main_thread():
            self._signals()
        self.writer.start()
        self.link.start()
        for rt in self.runtimes.values():
            rt.camera.start()
        self.pipeline.start()
        if self.web is not None:
            self.web.start()
        self.notifier.status("starting: waiting for a camera")

    def run(self) -> int:
        self.start()
        self.supervisor = Supervisor(self)
        try:
            while not self.stop_event.wait(0.2):
                if self.supervisor.turn(time.monotonic()):
                    break
        finally:
            self.shutdown()
        # A run over recordings that a fault cut short has not judged them all: whoever ran it must know.
        cameras = {n: rt.camera for n, rt in self.runtimes.items()}
        cut = {n: c.health.fault for n, c in cameras.items() if c.stats.ended and c.health.fault}
        if self.exit_when_done and cut:
            log.error("recordings ended by a fault, not judged to their end", extra={"fields": cut})
            return 1
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("stopping", extra={"fields": {"reason": self.stop_reason or "stop"}})
        if self.web is not None:
            self.web.stop()
        self.pipeline.stop()
        for rt in self.runtimes.values():
            rt.camera.stop()
        for rt in self.runtimes.values():
            self.alerts.close(rt, "stopped")
            rt.camera.join(2.0)
        self.writer.flush()
        # Final counters (frames, corrupt, alerts) for whoever watches the stats topic.
        self.publisher.stats(self.stats(), qos=1)
        self.link.stop()
        self.writer.stop()
        if self.prometheus:
            self.prometheus.close()
        self.engine.dispose()


class Supervisor:
    """The main thread's round: camera watchdog, systemd, periodic state, stats and retention, reloads, and
    the end of a run over recordings (`--exit-when-done`)."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.last_stats = self.last_state = self.last_retention = self.last_ping = 0.0
        self.warned_profiles: set[str] = set()

    def turn(self, now: float) -> bool:
        """One round; True when the agent should stop."""
        a, h = self.agent, self.agent.cfg.health
        for rt in a.runtimes.values():
            if rt.camera.check_stall(now):
                a.publisher.camera(rt)
            self._check_profile(rt)
        if not a.notifier.ready_sent and any(rt.camera.stats.up for rt in a.runtimes.values()):
            a.notifier.ready(f"running: {len(a.runtimes)} camera(s), backend {a.backend.info.name}")
        wd = a.notifier.watchdog_s
        if wd and now - self.last_ping >= wd / 3 and now - a.pipeline.heartbeat < wd / 2:
            # Pinged only while the inference loop turns: a hung inference gets the service restarted.
            a.notifier.watchdog()
            self.last_ping = now
        if now - self.last_state >= h.state_interval_s:
            for rt in a.runtimes.values():
                a.publisher.camera(rt)
            self.last_state = now
        if now - self.last_stats >= h.stats_interval_s:
            message = a.stats()
            a.publisher.stats(message)
            if a.prometheus:
                a.prometheus.update(message)
            self.last_stats = now
        if now - self.last_retention >= a.cfg.storage.retention_interval_s:
            self._retention()
            self.last_retention = now
        if a.reload_event.is_set():
            a.reload_event.clear()
            a.notifier.reloading()
            a.pipeline.call(a.dispatcher.reload_profiles)
            a.notifier.ready("running (profiles reloaded)")
        return a.exit_when_done and self._recordings_done()

    def _check_profile(self, rt: CameraRuntime) -> None:
        """Once per profile: one made live from MJPG frames as an older agent decoded them (README, Calibration
        how-to) raises false alarms until the line is calibrated again."""
        if not rt.profile_predates_libjpeg or rt.profile.calibration_id in self.warned_profiles:
            return
        self.warned_profiles.add(rt.profile.calibration_id)
        log.warning(
            "profile made live from this camera's MJPG frames by hgad-edge 0.3 or earlier, which decoded them with "
            "FFmpeg; decoded now with libjpeg they score differently: calibrate the line again",
            extra={"fields": {"camera": rt.name, "line": rt.line, "profile": f"v{rt.profile.version}"}},
        )

    def _retention(self) -> None:
        """Events and heatmaps, then feedback samples, held to their limits (on the writer, after what it holds)."""
        self.agent.writer.submit(self.agent.store.retention)
        self.agent.writer.submit(self.agent.feedback.retention)

    def _recordings_done(self) -> bool:
        a = self.agent
        if not (a.pipeline.idle and a.pipeline.tasks.empty()):
            return False
        a.writer.flush()
        if a.store.outbox_depth() == 0 and a.link.inflight() == 0:
            # The run's last events and samples are held to the storage limits before it ends, not left to a
            # periodic retention pass that a short recording finishes before.
            self._retention()
            a.writer.flush()
            a.stop_reason = "recordings finished"
            return True
        return False
