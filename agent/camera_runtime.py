"""What the agent knows and decides about one camera: its line and profile, its alert hysteresis, its live
calibration, drift, counters. Only the pipeline thread changes it; other threads read it for state and stats."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from calibration.drift import DriftMonitor, DriftStatus
from calibration.profile import Profile

from .camera import Camera
from .config import AgentConfig
from .decision import Hysteresis
from .health import Latencies, Rate
from .live_calibration import LiveCalibrationSession
from .messages import LineState

RECENT_SCORES = 6000  # a few minutes of frames


@dataclass
class CameraRuntime:
    camera: Camera
    profile: Profile
    hysteresis: Hysteresis
    drift: DriftMonitor
    calibration: LiveCalibrationSession
    line_state: LineState
    latency: Latencies = field(default_factory=Latencies)
    ack_latency: Latencies = field(default_factory=Latencies)
    processed: Rate = field(default_factory=Rate)
    frames: int = 0
    first_mono: float | None = None  # when the first and latest frames were judged: processing rate
    last_mono: float | None = None
    first_wall: float | None = None  # the first judged frame, epoch seconds: start-up time
    alerts: int = 0
    last_score: float | None = None
    last_p: float | None = None
    anomalous: bool = False
    drift_status: DriftStatus | None = None
    # For the console: the latest judged frame (as the camera gave it) with its map and index, and (epoch
    # seconds, score) of recent frames. References only: nothing is copied or encoded unless someone looks.
    latest: tuple[np.ndarray, np.ndarray, int] | None = None
    recent_scores: deque = field(default_factory=lambda: deque(maxlen=RECENT_SCORES))

    @classmethod
    def create(cls, camera: Camera, profile: Profile, cfg: AgentConfig, classes: tuple[str, ...]) -> CameraRuntime:
        """`camera` not yet started; `profile` the line's active one."""
        return cls(
            camera,
            profile,
            Hysteresis(cfg.decision),
            DriftMonitor(profile, cfg.calibration.drift_window),
            LiveCalibrationSession(classes),
            LineState.of(profile),
        )

    @property
    def name(self) -> str:
        return self.camera.name

    @property
    def line(self) -> str:
        return self.profile.line

    def use(self, profile: Profile, cfg: AgentConfig) -> None:
        """Judge with `profile` from now on: fresh hysteresis and drift monitor (close the alert first)."""
        self.profile = profile
        self.hysteresis = Hysteresis(cfg.decision)
        self.drift = DriftMonitor(profile, cfg.calibration.drift_window)
        self.drift_status = None
        self.line_state = LineState.of(profile)

    @property
    def profile_predates_libjpeg(self) -> bool:
        """The line's profile was made live from this camera's MJPG frames by hgad-edge 0.3 or earlier, which
        decoded them with FFmpeg: decoded now by libjpeg (jpeg_packets.py), their scores have moved from its own."""
        p = self.profile
        return self.camera.stats.jpeg_packets and p.source == f"live:{self.name}" and not p.made_by

    @property
    def camera_status(self) -> str:
        s = self.camera.stats
        return "up" if s.up else ("ended" if s.ended else "down")
