"""The calibration report: a histogram plot with the threshold, example overlays, and a JSON summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hgad.maps import find_regions, overlay

from .calibrate import CalibrationResult
from .profile import Profile


def summary(result: CalibrationResult) -> dict[str, Any]:
    p = result.profile
    out: dict[str, Any] = {
        "calibration_id": p.calibration_id,
        "model_id": p.model_id,
        "line": p.line,
        "version": p.version,
        "active": p.active,
        "mode": p.mode,
        "n": p.n,
        "far": p.far,
        "threshold": p.threshold,
        "method": p.method,
        "method_detail": p.method_detail,
        "far_bound_90": p.far_bound,
        "confidence": p.confidence,
        "pixel_threshold": p.pixel_threshold,
        "pixel_far": p.pixel_far,
        "images_hash": p.images_hash,
        "image_shape": list(p.image_shape),
        "created": p.created,
        "source": p.source,
        "score_median": p.normalisation["score_median"],
        "score_mad": p.normalisation["score_mad"],
        "histogram": p.histogram,
    }
    if result.anomaly_scores is not None:
        out["anomalies"] = {"n": int(result.anomaly_scores.size), "recall": result.recall}
    return out


def plot_histogram(path: Path, profile: Profile, anomaly_scores: np.ndarray | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a line device
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    normal = profile.sorted_scores
    hi = max(normal.max(), profile.threshold, anomaly_scores.max() if anomaly_scores is not None else -np.inf)
    bins = np.linspace(normal.min(), hi, 40)
    ax.hist(normal, bins=bins, color="#4c9be8", alpha=0.8, label=f"normal (n={profile.n})")
    if anomaly_scores is not None and anomaly_scores.size:
        ax.hist(anomaly_scores, bins=bins, color="#e8684c", alpha=0.6, label=f"anomalous (n={anomaly_scores.size})")
    ax.axvline(
        profile.threshold, color="k", linestyle="--", label=f"threshold {profile.threshold:.4g} (far {profile.far:g})"
    )
    ax.set_xlabel("image anomaly score")
    ax.set_ylabel("images")
    ax.set_title(f"line {profile.line}: calibration v{profile.version} ({profile.method})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, result: CalibrationResult) -> dict[str, Any]:
    """Write histogram.png, example overlays and summary.json under `folder`; returns the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    p = result.profile
    plot_histogram(folder / "histogram.png", p, result.anomaly_scores)
    examples = []
    for i, (name, frame, amap, score) in enumerate(result.scored.examples):
        regions = find_regions(amap, p.pixel_threshold, p.threshold, frame.shape[:2])
        img = overlay(frame, amap, p.pixel_threshold, p.threshold, regions)
        fname = f"example_{i + 1}.jpg"
        cv2.imwrite(str(folder / fname), img)
        examples.append({"file": fname, "image": name, "score": score})
    data = summary(result) | {"report": str(folder), "examples": examples}
    (folder / "summary.json").write_text(json.dumps(data, indent=2))
    return data
