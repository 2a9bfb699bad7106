"""`hgad-edge bench --agent`: the real agent on camera-sized recordings, beside the bare model.

The agent runs as users run it (`hgad-edge run --exit-when-done`, its own process) on N cameras that each
play the same recording of camera-sized frames (MJPG, as many USB cameras deliver), against a broker, with the
bench's backend: read losslessly, every frame judged, or with `--camera-fps` played in real time as live
cameras deliver frames (the newest is judged, the rest skipped, most of them never decoded). Its frames/s (all
cameras together, over the time they were judging) is set beside the bare model's frames/s at batch 1 on
frames of the same size, judged one after another in this process for a few seconds just before and just after
the agent's run: a rate over time, as the agent's is.
Start-up is timed from the command to systemd's READY (read from a real notify socket) and to the first
judged frame.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from calibration.calibrate import profile_from_scores, score_frames
from calibration.db import open_database
from calibration.store import ProfileStore
from hgad.errors import HgadError
from hgad.model_dir import LoadedModel
from hgad.runtime.backend import Backend
from hgad.runtime.parity import golden_frames

from . import paths
from .config import WebConfig
from .demo import run_agent
from .local_broker import Subscriber, local_broker

# Frames per camera recording at most (a full-HD MJPG frame is a few hundred KB on disk).
MAX_FRAMES = 1800
# Seconds of the bare model's back-to-back frames on each side of the agent's run (at most a third of the run).
BARE_WINDOW_S = 5.0


@dataclass(frozen=True)
class AgentBenchSpec:
    workdir: Path
    backend: str = "auto"
    cameras: int = 1
    frame: tuple[int, int] = (720, 1280)  # height, width
    seconds: float = 15.0  # of judging to aim for
    engine_cache: Path | None = None  # the bench's, so that the agent loads the graph the bench built
    console: bool = False  # also run it with the web console open in a headless Chromium on the cameras page
    # Frames/s each camera delivers, played in real time as a live camera delivers them (the newest frame is
    # judged); None: the recording is read losslessly and every frame is judged.
    camera_fps: float | None = None
    # Where and how the agent runs the model: the bench's own, so that the agent is set beside the bare model it
    # was measured against (on a GPU box `auto` alone would run fp32 on CUDA whatever the bench measured).
    device: str = "auto"
    precision: str | None = None


def camera_frames(size: int, frame_hw: tuple[int, int], n: int) -> list[np.ndarray]:
    """n camera-sized frames: mostly normal, a defective part every 40 frames for 4 frames."""
    normal, defect = golden_frames(size, 2)
    h, w = frame_hw
    big = [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in (normal, defect)]
    return [big[1] if i % 40 >= 36 else big[0] for i in range(n)]


def write_recording(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise HgadError(f"OpenCV cannot write an MJPG recording to {path}")
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def calibrate_line(loaded: LoadedModel, backend: Backend, db: Path, frames: list[np.ndarray]) -> str:
    """A profile of the model's first line from normal frames of the recording (the bench's own database)."""
    line = loaded.model.classes[0]
    normals = [f for i, f in enumerate(frames) if i % 40 < 36][:20]
    scored = score_frames(backend, normals, line, [f"{i}" for i in range(len(normals))])
    profile = profile_from_scores(
        loaded, line, "class-aware", "bench", scored, 0.05, None, 0.001, "bench", normals[0].shape
    )
    ProfileStore(open_database(db)).save(profile)
    return line


class NotifyListener:
    """A systemd notify socket: the time READY=1 arrives."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)  # an earlier run's socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            if "READY=1" in message and self.ready_at is None:
                self.ready_at = time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _config(
    spec: AgentBenchSpec, model: Path, video: Path, line: str, host: str, port: int, web_port: int | None = None
) -> Path:
    cfg = {
        "model": str(model),
        "device_id": "bench",
        "backend": spec.backend,
        "device": spec.device,
        "precision": spec.precision,
        "engine_cache": str(spec.engine_cache.resolve()) if spec.engine_cache else None,
        "cameras": [
            {"name": f"cam{i}", "source": str(video), "line": line, "realtime": spec.camera_fps is not None}
            for i in range(spec.cameras)
        ],
        "mqtt": {"host": host, "port": port},
        "storage": {"state_dir": str(spec.workdir / "state")},
        "health": {"stats_interval_s": 1.0, "state_interval_s": 1.0},
        "web": {"enabled": web_port is not None, "port": web_port or 8080},
    }
    path = spec.workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_agent_bench(
    loaded: LoadedModel,
    backend: Backend,
    spec: AgentBenchSpec,
    model_fps: float,
    bare_fps: Callable[[float], float],
) -> dict[str, Any]:
    """The agent's frames/s over the bare model's at batch 1. `model_fps` (the bench's median) sizes the
    recordings; `bare_fps(seconds)` is the bare model's rate over that many seconds, taken just before and just
    after the agent's run, and the ratio is to the mean of the two: on a shared machine whose speed drifts, a
    rate taken on one side of a 15-second run can be off by a third."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    # Played in real time the run lasts spec.seconds whatever the model's speed; read losslessly, about as long.
    n = spec.camera_fps * spec.seconds if spec.camera_fps else model_fps * spec.seconds / spec.cameras
    n = int(np.clip(n, 40, MAX_FRAMES))
    frames = camera_frames(loaded.model.cfg.image_size, spec.frame, n)
    video = write_recording(
        spec.workdir / f"camera-{spec.frame[1]}x{spec.frame[0]}.avi", frames, spec.camera_fps or 25.0
    )
    line = calibrate_line(loaded, backend, paths.database(spec.workdir / "state"), frames)
    window = min(BARE_WINDOW_S, spec.seconds / 3)
    with local_broker() as (host, port, how):
        before = bare_fps(window)
        run = _run_once(spec, loaded, video, line, host, port)
        after = bare_fps(window)
        result = _result(spec, run["stats"], (before, after), window, n, how, run["t0"], run["ready_at"])
        if spec.console:
            result["console"] = _with_console(spec, loaded, video, line, host, port, result["agent_fps"])
    return result


def agent_summary(r: dict[str, Any]) -> str:
    """The agent's result in one line, as `bench` prints it."""
    h, w = r["camera_frame"]
    before, after = r["bare_model_fps_batch1_before_after"]
    bare = f"{before:.1f} before, {after:.1f} after, over {r['bare_model_window_s']:g} s each"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items())
    start = r["startup_s"]
    live = ""
    if r.get("camera_fps"):
        counts = r["camera_frames"].values()
        decoded, delivered = sum(c["decoded"] or 0 for c in counts), sum(c["in"] or 0 for c in counts)
        live = f" at {r['camera_fps']:g} frames/s each ({decoded} of {delivered} frames decoded)"
    return (
        f"agent, {r['cameras']} camera(s) of {w}x{h}{live}: {r['agent_fps']:.1f} frames/s against the bare model's "
        f"{r['bare_model_fps_batch1']:.1f} ({bare}): ratio {r['agent_to_model_fps_ratio']}; stages ({stages} ms); "
        f"READY after {start['ready']} s, first judged frame after {start['first_judged_frame']} s"
    )


def _run_once(spec, loaded, video, line, host, port, web_port: int | None = None) -> dict[str, Any]:
    notify = NotifyListener(spec.workdir / "notify.sock")
    listener = Subscriber(host, port, "hgad/bench")
    try:
        t0 = time.time()
        config = _config(spec, loaded.path.resolve(), video, line, host, port, web_port)
        proc = run_agent(config, {"NOTIFY_SOCKET": str(notify.path)})
    finally:
        listener.close()
        notify.close()
        notify.path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise HgadError(f"agent bench failed: {proc.stderr.strip()[-400:]}")
    return {"stats": listener.stats, "t0": t0, "ready_at": notify.ready_at}


def _with_console(spec, loaded, video, line, host, port, fps_without: float) -> dict[str, Any]:
    """The same run with the console served and watched: by a remote operator's browser (its requests, made from
    here), and by a real headless Chromium on this machine."""
    from .console_viewers import remote_viewer, watching

    out: dict[str, Any] = {}
    viewers = {
        "remote_viewer": lambda url: remote_viewer(url.split("#")[0], WebConfig().live_fps),
        "local_chromium": watching,
    }
    for name, viewer in viewers.items():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            web_port = s.getsockname()[1]
        try:
            with viewer(f"http://127.0.0.1:{web_port}/#/cameras") as watcher:
                run = _run_once(spec, loaded, video, line, host, port, web_port)
        except (HgadError, ImportError) as exc:  # no Chromium, or no selenium (a development dependency)
            out[name] = {"skipped": str(exc)}
            continue
        cams = run["stats"]["cameras"].values()
        fps = sum(c["processed"] / c["active_s"] for c in cams if c.get("active_s"))
        ratio = round(fps / fps_without, 3) if fps_without else None
        out[name] = {"agent_fps": round(fps, 2), "ratio_to_without": ratio, "frames_shown": watcher.frames_shown()}
    return out


def _result(
    spec, stats: dict, bare: tuple[float, float], window: float, n: int, how: str, t0: float, ready_at: float | None
) -> dict:
    every = list(stats["cameras"].values())
    cams = [c for c in every if c.get("first_judged_ts")]
    # Frames judged over the time from the first judged frame of any camera to the last of any: cameras are
    # not served in step, so the sum of each camera's own rate would count overlapping time once per camera.
    first = min((c["first_judged_ts"] for c in cams), default=None)
    last = max((c["first_judged_ts"] + c["active_s"] for c in cams), default=None)
    fps = sum(c["processed"] for c in cams) / (last - first) if cams and last > first else 0.0
    bare_fps = sum(bare) / 2
    return {
        "cameras": spec.cameras,
        "camera_frame": list(spec.frame),
        "frames_per_camera": n,
        "camera_fps": spec.camera_fps,  # None: every frame judged
        "processed": sum(c["processed"] for c in every),
        # Per camera: frames delivered, decoded (a live camera skips those the pipeline will not take), judged,
        # and the camera thread's CPU milliseconds per frame delivered (reading, decoding, resizing: unlike the
        # stage times, not lengthened by waiting for a core).
        "camera_frames": {
            name: {
                "in": c.get("frames_in"),
                "decoded": c.get("decoded"),
                "judged": c["processed"],
                "cpu_ms_per_frame": round(c["cpu_s"] * 1000.0 / c["frames_in"], 2) if c.get("frames_in") else None,
            }
            for name, c in stats["cameras"].items()
        },
        "broker": how,
        "agent_fps": round(fps, 2),
        "bare_model_fps_batch1": round(bare_fps, 2),
        "bare_model_fps_batch1_before_after": [round(b, 2) for b in bare],
        "bare_model_window_s": round(window, 2),  # of frames judged back to back, on each side of the run
        "agent_to_model_fps_ratio": round(fps / bare_fps, 3) if bare_fps else None,  # of the unrounded rates
        "stages_ms": stats.get("stages_ms", {}),
        "frame_latency_ms": {name: c["latency_ms"] for name, c in stats["cameras"].items()},
        "alert_ack_latency_ms": stats.get("alert_ack_latency_ms"),
        "alerts": sum(c["alerts"] for c in every),
        "startup_s": {
            "ready": round(ready_at - t0, 2) if ready_at else None,
            "first_judged_frame": round(first - t0, 2) if first else None,
        },
        "agent_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1),
        "backend": stats.get("backend"),
    }
