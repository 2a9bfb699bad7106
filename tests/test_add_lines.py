"""Adding a line to a trained model: the old line is rehearsed from the replay sample kept with the model, its
profiles carry over when its scores did not move, and the agent's profile check follows the lineage."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from calibration.db import open_database
from calibration.store import ProfileMismatchError, ProfileStore
from hgad.add_lines import (
    KEEP_TOLERANCE,
    PLACE_MAX_SPREAD,
    Anchors,
    FineTune,
    _distance_out,
    add_lines,
    add_lines_from_features,
    grid_scores,
    grow,
    judge_old_lines,
    place_new_centres,
    score_shift,
)
from hgad.config import ModelConfig, TrainConfig
from hgad.data.datasets import load_split
from hgad.model_dir import load_model, save_model
from hgad.replay import GRIDS, Replay
from hgad.replay import load as load_replay
from hgad.replay import save as save_replay
from hgad.train import extract_features, train

from .conftest import EPOCHS, SIZE, hgad_cli
from .test_agent_dispatcher import save_profile


@pytest.fixture(scope="module")
def fabric_model(tiny_data, tmp_path_factory):
    """The recipe trained on fabric alone, saved with its replay sample."""
    out = tmp_path_factory.mktemp("fabric-model")
    cfg = ModelConfig(classes=("fabric",), image_size=SIZE, train=TrainConfig(epochs=EPOCHS))
    model, report = train(cfg, load_split(tiny_data, "train", ["fabric"]))
    save_model(model, out, report.to_dict(), report.replay)
    return out


@pytest.fixture(scope="module")
def pcb_raw(fabric_model, tiny_data):
    """The raw grid features of the pcb line's training images, as `train --from` reads them for fabric's model."""
    samples = load_split(tiny_data, "train", ["pcb"])
    return extract_features(load_model(fabric_model).model, [s.path for s in samples], torch.device("cpu"))


def test_the_replay_sample_is_kept_with_the_model_and_bounded(fabric_model):
    replay = load_replay(fabric_model)
    assert replay.classes == ("fabric",) and replay.vectors.dtype == torch.float16
    assert replay.vectors.shape[0] <= 16 and replay.vectors.shape[1] <= 128
    # Whole grids of a few images for the verdict, the model's grid in size.
    base = load_model(fabric_model).model
    assert replay.grids.shape == (GRIDS, base.channels, base.side, base.side) and replay.grids.dtype == torch.float16
    assert replay.grid_lines.tolist() == [0] * GRIDS
    assert (fabric_model / "replay.safetensors").stat().st_size < 2 * 2**20


def test_growing_keeps_the_old_line_and_adds_centres(fabric_model):
    base = load_model(fabric_model).model
    grown = grow(base, ("fabric", "pcb"))
    assert grown.classes == ("fabric", "pcb") and grown.prior.mu.shape[0] == 2
    assert torch.equal(grown.prior.mu[0], base.prior.mu[0]) and torch.equal(grown.pos_mean[0], base.pos_mean[0])
    assert grown.prior.mu[1].norm() > 1.0 and torch.equal(grown.features.scale, base.features.scale)
    frames = torch.zeros(1, SIZE, SIZE, 3, dtype=torch.uint8)
    with torch.inference_mode():
        # Before any fine-tuning the old line scores as it did, class-aware, up to the mixture's weights.
        a = base(frames, base.class_bias("fabric", 1))[1]
        b = grown(frames, grown.class_bias("fabric", 1))[1]
    assert torch.allclose(a, b, rtol=0.05, atol=0.05)


def test_the_new_centres_start_where_the_base_flow_maps_the_new_line(fabric_model, tiny_data):
    """A new line's centres are placed on its own latents, not on a free axis far from them: the flow then need
    not move its features across latent space (which is what disturbs the old lines). A variant of an old line
    (here fabric's own images under a new name) lands on the old line's latents: its centre moves out along its
    free axis until it is as far from fabric's as the recipe puts lines apart. A line the base flow throws far
    out (pcb: the fabric-only flow never saw anything like it) keeps its free axis."""
    base = load_model(fabric_model).model

    def latents(line):
        with torch.inference_mode():
            paths = [s.path for s in load_split(tiny_data, "train", [line])]
            feats = base.features.standardised(extract_features(base, paths, torch.device("cpu")))
            z, _ = base.flow(feats.permute(0, 2, 3, 1), base.pos)
        return feats.half(), z.reshape(-1, z.shape[-1])

    grown = grow(base, ("fabric", "variant"))
    feats, z = latents("fabric")
    mean, on_free_axis = z.mean(dim=0), grown.prior.mu[1].clone()
    place_new_centres(grown, feats, torch.ones(feats.shape[0], dtype=torch.long), 1, seed=0)
    gap = base.cfg.prior.init_distance
    assert float((grown.prior.mu[1] - grown.prior.mu[0]).detach().norm()) == pytest.approx(gap, abs=0.1)
    out, axis = (grown.prior.mu[1] - mean).detach(), on_free_axis / on_free_axis.norm()
    # Moved from its mean latent (here of a sample of positions) along its free axis only.
    assert (out - (out @ axis) * axis).norm() < 0.15 * (out @ axis)
    assert torch.equal(grown.prior.mu[0], base.prior.mu[0]) and torch.equal(grown.prior.delta[0], base.prior.delta[0])

    grown = grow(base, ("fabric", "pcb"))
    feats, z = latents("pcb")
    assert (z - z.mean(dim=0)).pow(2).mean().sqrt() > PLACE_MAX_SPREAD
    place_new_centres(grown, feats, torch.ones(feats.shape[0], dtype=torch.long), 1, seed=0)
    assert torch.equal(grown.prior.mu[1], on_free_axis)


def test_a_placed_centre_moves_out_only_as_far_as_the_gap_needs():
    axis = torch.tensor([0.0, 0.0, 1.0])
    near = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert _distance_out(torch.zeros(3), axis, near, 2.0) == pytest.approx(2.0, abs=0.03)
    assert _distance_out(torch.tensor([0.0, 5.0, 0.0]), axis, near, 2.0) == 0.0
    assert _distance_out(torch.zeros(3), axis, near[:0], 2.0) == 0.0


def test_the_anchor_holds_the_old_lines_latents_and_their_centres(fabric_model, pcb_raw):
    """Without the anchor the fine-tuning moves the old line's latents freely; with it they stay near the base
    flow's, and the old line's centres do not move at all. The anchor is measured with the new centres on a free
    axis, where the flow has the most to move."""
    base = load_model(fabric_model)
    replay = load_replay(fabric_model)
    before = Anchors.of(base.model, replay)
    moved = {}
    for anchor in (0.0, 10.0):
        recipe = FineTune(3, 0.2, anchor, place=False, near=0.0)
        model, _ = add_lines_from_features(base.model, pcb_raw, ["pcb"] * len(pcb_raw), replay, recipe)
        moved[anchor] = float((Anchors.of(model, replay).z - before.z).pow(2).mean())
        assert torch.equal(model.prior.mu[0], base.model.prior.mu[0])
        assert torch.equal(model.prior.delta[0], base.model.prior.delta[0])
    assert moved[10.0] < 0.5 * moved[0.0], moved


def test_the_hold_keeps_the_flow_near_the_base(fabric_model, pcb_raw):
    """The hold pulls every flow weight towards the base's (the anchor holds only the replay rows' outputs): the
    stronger the hold, the less the flow's weights move. How much less is the optimiser's business (Adam's steps
    have a size of their own), so the test asks for the order, not a margin."""
    base = load_model(fabric_model)
    replay = load_replay(fabric_model)
    start = torch.cat([p.detach().flatten() for p in base.model.flow.parameters()])
    moved = {}
    for hold in (0.0, 1.0, 10.0):
        recipe = FineTune(3, 0.2, 1.0, place=False, hold=hold)
        model, _ = add_lines_from_features(base.model, pcb_raw, ["pcb"] * len(pcb_raw), replay, recipe)
        moved[hold] = float((torch.cat([p.detach().flatten() for p in model.flow.parameters()]) - start).norm())
    assert moved[10.0] < moved[1.0] < moved[0.0], moved


def test_the_neighbourhood_anchor_holds_the_flow_around_the_old_lines_vectors(fabric_model, pcb_raw):
    """Points around the replay rows (where an old line's defects lie, off its normal vectors) keep their base
    latents the better the stronger the neighbourhood anchor: measured on points the fine-tuning never drew
    (another seed's noise), with the weights' hold off so that only this anchor holds them there."""
    base = load_model(fabric_model)
    replay = load_replay(fabric_model)
    gen = torch.Generator().manual_seed(1234)
    noise = FineTune.near_scale * torch.randn(replay.vectors.shape, generator=gen)
    noisy = dataclasses.replace(replay, vectors=replay.vectors.float() + noise)
    before = Anchors.of(base.model, noisy)
    moved = {}
    for near in (0.0, 10.0):
        recipe = FineTune(3, 0.2, 1.0, place=False, hold=0.0, near=near)
        model, _ = add_lines_from_features(base.model, pcb_raw, ["pcb"] * len(pcb_raw), replay, recipe)
        moved[near] = float((Anchors.of(model, noisy).z - before.z).pow(2).mean())
    assert moved[10.0] < 0.5 * moved[0.0], moved


def test_adding_a_line_learns_it_and_keeps_the_old_lines_profiles(fabric_model, tiny_data, tmp_path):
    base = load_model(fabric_model)
    model, report = add_lines(
        base, load_split(tiny_data, "train", ["pcb"]), load_replay(fabric_model), FineTune(epochs=4)
    )
    assert report.added == ["pcb"] and set(report.moved) == {"fabric"}
    assert (report.kept == ["fabric"]) == (report.moved["fabric"] < KEEP_TOLERANCE)
    # The new line has statistics of its own, fitted from its images; the old line's were moved with the flow.
    fresh = grow(base.model, ("fabric", "pcb"))
    assert not torch.equal(model.pos_mean[1], fresh.pos_mean[1]) and (model.pos_var[1] > 0).all()
    assert not torch.equal(model.pos_mean[0], base.model.pos_mean[0])
    assert torch.equal(model.ll_ref, base.model.ll_ref) and torch.equal(model.ll_spread, base.model.ll_spread)
    # Its images' scores now come from its own mixture: the class posterior names pcb for pcb's test images.
    test = load_split(tiny_data, "test", ["pcb"])
    from hgad.data.images import read_image

    frames = torch.from_numpy(np.stack([read_image(s.path, SIZE) for s in test]))
    with torch.inference_mode():
        x = model.forward_features(model.preprocess(frames)).permute(0, 2, 3, 1)
        z, _ = model.flow(x, model.pos)
        joint = model.prior.score(z, model.class_bias(None, len(test))[:, None, None, :]).joint
    assert (model.line_weights(joint).argmax(dim=1) == 1).float().mean() > 0.9
    lineage = {"from": base.model_id, "kept": report.kept, "moved": report.moved, "before": None}
    save_model(model, tmp_path / "grown", report.to_dict(), report.replay, lineage=lineage)
    assert load_replay(tmp_path / "grown").classes == ("fabric", "pcb")
    assert load_model(tmp_path / "grown").meta["lineage"]["moved"] == report.moved


def test_the_fine_tuning_takes_its_own_batch_of_new_images_per_step(fabric_model, pcb_raw):
    """A step holds `batch_images` new-line images (and as many replay rows), not the recipe's training batch:
    the same passes over the new images in more, smaller steps."""
    base, replay = load_model(fabric_model).model, load_replay(fabric_model)
    n = len(pcb_raw)
    steps: dict[int, int | None] = {}
    for batch in (2, 3):

        def counting(iterable, *, total=None, desc="", batch=batch):
            if desc == "add lines":
                steps[batch] = total
            return iterable

        recipe = FineTune(epochs=2, batch_images=batch)
        add_lines_from_features(base, pcb_raw, ["pcb"] * n, replay, recipe, progress=counting)
    assert steps == {b: math.ceil(n / b) * 2 for b in (2, 3)}, steps
    assert FineTune().batch_images < base.cfg.train.batch_images


def test_the_verdict_counts_the_largest_move_of_any_image():
    """A profile's threshold is an order statistic of normal scores: it moves with their common shift and with
    their jitter, no further than the largest move of any one score. Of the two scoring modes the one that moved
    more decides."""
    before = torch.tensor([[2.0, 3.0], [2.5, 3.5], [3.0, 4.0], [3.5, 4.5]])
    unit = torch.tensor([1.0, 1.0])
    assert score_shift(before, before.clone(), unit) == 0.0
    assert score_shift(before, before + torch.tensor([0.0, 0.5]), unit) == pytest.approx(0.5)
    assert score_shift(before, before - 0.3, torch.tensor([3.0, 1.0])) == pytest.approx(0.3)
    jitter = torch.tensor([[0.4, 0.0], [-0.4, 0.0], [0.4, 0.0], [-0.4, 0.0]])  # no common shift, yet moved
    assert score_shift(before, before + jitter, unit) == pytest.approx(0.4)
    assert score_shift(before, before + jitter, torch.tensor([100.0, 1.0])) < KEEP_TOLERANCE


def test_grid_scores_are_the_models_scores_in_both_modes(fabric_model, pcb_raw):
    """The verdict scores both modes from one pass of the flow: each column is what the model's own scoring
    path gives in that mode, on a one-line model and on a grown one (where the two modes differ)."""
    base = load_model(fabric_model).model
    replay = load_replay(fabric_model)
    grown, _ = add_lines_from_features(base, pcb_raw, ["pcb"] * len(pcb_raw), replay, FineTune(epochs=1))
    for model in (base, grown):
        grids = replay.grids.float()
        scores = grid_scores(model, replay.grids, "fabric", batch=3)  # a batch that does not divide the grids
        with torch.inference_mode():
            aware = model.forward_head(grids, model.class_bias("fabric", len(grids)))[1]
            agnostic = model.forward_head(grids, model.class_bias(None, len(grids)))[1]
        assert scores.shape == (len(grids), 2)
        assert torch.allclose(scores[:, 0], aware, rtol=1e-5, atol=1e-6)
        assert torch.allclose(scores[:, 1], agnostic, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scores[:, 0], scores[:, 1])


def test_a_line_is_kept_when_its_grids_score_as_before(fabric_model):
    """The verdict scores the replay's whole grids under both models: the same model keeps the line, a model
    whose reference of normal moved (every score moves with it) names it, as one whose weights moved does."""
    base = load_model(fabric_model).model
    replay = load_replay(fabric_model)
    assert judge_old_lines(base, copy.deepcopy(base), replay) == {"fabric": 0.0}
    scores = grid_scores(base, replay.grids, "fabric")
    spread = scores.double().std(dim=0)
    moved_ref = copy.deepcopy(base)
    moved_ref.ll_ref += float(spread.max())
    assert judge_old_lines(base, moved_ref, replay)["fabric"] > 0.5
    moved_flow = copy.deepcopy(base)
    with torch.no_grad():
        for p in moved_flow.flow.parameters():
            p.mul_(1.5)
    assert judge_old_lines(base, moved_flow, replay)["fabric"] > KEEP_TOLERANCE


def test_with_no_epochs_the_old_line_scores_as_before(fabric_model, pcb_raw):
    """No fine-tuning (the harness's `--epochs 0`): the flow is the base's, so the old line's class-aware scores
    are too (its statistics take up only the new mixture weight, a constant). Class-agnostic scores mix in the
    new line's statistics where the posterior is unsure which line a position is; the verdict sees both."""
    base = load_model(fabric_model).model
    replay = load_replay(fabric_model)
    model, report = add_lines_from_features(base, pcb_raw, ["pcb"] * len(pcb_raw), replay, FineTune(epochs=0))
    assert all(torch.equal(p, q) for p, q in zip(model.flow.parameters(), base.flow.parameters(), strict=True))
    before, after = grid_scores(base, replay.grids, "fabric"), grid_scores(model, replay.grids, "fabric")
    assert torch.allclose(after[:, 0], before[:, 0], atol=1e-5)
    assert (report.kept == ["fabric"]) == (report.moved["fabric"] < KEEP_TOLERANCE)
    assert not torch.equal(model.pos_mean[1], model.pos_mean[0])  # the new line's own statistics


def test_a_sample_saved_without_grids_adds_lines_but_keeps_no_profile(fabric_model, tiny_data, tmp_path):
    """A replay sample saved before grids were kept loads and rehearses as before; its old lines cannot be
    judged, so none is kept and the command line says why they must be recalibrated. The grown model's sample
    has grids of the new line."""
    older = tmp_path / "older"
    shutil.copytree(fabric_model, older)
    full = load_replay(fabric_model)
    save_replay(Replay(full.vectors, full.positions, full.lines, full.classes), older)
    assert load_replay(older).grids is None and load_replay(older).vectors.shape == full.vectors.shape
    r = hgad_cli("train", "--from", str(older), "--data", str(tiny_data), "--classes", "pcb",
                 "--out", str(tmp_path / "grown"), "--epochs", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "recalibrate fabric" in r.stdout and "no whole images of fabric" in r.stderr
    lineage = load_model(tmp_path / "grown").meta["lineage"]
    assert lineage["kept"] == [] and lineage["moved"] == {}
    assert load_replay(tmp_path / "grown").grid_lines.tolist() == [1] * GRIDS  # pcb can be judged next time


@pytest.mark.parametrize("kept", [["fabric"], []])
def test_the_profile_check_follows_the_lineage(fabric_model, tmp_path, kept):
    """A line kept when lines were added finds the old model's profile; a moved or new line must recalibrate.
    (The verdict itself comes from the fine-tuning; here both verdicts are written as add_lines would.)"""
    base = load_model(fabric_model)
    lineage = {"from": base.model_id, "kept": kept, "moved": {"fabric": 0.01 if kept else 0.5}, "before": None}
    save_model(grow(base.model, ("fabric", "pcb")), tmp_path / "grown", lineage=lineage)
    grown = load_model(tmp_path / "grown")
    store = ProfileStore(open_database(tmp_path / "db.sqlite"))
    save_profile(store, base.model_id, "fabric")
    save_profile(store, base.model_id, "pcb")  # a profile of the old model for a line it never had
    if kept:
        assert grown.profile_models("fabric") == {grown.model_id, base.model_id}
        assert store.active_for("fabric", grown.model_id, grown.profile_models("fabric")).model_id == base.model_id
    else:
        with pytest.raises(ProfileMismatchError, match="recalibrate the line"):
            store.active_for("fabric", grown.model_id, grown.profile_models("fabric"))
    with pytest.raises(ProfileMismatchError, match="recalibrate the line"):
        store.active_for("pcb", grown.model_id, grown.profile_models("pcb"))


def test_train_from_through_the_command_line(fabric_model, tiny_data, tmp_path):
    out = tmp_path / "grown"
    r = hgad_cli("train", "--from", str(fabric_model), "--data", str(tiny_data), "--classes", "pcb",
                 "--out", str(out), "--epochs", "2", "--hold", "0.02")  # fmt: skip
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["fabric", "pcb"] and meta["lineage"]["from"] == load_model(fabric_model).model_id
    assert meta["training"]["fine_tune"]["hold"] == 0.02 and meta["training"]["fine_tune"]["epochs"] == 2
    assert "profiles of" in r.stdout
    again = hgad_cli(
        "train", "--from", str(out), "--data", str(tiny_data), "--classes", "pcb", "--out", str(tmp_path / "x")
    )
    assert again.returncode == 2 and "pcb already in the model" in again.stderr
    none = hgad_cli("train", "--from", str(fabric_model), "--data", str(tiny_data), "--out", str(tmp_path / "y"))
    assert none.returncode == 2 and "name the lines to add with --classes" in none.stderr


def test_the_hold_is_refused_where_it_means_nothing(fabric_model, tiny_data, tmp_path):
    negative = hgad_cli("train", "--from", str(fabric_model), "--data", str(tiny_data), "--classes", "pcb",
                        "--out", str(tmp_path / "a"), "--hold", "-1")  # fmt: skip
    assert negative.returncode == 2 and "--hold: -1 must be 0 or more" in negative.stderr
    assert "Traceback" not in negative.stderr
    scratch = hgad_cli("train", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--hold", "0.1")
    assert scratch.returncode == 2 and "--hold applies only when adding lines" in scratch.stderr
    assert not (tmp_path / "b").exists()


def test_the_command_line_names_the_recipes_hold():
    """The help states the default hold; it must be the one the recipe uses."""
    r = hgad_cli("train", "--help")
    assert f"the recipe's, {FineTune.hold}" in " ".join(r.stdout.split())
