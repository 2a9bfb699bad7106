"""Camera sources on real files and folders read through OpenCV: lossless recordings, newest-frame-wins live
sources, undecodable images, a source that appears late."""

from __future__ import annotations

import os
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from agent.camera import PREFETCH_NICE, Camera
from agent.config import CameraConfig

from .conftest import write_video


def _frames(n, size=64):
    return [np.full((size, size, 3), (i * 7) % 255, np.uint8) for i in range(n)]


def _drain(cam: Camera, until, timeout=20.0):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(cam, got):
        f = cam.take()
        if f is None:
            cam.wait_any(0.1)
        else:
            got.append(f)
    return got


def test_recording_is_read_losslessly(tmp_path):
    video = write_video(tmp_path / "v.avi", _frames(40))
    cam = Camera(CameraConfig(name="c", source=str(video), line="l"))
    assert cam.kind == "file" and cam.lossless
    cam.start()
    got = _drain(cam, lambda c, g: c.finished)
    cam.stop()
    assert [f.index for f in got] == list(range(40))
    assert cam.stats.dropped == 0 and cam.stats.ended


def _thread_nice(name: str) -> int:
    thread = next(t for t in threading.enumerate() if t.name == f"camera-{name}")
    return os.getpriority(os.PRIO_PROCESS, thread.native_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread only on Linux")
def test_a_recording_judged_frame_by_frame_reads_below_the_models_priority_and_a_live_source_does_not(tmp_path):
    video = write_video(tmp_path / "v.avi", _frames(40))
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    expected = {"lossless": min(19, ours + PREFETCH_NICE), "live": ours}
    for name, realtime in (("lossless", False), ("live", True)):
        cam = Camera(CameraConfig(name=name, source=str(video), line="l", realtime=realtime))
        cam.start()
        # A frame arrived: the thread has set its priority, and it is still serving (a lossless camera waits
        # for its slot to be emptied; the live recording plays for over a second).
        deadline = time.monotonic() + 20.0
        while cam.stats.frames_in == 0 and time.monotonic() < deadline:
            cam.wait_any(0.1)
        try:
            assert _thread_nice(name) == expected[name], name
        finally:
            cam.stop()
            cam.join()


def test_a_realtime_recording_plays_at_its_own_frame_rate(tmp_path):
    # 30 frames at 20 frames/s: 1.5 s of video. Paced from the first frame, not frame to frame, so the pace neither
    # drifts nor compounds (a wait that grew with the frame index once made a 2.4 s loop take 30 s).
    video = write_video(tmp_path / "v.avi", _frames(30), fps=20.0)
    cam = Camera(CameraConfig(name="c", source=str(video), line="l", realtime=True))
    t0 = time.monotonic()
    cam.start()
    got = _drain(cam, lambda c, g: c.stats.ended, timeout=30.0)
    took = time.monotonic() - t0
    cam.stop()
    assert cam.stats.frames_in == 30 and got
    assert cam.stats.decoded == 30  # a consumer that keeps up takes every frame: each is decoded
    assert 1.2 < took < 6.0, f"a 1.5 s recording took {took:.1f} s to play"


def test_live_like_source_drops_old_frames_and_counts_them(tmp_path):
    video = write_video(tmp_path / "v.avi", _frames(60), fps=200.0)
    cam = Camera(CameraConfig(name="c", source=str(video), line="l", realtime=True))
    cam.start()
    # A slow consumer: the camera keeps only the newest frame.
    got = []
    while not cam.stats.ended:
        f = cam.take()
        if f is not None:
            got.append(f)
        cam.wait_any(0.05)
        time.sleep(0.02)  # the consumer's own work; drops are the point of this test
    cam.stop()
    assert cam.stats.dropped > 0
    assert cam.stats.frames_in == 60
    assert len(got) + cam.stats.dropped >= 59  # every frame was either delivered or counted as dropped


def test_a_live_source_decodes_only_the_frames_a_slow_consumer_may_take(tmp_path):
    """100 frames/s against a consumer taking about 12 a second: most frames are grabbed and never decoded,
    and what the consumer takes is still among the newest frames grabbed."""
    video = write_video(tmp_path / "v.avi", _frames(200), fps=100.0)
    cam = Camera(CameraConfig(name="c", source=str(video), line="l", realtime=True))
    cam.start()
    got, lags = [], []
    while not cam.stats.ended:
        f = cam.take()
        if f is not None:
            got.append(f)
            lags.append(cam.stats.frames_in - 1 - f.index)  # frames grabbed since the one taken
            time.sleep(0.08)  # the consumer's own work: a model slower than the camera
        else:
            cam.wait_any(0.05)
    cam.stop()
    assert cam.stats.frames_in == 200 and len(got) >= 5
    assert len(got) <= cam.stats.decoded < 0.6 * cam.stats.frames_in
    assert cam.stats.delivered + cam.stats.dropped >= 199  # undecoded frames are counted as dropped
    assert sorted(lags)[len(lags) // 2] <= 3, lags


def test_folder_source_counts_undecodable_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(_frames(5)):
        cv2.imwrite(str(folder / f"{i:02d}.png"), f)
    (folder / "02b.png").write_bytes(b"garbage, not a png")
    cam = Camera(CameraConfig(name="c", source=str(folder), line="l"))
    assert cam.kind == "folder"
    cam.start()
    got = _drain(cam, lambda c, g: c.finished)
    cam.stop()
    assert len(got) == 5 and cam.stats.corrupt == 1


def test_a_source_gone_after_start_is_down_and_recovers_when_it_is_back(tmp_path):
    video = write_video(tmp_path / "late.avi", _frames(5))
    cam = Camera(CameraConfig(name="c", source=str(video), line="l", reopen_min_s=0.1, reopen_max_s=0.2))
    video.unlink()  # checked at start (config), gone by the time the camera opens it
    cam.start()
    deadline = time.monotonic() + 10
    while cam.stats.last_error == "" and time.monotonic() < deadline:
        cam.wait_any(0.05)
    assert not cam.stats.up and "cannot open" in cam.stats.last_error
    write_video(video, _frames(5))
    got = _drain(cam, lambda c, g: len(g) == 5)
    cam.stop()
    assert len(got) == 5


def test_a_stream_that_cannot_open_is_a_warning_per_backoff_step_naming_the_camera(caplog):
    """Nothing listens on port 9: the URL never opens. The warning names the camera and the source with its
    password masked, once per backoff step while the delay grows, never a line per attempt."""
    cfg = CameraConfig(
        name="cam7", source="http://op:s3cret@127.0.0.1:9/mjpeg", line="l", reopen_min_s=0.05, reopen_max_s=0.4
    )
    cam = Camera(cfg)
    with caplog.at_level("INFO", logger="agent.camera"):
        cam.start()
        deadline = time.monotonic() + 20
        while cam.health.failed_opens < 14 and time.monotonic() < deadline:
            cam.wait_any(0.05)
        cam.stop()
        cam.join(5)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert cam.health.failed_opens >= 14
    # 0.05, 0.1, 0.2 grow; 0.4 is the cap: the first four, then the tenth attempt.
    assert 4 <= len(warnings) <= 6, [r.fields for r in warnings]
    assert all(
        r.fields["camera"] == "cam7" and r.fields["source"] == "http://op:***@127.0.0.1:9/mjpeg" for r in warnings
    )
    assert "s3cret" not in caplog.text and "s3cret" not in cam.stats.last_error


def test_the_end_of_a_recording_is_information_not_a_warning(tmp_path, caplog):
    video = write_video(tmp_path / "v.avi", _frames(3))
    cam = Camera(CameraConfig(name="c", source=str(video), line="l"))
    with caplog.at_level("INFO", logger="agent.camera"):
        cam.start()
        _drain(cam, lambda c, g: c.finished)
        cam.stop()
    down = [r for r in caplog.records if r.msg == "camera down"]
    assert [r.levelname for r in down] == ["INFO"] and down[0].fields["reason"] == "end of recording"


def test_the_camera_thread_resizes_for_the_model_and_times_it(tmp_path):
    from agent.health import StageTimes

    video = write_video(tmp_path / "v.avi", [np.full((72, 128, 3), i * 20, np.uint8) for i in range(4)])
    stages = StageTimes()
    cam = Camera(CameraConfig(name="c", source=str(video), line="l"), model_size=32, stages=stages)
    cam.start()
    got = _drain(cam, lambda c, g: c.finished)
    cam.stop()
    assert [f.image.shape for f in got] == [(72, 128, 3)] * 4  # kept whole for heatmaps and regions
    assert [f.model_input.shape for f in got] == [(32, 32, 3)] * 4
    assert set(stages.summary()) == {"decode", "resize"} and all(v >= 0 for v in stages.summary().values())


class _FakeDevice:
    """Stands in for a V4L2 camera, which cannot exist on a machine without one: OpenCV's get/set/read and
    grab/retrieve. It grants a mode up to 1280x720 at 30 frames/s, in MJPG or YUYV."""

    def __init__(self):
        self.props = {cv2.CAP_PROP_FOURCC: float(cv2.VideoWriter_fourcc(*"YUYV")), cv2.CAP_PROP_FRAME_WIDTH: 640.0,
                      cv2.CAP_PROP_FRAME_HEIGHT: 480.0, cv2.CAP_PROP_FPS: 30.0}  # fmt: skip
        self.calls = []

    def set(self, prop, value):
        self.calls.append(prop)
        limit = {cv2.CAP_PROP_FRAME_WIDTH: 1280, cv2.CAP_PROP_FRAME_HEIGHT: 720, cv2.CAP_PROP_FPS: 30}.get(prop)
        formats = {cv2.VideoWriter_fourcc(*c) for c in ("MJPG", "YUYV")}
        if prop == cv2.CAP_PROP_FOURCC and int(value) not in formats:
            return False
        self.props[prop] = float(min(value, limit) if limit else value)
        return True

    def get(self, prop):
        return self.props.get(prop, 0.0)

    def isOpened(self):
        return True

    def grab(self):
        return True

    def retrieve(self):
        w, h = int(self.props[cv2.CAP_PROP_FRAME_WIDTH]), int(self.props[cv2.CAP_PROP_FRAME_HEIGHT])
        return True, np.zeros((h, w, 3), np.uint8)

    def read(self):
        self.grab()
        return self.retrieve()

    def release(self):
        pass


def test_a_device_is_asked_for_its_mode_and_what_it_does_not_grant_is_named():
    from agent.camera import ask_mode

    cap = _FakeDevice()
    cfg = CameraConfig(name="c", source="0", line="l", width=1280, height=720, fps=30, fourcc="MJPG")
    assert ask_mode(cap, cfg) == []
    # The format first (a driver lists its sizes per format), then the size, then the rate.
    assert cap.calls == [cv2.CAP_PROP_FOURCC, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS]
    assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 1280
    cfg = CameraConfig(name="c", source="0", line="l", width=1920, height=1080, fourcc="H264")
    assert ask_mode(_FakeDevice(), cfg) == ["fourcc asked H264, got YUYV", "width asked 1920, got 1280",
                                            "height asked 1080, got 720"]  # fmt: skip
    assert ask_mode(_FakeDevice(), CameraConfig(name="c", source="0", line="l")) == []  # nothing asked


def test_a_device_that_refuses_its_mode_is_one_warning_and_still_delivers(monkeypatch, caplog):
    import agent.camera as camera

    monkeypatch.setattr(camera, "open_capture", lambda kind, source, timeout_s: _FakeDevice())
    cfg = CameraConfig(name="c", source="0", line="l", width=1920, height=1080, reopen_min_s=0.05, reopen_max_s=0.1)
    cam = Camera(cfg)
    with caplog.at_level("INFO", logger="agent.camera"):
        cam.start()
        got = _drain(cam, lambda c, g: len(g) >= 3)
        before = cam.pacer
        assert before.last_take is not None
        cam._reopen.set()  # a reopen asks again, and does not warn again
        _drain(cam, lambda c, g: c.stats.opens >= 2 and len(g) >= 2)
        cam.stop()
    # The pacer starts afresh: the time the source was away is not a period between frames or takes.
    assert cam.pacer is not before
    assert got and got[0].image.shape == (720, 1280, 3)  # what the camera gave
    assert cam.stats.frame == "1280x720"  # and what the stats message says it gives
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].fields["missed"] == "width asked 1920, got 1280; height asked 1080, got 720"
    assert warned[0].fields["camera"] == "c" and cam.stats.opens >= 2


class _Breaks:
    """A source whose reading raises what no camera code expects (a fault of ours or of a library; none can be
    made to happen on purpose with a real source, so this stands in for one). Delivers `good` frames first."""

    def __init__(self, good: int):
        self.good = good

    def isOpened(self):
        return True

    def get(self, prop):
        return 0.0

    def grab(self):
        return True

    def retrieve(self):
        if self.good == 0:
            raise ValueError("unexpected")
        self.good -= 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def read(self):
        return self.retrieve()

    def release(self):
        pass


def test_a_fault_in_the_camera_thread_is_said_and_the_source_opened_again(monkeypatch, caplog):
    from agent import camera

    opened = []
    monkeypatch.setattr(camera, "open_capture", lambda *a: opened.append(1) or _Breaks(2))
    cfg = CameraConfig(name="c", source="rtsp://cam/stream", line="l", reopen_min_s=0.05, reopen_max_s=0.1)
    cam = Camera(cfg)
    with caplog.at_level("ERROR", logger="agent.camera"):
        cam.start()
        got = _drain(cam, lambda c, g: len(g) >= 6)
        cam.stop()
        cam.join()
    assert len(got) >= 6 and len(opened) >= 3  # read, failed, opened again, read again
    assert cam.stats.last_error.startswith("internal error: ValueError: unexpected") or cam.stats.up
    faults = [r for r in caplog.records if r.getMessage() == "camera thread fault"]
    assert faults and faults[0].fields["camera"] == "c" and faults[0].exc_info


def test_a_recording_whose_reading_faults_ends_instead_of_hanging(tmp_path, monkeypatch):
    from agent import camera

    video = write_video(tmp_path / "v.avi", _frames(4))
    monkeypatch.setattr(camera, "open_capture", lambda *a: _Breaks(2))
    cam = Camera(CameraConfig(name="c", source=str(video), line="l"))
    cam.start()
    got = _drain(cam, lambda c, g: c.finished, timeout=10)
    assert len(got) == 2 and cam.finished and not cam.stats.up  # its frames judged once, not started over
    assert cam.stats.last_error == "internal error: ValueError: unexpected: the recording is ended"
