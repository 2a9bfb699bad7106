"""The state messages' schemas: one set of keys per topic, floats rounded, timestamps in UTC."""

from __future__ import annotations

import dataclasses
import json

from agent.messages import CalibrateState, LineState, iso, now_iso, to_json


def test_every_calibrate_state_has_every_key():
    idle = CalibrateState.idle()
    changed = idle.but(ok=False, error="no")
    assert (
        set(json.loads(to_json(idle)))
        == set(json.loads(to_json(changed)))
        == {f.name for f in dataclasses.fields(CalibrateState)}
    )
    assert changed.error == "no" and idle.error is None


def test_a_refused_line_state_keeps_the_line_it_reports():
    state = LineState(True, "fabric", "c1", None, now_iso())
    refused = state.refused("no such line")
    assert (refused.ok, refused.line, refused.calibration_id, refused.error) == (False, "fabric", "c1", "no such line")
    assert set(dataclasses.asdict(refused)) == set(dataclasses.asdict(LineState.unknown_camera("x")))


def test_floats_are_rounded_and_times_are_utc():
    data = json.loads(to_json({"a": 1.123456789, "b": [2.0000004], "c": {"d": 1 / 3}}))
    assert data == {"a": 1.123457, "b": [2.0], "c": {"d": 0.333333}}
    assert iso(0.0) == "1970-01-01T00:00:00.000Z" and now_iso().endswith("Z")
