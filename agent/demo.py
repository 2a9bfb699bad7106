"""`hgad-edge demo`: the main job end to end on embedded defaults, on a fresh machine, in minutes.

1. a synthetic multi-line dataset (hgad-edge synth), 2. one unified model for every line (train),
3. a calibration profile per line from normal images (calibrate), 4. one camera video per line with
defect episodes at known frames, 5. the real agent (hgad-edge run) against an MQTT broker (the local one
if it answers, else one the demo starts and stops), 6. alerts printed live as an operator subscribing
would see them, 7. a summary per line: frames, alerts, defects caught, false alarms, frames/s, latency.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from calibration.calibrate import calibrate_folder
from calibration.db import open_database
from calibration.report import write_report
from calibration.store import ProfileStore
from hgad.config import ModelConfig, TrainConfig
from hgad.data import synth
from hgad.data.datasets import load_split
from hgad.errors import HgadError
from hgad.model_dir import FORMAT_VERSION, LoadedModel, load_model, save_model
from hgad.progress import bar
from hgad.runtime.torch_backend import TorchBackend
from hgad.train import train

from . import paths
from .local_broker import Subscriber, local_broker

# Defect kinds the demo videos show, one per episode: the plainly visible ones. Thin fibres and faint
# stains are in the dataset and its evaluation, where they are measured, not shown off.
EPISODE_KINDS = ("hole", "scratch", "missing")
# On the pcb line a synthetic hole is a pale dot that looks like one more solder pad: the model scores it
# barely above a normal part (one frame of an episode over the threshold), so the pcb video shows a stain
# in its place.
SHOWN_INSTEAD = {"pcb": {"hole": "stain"}}
CAMERA_PX = 512


@dataclass(frozen=True)
class DemoSpec:
    out: Path
    lines: int = 3
    train_images: int = 100
    # The recipe's default (12) unless given.
    epochs: int | None = None
    # Side of the rendered parts (the camera shows them at CAMERA_PX) and of the model's input: the recipe at
    # a third of its default size, so the demo trains and runs in minutes on two cores.
    size: int = 256
    calibration_images: int = 100
    far: float = 0.02
    seed: int = 0
    episodes: int = 3
    episode_frames: int = 8
    gap_frames: int = 24


@dataclass
class Episode:
    first: int
    last: int
    kind: str


@dataclass
class LineResult:
    line: str
    camera: str
    frames: int = 0
    episodes: list[Episode] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    fps: float | None = None
    latency: dict = field(default_factory=dict)


def say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------------ steps


def demo_config(spec: DemoSpec) -> ModelConfig:
    """The default recipe; only the image size (and the epochs, when given) are the demo's."""
    return ModelConfig(
        classes=tuple(synth.line_names(spec.lines)),
        image_size=spec.size,
        train=TrainConfig(seed=spec.seed, **({"epochs": spec.epochs} if spec.epochs else {})),
    )


def prepare_model(spec: DemoSpec) -> LoadedModel:
    """Train the demo model unless the same one is already in OUT/model (make bench reuses it)."""
    model_dir = spec.out / "model"
    cfg = demo_config(spec)
    wanted = {"config": cfg.to_dict(), "train_images": spec.train_images, "format": FORMAT_VERSION}
    if (model_dir / "model.json").is_file():
        with contextlib.suppress(HgadError, KeyError, ValueError):
            loaded = load_model(model_dir)
            if loaded.meta.get("training", {}).get("demo") == wanted:
                say(f"[1-2/6] reusing the demo model {loaded.model_id} in {model_dir}")
                return loaded
    data = spec.out / "dataset"
    shutil.rmtree(data, ignore_errors=True)
    say(
        f"[1/6] writing a synthetic dataset: {spec.lines} product lines, {spec.train_images} normal images each "
        f"-> {data}"
    )
    names = synth.write_dataset(
        data, synth.SynthSpec(spec.lines, spec.train_images, 12, spec.size, spec.seed), progress=bar
    )
    say(
        f"[2/6] training one unified HGAD model for {', '.join(names)} ({cfg.train.epochs} epochs on "
        f"{spec.lines * spec.train_images} images at {spec.size} px; progress below)"
    )
    t0 = time.perf_counter()
    model, report = train(cfg, load_split(data, "train", names), "cpu", progress=bar)
    info = report.to_dict() | {"demo": wanted}
    model_id = save_model(model, model_dir, info, report.replay)
    say(f"      model {model_id} trained in {time.perf_counter() - t0:.0f} s -> {model_dir}")
    return load_model(model_dir)


def line_style(spec: DemoSpec, index: int) -> synth.Style:
    return synth.line_style(synth.SynthSpec(spec.lines, spec.train_images, 12, spec.size, spec.seed), index)


def to_camera(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (CAMERA_PX, CAMERA_PX), interpolation=cv2.INTER_CUBIC)


def calibrate_lines(spec: DemoSpec, loaded: LoadedModel, db: Path) -> None:
    say(
        f"[3/6] calibrating each line from {spec.calibration_images} normal images (false-alarm target "
        f"{spec.far:g} per frame)"
    )
    backend = TorchBackend(loaded)
    store = ProfileStore(open_database(db))
    for i, line in enumerate(loaded.model.classes):
        folder = spec.out / "calibration" / line
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        style = line_style(spec, i)
        for j in range(spec.calibration_images):
            img = synth.render_normal(line, style, 1_000_000 + 1000 * i + j, spec.size)
            cv2.imwrite(str(folder / f"{j:04d}.png"), to_camera(img))
        result = calibrate_folder(loaded, backend, line, folder, far=spec.far)
        result.profile = p = store.save(result.profile)
        write_report(paths.reports(db) / line / f"v{p.version}", result)
        say(f"      {line:<10} threshold {p.threshold:.4f}  ({p.method_detail}; profile v{p.version})")


def make_video(spec: DemoSpec, index: int, line: str, path: Path) -> list[Episode]:
    """Normal parts pass the camera; now and then a defective one, seen for a few frames."""
    rng = np.random.default_rng([spec.seed, index, 99])
    style = line_style(spec, index)
    frames, episodes = [], []
    seed = 2_000_000 + 10_000 * index

    def add_normal(n: int) -> None:
        nonlocal seed
        for _ in range(n):
            frames.append(to_camera(synth.render_normal(line, style, seed, spec.size)))
            seed += 1

    add_normal(spec.gap_frames)
    for e in range(spec.episodes):
        kind = EPISODE_KINDS[(index + e) % len(EPISODE_KINDS)]
        kind = SHOWN_INSTEAD.get(line, {}).get(kind, kind)
        img, _ = synth.render_defective(line, style, seed, spec.size, kind)
        seed += 1
        start = len(frames)
        for _ in range(spec.episode_frames):  # the same part, moving a little under the camera
            dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
            m = np.float32([[1, 0, dx], [0, 1, dy]])
            frames.append(to_camera(cv2.warpAffine(img, m, img.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)))
        episodes.append(Episode(start, len(frames) - 1, kind))
        add_normal(spec.gap_frames)
    # Lossless, like the raw frames a CSI or USB3 industrial camera hands over: a JPEG recording would
    # add compression noise the calibration images never saw. MJPG only where FFmpeg's FFV1 is missing.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10.0, (CAMERA_PX, CAMERA_PX))
    if not writer.isOpened():
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (CAMERA_PX, CAMERA_PX))
    for f in frames:
        writer.write(f)
    writer.release()
    return episodes


def print_alert(a: dict) -> None:
    """An alert as the demo's operator sees it."""
    if a["type"] == "new":
        say(
            f"      ALERT {a['camera']:<10} new  event {a['event_id'][:8]}  frame {a['frame_index']:>4}  "
            f"score {a['score']:.4f} > {a['threshold']:.4f}  p={a['p_value']:.4f}  {len(a['regions'])} region(s)  "
            f"capture-to-alert {a['latency_ms']:.0f} ms"
        )
    elif a["type"] == "end":
        after = f"after {a['anomalous_frames']} anomalous frame(s)"
        say(f"      ALERT {a['camera']:<10} end  event {a['event_id'][:8]}  {after}")


def write_config(
    spec: DemoSpec, host: str, port: int, videos: dict[str, Path], state: Path, path: Path, web_port: int | None = None
) -> Path:
    """The agent's configuration; with `web_port`, the console is served there and the videos loop at their
    own frame rate, as live cameras would run."""
    cfg = {
        "model": str((spec.out / "model").resolve()),
        "device_id": "demo",
        "backend": "auto",
        "device": "cpu",
        "log_level": "warning",
        "cameras": [
            {"name": f"cam-{line}", "source": str(path.resolve()), "line": line} for line, path in videos.items()
        ],
        "decision": {"open_after": 2, "close_after": 3},
        "mqtt": {"host": host, "port": port, "prefix": "hgad"},
        "storage": {"state_dir": str(state.resolve())},
        "health": {"stats_interval_s": 1.0, "state_interval_s": 1.0},
        "web": {"enabled": web_port is not None, "port": web_port or 8080},
    }
    if web_port is not None:
        for camera in cfg["cameras"]:
            camera |= {"loop": True, "realtime": True}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def keep_running(spec: DemoSpec, host: str, port: int, videos: dict[str, Path], state: Path) -> int:
    """`demo --console`: the agent again, cameras looping, console on port 8080 (or a free one), until Ctrl-C."""
    web_port = 0  # a free port, unless 8080 is
    with contextlib.suppress(OSError), socket.create_server(("127.0.0.1", 8080)):
        web_port = 8080
    config = write_config(spec, host, port, videos, state, spec.out / "console.yaml", web_port=web_port)
    exe = Path(sys.executable).with_name("hgad-edge")
    proc = subprocess.Popen([str(exe), "-v", "run", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the console's address is in the agent's log
            if "msg=console " in line:
                say(f"[console] {line.split('url=')[1].strip()}  (the agent keeps running; Ctrl-C stops it)")
                break
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(30)
    return 0


def run_agent(config: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`hgad-edge run --config CONFIG --exit-when-done` as its own process, as a user runs it."""
    exe = Path(sys.executable).with_name("hgad-edge")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
    run = [*cmd, "run", "--config", str(config), "--exit-when-done"]
    return subprocess.run(run, capture_output=True, text=True, env={**os.environ, **(env or {})})


def overlaps(alert: dict, ep: Episode) -> bool:
    return ep.first <= alert["frame_index"] <= ep.last + 3


def run(spec: DemoSpec, console: bool = False) -> int:
    t_start = time.perf_counter()
    spec.out.mkdir(parents=True, exist_ok=True)
    loaded = prepare_model(spec)
    state = spec.out / "state"
    shutil.rmtree(state, ignore_errors=True)
    db = paths.database(state)
    calibrate_lines(spec, loaded, db)
    say("[4/6] writing one camera video per line, with defect episodes at known frames")
    videos, results = {}, {}
    for i, line in enumerate(loaded.model.classes):
        path = spec.out / "videos" / f"{line}.avi"
        path.parent.mkdir(parents=True, exist_ok=True)
        eps = make_video(spec, i, line, path)
        videos[line] = path
        total = eps[-1].last + 1 + spec.gap_frames
        results[line] = LineResult(line, f"cam-{line}", total, eps)
        say(
            f"      {path}  {total} frames at {CAMERA_PX}x{CAMERA_PX}, defects at "
            + ", ".join(f"{e.first}-{e.last} ({e.kind})" for e in eps)
        )
    with local_broker() as (host, port, how):
        say(f"[5/6] running the agent (hgad-edge run) against {how}; subscribed to hgad/demo/# as an operator:")
        config = write_config(spec, host, port, videos, state, spec.out / "config.yaml")
        operator = Subscriber(host, port, "hgad/demo", print_alert)
        proc = run_agent(config)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sum(a["type"] == "end" for a in operator.alerts) < sum(
            a["type"] == "new" for a in operator.alerts
        ):
            time.sleep(0.05)
        operator.close()
        if proc.returncode != 0:
            say(proc.stderr.strip())
            return proc.returncode
        code = summary(spec, collect(results, operator), time.perf_counter() - t_start, db)
        return keep_running(spec, host, port, videos, state) if console else code


def collect(results: dict[str, LineResult], operator: Subscriber) -> dict[str, LineResult]:
    """Each line's alerts, latency and frames/s as the operator's subscription saw them."""
    stats = operator.stats.get("cameras", {})
    for r in results.values():
        r.alerts = [a for a in operator.alerts if a["camera"] == r.camera and a["type"] == "new"]
        cam = stats.get(r.camera, {})
        r.latency = cam.get("alert_ack_latency_ms") or {}
        # Frames judged per second of the camera's processing, start-up excluded.
        r.fps = cam["processed"] / cam["active_s"] if cam.get("active_s") else None
    return results


def summary(spec: DemoSpec, results: dict[str, LineResult], total: float, db: Path) -> int:
    say("[6/6] summary")
    head = (
        f"{'line':<10}{'frames':>8}{'alerts':>8}{'defects caught':>16}{'false alarms':>14}{'frames/s':>10}"
        f"{'capture-to-ack p50/p99 ms':>27}"
    )
    say(head)
    say("-" * len(head))
    missed = false_alarms = 0
    for r in results.values():
        caught = sum(any(overlaps(a, ep) for a in r.alerts) for ep in r.episodes)
        false = sum(not any(overlaps(a, ep) for ep in r.episodes) for a in r.alerts)
        missed += len(r.episodes) - caught
        false_alarms += false
        lat = r.latency
        lat_s = f"{lat['p50']:.0f}/{lat['p99']:.0f}" if lat.get("p50") is not None else "-"
        fps = f"{r.fps:.1f}" if r.fps else "-"
        say(
            f"{r.line:<10}{r.frames:>8}{len(r.alerts):>8}{f'{caught}/{len(r.episodes)}':>16}{false:>14}{fps:>10}{lat_s:>27}"
        )
    say("-" * len(head))
    say(
        f"frames/s is per camera while {len(results)} cameras shared one model on this CPU. capture-to-alert (the "
        f"ALERT lines) is from frame capture to the alert being raised; capture-to-ack (the table) to the broker's "
        f"acknowledgement of the published alert."
    )
    say(f"SQLite: {db}   heatmaps: {db.parent / 'heatmaps'}   model: {spec.out / 'model'}")
    say(f"calibration reports: {paths.reports(db)}   videos: {spec.out / 'videos'}   total {total:.0f} s")
    if missed or false_alarms:
        say(f"{missed} defect episode(s) missed, {false_alarms} false alarm(s)")
        return 1
    say("every injected defect episode was caught, with no false alarm")
    return 0
