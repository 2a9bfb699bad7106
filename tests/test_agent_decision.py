"""Per-camera decisions: hysteresis and the alert lifecycle, frame by frame."""

from __future__ import annotations

from agent.config import DecisionConfig
from agent.decision import Hysteresis, Observation


def _run(flags: list[int]):
    h = Hysteresis(DecisionConfig(open_after=3, close_after=2, update_interval_s=0.0))
    events = []
    for i, a in enumerate(flags):
        ev = h.observe(Observation(i, float(i), float(i), 1.0 + a * (1 + i / 100), 1.0, 0.5, bool(a)))
        if ev:
            events.append((ev.type, i, ev.event_id))
    return events, h


def test_one_alert_per_episode_with_hysteresis():
    flags = [0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    events, _ = _run(flags)
    types = [(t, i) for t, i, _ in events]
    # Two anomalous frames are not an episode; three are. One normal frame inside does not close it.
    assert types == [("new", 7), ("end", 12), ("new", 16), ("end", 18)]
    assert events[0][2] == events[1][2] != events[2][2]


def test_update_only_when_the_peak_grows_enough():
    cfg = DecisionConfig(open_after=1, close_after=1, update_growth=1.5, update_interval_s=0.0)
    h = Hysteresis(cfg)
    kinds = []
    for i, s in enumerate([2.0, 2.5, 3.1, 3.2, 4.8, 0.5]):
        ev = h.observe(Observation(i, 0.0, float(i), s, 1.0, 0.1, s > 1.0))
        kinds.append(ev.type if ev else None)
    assert kinds == ["new", None, "update", None, "update", "end"]


def test_close_on_demand():
    events, h = _run([1, 1, 1])
    assert [t for t, _, _ in events] == ["new"]
    ev = h.close("line changed")
    assert ev.type == "end" and ev.reason == "line changed" and not h.is_open
    assert h.close("again") is None
