"""Command payloads: validated before anything changes, one line of error each."""

from __future__ import annotations

import pytest

from agent.commands import CommandError, parse_calibrate_set, parse_line_set


def test_line_set_accepts_json_and_bare_names():
    assert parse_line_set("c", b'{"line": "pcb"}', {"pcb"}).line == "pcb"
    assert parse_line_set("c", b"pcb", {"pcb"}).line == "pcb"
    assert parse_line_set("c", b'"pcb"', {"pcb"}).line == "pcb"


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"line": 3}', "is not a line name"),
        (b'{"line": "bottle"}', "no active calibration profile"),
        (b'{"line": "pcb", "extra": 1}', "unknown key(s) extra"),
        (b"[1, 2]", "expected a JSON object"),
        (b"x" * 5000, "too large"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "empty payload"),
    ],
)
def test_bad_line_commands(payload, expect):
    with pytest.raises(CommandError, match=None) as info:
        parse_line_set("c", payload, {"pcb"})
    assert expect in str(info.value)


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b'{"frames": "many"}', "frames"),
        (b'{"frames": 5}', "between 20"),
        (b'{"far": 2}', "far"),
        (b'{"far": true}', "far"),
        (b'{"frames": 30, "far": 0.001}', "needs more than 30 frames"),
        (b'{"colour": "red"}', "unknown key"),
    ],
)
def test_bad_calibrate_commands(payload, expect):
    with pytest.raises(CommandError) as info:
        parse_calibrate_set("c", payload, 200, 0.01)
    assert expect in str(info.value)


def test_calibrate_defaults():
    cmd = parse_calibrate_set("c", b"{}", 200, 0.01)
    assert (cmd.frames, cmd.far, cmd.line) == (200, 0.01, None)
