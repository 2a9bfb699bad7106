"""Runtime: backends behind one interface, the engine cache, export and bench.

The TensorRT tests at the end run wherever torch_tensorrt imports and CUDA is present (a Jetson, a GPU
workstation); elsewhere pytest reports them as skipped with the reason. The engine cache's keys and
invalidation are tested here on every machine.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from hgad.errors import BadInputError
from hgad.runtime.bench import run_bench
from hgad.runtime.engine_cache import EngineCache, EngineKey
from hgad.runtime.parity import golden_frames
from hgad.runtime.select import open_backend
from hgad.runtime.tensorrt_backend import tensorrt_status
from hgad.runtime.torch_backend import TorchBackend

from .conftest import SIZE, hgad_cli

KEY = EngineKey(
    model_id="abc",
    gpu_name="Orin",
    compute_capability="8.7",
    tensorrt="10.3",
    torch="2.5",
    torch_tensorrt="2.5",
    precision="fp16",
    batch=1,
    image_size=256,
)


def _saver(content: bytes):
    return lambda path: path.write_bytes(content)


def test_engine_cache_roundtrip(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.load(KEY, lambda p: p.read_bytes()) is None
    path = cache.store(KEY, _saver(b"engine-1"))
    assert path.name.endswith(".ep") and path.exists()
    assert cache.load(KEY, lambda p: p.read_bytes()) == b"engine-1"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(EngineKey)])
def test_any_key_change_means_another_engine(field, tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(KEY, _saver(b"old"))
    value = getattr(KEY, field)
    other = dataclasses.replace(KEY, **{field: value + 1 if isinstance(value, int) else f"{value}-new"})
    assert cache.path(other) != cache.path(KEY)
    assert cache.load(other, lambda p: p.read_bytes()) is None


def test_corrupt_engine_is_removed_not_fatal(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.store(KEY, _saver(b"x" * 1000))
    path.write_bytes(b"x" * 10)  # truncated
    assert cache.load(KEY, lambda p: p.read_bytes()) is None
    assert not path.exists() and not path.with_suffix(".json").exists()
    # The next build stores a fresh one.
    cache.store(KEY, _saver(b"rebuilt"))
    assert cache.load(KEY, lambda p: p.read_bytes()) == b"rebuilt"


def test_engine_that_fails_to_load_is_removed(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(KEY, _saver(b"not a program"))

    def loader(path):
        raise RuntimeError("deserialisation failed")

    assert cache.load(KEY, loader) is None
    assert not cache.path(KEY).exists()


def test_sidecar_of_another_key_is_not_trusted(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.store(KEY, _saver(b"e"))
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["key"]["tensorrt"] = "9.0"
    side.write_text(json.dumps(meta))
    assert cache.load(KEY, lambda p: p.read_bytes()) is None


def test_stale_engines_of_the_same_model_are_pruned(tmp_path):
    cache = EngineCache(tmp_path)
    old = cache.store(dataclasses.replace(KEY, tensorrt="10.0"), _saver(b"old"))
    other_model = cache.store(dataclasses.replace(KEY, model_id="zzz"), _saver(b"keep"))
    cache.store(KEY, _saver(b"new"))
    assert not old.exists()
    assert other_model.exists()


def test_torch_backend_interface(tiny_model):
    b = TorchBackend(tiny_model, "cpu")
    out = b.infer(golden_frames(SIZE, 3))
    assert out.maps.shape == (3, SIZE, SIZE) and out.scores.shape == (3,)
    assert out.maps.dtype == np.float32 and np.isfinite(out.scores).all()
    aware = b.infer(golden_frames(SIZE, 1), "fabric")
    assert aware.scores.shape == (1,)
    with pytest.raises(BadInputError, match="not a class of model"):
        b.infer(golden_frames(SIZE, 1), "bottle")
    with pytest.raises(BadInputError, match="int8 needs"):
        TorchBackend(tiny_model, "cpu", "int8")


def test_auto_falls_back_to_torch_and_says_why(tiny_model, tmp_path):
    ok, why = tensorrt_status()
    backend, reason = open_backend(tiny_model, "auto", "cpu", cache_dir=tmp_path)
    if ok:
        pytest.skip("TensorRT is usable here; the fallback path is not taken")
    assert backend.info.name == "torch" and why in reason


def test_staged_timings_add_up(tiny_model):
    b = TorchBackend(tiny_model, "cpu")
    frames = golden_frames(SIZE, 2)
    staged = b.infer_staged(frames)
    plain = b.infer(frames)
    assert set(staged.timings_ms) == {"preprocess", "backbone", "flow", "postprocess"}
    assert all(v > 0 for v in staged.timings_ms.values())
    assert np.allclose(staged.scores, plain.scores, rtol=1e-5)


def test_bench_json(tiny_model):
    result = run_bench(TorchBackend(tiny_model, "cpu"), batch=2, iters=2, warmup=1)
    assert set(result["batches"]) == {"1", "2"}
    for r in result["batches"].values():
        assert {"preprocess", "backbone", "flow", "postprocess"} == set(r["stages_ms"])
        assert r["fps"] > 0 and r["total_ms"] > 0
    assert set(result["head_to_backbone_ratio"]) == {"1", "2"}
    assert result["backend"] == "torch" and result["device"] == "cpu" and result["peak_rss_mb"] > 0
    # A high-water mark per batch, taken smallest batch first: it never falls and ends at the process peak.
    assert 0 < result["batches"]["1"]["peak_rss_mb"] <= result["batches"]["2"]["peak_rss_mb"]
    assert result["batches"]["2"]["peak_rss_mb"] <= result["peak_rss_mb"]


def test_export_and_bench_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "m.pt2"
    r = hgad_cli("export", "--model", str(tiny_model_dir), "--backend", "torch", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "golden parity" in r.stdout and out.stat().st_size > 100_000
    program = torch.export.load(str(out)).module()
    frames = torch.from_numpy(golden_frames(SIZE, 1))
    maps, _ = program(frames, torch.zeros(1, 2))
    assert maps.shape == (1, SIZE, SIZE)
    js = tmp_path / "bench.json"
    r = hgad_cli(
        "bench", "--model", str(tiny_model_dir), "--backend", "torch", "--batch", "2", "--iters", "2", "--json", str(js)
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(js.read_text())["batches"]["2"]["fps"] > 0


def test_tensorrt_requested_where_it_cannot_run_is_one_clear_error(tiny_model_dir):
    if tensorrt_status()[0]:
        pytest.skip("TensorRT runs here; see the tensorrt tests below")
    r = hgad_cli("export", "--model", str(tiny_model_dir), "--backend", "tensorrt")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "tensorrt backend" in r.stderr


# ------------------------------------------------------------------------------------------ TensorRT

TRT_OK, TRT_WHY = tensorrt_status()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=f"TensorRT cannot run here: {TRT_WHY}")


@needs_trt
@pytest.mark.tensorrt
def test_tensorrt_engine_builds_caches_and_matches_torch(tiny_model, tmp_path):
    from hgad.runtime.tensorrt_backend import TensorRTBackend

    first = TensorRTBackend(tiny_model, tmp_path, "fp16", batch=2)
    assert first.parity.ok and "built" in first.info.detail
    out = first.infer(golden_frames(SIZE, 3))  # 3 frames through a batch-2 engine: split and padded
    ref = TorchBackend(tiny_model, "cuda").infer(golden_frames(SIZE, 3))
    assert np.allclose(out.scores, ref.scores, rtol=0.02, atol=1e-3)
    second = TensorRTBackend(tiny_model, tmp_path, "fp16", batch=2)
    assert "cached" in second.info.detail


@needs_trt
@pytest.mark.tensorrt
def test_tensorrt_corrupt_cache_is_rebuilt(tiny_model, tmp_path):
    from hgad.runtime.tensorrt_backend import TensorRTBackend

    b = TensorRTBackend(tiny_model, tmp_path, "fp16")
    path = b.cache.path(b.key)
    path.write_bytes(path.read_bytes()[:100])
    again = TensorRTBackend(tiny_model, tmp_path, "fp16")
    assert "built" in again.info.detail and again.parity.ok


@needs_trt
@pytest.mark.tensorrt
def test_auto_chooses_tensorrt_where_it_runs(tiny_model, tmp_path):
    backend, reason = open_backend(tiny_model, "auto", "cuda", cache_dir=tmp_path)
    assert backend.info.name == "tensorrt" and reason.startswith("tensorrt")
