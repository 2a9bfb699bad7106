"""Adding lines to a trained model against training on every line from scratch, on cached features.

    python -m benchmarks.add_lines DATA CACHE.pt --add motorcycle,grass [--lines a,b,...] [--epochs 12]
        [--lr-factor 0.5] [--anchor 1.0] [--weight-decay W] [--batch-images 2] [--no-place] [--replay-images 16]
        [--replay-positions 128] [--seed 0] [--image-size 768] [--scratch] [--normals NORMALS]

The recipe is trained on the other lines (the base), the `--add` lines are then added with `add_lines` (the
base's replay sample, fine-tuning, statistics), and every line taking part is scored class-agnostically, as
benchmarks.ablation scores (maps at 256 px). One JSON line: per-line image and pixel AUROC of the base (on its
own lines) and of the grown model, the old lines' verdicts, and the minutes each step took. CACHE.pt is the
ablation harness's cache of the same size; the trained base is kept beside it (CACHE.base-<lines>.pt) for the
next run with the same lines. `--lines` limits the lines taking part to some of DATA's (e.g. the first 12
lines of a 36-line set and one more), with the cache still of all of DATA. `--scratch` also trains the recipe on
every line taking part from scratch, the model the grown one is measured against. `--seed` is the add's own
(new centres, fine-tuning); the base and the replay sample keep seed 0, so seeds show the add's own spread.

`--normals NORMALS` checks the verdict against recalibration: NORMALS holds other normal images of the old
lines (LINE/train/good, e.g. `python -m benchmarks.photo_lines NORMALS --train 100 --test 5 --seed 1`; their
features cached beside CACHE.pt). Per old line, a profile's threshold (split conformal, false-alarm rate 0.05)
is set on them under the base and again under the grown model; `shift_sd` is the change in units of the
threshold's own spread over calibration sets (bootstrap), `far_grown` the share of the same images the old
threshold flags under the grown model. A profile holds where recalibrating moves it no more than calibrating
on other normal images would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from calibration.threshold import choose_threshold
from hgad.add_lines import FineTune, add_lines_from_features
from hgad.data.datasets import load_split, select_classes
from hgad.data.images import read_mask
from hgad.memory import keep_freed_memory
from hgad.metrics import auroc
from hgad.replay import IMAGES, POSITIONS, sample
from hgad.train import extract_features

from .ablation import CPU, MAP_SIZE, Run, build, cached_features, fit, score_test

PROFILE_FAR = 0.05


def per_line(model, cache_test, test, lines) -> dict[str, dict[str, float]]:
    taking_part = torch.tensor([s.class_name in lines for s in test])
    test = [s for s in test if s.class_name in lines]
    scores, maps = score_test(model, cache_test[taking_part])
    line = np.array([s.class_name for s in test])
    anomalous = np.array([s.label for s in test], dtype=bool)
    masks = np.stack([read_mask(s.mask, MAP_SIZE) for s in test])
    return {
        c: {"image": round(auroc(anomalous[line == c], scores[line == c]), 4),
            "pixel": round(auroc(masks[line == c], maps[line == c]), 4)}
        for c in lines
    }  # fmt: skip


def profiles_hold(base, grown, features: torch.Tensor, line: np.ndarray, lines: list[str]) -> dict[str, dict]:
    """Per line of `lines`: its threshold on the normal images' raw `features` under `base` and under `grown`
    (chosen as a profile chooses it), the change in units of the threshold's bootstrap spread, and the old
    threshold's false-alarm share under `grown` (see the module's docstring)."""
    before, after = score_test(base, features)[0], score_test(grown, features)[0]
    rng = np.random.default_rng(0)
    out = {}
    for c in lines:
        a, b = before[line == c], after[line == c]
        t_old, t_new = choose_threshold(a, PROFILE_FAR).value, choose_threshold(b, PROFILE_FAR).value
        spread = np.std([choose_threshold(rng.choice(a, a.size), PROFILE_FAR).value for _ in range(1000)])
        out[c] = {
            "images": int(a.size), "t_base": round(float(t_old), 4), "t_grown": round(float(t_new), 4),
            "shift_sd": round(float((t_new - t_old) / spread), 2), "far_grown": round(float((b > t_old).mean()), 3),
        }  # fmt: skip
    return out


def normal_features(cache_path: Path, root: Path, lines: list[str], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Raw grid features of NORMALS' training images of `lines` (cached beside the cache, named by the lines as
    the base is, so that another set of old lines is not read from this one's file) and each one's line."""
    samples = load_split(root, "train", lines)
    path = cache_path.with_name(f"{cache_path.stem}.normals-{'-'.join(lines)}.pt")
    if not path.exists():
        torch.save(extract_features(build(lines, Run("hgad", 1, 0), size), [s.path for s in samples], CPU), path)
    return torch.load(path), np.array([s.class_name for s in samples])


def trained(cache_path: Path, lines: list[str], features: torch.Tensor, train, size: int):
    """The recipe trained from scratch on `lines` (kept beside the cache for the next run), with those lines'
    standardised training features and their labels."""
    taking_part = torch.tensor([s.class_name in lines for s in train])
    features = features[taking_part].clone()
    labels = torch.tensor([lines.index(s.class_name) for s in train if s.class_name in lines])
    path = cache_path.with_name(f"{cache_path.stem}.base-{'-'.join(lines)}.pt")
    if path.exists():
        model = torch.load(path, weights_only=False)
        return model, model.features.standardised(features), labels
    model = build(lines, Run("hgad", 12, 0), size)
    fit(model, features, labels)
    torch.save(model, path)
    return model, features, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--add", required=True)
    ap.add_argument("--lines", default="", help="the lines taking part (default: all of DATA's)")
    ap.add_argument("--epochs", type=int, default=FineTune.epochs)
    ap.add_argument("--lr-factor", type=float, default=FineTune.lr_factor)
    ap.add_argument("--anchor", type=float, default=FineTune.anchor)
    ap.add_argument("--replay-images", type=int, default=IMAGES)
    ap.add_argument("--replay-positions", type=int, default=POSITIONS)
    ap.add_argument("--weight-decay", type=float, default=None, help="of the flow (default: the recipe's)")
    ap.add_argument("--hold", type=float, default=FineTune.hold, help="weight of the flow's distance from the base")
    ap.add_argument("--near", type=float, default=FineTune.near, help="weight of the anchor around the replay")
    ap.add_argument("--near-scale", type=float, default=FineTune.near_scale, help="spread of the noise drawing it")
    ap.add_argument("--batch-images", type=int, default=FineTune.batch_images, help="new-line images per step")
    ap.add_argument("--no-place", action="store_true", help="new centres on free axes, not at the new latents")
    ap.add_argument("--seed", type=int, default=0, help="the add's own seed (the base is trained with seed 0)")
    ap.add_argument("--image-size", type=int, default=768)
    ap.add_argument("--scratch", action="store_true", help="also train every line taking part from scratch")
    ap.add_argument("--normals", type=Path, help="other normal images of the old lines: do their profiles hold?")
    a = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(2)
    classes = select_classes(a.data, None)
    added = a.add.split(",")
    lines = a.lines.split(",") if a.lines else classes
    old = [c for c in lines if c not in added]
    train, test = load_split(a.data, "train", classes), load_split(a.data, "test", classes)
    cache = cached_features(a.cache, classes, train, test, a.image_size)
    is_new = torch.tensor([s.class_name in added for s in train])
    t0 = time.perf_counter()
    base, features, labels = trained(a.cache, old, cache["train"], train, a.image_size)
    t1 = time.perf_counter()
    replay = sample(features, labels, base.classes, 0, a.replay_images, a.replay_positions)
    base.cfg = dataclasses.replace(base.cfg, train=dataclasses.replace(base.cfg.train, seed=a.seed))
    new_lines = [s.class_name for s in train if s.class_name in added]
    recipe = FineTune(
        epochs=a.epochs, lr_factor=a.lr_factor, anchor=a.anchor, place=not a.no_place,
        weight_decay=a.weight_decay, hold=a.hold, near=a.near, near_scale=a.near_scale, batch_images=a.batch_images,
    )  # fmt: skip
    grown, report = add_lines_from_features(base, cache["train"][is_new], new_lines, replay, recipe)
    t2 = time.perf_counter()
    result = {
        "added": added, **dataclasses.asdict(recipe),  # the fine-tuning's settings, as model.json records them
        "seed": a.seed, "replay": [a.replay_images, a.replay_positions], "image_size": a.image_size,
        "base_minutes": round((t1 - t0) / 60, 1), "add_minutes": round((t2 - t1) / 60, 1),
        "kept": report.kept, "moved": report.moved,
        "replay_mb": round(report.replay.nbytes / 2**20, 2),
        "base": per_line(base, cache["test"], test, old),
        "grown": per_line(grown, cache["test"], test, lines),
    }  # fmt: skip
    if a.normals:
        features, line = normal_features(a.cache, a.normals, old, a.image_size)
        result["profiles"] = profiles_hold(base, grown, features, line, old)
    if a.scratch:
        t3 = time.perf_counter()
        scratch = trained(a.cache, lines, cache["train"], train, a.image_size)[0]
        result["scratch_minutes"] = round((time.perf_counter() - t3) / 60, 1)
        result["scratch"] = per_line(scratch, cache["test"], test, lines)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
