"""Plant scale: one model for 12, 24 and 36 lines, both priors, both scoring modes, on cached features.

    python -m benchmarks.scale DATA CACHE.pt [--sizes 12,24,36] [--priors hgad,single] [--epochs 12]
        [--image-size 768] [--json OUT.json]

DATA is `python -m benchmarks.photo_lines DATA --lines 36`; a model of N lines is trained on its first N
lines (the sets `--lines 12`, `24` and `36` make), each with the library's own fit_flows / fit_position_stats /
fit_references as benchmarks.ablation does, and its test images are scored both class-agnostic (every line's
mixture; the posterior names the line) and class-aware (the image's own line), maps at 256 px. For each
model: per-line image AUROC, pixel AUROC and AUPRO; the minutes of flow training per 1,000 images; the line
confusion of class-agnostic scoring (how often the posterior's line is not the image's, which lines it
takes for which, and the image AUROC class-aware scoring gains on those lines); and the milliseconds of one
frame at batch 1 through the whole model, timed for every size in one loop so that the ratio holds on a
shared machine; and where the flow maps normal and defect positions (`mapping`). The process's peak RSS is
in the JSON. `--unstandardised` adds the class-agnostic scores without the per-line, per-position
standardisation of the log-likelihoods.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch

from hgad.data.datasets import load_split, select_classes
from hgad.data.images import read_mask
from hgad.memory import keep_freed_memory
from hgad.metrics import aupro, auroc
from hgad.model import HGAD
from hgad.prior import MASKED
from hgad.scoring import SmoothedMap, anomaly, image_score

from .ablation import MAP_SIZE, Run, build, cached_features, fit


@dataclasses.dataclass
class Scored:
    scores: np.ndarray  # [N] image scores
    maps: np.ndarray  # [N, 256, 256] anomaly maps
    named: np.ndarray | None  # [N] the line the posterior names (class-agnostic hgad only)
    latent: np.ndarray  # [N, h, w] the prior's log-density of z per dimension, before standardisation
    logdet: np.ndarray  # [N, h, w] the flow's log-determinant per dimension


@torch.inference_mode()
def score(model: HGAD, features: torch.Tensor, lines: np.ndarray | None, batch: int = 16) -> Scored:
    """Scores and maps of cached test features: class-aware when `lines` (each image's line index) is given."""
    to_map = SmoothedMap(model.side, MAP_SIZE, model.cfg.score.sigma)
    k = len(model.classes)
    scores, maps, named, latent, logdet = [], [], [], [], []
    for i in range(0, features.shape[0], batch):
        feats = model.features.standardised(features[i : i + batch].float())
        bias = torch.zeros(feats.shape[0], k)
        if lines is not None:
            bias.fill_(MASKED)
            bias[torch.arange(feats.shape[0]), torch.from_numpy(lines[i : i + batch])] = 0.0
        z, ld = model.flow(feats.permute(0, 2, 3, 1), model.pos)
        out = model.prior.score(z, bias[:, None, None, :])
        latent.append(out.ll.numpy())
        logdet.append((ld / z.shape[-1]).numpy())
        weights = model.line_weights(out.joint)
        amap = to_map(anomaly(model.standardise_positions(out.ll, weights), model.ll_ref))
        scores.append(image_score(amap).numpy())
        maps.append(amap.numpy().astype(np.float16))
        named.append(weights.argmax(dim=1).numpy())
    informative = lines is None and model.cfg.prior.kind == "hgad"
    named = np.concatenate(named) if informative else None
    return Scored(np.concatenate(scores), np.concatenate(maps), named, np.concatenate(latent), np.concatenate(logdet))


@torch.inference_mode()
def unstandardised(s: Scored, side: int, sigma: float, batch: int = 64) -> Scored:
    """The same class-agnostic pass scored by the latent log-density alone, without the per-line, per-position
    standardisation: the paper's score, which leaves the prior to tell the lines' densities apart."""
    to_map = SmoothedMap(side, MAP_SIZE, sigma)
    scores, maps = [], []
    for i in range(0, s.latent.shape[0], batch):
        ll = torch.from_numpy(s.latent[i : i + batch])
        amap = to_map(-ll)
        scores.append(image_score(amap).numpy())
        maps.append(amap.numpy())
    return Scored(np.concatenate(scores), np.concatenate(maps), None, s.latent, s.logdet)


def mapping(s: Scored, masks: np.ndarray, anomalous: np.ndarray) -> dict:
    """Where the flow puts normal and defect positions (the grid cells of a defect image more than half
    inside its mask, against every cell of the normal images): the mean latent log-density and log-determinant
    per dimension of each, and the pixel AUROC at grid cells of the latent term alone (what is scored) and of
    the whole log-likelihood with the log-determinant. A flow that maps defects as densely as normal texture
    (the homogeneous mapping HGAD's paper describes for one Gaussian) shows a small latent gap."""
    side = s.latent.shape[-1]
    grid = np.stack([cv2.resize(m.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) for m in masks])
    defect = (grid > 0.5) & anomalous[:, None, None]
    normal = np.broadcast_to(~anomalous[:, None, None], defect.shape)
    latent, logdet = s.latent.astype(np.float32), s.logdet.astype(np.float32)
    cells = defect | normal
    return {
        "latent_normal": round(float(latent[normal].mean()), 3),
        "latent_defect": round(float(latent[defect].mean()), 3),
        "logdet_normal": round(float(logdet[normal].mean()), 3),
        "logdet_defect": round(float(logdet[defect].mean()), 3),
        "cell_auroc_latent": round(auroc(defect[cells], -latent[cells]), 4),
        "cell_auroc_with_logdet": round(auroc(defect[cells], -(latent + logdet)[cells]), 4),
    }


def metrics(s: Scored, names: list[str], line: np.ndarray, anomalous: np.ndarray, masks: np.ndarray) -> dict:
    out = {}
    for c, name in enumerate(names):
        m = line == c
        out[name] = {
            "image": round(auroc(anomalous[m], s.scores[m]), 4),
            "pixel": round(auroc(masks[m], s.maps[m].astype(np.float32)), 4),
            "aupro": round(aupro(masks[m], s.maps[m].astype(np.float32)), 4),
        }
    return out


def mean(per_line: dict, key: str) -> float:
    return round(float(np.mean([v[key] for v in per_line.values()])), 4)


def confusion(s: Scored, names: list[str], line: np.ndarray, anomalous: np.ndarray) -> dict:
    wrong = s.named != line
    pairs = Counter((names[a], names[b]) for a, b in zip(line[wrong], s.named[wrong], strict=True))
    return {
        "rate": round(float(wrong.mean()), 4),
        "rate_normal": round(float(wrong[~anomalous].mean()), 4),
        "rate_anomalous": round(float(wrong[anomalous].mean()), 4),
        "pairs": [{"line": a, "named": b, "images": n} for (a, b), n in pairs.most_common(12)],
    }


@torch.inference_mode()
def frame_ms(models: dict[int, HGAD], repeats: int = 6) -> dict[int, float]:
    """Median ms of one frame through each whole model (backbone, flow, prior, maps), class-agnostic, the
    sizes interleaved in one loop."""
    size = next(iter(models.values())).cfg.image_size
    frame = torch.randint(0, 255, (1, size, size, 3), dtype=torch.uint8)
    times: dict[int, list[float]] = {n: [] for n in models}
    for m in models.values():
        m(frame, m.class_bias(None))  # warm-up
    for _ in range(repeats):
        for n, m in models.items():
            t = time.perf_counter()
            m(frame, m.class_bias(None))
            times[n].append((time.perf_counter() - t) * 1000)
    return {n: round(float(np.median(v)), 1) for n, v in times.items()}


def peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--sizes", default="12,24,36")
    ap.add_argument("--priors", default="hgad,single")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--image-size", type=int, default=768)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--unstandardised", action="store_true", help="also score class-agnostic by the latent density alone"
    )
    a = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(2)
    # The cache holds every line in the dataset's (sorted) order, as the other harnesses read it; a model of N
    # lines takes the first N in the order the lines were added to the benchmark.
    classes = select_classes(a.data, None)
    order = json.loads((a.data / "photo_lines.json").read_text())["lines"]
    train, test = load_split(a.data, "train", classes), load_split(a.data, "test", classes)
    t = time.perf_counter()
    cache = cached_features(a.cache, classes, train, test, a.image_size)
    result: dict = {"image_size": a.image_size, "epochs": a.epochs, "runs": [],
                    "cache_minutes": round((time.perf_counter() - t) / 60, 1)}  # fmt: skip
    train_line = np.array([order.index(s.class_name) for s in train])
    test_line = np.array([order.index(s.class_name) for s in test])
    anomalous = np.array([s.label for s in test], dtype=bool)
    masks = np.stack([read_mask(s.mask, MAP_SIZE) for s in test])
    trained: dict[int, HGAD] = {}
    for n in [int(v) for v in a.sizes.split(",")]:
        names = order[:n]
        tr, te = train_line < n, test_line < n
        for prior in a.priors.split(","):
            model = build(names, Run(prior, a.epochs, 0), a.image_size)
            labels = torch.from_numpy(train_line[tr])  # the index of each image's line in names
            flow_s = fit(model, cache["train"][torch.from_numpy(tr)].clone(), labels)
            run = {"lines": n, "prior": prior, "train_images": int(tr.sum()), "flow_minutes": round(flow_s / 60, 1),
                   "flow_minutes_per_1000_images": round(flow_s / 60 / tr.sum() * 1000, 2)}  # fmt: skip
            for mode, given in (("agnostic", None), ("aware", test_line[te])):
                s = score(model, cache["test"][torch.from_numpy(te)], given)
                truth = (test_line[te], anomalous[te], masks[te])
                per_line = metrics(s, names, *truth)
                run[mode] = {k: mean(per_line, k) for k in ("image", "pixel", "aupro")} | {"per_line": per_line}
                if s.named is not None:
                    run["confusion"] = confusion(s, names, test_line[te], anomalous[te])
                if mode == "agnostic":
                    run["mapping"] = mapping(s, masks[te], anomalous[te])
                    if a.unstandardised:
                        raw = metrics(unstandardised(s, model.side, model.cfg.score.sigma), names, *truth)
                        run["unstandardised"] = {k: mean(raw, k) for k in ("image", "pixel", "aupro")}
                        run["unstandardised"]["per_line"] = raw
            if "confusion" in run:
                confused = {p["line"] for p in run["confusion"]["pairs"]}
                image = {m: {c: v["image"] for c, v in run[m]["per_line"].items()} for m in ("aware", "agnostic")}
                gain = [image["aware"][c] - image["agnostic"][c] for c in confused]
                run["confusion"]["aware_gain_on_confused_lines"] = round(float(np.mean(gain)), 4) if gain else 0.0
            run["peak_rss_mb"] = peak_rss_mb()
            result["runs"].append(run)
            modes = [m for m in ("agnostic", "aware", "unstandardised") if m in run]
            print(json.dumps({k: v for k, v in run.items() if k not in modes}
                             | {m: {k: run[m][k] for k in ("image", "pixel", "aupro")} for m in modes}),
                  flush=True)  # fmt: skip
            if prior == "hgad":
                trained[n] = model
    result["frame_ms"] = frame_ms(trained) if trained else {}
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps({"frame_ms": result["frame_ms"], "peak_rss_mb": result["peak_rss_mb"]}), flush=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
