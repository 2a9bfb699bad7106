"""An MJPG stream read as its JPEG packets, decoded only when a frame is taken.

OpenCV's FFmpeg capture decodes every frame in `grab()`. A live camera grabs every frame but hands the
pipeline only the ones it may take (decode_pacer.py), so for most codecs the frames it skips have still cost a
decode. In an MJPG stream (HTTP and RTSP cameras, MJPG recordings) each packet is a whole JPEG image: in
OpenCV's raw mode (`CAP_PROP_FORMAT` -1) `grab()` only reads the packet, and `retrieve()` here decodes it with
the libjpeg that reads a folder of images, so a frame from a camera and the same frame saved as a still
decode alike.

A stream whose first packet does not decode to a whole frame of the stream's size (a packet of interlaced MJPG
holds two fields; a first frame may be damaged) is read by FFmpeg instead.
"""

from __future__ import annotations

import cv2
import numpy as np

# The four-character code OpenCV's FFmpeg capture reports for a stream of JPEG images, whatever the container's
# own tag (seen for AVI, MOV, MP4, Matroska and HTTP multipart).
JPEG_PACKET_CODE = "MJPG"


class JpegPackets:
    """A raw-mode FFmpeg capture with VideoCapture's grab/retrieve/read/get/set/isOpened/release, whose
    `retrieve()` decodes the grabbed packet. `first` is the first frame, decoded when the stream was probed: it
    is what the first grab and retrieve hand over (the capture's frame position is one ahead until then)."""

    def __init__(self, cap, first: np.ndarray):
        self._cap = cap
        self._pending: np.ndarray | None = first  # not grabbed yet
        self._held: np.ndarray | None = None  # grabbed, not retrieved

    def isOpened(self) -> bool:
        return self._cap.isOpened()

    def grab(self) -> bool:
        self._held, self._pending = self._pending, None
        return self._held is not None or self._cap.grab()

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        if self._held is not None:
            img, self._held = self._held, None
            return True, img
        img = decode_packet(self._cap)
        return img is not None, img

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self.grab():
            return False, None
        return self.retrieve()

    def get(self, prop: int) -> float:
        return self._cap.get(prop)

    def set(self, prop: int, value: float) -> bool:
        return self._cap.set(prop, value)

    def release(self) -> None:
        self._cap.release()


def decode_packet(cap) -> np.ndarray | None:
    """The packet `cap` grabbed last, decoded (BGR), or None where it is not a JPEG image."""
    ok, packet = cap.retrieve()
    if not ok or packet is None or not packet.size:
        return None
    return cv2.imdecode(packet, cv2.IMREAD_COLOR)


def as_jpeg_packets(cap) -> JpegPackets | None:
    """`cap`, an opened FFmpeg capture of an MJPG stream from which nothing has been read, switched to raw mode
    and probed with its first packet. None where it cannot be read that way: the caller must then release `cap`
    and open the source again (raw mode cannot be left, and the probe has taken a packet)."""
    if not cap.set(cv2.CAP_PROP_FORMAT, -1) or not cap.grab():
        return None
    first = decode_packet(cap)
    if first is None:
        return None
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if w > 0 and h > 0 and first.shape[:2] != (h, w):
        return None
    return JpegPackets(cap, first)
