"""The trained model: scores independent of the batch, frozen references, export parity, model directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from hgad.config import ModelConfig, PriorConfig, TrainConfig
from hgad.data.datasets import load_split
from hgad.data.images import read_image
from hgad.errors import DataError, ModelFormatError, TrainingDivergedError
from hgad.features import fit_standardisation
from hgad.model_dir import load_model, save_model
from hgad.runtime.export import export_program, program_parity
from hgad.runtime.parity import golden_frames
from hgad.train import class_balanced_draws, extract_features, fit_flows, fit_references, train

from .conftest import SIZE, rebuilt, rebuilt_config


def _frames(data, n=6):
    samples = load_split(data, "test", ["fabric"])
    return np.stack([read_image(s.path, SIZE) for s in samples[:n]])


def test_score_does_not_depend_on_the_rest_of_the_batch(tiny_model, tiny_data):
    model = tiny_model.model
    frames = torch.from_numpy(_frames(tiny_data))
    with torch.inference_mode():
        alone = [model(frames[i : i + 1], model.class_bias(None, 1)) for i in range(len(frames))]
        together_maps, together = model(frames, model.class_bias(None, len(frames)))
        # The same first frame next to very different company (all white) scores the same.
        other = torch.cat([frames[:1], torch.full_like(frames[1:], 255)])
        _, mixed = model(other, model.class_bias(None, len(other)))
    for i, (m, s) in enumerate(alone):
        assert s.item() == pytest.approx(together[i].item(), rel=1e-4, abs=1e-5)
        assert torch.allclose(m[0], together_maps[i], atol=1e-4)
    assert mixed[0].item() == pytest.approx(alone[0][1].item(), rel=1e-4, abs=1e-5)


def test_references_are_frozen_in_the_model(tiny_model):
    m = tiny_model.model
    assert tiny_model.meta["normalisation"]["ll_ref"] == pytest.approx(float(m.ll_ref), abs=1e-5)
    assert torch.isfinite(m.ll_ref) and m.ll_ref != 0


def test_defects_score_higher_than_normals(tiny_model, tiny_data):
    samples = load_split(tiny_data, "test", ["fabric", "pcb"])
    frames = torch.from_numpy(np.stack([read_image(s.path, SIZE) for s in samples]))
    labels = np.array([s.label for s in samples])
    with torch.inference_mode():
        _, scores = tiny_model.model(frames, tiny_model.model.class_bias(None, len(frames)))
    assert scores[labels == 1].mean() > scores[labels == 0].mean()


def test_export_program_matches_eager_on_cpu(tiny_model):
    program = export_program(tiny_model, batch=2)
    parity = program_parity(tiny_model, program.module(), batch=2)
    assert parity.ok, parity
    assert parity.max_score_error <= 1e-3


def test_export_parity_would_catch_a_different_model(tiny_model, tiny_model_dir, tmp_path):
    """The parity check itself can fail: an exported program of changed weights disagrees."""
    other = load_model(tiny_model_dir)
    with torch.no_grad():
        other.model.flow.blocks[0].global_shift.add_(3.0)
    parity = program_parity(tiny_model, export_program(other, 2).module(), batch=2)
    assert not parity.ok


def test_golden_frames_are_deterministic():
    assert np.array_equal(golden_frames(128, 2), golden_frames(128, 2))


# ------------------------------------------------------------------------------------------ model dir


def test_a_loaded_model_scores_with_its_flow_folded_until_its_weights_may_change(tiny_model_dir):
    model = load_model(tiny_model_dir).model
    assert model.folded is not None
    x = torch.randn(2, model.side, model.side, model.channels)
    bias = model.class_bias(None, 2)[:, None, None, :]
    with torch.no_grad():
        folded = model.score_positions(x, bias)
        model.folded = None
        plain = model.score_positions(x, bias)
    assert torch.allclose(folded, plain, rtol=1e-4, atol=1e-4)
    # Weights changed in place (an optimiser step, loaded weights, an edit): scoring takes the flow itself.
    model.fold()
    with torch.no_grad():
        model.flow.blocks[0].global_shift.add_(3.0)
        edited = model.score_positions(x, bias)
        model.folded = None
        assert torch.equal(edited, model.score_positions(x, bias)) and not torch.allclose(edited, plain)
    # Training scores with the flow too, and a saved model never holds the folded copy.
    assert model.fold().train()._folded_flow() is None and model.eval()._folded_flow() is not None
    assert not any(k.startswith("folded") for k in model.state_dict())


def test_roundtrip_keeps_scores_and_id(tiny_model, tiny_model_dir):
    again = load_model(tiny_model_dir)
    assert again.model_id == tiny_model.model_id
    x = torch.from_numpy(golden_frames(SIZE, 2))
    with torch.inference_mode():
        a = tiny_model.model(x, tiny_model.model.class_bias(None, 2))[1]
        b = again.model(x, again.model.class_bias(None, 2))[1]
    assert torch.equal(a, b)


def test_the_same_model_saved_again_keeps_its_id(tiny_model, tmp_path):
    """The id is a content hash: profiles and engines are keyed by it, so retraining the same model with the
    same data and seed, or saving it again, must not orphan them (the file's header once varied run to run)."""
    ids = {save_model(tiny_model.model, tmp_path / f"m{i}") for i in range(6)}
    assert ids == {tiny_model.model_id}
    assert len({(tmp_path / f"m{i}" / "model.safetensors").read_bytes() for i in range(6)}) == 1


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_are_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_model(d)


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFormatError, match="not an hgad-edge model"):
        load_model(tmp_path)


def test_not_json_is_refused(tmp_path):
    (tmp_path / "model.json").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("version", "expect"),
    [(4, "written by a newer hgad-edge.*upgrade hgad-edge"), (0, "format version 0"), ("2", "'2'")],
)
def test_another_format_version_is_refused(version, expect, tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    meta["format_version"] = version
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=expect):
        load_model(d)


def test_model_files_are_readable_by_every_user(tiny_model_dir):
    """The systemd install copies the model for a service user: neither file may be private to its owner."""
    for name in ("model.safetensors", "model.json"):
        assert (tiny_model_dir / name).stat().st_mode & 0o444 == 0o444, name


def test_edited_configuration_changes_nothing_silently(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    meta["normalisation"]["ll_ref"] += 1.0
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="model_id does not match"):
        load_model(d)


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ training


def test_class_balanced_draws_even_out_unequal_lines():
    labels = torch.tensor([0] * 90 + [1] * 10)
    draws = class_balanced_draws(labels, 20000, torch.Generator().manual_seed(0))
    share = (labels[draws] == 1).float().mean().item()
    assert 0.47 < share < 0.53


def test_nan_stops_training_with_the_epoch(tiny_model_dir, tiny_model):
    model = load_model(tiny_model_dir).model
    feats = torch.randn(4, model.channels, model.side, model.side).half()
    feats[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1.*loss is nan"):
        fit_flows(model, feats, torch.tensor([0, 0, 1, 1]), torch.device("cpu"))


def test_feature_cache_does_not_depend_on_the_batch_size(tiny_model, tiny_data):
    model = tiny_model.model
    paths = [s.path for s in load_split(tiny_data, "train", ["fabric"])[:5]]
    a = extract_features(model, paths, torch.device("cpu"), batch=1)
    # Three frames per batch leaves a ragged last batch of two: every row must still be filled once.
    b = extract_features(model, paths, torch.device("cpu"), batch=3)
    assert a.shape == b.shape == (5, model.channels, model.side, model.side) and a.dtype == torch.float16
    assert torch.isfinite(a).all()
    assert torch.allclose(a.float(), b.float(), atol=2e-3, rtol=1e-2)
    # Different images give different rows (an unfilled or repeated row would not).
    assert not torch.allclose(a[0].float(), a[4].float(), atol=1e-2)


def test_training_is_seeded(tiny_data):
    cfg = ModelConfig(classes=("fabric",), image_size=SIZE, train=TrainConfig(epochs=1, seed=5))
    samples = load_split(tiny_data, "train", ["fabric"])[:8]
    a, _ = train(cfg, samples)
    b, _ = train(cfg, samples)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_training_refuses_an_unknown_line(tiny_data):
    cfg = ModelConfig(classes=("fabric",), image_size=SIZE)
    with pytest.raises(DataError, match="unknown classes"):
        train(cfg, load_split(tiny_data, "train", ["pcb"])[:2])


def test_learned_scales_train_and_are_saved(tiny_data, tmp_path):
    """AltUB's learned per-line scale (an ablation, off in the recipe) trains and is saved with the model."""
    cfg = ModelConfig(classes=("fabric", "pcb"), image_size=SIZE, prior=PriorConfig(learn_scale=True))
    cfg = rebuilt_config(cfg, epochs=2)
    model, report = train(cfg, load_split(tiny_data, "train", ["fabric", "pcb"])[::4])
    save_model(model, tmp_path / "m", report.to_dict())
    scale = load_model(tmp_path / "m").model.prior.log_scale
    assert scale is not None and scale.detach().abs().max() > 1e-3


def test_evaluation_reports_progress_over_lines_and_metrics(tiny_model, tiny_data):
    """The metrics after each line's scoring take a while at 768 px; an outer progress over the lines
    covers them, so a long eval never goes quiet between one line's scoring and the next."""
    from hgad.evaluate import evaluate

    seen: dict[str, tuple[int | None, int]] = {}

    def recorder(iterable, *, total=None, desc=""):
        n = 0
        for item in iterable:
            n += 1
            yield item
        seen[desc] = (total, n)

    result = evaluate(tiny_model.model, tiny_data, progress=recorder)
    classes = list(tiny_model.model.classes)
    assert seen["eval lines"] == (len(classes), len(classes))
    assert all(f"score {c}" in seen for c in classes)
    assert set(result["classes"]) == set(classes)
    assert all(0.0 <= result["classes"][c]["image_auroc"] <= 1.0 for c in classes)


def test_anomalous_images_without_a_mask_are_left_out_of_the_pixel_metrics(tiny_model, tiny_data, tmp_path):
    """A dataset labelled only at image level for some defects: their pixels are unknown, not normal. The
    pixel metrics must equal those of the same dataset without those images; the image AUROC keeps them."""
    from hgad.evaluate import evaluate

    no_masks, without = tmp_path / "no-masks", tmp_path / "without"
    for root in (no_masks, without):
        shutil.copytree(tiny_data, root)
    dropped = ("hole", "scratch")
    for defect in dropped:
        shutil.rmtree(no_masks / "fabric" / "ground_truth" / defect)
        shutil.rmtree(without / "fabric" / "test" / defect)
    n_dropped = sum(len(list((tiny_data / "fabric" / "test" / d).iterdir())) for d in dropped)
    assert n_dropped > 0
    a = evaluate(tiny_model.model, no_masks, ["fabric"])["classes"]["fabric"]
    b = evaluate(tiny_model.model, without, ["fabric"])["classes"]["fabric"]
    assert a["n_without_mask"] == n_dropped and b["n_without_mask"] == 0
    assert a["n_anomalous"] == b["n_anomalous"] + n_dropped
    assert a["pixel_auroc"] == pytest.approx(b["pixel_auroc"], abs=1e-12)
    assert a["aupro"] == pytest.approx(b["aupro"], abs=1e-12)


def test_evaluating_a_dataset_without_the_models_lines_names_them(tiny_model, tiny_data, tmp_path):
    from hgad.evaluate import evaluate

    shutil.copytree(tiny_data / "fabric", tmp_path / "fabric")
    with pytest.raises(DataError, match=r"the model's line\(s\) pcb are not in this dataset \(it has fabric\)"):
        evaluate(tiny_model.model, tmp_path)
    assert set(evaluate(tiny_model.model, tmp_path, ["fabric"])["classes"]) == {"fabric"}


def test_references_come_from_a_sample_of_positions(tiny_model, tiny_data):
    """fit_references scores `positions_per_image` positions of each training image, not whole maps: sampled
    positions score exactly as in the whole map (raw and standardised), the draw is seeded, and the reference
    lands where scoring every position puts it."""
    trained = tiny_model.model
    samples = load_split(tiny_data, "train", list(trained.classes))
    feats = extract_features(trained, [s.path for s in samples], torch.device("cpu"))
    with torch.inference_mode():
        feats = trained.features.standardised(feats.float())
    n, c, h, w = feats.shape
    x = feats[:2].permute(0, 2, 3, 1)
    sel = torch.tensor([0, 5, 37, h * w - 1]).expand(2, -1)
    weights = torch.softmax(torch.randn(2, len(trained.classes), generator=torch.Generator().manual_seed(1)), -1)
    with torch.inference_mode():
        full = trained.score_positions(x, trained.class_bias(None, 2)[:, None, None, :], raw=True)
        part = trained.score_positions(
            x.reshape(2, h * w, c)[:, sel[0]], trained.class_bias(None, 2)[:, None, :], sel=sel, raw=True
        )
        # The per-position statistics are looked up at the sampled positions too.
        full_std = trained.standardise_positions(full, weights)
        part_std = trained.standardise_positions(part, weights, sel)
    assert torch.allclose(part, full.reshape(2, h * w)[:, sel[0]], atol=1e-5)
    assert torch.allclose(part_std, full_std.reshape(2, h * w)[:, sel[0]], atol=1e-5)
    assert not torch.allclose(part_std, part, atol=1e-2)

    refs = []
    for p in (16, 16, 0):
        model = rebuilt(trained, "train", positions_per_image=p)
        fit_references(model, feats, torch.device("cpu"))
        refs.append(float(model.ll_ref))
    assert refs[0] == refs[1]
    bias = trained.class_bias(None, n)[:, None, None, :]
    with torch.inference_mode():
        every = trained.score_positions(feats.permute(0, 2, 3, 1), bias).double().numpy()
    assert refs[2] == pytest.approx(float(np.quantile(every, trained.cfg.score.ref_quantile)), abs=1e-4)
    # A sample of 16 of the grid's positions per image lands within the spread of normal values of the exact one.
    spread = float(np.quantile(every, 0.999) - np.median(every))
    assert abs(refs[0] - refs[2]) < 0.25 * spread


def test_standardisation_is_frozen_from_training_features_and_applied_the_same_at_inference(tiny_model, tiny_data):
    """fit_standardisation leaves the training features at zero mean per channel and one common spread, and
    the model applies the same constants to a frame at inference."""
    model = rebuilt(tiny_model.model, "train")
    paths = [s.path for s in load_split(tiny_data, "train", ["fabric", "pcb"])[::5]]
    raw = extract_features(model, paths, torch.device("cpu"))
    cache = raw.clone()
    fit_standardisation(model.features, cache)
    per_channel = cache.float().transpose(0, 1).reshape(model.channels, -1)
    assert per_channel.mean(dim=1).abs().max() < 0.05 * per_channel.std()
    live = per_channel.std(dim=1) > 1e-3
    assert torch.allclose(per_channel.std(dim=1)[live], per_channel.std(dim=1)[live].mean(), rtol=0.05)
    frame = torch.from_numpy(np.stack([read_image(paths[0], SIZE)]))
    with torch.inference_mode():
        at_inference = model.forward_features(model.preprocess(frame))
    assert torch.allclose(at_inference, cache[:1].float(), atol=2e-2, rtol=2e-2)
