"""Camera sources read through OpenCV, one capture thread each.

Sources: a device index (V4L2), a video file (optionally looped), an RTSP/HTTP(S) URL, a GStreamer
pipeline (Jetson CSI: `nvarguscamerasrc ! ... ! appsink`), or a folder of images. Live sources hand over
only the newest frame (older ones are dropped and counted) and decode only the frames the pipeline may take
(decode_pacer.py; an MJPG file or stream is read as its JPEG packets, jpeg_packets.py); recordings are lossless
by default so every frame is judged. A source that fails to open, stalls or ends is reported down and reopened
with exponential backoff; corrupt frames and undecodable images are counted and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hgad.data.images import IMAGE_EXTENSIONS
from hgad.runtime.preprocess import to_batch

from .config import CameraConfig
from .decode_pacer import DecodePacer
from .health import Rate, StageTimes
from .jpeg_packets import JPEG_PACKET_CODE, JpegPackets, as_jpeg_packets
from .source_health import END_OF_RECORDING, SourceHealth

log = logging.getLogger(__name__)

# Read attempts that fail in a row before a source counts as lost and is reopened.
MAX_BAD_READS = 10


@dataclass
class Frame:
    camera: str
    index: int  # position in the source (frame number of a file, count of frames read otherwise)
    image: np.ndarray  # BGR uint8, as the camera gave it: regions and heatmaps are drawn on it
    captured: float  # wall clock (epoch seconds)
    captured_mono: float  # monotonic clock, for latencies
    model_input: np.ndarray | None = None  # the frame at the model's input size, resized on this thread


@dataclass
class CameraStats:
    frames_in: int = 0
    delivered: int = 0
    dropped: int = 0
    corrupt: int = 0
    reconnects: int = 0
    opens: int = 0
    up: bool = False
    ended: bool = False
    last_error: str = ""
    down_since: float | None = None
    frame: str | None = None  # WIDTHxHEIGHT of the latest frame: the mode the camera actually delivers
    cpu_s: float = 0.0  # CPU seconds this camera's thread spent reading, decoding and resizing its frames
    decoded: int = 0  # frames decoded: a live source leaves those the pipeline will not take undecoded
    jpeg_packets: bool = False  # the source is read as its JPEG packets (jpeg_packets.py)


def gstreamer_available() -> bool:
    """pip's opencv-python wheels have no GStreamer; JetPack's OpenCV has it."""
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))
    except AttributeError:  # pragma: no cover - very old OpenCV
        return "GStreamer:                   YES" in cv2.getBuildInformation()


class FolderCapture:
    """A folder of images as a source (sorted by name), with VideoCapture's read/isOpened/release."""

    def __init__(self, folder: str):
        p = Path(folder)
        self.files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS) if p.is_dir() else []
        self.pos = 0
        self.undecodable = 0

    def isOpened(self) -> bool:
        return bool(self.files)

    def read(self) -> tuple[bool, np.ndarray | None]:
        while self.grab():
            ok, img = self.retrieve()
            if ok:
                return True, img
            self.undecodable += 1
        return False, None

    def grab(self) -> bool:
        """The next image that is still there (one removed since the folder was listed is gone, not corrupt,
        and OpenCV would warn)."""
        while self.pos < len(self.files):
            self.pos += 1
            if self.files[self.pos - 1].is_file():
                return True
        return False

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        img = cv2.imread(str(self.files[self.pos - 1]), cv2.IMREAD_COLOR)
        return img is not None, img

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(len(self.files))
        if prop == cv2.CAP_PROP_POS_FRAMES:
            return float(self.pos)
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_POS_FRAMES:
            self.pos = int(value)
            return True
        return False

    def release(self) -> None:
        self.files = []


def ask_mode(cap, cfg: CameraConfig) -> list[str]:
    """Asks a device camera for the configured mode and returns what it did not grant ("width asked 1920,
    got 640"). The four-character code goes first: a driver offers its frame sizes per format."""
    asked: list[tuple[str, int, float, str]] = []
    if cfg.fourcc:
        asked.append(("fourcc", cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc), cfg.fourcc))
    if cfg.width and cfg.height:
        asked.append(("width", cv2.CAP_PROP_FRAME_WIDTH, cfg.width, str(cfg.width)))
        asked.append(("height", cv2.CAP_PROP_FRAME_HEIGHT, cfg.height, str(cfg.height)))
    if cfg.fps:
        asked.append(("fps", cv2.CAP_PROP_FPS, cfg.fps, f"{cfg.fps:g}"))
    for _, prop, value, _ in asked:
        cap.set(prop, value)
    missed = []
    for key, prop, value, shown in asked:
        got = cap.get(prop)
        if key == "fourcc":
            granted, got_shown = int(got) == value, fourcc_text(got)
        elif key == "fps":
            granted, got_shown = abs(got - value) < 0.5, f"{got:g}"
        else:
            granted, got_shown = int(got) == value, str(int(got))
        if not granted:
            missed.append(f"{key} asked {shown}, got {got_shown}")
    return missed


def fourcc_text(code: float) -> str:
    n = int(code)
    return "".join(chr((n >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00") or "none"


def open_capture(kind: str, source: str, timeout_s: float):
    """An opened capture, or None. A file or stream in MJPG is read as its JPEG packets (jpeg_packets.py)."""
    if kind == "folder":
        return _opened(FolderCapture(source))
    if kind == "file" and not Path(source).is_file():
        return None
    cap = _opened(_video_capture(kind, source, timeout_s))
    if cap is None or kind not in ("file", "url") or not carries_jpeg_packets(cap):
        return cap
    packets = as_jpeg_packets(cap)
    if packets is not None:
        return packets
    cap.release()  # raw mode cannot be left: FFmpeg reads the source from a fresh capture
    return _opened(_video_capture(kind, source, timeout_s))


def _opened(cap):
    """`cap` if it opened, else None (released)."""
    if cap.isOpened():
        return cap
    cap.release()
    return None


def carries_jpeg_packets(cap: cv2.VideoCapture) -> bool:
    """An FFmpeg capture of a stream whose packets are JPEG images (raw mode is FFmpeg's alone)."""
    return cap.getBackendName() == "FFMPEG" and fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)) == JPEG_PACKET_CODE


def _video_capture(kind: str, source: str, timeout_s: float) -> cv2.VideoCapture:
    if kind == "device":
        return cv2.VideoCapture(int(source))
    if kind == "url":
        # Timeouts make a dead stream return from read() instead of blocking the thread for ever.
        ms = int(timeout_s * 1000)
        return cv2.VideoCapture(
            source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        )
    if kind == "gstreamer":
        return cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    return cv2.VideoCapture(source)


# A lossless source (a recording judged frame by frame) need only keep one frame ready for the model. At the
# model's priority its decoding preempts one thread of the inference pool, and the pool's other threads wait for
# that one at the end of every operator: the model loses more time than the camera spends. At nice + 10 the
# camera runs in the pool's gaps instead. A live source keeps its priority: it must take frames from its device
# as they come, and starved it would hand the pipeline older ones.
PREFETCH_NICE = 10


def lower_priority(by: int) -> None:
    """Lower the calling thread's priority by `by` nice steps (Linux, where nice is per thread and threads it
    starts, such as FFmpeg's decoders, inherit it). Elsewhere, or where refused, it stays as it is."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))


class Camera:
    """`model_size`: the camera's own thread also resizes each frame to the model's input, so that the
    inference thread does nothing but infer; `stages` receives the decode and resize milliseconds."""

    def __init__(self, cfg: CameraConfig, model_size: int | None = None, stages: StageTimes | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.kind = cfg.kind
        self.model_size = model_size
        self.stages = stages or StageTimes()
        self.recording = self.kind in ("file", "folder")
        self.lossless = self.recording and not cfg.realtime
        self.pacer = None if self.lossless else DecodePacer()
        self.stats = CameraStats()
        self.health = SourceHealth(cfg.name, self.kind, cfg.source, self.stats, cfg.reopen_max_s)
        self.rate = Rate()  # frames read per second
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._cap = None
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self.last_frame_mono = 0.0
        self._mode_warned = False

    # ------------------------------------------------------------------ consumer side
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def take(self) -> Frame | None:
        """The newest frame not yet taken, or None."""
        with self._cond:
            frame, self._slot = self._slot, None
            if frame is not None:
                self.stats.delivered += 1
                if self.pacer is not None:
                    self.pacer.taken(time.monotonic())
                self._cond.notify_all()  # a lossless producer waits for the slot to empty
            return frame

    def wait_any(self, timeout: float) -> None:
        with self._cond:
            if self._slot is None and not self._stop.is_set():
                self._cond.wait(timeout)

    @property
    def finished(self) -> bool:
        """A recording without loop that has been read to its end and handed over entirely."""
        return self.stats.ended and self._slot is None

    def check_stall(self, now: float) -> bool:
        """Watchdog: a live source with no frame for stall_timeout_s is marked down and reopened."""
        if self.stats.up and not self.lossless and now - self.last_frame_mono > self.cfg.stall_timeout_s:
            self.health.down(f"no frame for {self.cfg.stall_timeout_s:g} s")
            self._reopen.set()
            cap = self._cap
            if cap is not None:
                with contextlib.suppress(Exception):  # unblocks a read() stuck on a dead stream
                    cap.release()
            return True
        return False

    # ------------------------------------------------------------------ producer side
    def _put(self, image: np.ndarray, index: int) -> None:
        now_mono = time.monotonic()
        frame = Frame(self.name, index, image, time.time(), now_mono)
        self.stats.decoded += 1
        self.stats.frame = f"{image.shape[1]}x{image.shape[0]}"
        if self.model_size:
            frame.model_input = to_batch([image], self.model_size)[0]
            self.stages.add("resize", (time.monotonic() - now_mono) * 1000.0)
        with self._cond:
            if self.lossless:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
            elif self._slot is not None:
                self.stats.dropped += 1
            self._slot = frame
            self._arrived(now_mono)
            self._cond.notify_all()

    def _arrived(self, now_mono: float) -> None:
        """A frame from the source, decoded or not (under the lock)."""
        self.stats.frames_in += 1
        self.rate.tick(now_mono)
        self.last_frame_mono = now_mono

    def _run(self) -> None:
        """Serve the source until stopped or its recording ends. A fault of the camera code or of a library
        under it (no source can cause one on purpose) is logged with its traceback: a live source is opened
        again after the backoff, a recording is ended (opened again it would start over and judge its frames
        twice). Either way the camera says why it is down; a thread that died would leave it down for good,
        with nothing said, and a run over files waiting for ever."""
        backoff = self.cfg.reopen_min_s
        if self.lossless:
            lower_priority(PREFETCH_NICE)  # before the source opens, so that its decoder threads share it
        while not self._stop.is_set():
            try:
                self._serve()
                return
            except Exception as exc:
                self._fault(exc)
            if self.recording:
                self._end(f"{self.stats.last_error}: the recording is ended")
                return
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.cfg.reopen_max_s)

    def _fault(self, exc: Exception) -> None:
        self.health.faulted(exc)
        cap, self._cap = self._cap, None
        if cap is not None:
            with contextlib.suppress(Exception):
                cap.release()

    def _end(self, why: str = END_OF_RECORDING) -> None:
        self.stats.ended = True
        self.health.down(why)
        with self._cond:
            self._cond.notify_all()

    def _serve(self) -> None:
        backoff = self.cfg.reopen_min_s
        index = 0
        while not self._stop.is_set():
            cap = open_capture(self.kind, self.cfg.source, self.cfg.stall_timeout_s)
            if cap is None:
                self.health.open_failed(backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reopen_max_s)
                continue
            self.stats.opens += 1
            if self.stats.opens > 1:
                self.stats.reconnects += 1
                if self.pacer is not None:  # the time the source was away is neither a frame nor a take period
                    self.pacer = DecodePacer()
            if self.kind == "device":
                self._ask_mode(cap)
            self._cap = cap
            self.stats.jpeg_packets = isinstance(cap, JpegPackets)
            self._reopen.clear()
            self.last_frame_mono = time.monotonic()
            fps = cap.get(cv2.CAP_PROP_FPS) if self.kind == "file" else 0.0
            period = 1.0 / fps if self.cfg.realtime and fps and fps > 0 else 0.0
            ended = self._read_loop(cap, period, index)
            index = ended[1]
            undecodable = getattr(cap, "undecodable", 0)
            self.stats.corrupt += undecodable
            with contextlib.suppress(Exception):
                cap.release()
            self._cap = None
            if ended[0] == "eof":
                if self.recording and self.cfg.loop:
                    backoff = self.cfg.reopen_min_s
                    index = 0
                    continue
                self._end()
                return
            if ended[0] == "delivered":
                backoff = self.cfg.reopen_min_s
            if not self._stop.is_set():
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reopen_max_s)

    def _ask_mode(self, cap) -> None:
        missed = ask_mode(cap, self.cfg)
        if missed and not self._mode_warned:  # once: the same camera refuses the same mode on every reopen
            self._mode_warned = True
            log.warning(
                "camera did not grant the mode asked for: set a mode it offers (v4l2-ctl --list-formats-ext)",
                extra={"fields": self.health.fields(missed="; ".join(missed))},
            )

    def _read(self, cap) -> tuple[bool, np.ndarray | None, bool]:
        """(read, image, decoded). A lossless source reads every frame; a live one grabs every frame and
        decodes those the pipeline may take (decode_pacer.py). A frame that does not decode is (True, None,
        True)."""
        if self.pacer is None:
            ok, img = cap.read()
            return ok, img, True
        if not cap.grab():
            return False, None, True
        if not self.pacer.grabbed(time.monotonic(), self._slot is None):
            return True, None, False
        ok, img = cap.retrieve()
        return True, img if ok else None, True

    def _skip(self, now_mono: float) -> None:
        """A live frame grabbed and left undecoded: the pipeline would not have taken it."""
        with self._cond:
            self.stats.dropped += 1
            self._arrived(now_mono)

    def _read_loop(self, cap, period: float, index: int) -> tuple[str, int]:
        """Read until the source ends, fails or is told to reopen. Returns (why, next index)."""
        bad = 0
        delivered = False
        t0 = time.monotonic()
        n0 = index
        total = cap.get(cv2.CAP_PROP_FRAME_COUNT) if self.recording else 0
        while not self._stop.is_set() and not self._reopen.is_set():
            read_start, cpu_start = time.monotonic(), time.thread_time()
            try:
                ok, img, decoded = self._read(cap)
            except cv2.error as exc:
                ok, img, decoded = False, None, True
                self.stats.last_error = str(exc).splitlines()[0]
            good = ok and img is not None and img.size and img.ndim in (2, 3) and img.dtype == np.uint8
            if good or (ok and not decoded):
                bad = 0
                delivered = True
                self.health.up()
                if good:
                    self.stages.add("decode", (time.monotonic() - read_start) * 1000.0)
                    self._put(img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), index)
                else:
                    self._skip(time.monotonic())
                self.stats.cpu_s += time.thread_time() - cpu_start  # waiting for a frame or the slot is not CPU
                index += 1
                if period:
                    wait = t0 + (index - n0) * period - time.monotonic()
                    if wait > 0:
                        self._stop.wait(wait)
                continue
            if self.recording:
                pos = cap.get(cv2.CAP_PROP_POS_FRAMES)
                if total <= 0 or pos >= total or bad >= MAX_BAD_READS:
                    return "eof", index
                # A frame that does not decode inside a recording: skip it.
                self.stats.corrupt += 1
                index += 1
                bad += 1
                continue
            bad += 1
            self.stats.corrupt += 1 if ok else 0
            if bad >= MAX_BAD_READS or not ok:
                self.health.down("read failed" if not ok else "frames do not decode")
                return ("delivered" if delivered else "failed"), index
        return ("delivered" if delivered else "stopped"), index
