"""The real-photo benchmark's larger sets: the first 12 lines are the 12-line set image for image, and each
near-alike variant differs from its product the way its recipe says."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from benchmarks.photo_lines import LINES, SETS, finish, load_source, spread, write, write_mixed


def test_the_larger_sets_start_with_the_twelve_lines_unchanged(tmp_path):
    twelve = write(tmp_path / "12", train=2, test=3, lines=SETS[12])
    write(tmp_path / "36", train=2, test=3, lines=SETS[36])
    assert json.loads((tmp_path / "36" / "photo_lines.json").read_text())["lines"] == SETS[36]
    assert len(SETS[36]) == len(set(SETS[36])) == 36 and SETS[24] == SETS[36][:24]
    for line in twelve:
        for path in sorted((tmp_path / "12" / line).rglob("*.png")):
            other = tmp_path / "36" / path.relative_to(tmp_path / "12")
            assert (cv2.imread(str(path)) == cv2.imread(str(other))).all(), other


def test_a_colourway_turns_the_hue_and_a_finish_scales_the_brightness():
    cup = load_source(LINES["coffee"].source)
    teal = finish(cup, LINES["coffee-teal"])
    assert teal.shape == cup.shape
    hue = [cv2.cvtColor(im, cv2.COLOR_BGR2HSV)[..., 0].astype(int) for im in (cup, teal)]
    saturated = cv2.cvtColor(cup, cv2.COLOR_BGR2HSV)[..., 1] > 80
    turned = (hue[1] - hue[0]) % 180
    assert np.median(turned[saturated]) == LINES["coffee-teal"].hue
    brick = load_source(LINES["brick"].source)
    dark = finish(brick, LINES["brick-dark"])
    assert abs(dark.mean() / brick.mean() - LINES["brick-dark"].gain) < 0.02


def test_synthetic_lines_take_the_last_photo_lines_place_spread_through_the_order(tmp_path):
    order = write_mixed(tmp_path / "mix", lines=12, synthetic=3, train=2, test=3)
    meta = json.loads((tmp_path / "mix" / "photo_lines.json").read_text())
    assert meta["lines"] == order and len(order) == len(set(order)) == 12
    synthetic = meta["synthetic"]
    assert len(synthetic) == 3 and not set(synthetic) & set(LINES)
    # each third of the order is three photo lines, in the set's order, then one synthetic line
    assert [order[i] for i in (3, 7, 11)] == synthetic
    assert [n for n in order if n not in synthetic] == SETS[12][:9]
    for line in order:
        assert len(list((tmp_path / "mix" / line / "train" / "good").glob("*.png"))) == 2
        assert (tmp_path / "mix" / line / "ground_truth").is_dir()
    # the photo lines are the images the plain set has
    write(tmp_path / "plain", train=2, test=3, lines=SETS[12])
    same = tmp_path / "plain" / "brick" / "train" / "good" / "000.png"
    assert (cv2.imread(str(same)) == cv2.imread(str(tmp_path / "mix" / "brick" / "train" / "good" / "000.png"))).all()
    assert not (tmp_path / "mix" / "synth.json").exists()


def test_lines_that_do_not_split_into_equal_parts_are_refused_before_anything_is_written(tmp_path):
    assert spread(["a", "b", "c"], ["x", "y", "z"]) == ["a", "x", "b", "y", "c", "z"]
    with pytest.raises(ValueError, match="do not split into 3 parts"):
        spread(["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="do not split into 3 parts"):
        write_mixed(tmp_path / "uneven", lines=12, synthetic=2, train=2, test=3)
    with pytest.raises(ValueError, match="give 1 to 11 synthetic lines"):
        write_mixed(tmp_path / "all", lines=12, synthetic=12, train=2, test=3)
    assert not (tmp_path / "uneven").exists() and not (tmp_path / "all").exists()
