"""`hgad-edge bench`: per-stage milliseconds, frames/s at batch 1 and N, peak memory, backend and device.

Frames are camera-sized (1280x720 unless asked otherwise) so the preprocess stage includes the resize the
agent really does. Medians over repeated runs. The backend is opened as the agent opens it, for one frame at
a time: a compiled graph of static batch 1 runs a batch of N as N calls. The torch backend also reports the
flow head against the backbone (`head_to_backbone_ratio`), the split that decides where speed comes from.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .backend import Backend
from .parity import golden_frames
from .preprocess import to_batch

CAMERA_SHAPE = (720, 1280)


def _camera_frames(size: int, n: int, shape: tuple[int, int] = CAMERA_SHAPE) -> list[np.ndarray]:
    base = golden_frames(size, 2)
    return [cv2.resize(base[i % 2], shape[::-1], interpolation=cv2.INTER_LINEAR) for i in range(n)]


def _one_batch(backend: Backend, frames: list[np.ndarray], iters: int, warmup: int) -> dict[str, Any]:
    staged = getattr(backend, "infer_staged", None)
    runs: list[dict[str, float]] = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        x = to_batch(frames, backend.image_size)
        resize_ms = (time.perf_counter() - t0) * 1000.0
        t1 = time.perf_counter()
        out = staged(x) if staged else backend.infer(x)
        total_ms = resize_ms + (time.perf_counter() - t1) * 1000.0
        stages = dict(out.timings_ms) if out.timings_ms else {"engine": total_ms - resize_ms}
        stages["preprocess"] = stages.get("preprocess", 0.0) + resize_ms
        stages["total"] = total_ms
        if i >= warmup:
            runs.append(stages)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    p90 = sorted(r["total"] for r in runs)[max(0, int(0.9 * len(runs)) - 1)]
    n = len(frames)
    return {
        "stages_ms": {k: round(v, 3) for k, v in med.items() if k != "total"},
        "total_ms": round(med["total"], 3),
        "total_ms_p90": round(p90, 3),
        "ms_per_frame": round(med["total"] / n, 3),
        "fps": round(n * 1000.0 / med["total"], 2),
    }


def sustained_fps(
    backend: Backend, seconds: float, camera_shape: tuple[int, int] = CAMERA_SHAPE, min_frames: int = 3
) -> float:
    """Frames/s of camera frames judged one after another for `seconds` (resize included): a rate over time, as
    the agent's own is. The median of single runs (`run_bench`) leaves out the slow ones that a busy machine
    makes; the agent's rate cannot, so its ratio is to this."""
    frames = _camera_frames(backend.image_size, 1, camera_shape)
    backend.infer(to_batch(frames, backend.image_size))  # warm
    n, t0 = 0, time.perf_counter()
    while n < min_frames or time.perf_counter() - t0 < seconds:
        backend.infer(to_batch(frames, backend.image_size))
        n += 1
    return n / (time.perf_counter() - t0)


def cpu_name() -> str:
    """The CPU's model name where Linux says it, else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)  # kB on Linux


def run_bench(
    backend: Backend, batch: int = 8, iters: int = 20, warmup: int = 3, camera_shape: tuple[int, int] = CAMERA_SHAPE
) -> dict[str, Any]:
    if backend.info.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    results = {}
    for b in sorted({1, batch}):
        results[str(b)] = _one_batch(backend, _camera_frames(backend.image_size, b, camera_shape), iters, warmup)
        # The process's high-water mark so far: batches run smallest first, so batch 1's figure is what
        # the agent (one frame at a time) needs, and the largest batch's is the process peak.
        results[str(b)]["peak_rss_mb"] = _peak_rss_mb()
    ratios = {}
    for b, r in results.items():
        s = r["stages_ms"]
        if "backbone" in s and s["backbone"] > 0:
            ratios[b] = round((s["flow"] + s["postprocess"]) / s["backbone"], 3)
    out: dict[str, Any] = {
        "backend": backend.info.name,
        "device": backend.info.device,
        "precision": backend.info.precision,
        "detail": backend.info.detail,
        "model_id": backend.info.model_id,
        "image_size": backend.image_size,
        "camera_frame": list(camera_shape),
        "mode": "class-agnostic",
        "batches": results,
        "head_to_backbone_ratio": ratios,
        "peak_rss_mb": _peak_rss_mb(),
        "host": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "iterations": iters,
    }
    if backend.info.device.startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def print_bench(result: dict[str, Any]) -> None:
    for b, r in result["batches"].items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items())
        print(
            f"batch {b}: {r['fps']:.1f} frames/s, {r['ms_per_frame']:.1f} ms/frame ({stages} ms per batch); "
            f"peak RSS so far {r['peak_rss_mb']} MB"
        )
    print(
        f"backend {result['backend']} on {result['device']} ({result['precision']}); "
        f"head/backbone {result['head_to_backbone_ratio']}; peak RSS {result['peak_rss_mb']} MB"
    )
