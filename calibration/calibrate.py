"""Building profiles: from a folder of normal images, or from live frames the agent collects."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hgad.data.datasets import load_folder
from hgad.data.images import read_image
from hgad.errors import BadInputError, DataError
from hgad.memory import frames_per_batch
from hgad.model_dir import LoadedModel, normalisation_of
from hgad.progress import Progress, quiet
from hgad.runtime.backend import Backend
from hgad.runtime.preprocess import to_batch

from .profile import MODES, Profile, build_profile
from .threshold import MIN_IMAGES, check_feasible, choose_threshold

log = logging.getLogger(__name__)

DEFAULT_PIXEL_FAR = 0.001
EXAMPLES = 4
_F16_MAX = float(np.finfo(np.float16).max)


def half(maps: np.ndarray) -> np.ndarray:
    """Maps kept as float16 to halve their memory; anomaly values are unbounded above, so they are capped at
    float16's largest value (65504 nats, far beyond any threshold) instead of overflowing to inf."""
    return np.minimum(maps, _F16_MAX).astype(np.float16)


@dataclass
class Scored:
    scores: np.ndarray
    maps: np.ndarray  # float16 [N, S, S]
    # (name, frame, map, score) of the highest-scoring images
    examples: list[tuple[str, np.ndarray, np.ndarray, float]] = field(default_factory=list)


@dataclass
class CalibrationResult:
    profile: Profile
    scored: Scored
    anomaly_scores: np.ndarray | None = None
    recall: float | None = None


def default_mode(loaded_classes: Sequence[str], line: str) -> str:
    """Class-aware when the line is one of the model's classes (its own mixture is the sharper test),
    class-agnostic for a line the model was not trained on."""
    return "class-aware" if line in loaded_classes else "class-agnostic"


def unknown_line_warning(classes: Sequence[str], line: str) -> str | None:
    """What a user calibrating a line the model was not trained on needs to know, or None for a known line.
    A threshold holds its false-alarm rate on any line, but cannot teach the model a product it never saw."""
    if line in classes:
        return None
    return (
        f"line {line} is not one of the model's lines ({', '.join(classes)}): its threshold will hold the "
        "false-alarm rate, but a model misses many defects on a product it was not trained on (docs/results.md, "
        "held-out lines); train a model that includes this line"
    )


def resolve_mode(classes: Sequence[str], line: str, mode: str | None) -> str:
    mode = mode or default_mode(classes, line)
    if mode not in MODES:
        raise BadInputError(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    if mode == "class-aware" and line not in classes:
        raise BadInputError(
            f"--line {line}: class-aware scoring needs one of the model's classes ({', '.join(classes)}); "
            f"use --mode class-agnostic for a line the model was not trained on"
        )
    return mode


def read_checked(paths: Sequence[Path]) -> tuple[list[np.ndarray], tuple[int, ...], str]:
    """Read every image once, refusing a set that mixes sizes or colour layouts; returns the frames (BGR),
    their common shape and a hash of the image set (names and bytes)."""
    frames, digest, shape = [], hashlib.sha256(), None
    for p in paths:
        raw = p.read_bytes() if p.is_file() else b""
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
        if img is None:
            raise DataError(f"{p}: not a readable image; remove it from the calibration folder")
        if img.dtype != np.uint8:
            raise DataError(f"{p}: {img.dtype} pixels; calibration images must be 8-bit, like the camera's frames")
        this = img.shape if img.ndim == 3 else (*img.shape, 1)
        if shape is None:
            shape = this
        elif this != shape:
            raise DataError(
                f"{p}: {this[1]}x{this[0]} with {this[2]} channel(s), but {paths[0].name} is {shape[1]}x{shape[0]} "
                f"with {shape[2]}; all calibration images must come from the same camera setup"
            )
        if this[2] == 1:
            img = cv2.cvtColor(img.reshape(this[:2]), cv2.COLOR_GRAY2BGR)
        elif this[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        frames.append(img)
        digest.update(p.name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return frames, tuple(shape or ()), digest.hexdigest()[:16]


def score_frames(
    backend: Backend,
    frames: Sequence[np.ndarray],
    line: str | None,
    names: Sequence[str],
    batch: int | None = None,
    progress: Progress = quiet,
    desc: str = "calibrate",
) -> Scored:
    batch = batch or frames_per_batch(backend.image_size)
    scores, maps = [], []
    chunks = range(0, len(frames), batch)
    for i in progress(chunks, total=len(chunks), desc=desc):
        out = backend.infer(to_batch(frames[i : i + batch], backend.image_size), line)
        scores.append(out.scores)
        maps.append(half(out.maps))
    s = np.concatenate(scores).astype(np.float64)
    m = np.concatenate(maps)
    # The highest-scoring normals are the most useful examples: what the model finds least normal.
    top = np.argsort(-s)[:EXAMPLES]
    examples = [(names[i], frames[i], m[i].astype(np.float32), float(s[i])) for i in top]
    return Scored(s, m, examples)


def profile_from_scores(
    loaded: LoadedModel,
    line: str,
    mode: str,
    source: str,
    scored: Scored,
    far: float,
    confidence: float | None,
    pixel_far: float,
    images_hash: str,
    image_shape: tuple[int, ...],
) -> Profile:
    threshold = choose_threshold(scored.scores, far, confidence)
    return build_profile(
        model_id=loaded.model_id,
        line=line,
        mode=mode,
        source=source,
        threshold=threshold,
        scores=scored.scores,
        normal_maps=scored.maps.astype(np.float32),
        pixel_far=pixel_far,
        images_hash=images_hash,
        image_shape=image_shape,
        model_normalisation=normalisation_of(loaded.model),
    )


def calibrate_folder(
    loaded: LoadedModel,
    backend: Backend,
    line: str,
    images: Path,
    far: float = 0.01,
    mode: str | None = None,
    confidence: float | None = None,
    pixel_far: float = DEFAULT_PIXEL_FAR,
    anomalies: Path | None = None,
    progress: Progress = quiet,
) -> CalibrationResult:
    """Score a folder of normal images of `line` and build (not store) its profile."""
    mode = resolve_mode(loaded.model.classes, line, mode)
    class_line = line if mode == "class-aware" else None
    paths = [s.path for s in load_folder(images)]
    if len(paths) < MIN_IMAGES:
        raise DataError(f"{images}: {len(paths)} images are too few to calibrate; use at least {MIN_IMAGES}")
    check_feasible(len(paths), far, confidence)
    frames, shape, images_hash = read_checked(paths)
    scored = score_frames(backend, frames, class_line, [p.name for p in paths], progress=progress)
    profile = profile_from_scores(
        loaded, line, mode, f"folder:{images.resolve()}", scored, far, confidence, pixel_far, images_hash, shape
    )
    result = CalibrationResult(profile, scored)
    if anomalies is not None:
        apaths = [s.path for s in load_folder(anomalies)]
        aframes = [read_image(p) for p in apaths]
        a = score_frames(backend, aframes, class_line, [p.name for p in apaths], progress=progress, desc="anomalies")
        result.anomaly_scores = a.scores
        result.recall = float(np.mean(a.scores > profile.threshold))
    return result


class LiveCalibration:
    """Collects the next N live frames of a line (declared normal by the operator) with the scores and maps
    the pipeline already computed, then builds the profile. The agent stores and activates it."""

    def __init__(
        self,
        loaded: LoadedModel,
        line: str,
        n: int,
        far: float,
        mode: str,
        source: str,
        confidence: float | None = None,
        pixel_far: float = DEFAULT_PIXEL_FAR,
    ):
        check_feasible(n, far, confidence)  # refuse an impossible target now, not after N frames
        self.loaded, self.line, self.n, self.far, self.mode = loaded, line, n, far, mode
        self.source, self.confidence, self.pixel_far = source, confidence, pixel_far
        self.scores: list[float] = []
        self.maps: list[np.ndarray] = []
        self.examples: list[tuple[str, np.ndarray, np.ndarray, float]] = []
        self.shape: tuple[int, ...] | None = None
        self.digest = hashlib.sha256()

    @property
    def collected(self) -> int:
        return len(self.scores)

    @property
    def done(self) -> bool:
        return self.collected >= self.n

    def add(self, frame: np.ndarray, score: float, amap: np.ndarray) -> None:
        shape = frame.shape if frame.ndim == 3 else (*frame.shape, 1)
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise DataError(f"calibrate: frame {self.collected + 1} is {shape}, earlier frames {self.shape}")
        self.scores.append(float(score))
        self.maps.append(half(amap))
        self.digest.update(hashlib.sha256(frame.tobytes()).digest())
        if len(self.examples) < EXAMPLES:
            self.examples.append((f"frame{self.collected:05d}", frame.copy(), amap.copy(), float(score)))

    def build(self) -> CalibrationResult:
        scored = Scored(np.asarray(self.scores), np.stack(self.maps), self.examples)
        profile = profile_from_scores(
            self.loaded,
            self.line,
            self.mode,
            self.source,
            scored,
            self.far,
            self.confidence,
            self.pixel_far,
            self.digest.hexdigest()[:16],
            tuple(self.shape or ()),
        )
        return CalibrationResult(profile, scored)
