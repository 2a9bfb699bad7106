"""A test rig for the agent as users run it: a calibrated database, a video written with OpenCV with
defect episodes at known frames, a config file, and `hgad-edge run` as a separate process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from agent.camera import open_capture
from calibration.calibrate import calibrate_folder
from calibration.db import open_database
from calibration.store import ProfileStore
from hgad.data import synth
from hgad.model_dir import LoadedModel
from hgad.runtime.preprocess import to_batch
from hgad.runtime.torch_backend import TorchBackend

from .conftest import SIZE, write_video

FRAME = 192  # camera frames are larger than the model input: the agent resizes


def normal_frame(seed: int) -> np.ndarray:
    style = synth.line_style(synth.SynthSpec(classes=2, size=SIZE, seed=3), 0)
    return cv2.resize(synth.render_normal("fabric", style, seed, FRAME), (FRAME, FRAME))


def defect_frame(seed: int) -> np.ndarray:
    """A blatant defect (a dark hole with a bright fleck): the test is about the agent, not the model."""
    img = normal_frame(seed).copy()
    rng = np.random.default_rng(seed)
    cx, cy = (int(v) for v in rng.integers(50, FRAME - 50, 2))
    cv2.circle(img, (cx, cy), 16, (15, 15, 20), -1, cv2.LINE_AA)
    cv2.line(img, (cx - 30, cy + 22), (cx + 30, cy + 30), (240, 240, 250), 3, cv2.LINE_AA)
    return img


@dataclass
class Episode:
    first: int
    last: int


@dataclass
class Stream:
    frames: list[np.ndarray]
    episodes: list[Episode] = field(default_factory=list)


def build_stream(pattern: list[tuple[str, int]], seed0: int = 20_000) -> Stream:
    """pattern: ("normal", n) / ("defect", n) runs, in order."""
    frames, episodes, seed = [], [], seed0
    for kind, n in pattern:
        start = len(frames)
        for _ in range(n):
            frames.append(defect_frame(seed) if kind == "defect" else normal_frame(seed))
            seed += 1
        if kind == "defect":
            episodes.append(Episode(start, len(frames) - 1))
    return Stream(frames, episodes)


def decode(video: Path) -> list[np.ndarray]:
    """The frames of `video` as the agent's camera reads them."""
    cap = open_capture("file", str(video), 5.0)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def calibrate(loaded: LoadedModel, db: Path, folder: Path, far: float = 0.02, n: int = 60) -> None:
    """Calibrate as a line engineer would, on frames from the same camera: the rig's stream is MJPG, so
    the calibration frames go through the same codec (its noise moves normal scores above lossless ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    video = write_video(folder.parent / f"{folder.name}.avi", [normal_frame(30_000 + i) for i in range(n)])
    for i, frame in enumerate(decode(video)):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    result = calibrate_folder(loaded, TorchBackend(loaded), "fabric", folder, far=far)
    ProfileStore(open_database(db)).save(result.profile)


def check_stream(loaded: LoadedModel, db: Path, video: Path, stream: Stream) -> None:
    """The fixture is only valid if the model itself separates the frames as the video decodes them."""
    profile = ProfileStore(open_database(db)).active("fabric")
    decoded = decode(video)
    assert len(decoded) == len(stream.frames)
    backend = TorchBackend(loaded)
    scores = np.concatenate(
        [
            backend.infer(to_batch(decoded[i : i + 16], SIZE), profile.class_line).scores
            for i in range(0, len(decoded), 16)
        ]
    )
    bad = [i for i in range(len(decoded)) if any(e.first <= i <= e.last for e in stream.episodes)]
    good = [i for i in range(len(decoded)) if i not in bad]
    assert scores[bad].min() > profile.threshold, (
        f"rig: a defect frame scores {scores[bad].min():.4f}, below the threshold {profile.threshold:.4f}"
    )
    assert scores[good].max() <= profile.threshold, (
        f"rig: a normal frame scores {scores[good].max():.4f}, above the threshold {profile.threshold:.4f}"
    )


@dataclass
class Rig:
    root: Path
    model_dir: Path
    port: int
    db: Path = field(init=False)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.db = self.root / "state" / "hgad-edge.sqlite"

    def config(self, source: Path | str, **overrides) -> Path:
        cfg = {
            "model": str(self.model_dir),
            "device_id": "rig",
            "backend": "torch",
            "device": "cpu",
            "cameras": [{"name": "cam1", "source": str(source), "line": "fabric"}],
            "decision": {"open_after": 2, "close_after": 3},
            "mqtt": {"host": "127.0.0.1", "port": self.port, "reconnect_min_s": 1, "reconnect_max_s": 2},
            "storage": {"state_dir": str(self.root / "state")},
            "health": {"stats_interval_s": 1, "state_interval_s": 0.5},
            "web": {"enabled": False},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            elif key == "camera":
                cfg["cameras"][0].update(value)
            else:
                cfg[key] = value
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
        exe = Path(sys.executable).with_name("hgad-edge")
        self.log = (self.root / "agent.log").open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "-v", "run", "--config", str(config), *extra],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        return self.proc

    def wait(self, timeout: float = 180) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return (self.root / "agent.log").read_text(errors="replace")


def make_rig(root: Path, model_dir: Path, port: int, calibrated_db: Path) -> Rig:
    rig = Rig(root, model_dir, port)
    rig.db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(calibrated_db, rig.db)
    return rig


def write_stream(path: Path, stream: Stream) -> Path:
    return write_video(path, stream.frames)


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)
