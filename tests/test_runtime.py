"""Runtime: backends behind one interface, the engine cache, export and bench.

The TensorRT tests at the end run wherever torch_tensorrt imports and CUDA is present (a Jetson, a GPU
workstation); elsewhere pytest reports them as skipped with the reason. The engine cache's keys and
invalidation are tested here on every machine.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from hgad.errors import BadInputError, HgadError
from hgad.runtime import select
from hgad.runtime.bench import run_bench, sustained_fps
from hgad.runtime.engine_cache import EngineCache, EngineKey
from hgad.runtime.parity import golden_frames
from hgad.runtime.select import open_backend
from hgad.runtime.tensorrt_backend import tensorrt_status
from hgad.runtime.torch_backend import TorchBackend

from .conftest import SIZE, hgad_cli

KEY = EngineKey(
    model_id="abc",
    runtime="tensorrt",
    device="Orin (compute 8.7)",
    versions="tensorrt=10.3 torch=2.5 torch_tensorrt=2.5",
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
    if field == "suffix":
        other = dataclasses.replace(KEY, suffix=".onnx")
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
    meta["key"]["versions"] = "tensorrt=9.0"
    side.write_text(json.dumps(meta))
    assert cache.load(KEY, lambda p: p.read_bytes()) is None


def test_stale_engines_of_the_same_model_are_pruned(tmp_path):
    cache = EngineCache(tmp_path)
    old = cache.store(dataclasses.replace(KEY, versions="tensorrt=10.0"), _saver(b"old"))
    other_model = cache.store(dataclasses.replace(KEY, model_id="zzz"), _saver(b"keep"))
    other_runtime = cache.store(dataclasses.replace(KEY, runtime="onnxruntime", suffix=".onnx"), _saver(b"keep"))
    cache.store(KEY, _saver(b"new"))
    assert not old.exists()
    assert other_model.exists() and other_runtime.exists()


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


def test_auto_on_a_cpu_takes_onnxruntime_and_says_why(tiny_model, tmp_path):
    backend, reason = open_backend(tiny_model, "auto", "cpu", cache_dir=tmp_path)
    assert backend.info.name == "onnxruntime" and reason.startswith("onnxruntime")


def test_auto_falls_back_to_torch_for_a_precision_onnxruntime_does_not_run(tiny_model, tmp_path):
    backend, reason = open_backend(tiny_model, "auto", "cpu", "fp16", cache_dir=tmp_path)
    assert backend.info.name == "torch" and "onnxruntime unavailable: it runs fp32, and fp16 was asked for" in reason
    if not tensorrt_status()[0]:
        assert "tensorrt unavailable" in reason


def test_onnxruntime_by_name_runs_on_the_cpu_of_a_cuda_box_and_auto_leaves_the_gpu_to_torch(
    tiny_model, tmp_path, monkeypatch
):
    # A CUDA GPU cannot exist here: only torch's answer to "is there one" is faked, for the choice alone.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend, reason = open_backend(tiny_model, "onnxruntime", "auto", cache_dir=tmp_path)
    assert backend.info.name == "onnxruntime" and backend.runs_on() == "cpu"
    with pytest.raises(HgadError, match="onnxruntime backend: it runs on the CPU, and device cuda was asked for"):
        open_backend(tiny_model, "onnxruntime", "cuda", cache_dir=tmp_path)
    attempts = []
    monkeypatch.setattr(select, "TorchBackend", lambda *a: attempts.append(a) or "torch on cuda")
    backend, reason = open_backend(tiny_model, "auto", "auto", cache_dir=tmp_path)
    assert backend == "torch on cuda" and "onnxruntime unavailable: it runs on the CPU" in reason
    assert attempts[0][1] == "auto"  # torch resolves `auto` to the GPU


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


def test_sustained_rate_counts_the_slow_frames(tiny_model):
    """The bare model's rate that the agent's is set beside: frames over a window, every one counted (a median of
    single runs would leave the slow ones out)."""

    class SlowEveryOther(TorchBackend):
        calls = 0

        def infer(self, frames, line=None):
            self.calls += 1
            if self.calls % 2:
                time.sleep(0.05)
            return super().infer(frames, line)

    backend = SlowEveryOther(tiny_model, "cpu")
    t0 = time.perf_counter()
    fps = sustained_fps(backend, 0.5, camera_shape=(90, 160))
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.5 and backend.calls >= 4  # the warm frame and at least min_frames
    # Half of the frames took 50 ms more: at most 40 frames/s, however fast the tiny model is.
    assert 0 < fps <= 40.0


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


# ------------------------------------------------------------------------------------------ ONNX Runtime


def test_onnxruntime_graph_is_exported_once_cached_and_agrees_with_torch(tiny_model, tmp_path):
    from hgad.runtime.onnx_backend import OnnxRuntimeBackend

    first = OnnxRuntimeBackend(tiny_model, tmp_path, batch=2)
    assert first.parity.ok and "built" in first.info.detail and first.cache.path(first.key).suffix == ".onnx"
    frames = golden_frames(SIZE, 3)  # 3 frames through a batch-2 graph: split and padded
    out, ref = first.infer(frames), TorchBackend(tiny_model, "cpu").infer(frames)
    assert out.maps.shape == ref.maps.shape == (3, SIZE, SIZE)
    assert np.allclose(out.scores, ref.scores, rtol=1e-4, atol=1e-5)
    assert np.allclose(out.maps, ref.maps, rtol=1e-4, atol=1e-4)
    aware = first.infer(frames[:1], "pcb").scores
    assert np.allclose(aware, TorchBackend(tiny_model, "cpu").infer(frames[:1], "pcb").scores, rtol=1e-4, atol=1e-5)
    second = OnnxRuntimeBackend(tiny_model, tmp_path, batch=2)
    assert "cached" in second.info.detail


@pytest.mark.parametrize(
    "share, cores, threads, spin",
    [
        (0.05, 2, 2, True),
        (0.3, 2, 2, False),
        (0.7, 2, 1, True),
        (3.0, 2, 1, True),
        (0.6, 8, 5, False),
        (0.3, 1, 1, True),
    ],
)
def test_the_pool_leaves_the_cameras_the_cores_they_need(share, cores, threads, spin):
    from hgad.runtime.onnx_backend import Workers, workers_for

    assert workers_for(share, cores) == Workers(threads, spin)


@pytest.fixture
def two_cores():
    """The pools below are sized for the two cores the backend is given (torch's thread count), whatever
    the machine has."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def pool(backend) -> tuple[int, str]:
    options = backend.session.get_session_options()
    return options.intra_op_num_threads, options.get_session_config_entry("session.intra_op.allow_spinning")


def test_onnxruntime_reopens_its_session_for_the_cameras_share_and_stays_near_a_bound(tiny_model, tmp_path, two_cores):
    from hgad.runtime.onnx_backend import FEWER_THREADS_FROM, SPIN_BELOW

    backend, _ = open_backend(tiny_model, "onnxruntime", "cpu", cache_dir=tmp_path)
    assert backend.frame_ms is None  # only the agent asks for the model's time alone
    backend.share_cores(1e6)  # and without it the pool stands
    assert pool(backend) == (2, "1")
    backend.time_alone()
    assert backend.cores == 2 and backend.frame_ms > 0
    frames = golden_frames(SIZE, 2)
    before = backend.infer(frames).scores
    seen = []
    for share in (0.3, SPIN_BELOW + 0.02, SPIN_BELOW - 0.02, 3.0, FEWER_THREADS_FROM + 0.02, 0.0):
        backend.share_cores(share * backend.frame_ms * backend.cores)
        seen.append(pool(backend))
        assert np.array_equal(backend.infer(frames).scores, before)
    # On either side of a bound, and near it, the pool in hand stands where it is an answer.
    n = backend.cores
    assert seen == [(n, "0"), (n, "0"), (n, "0"), (1, "1"), (1, "1"), (n, "1")]
    assert backend.info.device == f"cpu ({backend.cores} threads, workers spin)"


def test_onnxruntime_runs_a_model_whose_scalars_are_exactly_one_or_zero(tiny_model, tmp_path):
    """ONNX Runtime's no-op elimination once removed `* ll_spread` at 1.0 and left the graph invalid."""
    from hgad.model_dir import LoadedModel
    from hgad.runtime.onnx_backend import OnnxRuntimeBackend

    model = copy.deepcopy(tiny_model.model)
    model.ll_spread.fill_(1.0)
    model.ll_centre.fill_(0.0)
    plain = LoadedModel(model=model, model_id="unit-spread", path=tmp_path, meta={})
    frames = golden_frames(SIZE, 1)
    out, ref = OnnxRuntimeBackend(plain, tmp_path).infer(frames), TorchBackend(plain, "cpu").infer(frames)
    assert np.allclose(out.scores, ref.scores, rtol=1e-4, atol=1e-5)


def test_onnxruntime_rebuilds_a_corrupt_graph_and_refuses_a_wrong_one(tiny_model, tiny_model_dir, tmp_path):
    from hgad.model_dir import load_model
    from hgad.runtime.onnx_backend import OnnxRuntimeBackend
    from hgad.runtime.parity import ParityError

    b = OnnxRuntimeBackend(tiny_model, tmp_path)
    path = b.cache.path(b.key)
    path.write_bytes(path.read_bytes()[:1000])
    again = OnnxRuntimeBackend(tiny_model, tmp_path)
    assert "built" in again.info.detail and again.parity.ok
    # A graph of other weights under this model's key (as a stale or tampered cache would hold) is refused.
    other = load_model(tiny_model_dir)
    with torch.no_grad():
        other.model.flow.blocks[0].global_shift.add_(3.0)
    wrong = OnnxRuntimeBackend(other, tmp_path / "other")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / path.name).write_bytes(wrong.cache.path(wrong.key).read_bytes())
    EngineCache(fresh).store(b.key, lambda p: p.write_bytes((fresh / path.name).read_bytes()))
    with pytest.raises(ParityError, match="disagrees with the torch reference"):
        OnnxRuntimeBackend(tiny_model, fresh)
    assert not EngineCache(fresh).path(b.key).exists()


def test_an_onnx_graph_exported_by_the_cli_is_the_one_the_agent_finds(tiny_model_dir, tmp_path, monkeypatch):
    """One engine-cache default: `hgad-edge export` and the agent agree on where engines live."""
    from agent.config import parse_config
    from agent.daemon import Agent
    from calibration.db import open_database
    from calibration.store import ProfileStore
    from hgad.model_dir import load_model

    from .test_agent_dispatcher import save_profile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    r = hgad_cli("export", "--model", str(tiny_model_dir), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    (exported,) = (tmp_path / "cache" / "hgad-edge" / "engines").glob("*.onnx")
    assert str(exported) in r.stdout
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    camera = {"name": "c", "source": str(video), "line": "fabric"}
    state = {"state_dir": str(tmp_path / "s")}
    data = {"model": str(tiny_model_dir), "backend": "onnxruntime", "storage": state, "cameras": [camera]}
    cfg = parse_config(data | {"web": {"enabled": False}})
    save_profile(ProfileStore(open_database(cfg.database_path)), load_model(tiny_model_dir).model_id, "fabric")
    agent = Agent(cfg)
    agent.open()
    try:
        assert (
            agent.backend.info.name == "onnxruntime" and agent.backend.info.detail == f"graph {exported.name} (cached)"
        )
    finally:
        agent.engine.dispose()


@pytest.mark.parametrize("frame, all_cores", [((SIZE, SIZE), True), ((1080, 1920), False)])
def test_the_agent_leaves_its_cameras_the_cores_they_need(
    frame, all_cores, tiny_model_dir, calibrated_db, broker, tmp_path
):
    """The tiny model is cheap: frames at its own size cost the camera thread next to nothing beside it, and
    full-HD frames (decoded, then shrunk) cost it several times the model's time."""
    import yaml

    from agent.config import parse_config
    from agent.daemon import Agent
    from agent.pipeline import SHARE_FIRST

    from .conftest import write_video
    from .rig import make_rig

    rng = np.random.default_rng(0)
    video = write_video(
        tmp_path / "v.avi", [rng.integers(0, 255, (*frame, 3), np.uint8) for _ in range(SHARE_FIRST + 10)]
    )
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    data = yaml.safe_load(rig.config(video, backend="onnxruntime").read_text())
    agent = Agent(parse_config(data), exit_when_done=True)
    agent.open()
    cores = agent.backend.cores
    assert cores >= 2, "one core has no pool to size"
    assert pool(agent.backend) == (cores, "1")  # every core, as the model alone runs fastest
    assert agent.run() == 0
    assert agent.pipeline.batches >= SHARE_FIRST
    threads, spin = pool(agent.backend)
    if all_cores:
        assert (threads, spin) == (cores, "1")
    else:
        assert threads < cores
    assert agent.stats()["backend"]["device"] == f"cpu ({agent.backend.workers})"
    assert str(agent.backend.workers).startswith(f"{threads} thread")
