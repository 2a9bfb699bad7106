"""Dataset layouts as lists of samples.

- MVTec AD: CLASS/train/good, CLASS/test/{good,DEFECT}, CLASS/ground_truth/DEFECT/NAME_mask.png
- VisA: split_csv/1cls.csv with columns object, split, label, image, mask (paths relative to the root)
- BTAD: CLASS/train/ok, CLASS/test/{ok,ko}, CLASS/ground_truth/ko/NAME.{png,bmp}
- a plain folder of normal images (calibration)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .images import is_image, list_images

LAYOUTS = ("mvtec", "visa", "btad")
VISA_SPLIT = Path("split_csv") / "1cls.csv"


@dataclass(frozen=True)
class Sample:
    path: Path
    class_name: str
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" for normal images
    mask: Path | None = None


def detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory does not exist")
    if (root / VISA_SPLIT).is_file():
        return "visa"
    subdirs = [d for d in root.iterdir() if d.is_dir()]
    if any((d / "train" / "good").is_dir() for d in subdirs):
        return "mvtec"
    if any((d / "train" / "ok").is_dir() for d in subdirs):
        return "btad"
    raise DataError(
        f"{root}: not a dataset in a known layout (MVTec AD: CLASS/train/good; VisA: {VISA_SPLIT}; "
        f"BTAD: CLASS/train/ok)"
    )


def available_classes(root: Path, layout: str | None = None) -> list[str]:
    layout = layout or detect_layout(root)
    if layout == "visa":
        return sorted({row["object"] for row in _visa_rows(root)})
    normal_dir = "good" if layout == "mvtec" else "ok"
    return sorted(d.name for d in root.iterdir() if (d / "train" / normal_dir).is_dir())


def select_classes(root: Path, wanted: list[str] | None, layout: str | None = None) -> list[str]:
    have = available_classes(root, layout)
    if not have:
        raise DataError(f"{root}: no classes found")
    if not wanted:
        return have
    unknown = [c for c in wanted if c not in have]
    if unknown:
        raise DataError(f"--classes: {', '.join(unknown)} not in {root} (available: {', '.join(have)})")
    return list(wanted)


def load_split(root: Path, split: str, classes: list[str] | None = None) -> list[Sample]:
    """Samples of `split` ("train" or "test") for the selected classes, in a stable order."""
    layout = detect_layout(root)
    chosen = select_classes(root, classes, layout)
    if layout == "visa":
        samples = _visa(root, split, chosen)
    else:
        samples = [s for c in chosen for s in _folder_layout(root, c, split, layout)]
    if not samples:
        raise DataError(f"{root}: no {split} images for classes {', '.join(chosen)}")
    return samples


def _folder_layout(root: Path, cls: str, split: str, layout: str) -> list[Sample]:
    normal = "good" if layout == "mvtec" else "ok"
    base = root / cls / split
    if split == "train":
        return [Sample(p, cls, 0, "good") for p in list_images(base / normal)]
    if not base.is_dir():
        raise DataError(f"{base}: missing test split")
    out = []
    for defect_dir in sorted(d for d in base.iterdir() if d.is_dir()):
        is_normal = defect_dir.name == normal
        for p in list_images(defect_dir):
            mask = None if is_normal else _find_mask(root / cls / "ground_truth" / defect_dir.name, p)
            out.append(Sample(p, cls, 0 if is_normal else 1, "good" if is_normal else defect_dir.name, mask))
    return out


def _find_mask(folder: Path, image: Path) -> Path | None:
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in (".png", ".bmp", ".jpg", ".tif"):
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def _visa_rows(root: Path) -> list[dict[str, str]]:
    path = root / VISA_SPLIT
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"object", "split", "label", "image"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DataError(f"{path}: expected columns {', '.join(sorted(need))}, mask")
        return list(reader)


def _visa(root: Path, split: str, classes: list[str]) -> list[Sample]:
    out = []
    for row in _visa_rows(root):
        if row["object"] not in classes or row["split"] != split:
            continue
        anomalous = row["label"].strip().lower() not in ("normal", "good", "0")
        mask = root / row["mask"] if anomalous and row.get("mask") else None
        out.append(Sample(root / row["image"], row["object"], int(anomalous), "anomaly" if anomalous else "good", mask))
    return sorted(out, key=lambda s: (classes.index(s.class_name), str(s.path)))


def load_folder(folder: Path, class_name: str = "") -> list[Sample]:
    """A plain folder of normal images (recursively), e.g. for calibration."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
    if not paths:
        raise DataError(f"{folder}: no images found (looked for .png, .jpg, .bmp, .tif, .webp)")
    return [Sample(p, class_name, 0, "good") for p in paths]
