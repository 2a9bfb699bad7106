"""A synthetic multi-line inspection dataset in MVTec AD layout, with pixel masks.

Each line is a procedural texture (fabric, wood, brushed metal, leather, perforated sheet) or an object or
panel (circuit board, capsule, washer, label, tile) whose normal images vary in pose, phase, lighting and
noise. Defects are subtle and of six kinds: scratch, hole, stain, foreign material, missing part,
deformation. Every image is drawn from its own seeded generator, so a dataset is reproducible exactly.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import BadInputError

DEFECTS = ("scratch", "hole", "stain", "foreign", "missing", "deform")
CATALOGUE = ("fabric", "pcb", "wood", "capsule", "metal", "tile", "leather", "washer", "mesh", "label")

Image = np.ndarray  # float32 [S, S, 3] in [0, 1], BGR


# ----------------------------------------------------------------------------------------- noise


def value_noise(rng: np.random.Generator, size: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Smooth fractal noise in about [0, 1]: bicubic-upsampled random grids, halving amplitude per octave."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = max(2, cells * 2**o)
        grid = rng.random((n + 1, n + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    return np.clip(out / total, 0.0, 1.0)


def _grid(size: int, angle_deg: float, shift: tuple[float, float] = (0.0, 0.0)):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = x - size / 2 + shift[0], y - size / 2 + shift[1]
    a = math.radians(angle_deg)
    return x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)


def _colourise(gray: np.ndarray, colour: np.ndarray) -> Image:
    return np.clip(gray[..., None] * colour[None, None, :], 0.0, 1.0).astype(np.float32)


def _sensor(img: Image, rng: np.random.Generator, noise: float = 0.012) -> Image:
    """Per-image lighting gain and sensor noise: the nuisance variation a line camera sees."""
    gain = 1.0 + rng.normal(0.0, 0.03)
    return np.clip(img * gain + rng.normal(0.0, noise, img.shape).astype(np.float32), 0.0, 1.0)


# ------------------------------------------------------------------------------------ line styles


@dataclass(frozen=True)
class Style:
    """What is fixed for a line: palette, scales, layout seed. Per-image variation comes from the rng."""

    colour: np.ndarray
    colour2: np.ndarray
    scale: float
    angle: float
    layout_seed: int


def _style(rng: np.random.Generator) -> Style:
    return Style(
        colour=rng.uniform(0.35, 1.0, 3).astype(np.float32),
        colour2=rng.uniform(0.1, 0.9, 3).astype(np.float32),
        scale=float(rng.uniform(0.8, 1.25)),
        angle=float(rng.uniform(-30, 30)),
        layout_seed=int(rng.integers(1 << 30)),
    )


def fabric(st: Style, rng: np.random.Generator, s: int) -> Image:
    u, v = _grid(s, st.angle + rng.normal(0, 1.0), tuple(rng.uniform(-20, 20, 2)))
    p = 7.0 * st.scale * s / 256
    over = np.sign(np.sin(np.pi * u / p)) * np.sign(np.sin(np.pi * v / p))
    warp = 0.5 + 0.5 * np.cos(2 * np.pi * u / p)
    weft = 0.5 + 0.5 * np.cos(2 * np.pi * v / p)
    g = 0.45 + 0.3 * np.where(over > 0, warp, weft) + 0.08 * (value_noise(rng, s, 6) - 0.5)
    return _sensor(_colourise(g, st.colour), rng)


def wood(st: Style, rng: np.random.Generator, s: int) -> Image:
    u, v = _grid(s, st.angle + rng.normal(0, 2.0), tuple(rng.uniform(-60, 60, 2)))
    n = value_noise(rng, s, 3, 2)
    period = 18.0 * st.scale * s / 256
    rings = np.sin(2 * np.pi * (v + 25.0 * n * s / 256 + 0.002 * u * u / st.scale) / period)
    grain = value_noise(rng, s, 40, 1)
    g = 0.55 + 0.18 * rings + 0.08 * (grain - 0.5)
    brown = np.array([0.25, 0.45, 0.7], np.float32) * (0.8 + 0.4 * st.colour)
    return _sensor(_colourise(g, brown), rng)


def metal(st: Style, rng: np.random.Generator, s: int) -> Image:
    streaks = rng.normal(0.0, 1.0, (s, s)).astype(np.float32)
    k = max(3, int(41 * st.scale * s / 256)) | 1
    streaks = cv2.blur(streaks, (k, 1))
    m = cv2.getRotationMatrix2D((s / 2, s / 2), st.angle + rng.normal(0, 1.5), 1.0)
    streaks = cv2.warpAffine(streaks, m, (s, s), borderMode=cv2.BORDER_REFLECT)
    _, v = _grid(s, rng.uniform(0, 360))
    light = 0.08 * v / s
    g = 0.6 + 0.5 * streaks / (streaks.std() + 1e-6) * 0.08 + light
    grey = np.array([0.85, 0.85, 0.82], np.float32) * (0.9 + 0.1 * st.colour)
    return _sensor(_colourise(g, grey), rng, 0.008)


def leather(st: Style, rng: np.random.Generator, s: int) -> Image:
    cells = value_noise(rng, s, int(10 / st.scale), 2)
    ridges = 1.0 - np.abs(2.0 * cells - 1.0)
    grain = value_noise(rng, s, 64, 1)
    g = 0.35 + 0.35 * ridges**3 + 0.12 * grain
    return _sensor(_colourise(g, st.colour * 0.8), rng)


def mesh(st: Style, rng: np.random.Generator, s: int) -> Image:
    u, v = _grid(s, st.angle * 0.1 + rng.normal(0, 0.5), tuple(rng.uniform(-30, 30, 2)))
    p = 16.0 * st.scale * s / 256
    du = (u / p - np.round(u / p)) * p
    dv = (v / p - np.round(v / p)) * p
    r = np.sqrt(du**2 + dv**2)
    hole = np.clip((r - 0.28 * p) / 1.2, 0.0, 1.0)  # 0 inside the hole, 1 on the sheet, soft edge
    sheet = 0.7 + 0.05 * (value_noise(rng, s, 8) - 0.5)
    g = sheet * hole + 0.12 * (1 - hole)
    return _sensor(_colourise(g, 0.7 + 0.3 * st.colour), rng, 0.01)


def _text(img: Image, text: str, org: tuple[int, int], font: int, scale: float, colour, thickness: int) -> Image:
    """putText for float images (OpenCV draws text on 8-bit images only): draw a mask, then blend."""
    canvas = np.zeros(img.shape[:2], np.uint8)
    cv2.putText(canvas, text, org, font, scale, 255, thickness, cv2.LINE_AA)
    return _blend(img, canvas.astype(np.float32) / 255.0, np.asarray(colour, np.float32))


def _layout_rng(st: Style) -> np.random.Generator:
    return np.random.default_rng(st.layout_seed)


def _place(img: Image, rng: np.random.Generator, max_shift: float, max_rot: float) -> Image:
    s = img.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), rng.uniform(-max_rot, max_rot), 1.0)
    m[:, 2] += rng.uniform(-max_shift, max_shift, 2)
    # Replicated borders: reflecting would mirror parts of the object into the corners.
    return cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pcb(st: Style, rng: np.random.Generator, s: int) -> Image:
    lr = _layout_rng(st)
    board = np.array([0.25, 0.45, 0.15], np.float32) + 0.1 * st.colour2 - 0.05
    img = np.ones((s, s, 3), np.float32) * board
    img *= (0.92 + 0.16 * value_noise(rng, s, 4, 2))[..., None]
    copper = (0.35, 0.65, 0.8)
    for _ in range(14):  # traces: horizontal/vertical runs
        x0, y0 = lr.integers(10, s - 10, 2)
        if lr.random() < 0.5:
            x1, y1 = int(lr.integers(10, s - 10)), int(y0)
        else:
            x1, y1 = int(x0), int(lr.integers(10, s - 10))
        cv2.line(img, (int(x0), int(y0)), (x1, y1), copper, max(1, s // 128), cv2.LINE_AA)
        cv2.circle(img, (int(x0), int(y0)), max(2, s // 64), (0.55, 0.75, 0.85), -1, cv2.LINE_AA)
    for _ in range(4):  # chips with pins
        w, h = lr.integers(s // 10, s // 5, 2)
        x, y = lr.integers(s // 10, s - s // 10 - w), lr.integers(s // 10, s - s // 10 - h)
        for px in range(int(x) + 3, int(x + w) - 2, max(4, s // 40)):
            cv2.rectangle(img, (px, int(y) - 4), (px + 2, int(y + h) + 4), (0.75, 0.75, 0.78), -1)
        cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), (0.12, 0.12, 0.13), -1)
        cv2.circle(img, (int(x) + 5, int(y) + 5), 2, (0.4, 0.4, 0.4), -1, cv2.LINE_AA)
    return _sensor(_place(img, rng, 3.0 * s / 256, 1.0), rng)


def capsule(st: Style, rng: np.random.Generator, s: int) -> Image:
    img = np.ones((s, s, 3), np.float32) * np.float32(0.08) + 0.04 * value_noise(rng, s, 4)[..., None]
    c, a, b = (s // 2, s // 2), int(s * 0.36), int(s * 0.17)
    half = np.zeros((s, s), np.uint8)
    cv2.ellipse(half, c, (a, b), 0, 0, 360, 255, -1, cv2.LINE_AA)
    left = np.zeros_like(half)
    left[:, : s // 2] = 255
    body = half.astype(np.float32)[..., None] / 255.0
    col = np.where(left[..., None] > 0, st.colour, 0.5 + 0.5 * st.colour2).astype(np.float32)
    y, _ = np.mgrid[0:s, 0:s].astype(np.float32)
    shade = 1.0 - 0.35 * ((y - c[1]) / b) ** 2
    img = img * (1 - body) + body * col * np.clip(shade, 0.5, 1.0)[..., None]
    img = _text(
        img, "HG", (int(s * 0.58), int(s * 0.54)), cv2.FONT_HERSHEY_SIMPLEX, s / 480, (0.2, 0.2, 0.2), max(1, s // 200)
    )
    return _sensor(_place(img, rng, 4.0 * s / 256, 3.0), rng)


def washer(st: Style, rng: np.random.Generator, s: int) -> Image:
    img = np.ones((s, s, 3), np.float32) * (0.25 + 0.2 * st.colour2)
    img *= (0.9 + 0.2 * value_noise(rng, s, 3))[..., None]
    c = (s // 2, s // 2)
    ring = np.zeros((s, s), np.float32)
    cv2.circle(ring, c, int(s * 0.38), 1.0, -1, cv2.LINE_AA)
    cv2.circle(ring, c, int(s * 0.17), 0.0, -1, cv2.LINE_AA)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    ang = np.arctan2(y - c[1], x - c[0])
    metal_g = 0.6 + 0.15 * np.cos(2 * ang + rng.uniform(0, 2 * np.pi)) + 0.05 * value_noise(rng, s, 30, 1)
    img = img * (1 - ring[..., None]) + ring[..., None] * _colourise(metal_g, 0.75 + 0.25 * st.colour)
    cv2.rectangle(
        img, (c[0] - s // 60, c[1] - int(s * 0.38)), (c[0] + s // 60, c[1] - int(s * 0.3)), (0.2, 0.2, 0.2), -1
    )  # a notch: the part's orientation mark
    return _sensor(_place(img, rng, 3.0 * s / 256, 180.0), rng)


def label(st: Style, rng: np.random.Generator, s: int) -> Image:
    lr = _layout_rng(st)
    img = np.ones((s, s, 3), np.float32) * (0.3 + 0.5 * st.colour2)
    m = int(s * 0.1)
    cv2.rectangle(img, (m, m), (s - m, s - m), (0.93, 0.94, 0.95), -1)
    x = m + s // 20
    while x < s - m - s // 20:  # barcode
        w = int(lr.integers(1, 4)) * max(1, s // 256)
        if lr.random() < 0.6:
            cv2.rectangle(img, (x, int(s * 0.6)), (x + w - 1, int(s * 0.82)), (0.05, 0.05, 0.05), -1)
        x += w + max(1, s // 256)
    for row in range(4):  # text lines
        y0 = int(s * (0.18 + 0.08 * row))
        width = int(lr.uniform(0.3, 0.7) * s)
        img = _text(
            img,
            "".join(lr.choice(list("ABCDEFGH0123456789"), 12)),
            (m + s // 20, y0),
            cv2.FONT_HERSHEY_PLAIN,
            s / 320 * (width / s + 0.5),
            (0.15, 0.15, 0.2),
            1,
        )
    return _sensor(_place(img, rng, 2.0 * s / 256, 1.0), rng, 0.008)


def tile(st: Style, rng: np.random.Generator, s: int) -> Image:
    glaze = 0.55 + 0.4 * st.colour
    img = np.ones((s, s, 3), np.float32) * glaze
    img *= (0.95 + 0.1 * value_noise(rng, s, 5, 2))[..., None]
    c = s // 2
    for r in range(int(s * 0.12), int(s * 0.45), int(s * 0.08 * st.scale)):
        cv2.circle(img, (c, c), r, tuple(float(v) for v in 0.3 + 0.4 * st.colour2), max(1, s // 100), cv2.LINE_AA)
    g = max(2, s // 40)
    img[:g], img[-g:], img[:, :g], img[:, -g:] = 0.8, 0.8, 0.8, 0.8  # grout
    return _sensor(_place(img, rng, 2.0 * s / 256, 1.0), rng, 0.01)


GENERATORS: dict[str, Callable[[Style, np.random.Generator, int], Image]] = {
    "fabric": fabric,
    "pcb": pcb,
    "wood": wood,
    "capsule": capsule,
    "metal": metal,
    "tile": tile,
    "leather": leather,
    "washer": washer,
    "mesh": mesh,
    "label": label,
}


# ------------------------------------------------------------------------------------------ defects


def _region(rng: np.random.Generator, s: int, margin: float = 0.15) -> tuple[int, int]:
    lo, hi = int(s * margin), int(s * (1 - margin))
    return int(rng.integers(lo, hi)), int(rng.integers(lo, hi))


def _structured_region(img: Image, rng: np.random.Generator, radius: int, tries: int = 8) -> tuple[int, int]:
    """Of a few random places, the one with the most local structure: a part can only go missing, and a
    surface only visibly dent, where there is something to lose or to bend."""
    best, best_std = _region(rng, img.shape[0]), -1.0
    for _ in range(tries):
        cx, cy = _region(rng, img.shape[0])
        patch = img[max(0, cy - radius) : cy + radius, max(0, cx - radius) : cx + radius]
        std = float(patch.std())
        if std > best_std:
            best, best_std = (cx, cy), std
    return best


def _blend(img: Image, alpha: np.ndarray, colour: np.ndarray | Image) -> Image:
    a = alpha[..., None]
    return (img * (1 - a) + a * colour).astype(np.float32)


def _local_mean(img: Image, cx: int, cy: int, r: int) -> np.ndarray:
    patch = img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r]
    return patch.reshape(-1, 3).mean(axis=0)


def scratch(img: Image, rng: np.random.Generator) -> tuple[Image, np.ndarray]:
    s = img.shape[0]
    cx, cy = _region(rng, s)
    length = rng.uniform(0.15, 0.4) * s
    a = rng.uniform(0, np.pi)
    p0 = np.array([cx - math.cos(a) * length / 2, cy - math.sin(a) * length / 2])
    p2 = np.array([cx + math.cos(a) * length / 2, cy + math.sin(a) * length / 2])
    p1 = (p0 + p2) / 2 + rng.normal(0, length * 0.15, 2)
    t = np.linspace(0, 1, 40)[:, None]
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.int32)
    canvas = np.zeros((s, s), np.uint8)
    cv2.polylines(canvas, [pts], False, 255, max(1, int(rng.integers(1, 3) * s / 256)), cv2.LINE_AA)
    alpha = canvas.astype(np.float32) / 255.0 * rng.uniform(0.45, 0.75)
    base = _local_mean(img, cx, cy, int(length / 2))
    colour = np.clip(base + (0.3 if base.mean() < 0.5 else -0.3), 0, 1)
    return _blend(img, alpha, colour), alpha > 0.15


def hole(img: Image, rng: np.random.Generator) -> tuple[Image, np.ndarray]:
    s = img.shape[0]
    cx, cy = _region(rng, s)
    r = rng.uniform(0.015, 0.035) * s
    canvas = np.zeros((s, s), np.float32)
    cv2.ellipse(
        canvas,
        (cx, cy),
        (max(2, int(r)), max(2, int(r * rng.uniform(0.6, 1.0)))),
        rng.uniform(0, 180),
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
    )
    rim = cv2.GaussianBlur(canvas, (0, 0), max(1.0, r * 0.35)) - canvas * 0.9
    # Through a hole the camera sees what is behind the part: dark on a bright surface, light on a dark one.
    local = _local_mean(img, cx, cy, int(3 * r)).mean()
    inside = np.array([0.04, 0.04, 0.05] if local > 0.3 else [0.85, 0.88, 0.9], np.float32)
    out = _blend(img, canvas * rng.uniform(0.75, 0.95), inside)
    sign = 1.0 if local > 0.3 else -1.0
    out = np.clip(out + sign * rim.clip(0, 1)[..., None] * 0.25, 0, 1).astype(np.float32)
    return out, canvas > 0.3


def stain(img: Image, rng: np.random.Generator) -> tuple[Image, np.ndarray]:
    s = img.shape[0]
    cx, cy = _region(rng, s)
    r = rng.uniform(0.05, 0.11) * s
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    blob = (d + 0.6 * (value_noise(rng, s, 10, 2) - 0.5) < 1.0).astype(np.float32)
    soft = cv2.GaussianBlur(blob, (0, 0), max(1.0, r * 0.15))
    # The drying rim ("coffee ring"): a band just inside the blob's edge, darker than its body.
    rim = np.clip(soft - cv2.GaussianBlur(cv2.erode(blob, np.ones((5, 5), np.uint8)), (0, 0), r * 0.12), 0, 1)
    alpha = np.clip(soft * rng.uniform(0.4, 0.6) + rim * 0.5, 0, 1)
    # BGR casts: coffee/rust (brown), oil (dark), coolant (blue-green).
    cast = np.array(rng.choice([[0.35, 0.55, 0.8], [0.45, 0.45, 0.45], [0.8, 0.75, 0.45]]), np.float32)
    return _blend(img, alpha, img * cast), alpha > 0.12


def foreign(img: Image, rng: np.random.Generator) -> tuple[Image, np.ndarray]:
    s = img.shape[0]
    cx, cy = _region(rng, s)
    canvas = np.zeros((s, s), np.uint8)
    if rng.random() < 0.5:  # a fibre: a short random walk
        pts, p, a = [], np.array([cx, cy], np.float64), rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(15, 35))):
            a += rng.normal(0, 0.35)
            p = p + 2.0 * s / 256 * np.array([math.cos(a), math.sin(a)])
            pts.append(p.copy())
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, 255, max(1, s // 256), cv2.LINE_AA)
    else:  # a cluster of particles
        for _ in range(int(rng.integers(3, 8))):
            q = (int(cx + rng.normal(0, 0.02 * s)), int(cy + rng.normal(0, 0.02 * s)))
            cv2.circle(canvas, q, max(1, int(rng.uniform(1, 3.5) * s / 256)), 255, -1, cv2.LINE_AA)
    alpha = canvas.astype(np.float32) / 255.0 * rng.uniform(0.7, 0.95)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    return _blend(img, alpha, colour), alpha > 0.2


def missing(img: Image, rng: np.random.Generator) -> tuple[Image, np.ndarray]:
    """A patch where the structure is gone: the texture or component is replaced by its smoothed surround."""
    s = img.shape[0]
    w, h = (rng.uniform(0.05, 0.12, 2) * s).astype(int)
    cx, cy = _structured_region(img, rng, max(w, h) // 2)
    box = np.zeros((s, s), np.float32)
    cv2.rectangle(box, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), 1.0, -1)
    alpha = cv2.GaussianBlur(box, (0, 0), 1.5)
    smooth = cv2.GaussianBlur(img, (0, 0), max(3.0, 0.03 * s))
    return _blend(img, alpha, smooth), alpha > 0.5


def deform(img: Image, rng: np.random.Generator) -> tuple[Image, np.ndarray]:
    """A dent or bulge: the surface is warped and, being no longer flat, catches the light differently."""
    s = img.shape[0]
    r = rng.uniform(0.06, 0.12) * s
    cx, cy = _structured_region(img, rng, int(r))
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    dx, dy = x - cx, y - cy
    d = np.sqrt(dx**2 + dy**2)
    fall = np.clip(1.0 - d / r, 0.0, 1.0) ** 2
    if rng.random() < 0.5:
        ang = rng.uniform(0.5, 0.9) * rng.choice([-1, 1]) * fall
        mx = cx + dx * np.cos(ang) - dy * np.sin(ang)
        my = cy + dx * np.sin(ang) + dy * np.cos(ang)
    else:
        k = 1.0 - rng.uniform(0.35, 0.55) * fall
        mx, my = cx + dx * k, cy + dy * k
    out = cv2.remap(img, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # Shading of a dome lit from one side: brighter on the lit flank, darker on the other.
    light = rng.uniform(0, 2 * np.pi)
    slope = (dx * np.cos(light) + dy * np.sin(light)) / max(r, 1.0)
    shade = 1.0 + rng.uniform(0.25, 0.4) * slope * np.sqrt(fall)
    out = np.clip(out * shade[..., None], 0, 1)
    shift = np.sqrt((mx - x) ** 2 + (my - y) ** 2)
    return out.astype(np.float32), (shift > 1.0) | (np.abs(shade - 1.0) > 0.04)


PAINTERS: dict[str, Callable[[Image, np.random.Generator], tuple[Image, np.ndarray]]] = {
    "scratch": scratch,
    "hole": hole,
    "stain": stain,
    "foreign": foreign,
    "missing": missing,
    "deform": deform,
}


def apply_defect(img: Image, kind: str, rng: np.random.Generator) -> tuple[Image, np.ndarray]:
    """Paint a defect of `kind`; retries until the defect covers enough pixels to be annotated."""
    for _ in range(10):
        out, mask = PAINTERS[kind](img, rng)
        if mask.sum() >= 12:
            return out, mask
    return out, mask


# ------------------------------------------------------------------------------------------ writer


@dataclass(frozen=True)
class SynthSpec:
    classes: int = 6
    train: int = 100
    test: int = 60
    size: int = 256
    seed: int = 0


def line_names(n: int) -> list[str]:
    names = []
    for i in range(n):
        base = CATALOGUE[i % len(CATALOGUE)]
        names.append(base if i < len(CATALOGUE) else f"{base}{i // len(CATALOGUE) + 1}")
    return names


def _to_u8(img: Image) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def render_normal(name: str, style: Style, seed: int, size: int) -> np.ndarray:
    base = name.rstrip("0123456789")
    return _to_u8(GENERATORS[base](style, np.random.default_rng(seed), size))


def line_style(spec: SynthSpec, index: int) -> Style:
    return _style(np.random.default_rng([spec.seed, index, 7]))


def render_defective(name: str, style: Style, seed: int, size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = name.rstrip("0123456789")
    img = GENERATORS[base](style, rng, size)
    out, mask = apply_defect(img, kind, rng)
    return _to_u8(out), mask


def _clear_earlier_dataset(out: Path) -> None:
    """Writing over an earlier synth dataset replaces it whole: written file by file, a smaller spec would
    leave the earlier run's extra images and lines behind, mixed into the new one. Any other content is
    not ours to delete, so a folder holding it is refused."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInputError(f"synth: {out} exists and is not a directory; give a new or empty folder")
    if not any(out.iterdir()):
        return
    try:
        earlier = json.loads((out / "synth.json").read_text())
        lines = [str(n) for n in earlier["classes"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInputError(
            f"synth: {out} is not empty and holds no earlier synth dataset (no readable synth.json); "
            "give a new or empty folder"
        ) from None
    for name in lines:
        if name and "/" not in name and name not in (".", ".."):
            shutil.rmtree(out / name, ignore_errors=True)
    (out / "synth.json").unlink()


def write_dataset(out: Path, spec: SynthSpec, progress: Callable | None = None) -> list[str]:
    """Write the dataset under `out` (MVTec AD layout); returns the line names."""
    if spec.classes < 1 or spec.train < 1 or spec.test < 2:
        raise BadInputError("synth: --classes and --train must be >= 1 and --test >= 2")
    if spec.size < 64 or spec.size % 32:
        raise BadInputError(f"synth: --size {spec.size} is not valid; use a multiple of 32, at least 64")
    _clear_earlier_dataset(out)
    names = line_names(spec.classes)
    jobs = []
    for ci, name in enumerate(names):
        style = line_style(spec, ci)
        n_good = max(1, round(spec.test * 0.4))
        for i in range(spec.train):
            jobs.append((name, style, "train", "good", i, [spec.seed, ci, 0, i]))
        for i in range(n_good):
            jobs.append((name, style, "test", "good", i, [spec.seed, ci, 1, i]))
        for i in range(spec.test - n_good):
            jobs.append((name, style, "test", DEFECTS[i % len(DEFECTS)], i, [spec.seed, ci, 2, i]))
    iterator = progress(jobs, total=len(jobs), desc="synth") if progress else jobs
    for name, style, split, kind, i, seed_seq in iterator:
        seed = int(np.random.SeedSequence(seed_seq).generate_state(1)[0])
        folder = out / name / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        fname = f"{i:03d}.png"
        if kind == "good":
            cv2.imwrite(str(folder / fname), render_normal(name, style, seed, spec.size))
            continue
        img, mask = render_defective(name, style, seed, spec.size, kind)
        cv2.imwrite(str(folder / fname), img)
        gt = out / name / "ground_truth" / kind
        gt.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(gt / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
    meta = {
        "generator": "hgad-edge synth",
        "classes": names,
        "defects": list(DEFECTS),
        "spec": {"classes": spec.classes, "train": spec.train, "test": spec.test, "size": spec.size, "seed": spec.seed},
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2))
    return names
