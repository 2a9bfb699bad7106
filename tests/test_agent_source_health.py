"""A camera source's up and down as operators see them: the stats fields and the log lines (the camera's own
behaviour on real sources is in test_agent_camera.py)."""

from __future__ import annotations

import logging

from agent.camera import CameraStats
from agent.source_health import END_OF_RECORDING, REMIND_EVERY, SourceHealth, masked


def _health() -> SourceHealth:
    return SourceHealth("cam3", "url", "rtsp://line3:s3cret@10.0.0.5:554/stream1", CameraStats(), reopen_max_s=8.0)


def test_passwords_in_stream_urls_are_masked():
    assert masked("rtsp://line3:s3cret@10.0.0.5:554/stream1") == "rtsp://line3:***@10.0.0.5:554/stream1"
    assert masked("http://10.0.0.5/mjpeg") == "http://10.0.0.5/mjpeg"
    assert masked("/var/lib/video.mp4") == "/var/lib/video.mp4"


def test_down_is_a_warning_once_and_up_clears_it(caplog):
    h = _health()
    with caplog.at_level(logging.INFO, logger="agent.camera"):
        h.up()
        h.down("no frame for 10 s")
        h.down("read failed")  # already down: said once
        since = h.stats.down_since
        h.up()
    levels = [(r.levelname, r.msg) for r in caplog.records]
    assert levels == [("INFO", "camera up"), ("WARNING", "camera down"), ("INFO", "camera up")]
    assert caplog.records[1].fields == {"camera": "cam3", "source": masked(h.source), "reason": "no frame for 10 s"}
    assert since is not None and h.stats.up and h.stats.down_since is None and h.stats.last_error == ""


def test_the_end_of_a_recording_is_information(caplog):
    h = _health()
    h.up()
    caplog.clear()  # whatever an earlier test left the logger's level at, only what follows counts
    with caplog.at_level(logging.INFO, logger="agent.camera"):
        h.down(END_OF_RECORDING)
    assert [r.levelname for r in caplog.records] == ["INFO"] and h.stats.last_error == END_OF_RECORDING


def test_a_source_that_cannot_open_warns_per_growing_backoff_step_then_every_tenth_attempt(caplog):
    h = _health()
    backoffs = [1.0, 2.0, 4.0] + [8.0] * 27  # the delay grows to its cap, then stays
    with caplog.at_level(logging.WARNING, logger="agent.camera"):
        for b in backoffs:
            h.open_failed(b)
    attempts = [r.fields["attempts"] for r in caplog.records]
    assert attempts == [1, 2, 3, REMIND_EVERY, 2 * REMIND_EVERY, 3 * REMIND_EVERY]
    assert "s3cret" not in caplog.text and "s3cret" not in h.stats.last_error and not h.stats.up


def test_a_fault_is_an_error_with_its_traceback_and_the_reason_kept(caplog):
    h = _health()
    h.up()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent.camera"):
        try:
            raise ValueError("unexpected")
        except ValueError as exc:
            h.faulted(exc)
    error, down = caplog.records
    assert (error.levelname, error.msg, down.levelname) == ("ERROR", "camera thread fault", "WARNING")
    assert error.exc_info and error.fields["error"] == "internal error: ValueError: unexpected"
    assert h.fault == h.stats.last_error == "internal error: ValueError: unexpected" and not h.stats.up
