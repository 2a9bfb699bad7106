"""Per-camera decisions: frame scores against the line's profile, with hysteresis and an alert lifecycle.

An alert opens (`new`) after `open_after` consecutive anomalous frames, sends an `update` when its peak
grows enough (rate-limited), and closes (`end`) after `close_after` consecutive normal frames: one alert
per event, not per frame. Pure logic: no I/O, so it is tested frame by frame.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .config import DecisionConfig


@dataclass
class Observation:
    """One judged frame."""

    frame_index: int
    captured: float  # epoch seconds
    captured_mono: float
    score: float
    threshold: float
    p_value: float
    anomalous: bool
    payload: Any = None  # what the outputs need to render this frame (image, map), kept only while useful


@dataclass
class AlertEvent:
    type: str  # "new", "update" or "end"
    event_id: str
    seq: int
    observation: Observation  # the frame the message shows (the peak so far for new/update)
    peak_score: float
    first_frame_index: int
    last_frame_index: int
    anomalous_frames: int
    started: float
    reason: str = ""
    # (frame index, score) of every frame judged since the event opened, the opening run included: the
    # console draws the score over the event from it.
    scores: list[tuple[int, float]] = field(default_factory=list)


# Frames of one event whose scores are kept (an event longer than this keeps its latest).
MAX_EVENT_SCORES = 2000


@dataclass
class Hysteresis:
    cfg: DecisionConfig
    open_event: str | None = None
    _run: list[Observation] = field(default_factory=list)
    _normal_run: int = 0
    _seq: int = 0
    _peak: Observation | None = None
    _last_update_mono: float = 0.0
    _reported_peak: float = 0.0
    _first: int = 0
    _last_anomalous: int = 0
    _count: int = 0
    _started: float = 0.0
    _scores: list[tuple[int, float]] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.open_event is not None

    def observe(self, obs: Observation) -> AlertEvent | None:
        if self.open_event is None:
            if not obs.anomalous:
                self._run.clear()
                return None
            self._run.append(obs)
            if len(self._run) < self.cfg.open_after:
                return None
            peak = max(self._run, key=lambda o: o.score)
            self.open_event = uuid.uuid4().hex
            self._seq, self._peak, self._reported_peak = 0, peak, peak.score
            self._first, self._last_anomalous = self._run[0].frame_index, obs.frame_index
            self._count, self._normal_run = len(self._run), 0
            self._started, self._last_update_mono = self._run[0].captured, obs.captured_mono
            self._scores = [(o.frame_index, o.score) for o in self._run]
            self._run.clear()
            return self._event("new", peak)
        self._scores.append((obs.frame_index, obs.score))
        del self._scores[:-MAX_EVENT_SCORES]
        if obs.anomalous:
            self._normal_run = 0
            self._count += 1
            self._last_anomalous = obs.frame_index
            if self._peak is None or obs.score > self._peak.score:
                self._peak = obs
            grown = (
                self._peak.score >= self._reported_peak * self.cfg.update_growth if self._reported_peak > 0 else False
            )
            if grown and obs.captured_mono - self._last_update_mono >= self.cfg.update_interval_s:
                self._reported_peak = self._peak.score
                self._last_update_mono = obs.captured_mono
                return self._event("update", self._peak)
            return None
        self._normal_run += 1
        if self._normal_run >= self.cfg.close_after:
            return self.close("normal")
        return None

    def close(self, reason: str) -> AlertEvent | None:
        """End the open alert (normal frames, a line change, a stop); None when nothing is open."""
        if self.open_event is None or self._peak is None:
            return None
        event = self._event("end", self._peak, reason)
        self.open_event = None
        self._peak = None
        self._normal_run = 0
        self._run.clear()
        return event

    def _event(self, kind: str, obs: Observation, reason: str = "") -> AlertEvent:
        assert self.open_event is not None
        ev = AlertEvent(
            kind,
            self.open_event,
            self._seq,
            obs,
            self._peak.score if self._peak else obs.score,
            self._first,
            self._last_anomalous,
            self._count,
            self._started,
            reason,
            list(self._scores),
        )
        self._seq += 1
        return ev
