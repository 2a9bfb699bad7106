"""What is done with an anomaly map: regions (boxes around thresholded areas) and heatmap overlays."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    """A box in pixels of the original frame, with the map's peak inside it."""

    x: int
    y: int
    w: int
    h: int
    peak: float
    area_px: int

    def to_dict(self) -> dict:
        return {
            "x": self.x,
            "y": self.y,
            "w": self.w,
            "h": self.h,
            "peak": round(self.peak, 6),
            "area_px": self.area_px,
        }


def find_regions(
    amap: np.ndarray,
    pixel_threshold: float,
    image_threshold: float,
    frame_shape: tuple[int, int],
    max_regions: int = 10,
) -> list[Region]:
    """Connected areas of map > pixel_threshold whose peak reaches the image threshold (so that a normal
    frame's faint blobs never become regions), largest peak first; boxes scaled to the frame's size."""
    above = (amap > pixel_threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    if n <= 1:
        return []
    peaks = np.full(n, -np.inf)
    np.maximum.at(peaks, labels.ravel(), amap.ravel())
    order = [i for i in np.argsort(-peaks[1:]) + 1]
    keep = [i for i in order if peaks[i] >= image_threshold] or order[:1]
    sy = frame_shape[0] / amap.shape[0]
    sx = frame_shape[1] / amap.shape[1]
    out = []
    for i in keep[:max_regions]:
        x, y, w, h, area = stats[i]
        out.append(
            Region(
                int(x * sx),
                int(y * sy),
                max(1, round(w * sx)),
                max(1, round(h * sy)),
                float(peaks[i]),
                round(area * sx * sy),
            )
        )
    return out


def colour_map(amap: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values to a JET colour image (BGR uint8): `low` and below is blue, `high` and above is red."""
    scaled = np.clip((amap - low) / max(high - low, 1e-12), 0.0, 1.0)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)


def overlay(
    frame: np.ndarray, amap: np.ndarray, low: float, high: float, regions: list[Region] = (), alpha: float = 0.45
) -> np.ndarray:
    """The frame with the heatmap blended where the map is above `low`, and region boxes drawn."""
    h, w = frame.shape[:2]
    m = cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = colour_map(m, low, high)
    weight = (np.clip((m - low) / max(high - low, 1e-12), 0.0, 1.0) * alpha)[..., None]
    base = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    out = (base.astype(np.float32) * (1 - weight) + heat.astype(np.float32) * weight).astype(np.uint8)
    thickness = max(1, round(max(h, w) / 400))
    for r in regions:
        cv2.rectangle(out, (r.x, r.y), (r.x + r.w - 1, r.y + r.h - 1), (0, 0, 255), thickness)
    return out


def encode_jpeg(image: np.ndarray, max_bytes: int = 256 * 1024, max_side: int = 1280) -> bytes:
    """JPEG no larger than `max_bytes`: quality steps down, then the image shrinks, until it fits."""
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        image = cv2.resize(image, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA)
    while True:
        for quality in (90, 80, 70, 60, 50, 40):
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and buf.nbytes <= max_bytes:
                return buf.tobytes()
        image = cv2.resize(
            image, (max(1, image.shape[1] * 3 // 4), max(1, image.shape[0] * 3 // 4)), interpolation=cv2.INTER_AREA
        )
