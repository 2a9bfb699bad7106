"""MJPG recordings and streams read as their JPEG packets (real AVI files and a real HTTP MJPEG stream, read
through OpenCV's FFmpeg)."""

from __future__ import annotations

import http.server
import socketserver
import threading

import cv2
import numpy as np
import pytest

from agent.camera import open_capture
from agent.jpeg_packets import JpegPackets

from .conftest import write_video


def _frames(n, size=(48, 64)):
    """Frame i is a smooth gradient at brightness 20 + 9 i: order and content can be told apart."""
    ramp = np.linspace(0, 30, size[1], dtype=np.float32)[None, :, None]
    return [np.clip(20 + 9 * i + ramp + np.zeros((*size, 3), np.float32), 0, 255).astype(np.uint8) for i in range(n)]


def _read_all(cap) -> list[np.ndarray]:
    got = []
    while True:
        ok, img = cap.read()
        if not ok:
            return got
        got.append(img)


def test_an_mjpg_recording_is_read_as_packets_frame_for_frame(tmp_path):
    frames = _frames(20)
    cap = open_capture("file", str(write_video(tmp_path / "v.avi", frames)), 5.0)
    assert isinstance(cap, JpegPackets)
    assert cap.get(cv2.CAP_PROP_FORMAT) == -1  # raw mode: grab() reads a packet and decodes nothing
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 20
    got = _read_all(cap)
    assert len(got) == 20 and cap.get(cv2.CAP_PROP_POS_FRAMES) == 20
    for want, img in zip(frames, got, strict=True):
        assert img.shape == want.shape and img.dtype == np.uint8
        assert np.abs(img.astype(int) - want).mean() < 2.0  # JPEG's loss only
    cap.release()


@pytest.mark.parametrize(("ext", "tag"), [("mov", "jpeg"), ("mkv", "MJPG")])
def test_motion_jpeg_in_other_containers_is_read_as_packets(tmp_path, ext, tag):
    frames = _frames(6)
    cap = open_capture("file", str(write_video(tmp_path / f"v.{ext}", frames, fourcc=tag)), 5.0)
    assert isinstance(cap, JpegPackets)
    got = _read_all(cap)
    cap.release()
    assert len(got) == 6 and all(np.abs(a.astype(int) - b).mean() < 2.0 for a, b in zip(frames, got, strict=True))


def test_a_grabbed_packet_left_undecoded_is_skipped(tmp_path):
    """A live camera grabs every frame and decodes those it hands over: what it retrieves is the frame it
    grabbed last, the first one included."""
    frames = _frames(10)
    cap = open_capture("file", str(write_video(tmp_path / "v.avi", frames)), 5.0)
    assert isinstance(cap, JpegPackets)
    got = {}
    for i in range(10):
        assert cap.grab()
        if i in (0, 3, 4, 9):
            ok, got[i] = cap.retrieve()
            assert ok
    assert not cap.grab()
    for i, img in got.items():
        diffs = [np.abs(img.astype(int) - f).mean() for f in frames]
        assert int(np.argmin(diffs)) == i
    cap.release()


def test_a_frame_decodes_as_the_same_jpeg_read_as_a_still(tmp_path):
    """Calibrating from saved frames and judging the live stream see the same pixels."""
    video = write_video(tmp_path / "v.avi", _frames(3))
    raw = cv2.VideoCapture(str(video))
    assert raw.set(cv2.CAP_PROP_FORMAT, -1) and raw.grab()
    ok, packet = raw.retrieve()
    assert ok and packet[0, :2].tolist() == [0xFF, 0xD8]  # a whole JPEG image
    raw.release()
    (tmp_path / "still.jpg").write_bytes(packet.tobytes())
    cap = open_capture("file", str(video), 5.0)
    ok, first = cap.read()
    assert ok and np.array_equal(first, cv2.imread(str(tmp_path / "still.jpg"), cv2.IMREAD_COLOR))
    cap.release()


def test_a_stream_whose_first_packet_is_no_jpeg_is_read_by_ffmpeg(tmp_path):
    video = write_video(tmp_path / "v.avi", _frames(12))
    data = bytearray(video.read_bytes())
    soi = data.index(b"\xff\xd8\xff", data.index(b"movi"))
    data[soi : soi + 2] = b"\x00\x00"  # the first frame's start-of-image marker gone
    video.write_bytes(bytes(data))
    cap = open_capture("file", str(video), 5.0)
    assert cap is not None and not isinstance(cap, JpegPackets)
    assert cap.get(cv2.CAP_PROP_FORMAT) != -1
    assert len(_read_all(cap)) >= 11  # FFmpeg reads on past the damaged frame
    cap.release()


def test_other_codecs_are_read_by_ffmpeg(tmp_path):
    frames = _frames(8)
    cap = open_capture("file", str(write_video(tmp_path / "v.avi", frames, fourcc="FFV1")), 5.0)
    assert isinstance(cap, cv2.VideoCapture)
    got = _read_all(cap)
    assert len(got) == 8 and all(np.array_equal(a, b) for a, b in zip(frames, got, strict=True))  # lossless
    cap.release()


def test_an_http_mjpeg_camera_is_read_as_packets(tmp_path):
    """Many IP cameras serve MJPEG over HTTP as a multipart stream: a real one, served from here."""
    frames = _frames(15)
    jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]

    class Stream(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for j in jpegs:
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j)
                self.wfile.write(head + j + b"\r\n")

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Stream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cap = open_capture("url", f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg", 5.0)
        assert isinstance(cap, JpegPackets)
        got = _read_all(cap)
        cap.release()
    finally:
        server.shutdown()
        server.server_close()
    assert len(got) == 15
    for want, img in zip(frames, got, strict=True):
        assert np.abs(img.astype(int) - want).mean() < 2.0
