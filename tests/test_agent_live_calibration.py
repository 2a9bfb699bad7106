"""A camera's live recalibration as a state machine: every transition, one message schema, the real model's
profile built from the collected frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.live_calibration import LiveCalibrationSession
from agent.messages import CalibrateState
from hgad.errors import BadInputError

KEYS = {f.name for f in dataclasses.fields(CalibrateState)}


def _frame(i: int, side: int = 64) -> tuple[np.ndarray, float, np.ndarray]:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (side, side, 3), dtype=np.uint8), float(rng.random()), rng.random((32, 32))


def _session(tiny_model, line="fabric", frames=20, far=0.05):
    s = LiveCalibrationSession(tiny_model.model.classes)
    first = s.start(tiny_model, line, frames, far, "class-aware", "live:cam1")
    return s, first


def test_collecting_reports_each_tenth_then_building_then_done(tiny_model):
    s, first = _session(tiny_model)
    assert s.busy and s.collecting and first.state == "collecting" and first.collected == 0
    assert first.ok and first.warning is None and first.frames == 20 and first.far == 0.05
    reports = [m for m in (s.add(*_frame(i)) for i in range(20)) if m is not None]
    # 20 frames: a report every 2 frames while collecting, and the last one hands over to building.
    assert [m.collected for m in reports] == list(range(2, 21, 2))
    assert reports[-1].state == "building" and all(m.state == "collecting" for m in reports[:-1])
    assert s.busy and not s.collecting
    result = s.collector.build()
    done = s.built(result.profile)
    assert done.state == "done" and done.ok and done.n == 20 and done.threshold == result.profile.threshold
    assert done.calibration_id == result.profile.calibration_id and s.collector is None and not s.busy
    # One schema: every message has every key.
    for m in [first, *reports, done]:
        assert set(dataclasses.asdict(m)) == KEYS


def test_a_line_the_model_does_not_know_carries_the_warning_on_every_report(tiny_model):
    s, first = _session(tiny_model, line="bottle")
    assert "line bottle is not one of the model's lines (fabric, pcb)" in first.warning
    reports = [m for m in (s.add(*_frame(i)) for i in range(20)) if m is not None]
    assert all(m.warning == first.warning for m in reports)
    failed = s.failed("disk full")
    # A failure is not "a calibration going ahead": no warning, the error instead.
    assert failed.state == "failed" and not failed.ok and failed.error == "disk full" and failed.warning is None


def test_a_frame_of_another_size_fails_the_collection(tiny_model):
    s, _ = _session(tiny_model)
    s.add(*_frame(0))
    image, score, amap = _frame(1, side=80)
    failed = s.add(image, score, amap)
    assert failed.state == "failed" and not failed.ok and "frame 2" in failed.error
    assert not s.busy and s.collector is None


def test_a_refusal_keeps_the_state_and_the_next_report_clears_it(tiny_model):
    s, _ = _session(tiny_model)
    for i in range(3):
        s.add(*_frame(i))
    refused = s.refused("a live calibration is already in progress on this camera")
    assert refused.state == "collecting" and refused.collected == 2 and not refused.ok and "already" in refused.error
    assert s.busy
    report = s.add(*_frame(3))
    assert report.ok and report.error is None and report.collected == 4


def test_an_impossible_target_is_refused_before_any_frame(tiny_model):
    s = LiveCalibrationSession(tiny_model.model.classes)
    with pytest.raises(BadInputError, match=r"too few|needs"):
        s.start(tiny_model, "fabric", 20, 0.001, "class-aware", "live:cam1")
    assert s.message.state == "idle" and not s.busy
