"""One table of command handlers; the MQTT link and the web console are transports that call it.

A command names a camera, a verb (`line`, `calibrate`) and a payload (JSON bytes, as MQTT carries it). The
dispatcher validates it (commands.py) and applies it on the pipeline thread, the only thread that changes a
camera's state. The outcome goes on the verb's state topic, as the MQTT contract says, and back to whoever
submitted it. A refused command changes nothing and says why in both places.

Commands that are not a camera's (a profile activated for a line, an operator's verdict on an alert) go
through `submit_device`; SIGHUP's reload and the end of a live calibration are here too, so every change of a
camera's profile goes through `switch`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.calibrate import resolve_mode
from calibration.profile import Profile
from calibration.store import ProfileStore
from hgad.errors import BadInputError
from hgad.model_dir import LoadedModel

from .alerts import AlertEmitter
from .camera_runtime import CameraRuntime
from .commands import CommandError, parse_activate_profile, parse_calibrate_set, parse_feedback, parse_line_set
from .config import AgentConfig
from .feedback import LABELS, FeedbackStore
from .messages import CalibrateState, LineState
from .status import StatePublisher
from .store import Writer

log = logging.getLogger(__name__)

RunOnPipeline = Callable[[Callable[[], None]], None]
# Frames and a line (None: class-agnostic) -> their scores and maps, through the agent's backend.
Score = Callable[[list[np.ndarray], str | None], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None
    state: Any  # the state message the command left (LineState, CalibrateState)


@dataclass(frozen=True)
class Verb:
    # Applies the command and publishes the state it leaves; raises CommandError or BadInputError to refuse.
    apply: Callable[[CameraRuntime, bytes], None]
    refuse: Callable[[CameraRuntime, str], None]  # records the refusal in the camera's state message
    state: Callable[[CameraRuntime], Any]  # the camera's current state message for this verb
    publish: Callable[[CameraRuntime], None]  # publishes that message (for a refusal)
    unknown_camera: Callable[[str], Any]  # the state message answering a command for a camera we lack


class Dispatcher:
    def __init__(
        self,
        cfg: AgentConfig,
        loaded: LoadedModel,
        profiles: ProfileStore,
        runtimes: dict[str, CameraRuntime],
        run: RunOnPipeline,
        publisher: StatePublisher,
        alerts: AlertEmitter,
        writer: Writer,
        persist_line: Callable[[str, str], None],
        build_profile: Callable[[CameraRuntime], Profile],
        feedback: FeedbackStore | None = None,
        score: Score | None = None,
    ):
        self.cfg, self.loaded, self.profiles, self.runtimes = cfg, loaded, profiles, runtimes
        self.run, self.publisher, self.alerts, self.writer = run, publisher, alerts, writer
        self.persist_line, self.build_profile = persist_line, build_profile
        self.feedback, self.score = feedback, score
        self.table: dict[str, Verb] = {
            "line": Verb(
                self._line_set, self._refuse_line, lambda rt: rt.line_state, publisher.line, LineState.unknown_camera
            ),
            "calibrate": Verb(
                self._calibrate_set,
                lambda rt, error: rt.calibration.refused(error),
                lambda rt: rt.calibration.message,
                publisher.calibrate,
                lambda error: CalibrateState.idle().but(ok=False, error=error),
            ),
        }

    @property
    def verbs(self) -> list[str]:
        return list(self.table)

    # ------------------------------------------------------------------ entry for transports (any thread)
    def submit(self, camera: str, verb: str, payload: bytes) -> Future[Outcome]:
        """Apply a command between two batches of the pipeline; the future holds its outcome."""
        future: Future[Outcome] = Future()

        def task() -> None:
            try:
                future.set_result(self.apply(camera, verb, payload))
            except BaseException as exc:  # never leave a caller waiting on a future that cannot resolve
                future.set_exception(exc)
                raise

        self.run(task)
        return future

    def apply(self, camera: str, verb: str, payload: bytes) -> Outcome:
        """On the pipeline thread."""
        if verb not in self.table:
            raise CommandError(f"unknown command {verb!r}; known: {', '.join(self.table)}")
        v = self.table[verb]
        rt = self.runtimes.get(camera)
        if rt is None:
            message = v.unknown_camera(f"unknown camera {camera!r} (cameras: {', '.join(self.runtimes)})")
            self.publisher.unknown_camera(camera, f"{verb}", message)
            return Outcome(False, message.error, message)
        try:
            v.apply(rt, payload)
        except (CommandError, BadInputError) as exc:
            error = str(exc)
            log.info("command refused", extra={"fields": {"camera": camera, "command": verb, "error": error}})
            v.refuse(rt, error)
            v.publish(rt)
            return Outcome(False, error, v.state(rt))
        return Outcome(True, None, v.state(rt))

    # ------------------------------------------------------------------ device-wide commands (any thread)
    def submit_device(self, verb: str, payload: bytes, by: str = "operator") -> Future[Outcome]:
        """`profile`: activate a profile for its line (its cameras switch to it); `feedback`: an operator's
        verdict on an alert. The database work runs on the writer thread; the future holds the outcome."""
        future: Future[Outcome] = Future()
        handlers = {"profile": self._activate, "feedback": self._verdict}
        try:
            if verb not in handlers:
                raise CommandError(f"unknown command {verb!r}; known: {', '.join(handlers)}")
            handlers[verb](payload, by, future)
        except (CommandError, BadInputError) as exc:
            log.info("command refused", extra={"fields": {"command": verb, "error": str(exc)}})
            future.set_result(Outcome(False, str(exc), None))
        return future

    def _on_writer(self, job: Callable[[], Any], then: Callable[[Any], None], future: Future[Outcome]) -> None:
        """`job` on the writer thread; a refusal it raises resolves `future`, else `then(result)` does."""

        def guarded() -> Any:
            try:
                return job()
            except (CommandError, BadInputError) as exc:
                return exc

        def done(result: Any) -> None:
            if isinstance(result, Exception):
                future.set_result(Outcome(False, str(result), None))
            else:
                then(result)

        self.writer.submit(guarded, done)

    def _verdict(self, payload: bytes, by: str, future: Future[Outcome]) -> None:
        if self.feedback is None:
            raise CommandError("feedback is not kept by this agent")
        cmd = parse_feedback(payload, LABELS)
        mark = lambda: self.feedback.mark(cmd.event_id, cmd.label, by)  # noqa: E731
        self._on_writer(mark, lambda v: future.set_result(Outcome(True, None, dataclasses.asdict(v))), future)

    def _activate(self, payload: bytes, by: str, future: Future[Outcome]) -> None:
        cmd = parse_activate_profile(payload)
        chosen = self.profiles.get(cmd.calibration_id)
        if chosen is None:
            raise CommandError(f"calibration_id: no profile {cmd.calibration_id!r}")
        if chosen.model_id not in self.loaded.profile_models(chosen.line):
            raise CommandError(
                f"calibration {cmd.calibration_id} belongs to model {chosen.model_id}, not to the loaded model "
                f"{self.loaded.model_id}; recalibrate the line instead"
            )

        def switch_cameras(profile: Profile) -> None:
            def apply() -> None:
                cameras = [
                    rt.name for rt in self.runtimes.values() if rt.line == profile.line and not rt.calibration.busy
                ]
                for name in cameras:
                    self.switch(self.runtimes[name], profile, "profile activated")
                state = {"line": profile.line, "calibration_id": profile.calibration_id, "version": profile.version}
                future.set_result(Outcome(True, None, state | {"cameras": cameras}))
                log.info("profile activated", extra={"fields": state | {"by": by}})

            self.run(apply)

        self._on_writer(lambda: self.profiles.activate(cmd.calibration_id), switch_cameras, future)

    # ------------------------------------------------------------------ line
    def known_lines(self) -> set[str]:
        return {
            line for line, p in self.profiles.active_lines().items() if p.model_id in self.loaded.profile_models(line)
        }

    def _active(self, line: str) -> Profile:
        return self.profiles.active_for(line, self.loaded.model_id, self.loaded.profile_models(line))

    def _line_set(self, rt: CameraRuntime, payload: bytes) -> None:
        cmd = parse_line_set(rt.name, payload, self.known_lines())
        if rt.calibration.busy:
            raise CommandError("a live calibration is in progress on this camera; wait for it to finish")
        self.switch(rt, self._active(cmd.line), "line changed")
        log.info("line switched", extra={"fields": {"camera": rt.name, "line": cmd.line}})

    def _refuse_line(self, rt: CameraRuntime, error: str) -> None:
        rt.line_state = rt.line_state.refused(error)

    def switch(self, rt: CameraRuntime, profile: Profile, reason: str) -> None:
        """Judge `rt` with `profile` from the next frame: its open alert ends, its line is persisted, and its
        line and camera state go out."""
        self.alerts.close(rt, reason)
        rt.use(profile, self.cfg)
        self.writer.submit(lambda: self.persist_line(rt.name, profile.line))
        self.publisher.line(rt)
        self.publisher.camera(rt)

    # ------------------------------------------------------------------ live calibration
    def _calibrate_set(self, rt: CameraRuntime, payload: bytes) -> None:
        c = self.cfg.calibration
        cmd = parse_calibrate_set(rt.name, payload, c.live_frames, c.far)
        if rt.calibration.busy:
            raise CommandError("a live calibration is already in progress on this camera")
        line = cmd.line or rt.line
        classes = self.loaded.model.classes
        mode = rt.profile.mode if line == rt.line else resolve_mode(classes, line, None)
        if mode == "class-aware" and line not in classes:
            mode = "class-agnostic"
        message = rt.calibration.start(self.loaded, line, cmd.frames, cmd.far, mode, f"live:{rt.name}")
        if cmd.include_false_alarms:
            self._add_false_alarms(rt, line, line if mode == "class-aware" else None)
        self.alerts.close(rt, "calibrating")
        self.publisher.calibrate(rt)
        if message.warning:
            log.warning(
                "calibrating a line the model does not know", extra={"fields": {"camera": rt.name, "line": line}}
            )
        log.info("live calibration started", extra={"fields": {"camera": rt.name, "line": line, "frames": cmd.frames}})

    def _add_false_alarms(self, rt: CameraRuntime, line: str, class_line: str | None) -> None:
        """The frames of the line's alerts marked false alarms, as the calibration's first normal frames (those
        of this camera's frame size; the live frames make up the rest)."""
        if self.feedback is None or self.score is None:
            return
        shape = rt.latest[0].shape if rt.latest is not None else None
        frames = [f for f in self.feedback.sample_frames(line) if shape is None or f.shape == shape]
        frames = frames[: max(0, rt.calibration.collector.n - 1)] if rt.calibration.collector else []
        if frames:
            scores, maps = self.score(frames, class_line)
            for frame, score, amap in zip(frames, scores, maps, strict=True):
                rt.calibration.add(frame, float(score), amap)
            log.info("false alarms in the calibration", extra={"fields": {"camera": rt.name, "frames": len(frames)}})

    def calibration_collected(self, rt: CameraRuntime) -> None:
        """The last frame is in (pipeline thread): build, store and activate the profile on the writer thread,
        then switch the camera to it back on the pipeline thread."""

        def job() -> Profile | str:
            try:
                return self.build_profile(rt)
            except BadInputError as exc:
                return str(exc)

        def done(result: Profile | str) -> None:
            self.run(lambda: self._calibration_built(rt, result))

        self.writer.submit(job, done)

    def _calibration_built(self, rt: CameraRuntime, result: Profile | str) -> None:
        if isinstance(result, str):
            rt.calibration.failed(result)
            log.warning("live calibration failed", extra={"fields": {"camera": rt.name, "error": result}})
        else:
            self.switch(rt, result, "recalibrated")
            rt.calibration.built(result)
            fields = {"camera": rt.name, "line": result.line, "calibration_id": result.calibration_id}
            log.info("live calibration done", extra={"fields": fields})
        self.publisher.calibrate(rt)

    # ------------------------------------------------------------------ profiles
    def reload_profiles(self) -> None:
        """SIGHUP: every camera takes its line's active profile if it changed (pipeline thread)."""
        for rt in self.runtimes.values():
            try:
                profile = self._active(rt.line)
            except BadInputError as exc:
                log.error("reload: profile kept", extra={"fields": {"camera": rt.name, "error": str(exc)}})
                continue
            if profile.calibration_id != rt.profile.calibration_id:
                self.switch(rt, profile, "profile reloaded")
                log.info(
                    "reload: new profile",
                    extra={"fields": {"camera": rt.name, "calibration_id": profile.calibration_id}},
                )
