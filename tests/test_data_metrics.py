"""Dataset layouts (MVTec AD, VisA, BTAD, plain folders), the synthetic generator, and the metrics."""

from __future__ import annotations

import itertools
import json

import cv2
import numpy as np
import pytest

from hgad.data.datasets import detect_layout, load_folder, load_split, select_classes
from hgad.data.images import read_image, read_mask
from hgad.data.synth import DEFECTS, SynthSpec, write_dataset
from hgad.errors import BadInputError, DataError
from hgad.metrics import aupro, auroc


def _img(path, value=128, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))


def _mask(path, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    m[4:10, 4:10] = 255
    cv2.imwrite(str(path), m)


def test_mvtec_layout(tmp_path):
    _img(tmp_path / "bottle/train/good/000.png")
    _img(tmp_path / "bottle/test/good/000.png")
    _img(tmp_path / "bottle/test/broken/000.png")
    _mask(tmp_path / "bottle/ground_truth/broken/000_mask.png")
    assert detect_layout(tmp_path) == "mvtec"
    test = load_split(tmp_path, "test")
    assert [(s.defect, s.label, s.mask is not None) for s in test] == [("broken", 1, True), ("good", 0, False)]
    assert read_mask(test[0].mask, 32).sum() == 36


def test_btad_layout(tmp_path):
    _img(tmp_path / "01/train/ok/0000.bmp")
    _img(tmp_path / "01/test/ok/0001.bmp")
    _img(tmp_path / "01/test/ko/0002.bmp")
    _mask(tmp_path / "01/ground_truth/ko/0002.png")
    assert detect_layout(tmp_path) == "btad"
    test = load_split(tmp_path, "test")
    ko = next(s for s in test if s.label == 1)
    assert ko.mask is not None and ko.mask.name == "0002.png"


def test_visa_layout_from_its_split_csv(tmp_path):
    _img(tmp_path / "candle/Data/Images/Normal/0000.JPG")
    _img(tmp_path / "candle/Data/Images/Normal/0001.JPG")
    _img(tmp_path / "candle/Data/Images/Anomaly/000.JPG")
    _mask(tmp_path / "candle/Data/Masks/Anomaly/000.png")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
    )
    assert detect_layout(tmp_path) == "visa"
    assert len(load_split(tmp_path, "train")) == 1
    test = load_split(tmp_path, "test", ["candle"])
    assert sorted(s.label for s in test) == [0, 1]


def test_unknown_layout_and_class_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not a dataset in a known layout"):
        detect_layout(tmp_path)
    _img(tmp_path / "a/train/good/0.png")
    with pytest.raises(DataError, match="zzz not in"):
        select_classes(tmp_path, ["zzz"])


def test_folder_of_normals_and_unreadable_image(tmp_path):
    _img(tmp_path / "f/a.png")
    (tmp_path / "f/b.png").write_bytes(b"not an image")
    samples = load_folder(tmp_path / "f")
    assert len(samples) == 2
    with pytest.raises(DataError, match=r"b\.png: not a readable image"):
        read_image(samples[1].path)
    with pytest.raises(DataError, match="no images found"):
        (tmp_path / "empty").mkdir()
        load_folder(tmp_path / "empty")


def test_synth_writes_every_defect_kind_with_masks(tmp_path):
    names = write_dataset(tmp_path, SynthSpec(classes=3, train=4, test=12, size=64, seed=1))
    assert names == ["fabric", "pcb", "wood"]
    test = load_split(tmp_path, "test")
    assert {s.defect for s in test} == {"good", *DEFECTS}
    for s in test:
        if s.label:
            assert read_mask(s.mask, 64).sum() >= 12, s.path
    assert json.loads((tmp_path / "synth.json").read_text())["classes"] == names


def test_synth_is_reproducible(tmp_path):
    write_dataset(tmp_path / "a", SynthSpec(classes=1, train=2, test=4, size=64, seed=7))
    write_dataset(tmp_path / "b", SynthSpec(classes=1, train=2, test=4, size=64, seed=7))
    for p in sorted((tmp_path / "a").rglob("*.png")):
        q = tmp_path / "b" / p.relative_to(tmp_path / "a")
        assert p.read_bytes() == q.read_bytes()


def test_synth_over_an_earlier_dataset_replaces_it_and_refuses_other_folders(tmp_path):
    out = tmp_path / "data"
    write_dataset(out, SynthSpec(classes=3, train=6, test=4, size=64, seed=1))
    names = write_dataset(out, SynthSpec(classes=2, train=3, test=4, size=64, seed=1))
    # Nothing of the larger run is left: not its third line, not its extra training images.
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "synth.json"])
    assert len(load_split(out, "train")) == 2 * 3
    other = tmp_path / "photos"
    _img(other / "keep.png")
    with pytest.raises(BadInputError, match="not empty and holds no earlier synth dataset"):
        write_dataset(other, SynthSpec(classes=1, train=1, test=2, size=64))
    assert [p.name for p in other.iterdir()] == ["keep.png"]


def test_synth_defects_change_the_image_where_the_mask_says(tmp_path):
    from hgad.data import synth

    spec = synth.SynthSpec(classes=1, size=128)
    style = synth.line_style(spec, 0)
    normal = synth.render_normal("fabric", style, 5, 128).astype(float)
    for kind in DEFECTS:
        img, mask = synth.render_defective("fabric", style, 5, 128, kind)
        diff = np.abs(img.astype(float) - normal).mean(axis=2)
        assert diff[mask].mean() > 3 * max(diff[~mask].mean(), 0.5), kind


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # with ties
    pos, neg = scores[labels], scores[~labels]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert auroc(labels, scores) == pytest.approx(brute)
    assert auroc(labels, labels.astype(float)) == 1.0
    assert np.isnan(auroc(np.zeros(5, bool), np.arange(5.0)))


def test_aupro_perfect_and_inverted_maps():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 8:10, 8:14] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, (~masks).astype(float)) < 0.05


def test_aupro_weighs_regions_equally():
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 0:16, 0:16] = True  # a large region
    masks[0, 30, 30] = True  # a one-pixel region
    found_large = masks.astype(float) * 0.0
    found_large[0, 0:16, 0:16] = 1.0
    # Only the large region is found. The curve runs (0, 0) -> (0, 0.5) -> (1, 1): the found region is half
    # of PRO, whatever its size; to FPR 0.3 the area is 0.3 * (0.5 + 0.65) / 2, normalised: 0.575.
    # Weighting pixels instead of regions would give 256/257 at FPR 0, and nearly 1.0 overall.
    assert aupro(masks, found_large) == pytest.approx(0.575, abs=1e-6)
