"""The CPU runtime for x86 edge boxes without an NVIDIA GPU: the model's whole graph exported once to ONNX
and run by ONNX Runtime.

Path: torch.onnx.export (static shapes: batch and input size) -> an `.onnx` file in the engine cache, keyed
like a TensorRT engine (model id, runtime and exporter versions, precision, shape) -> an ONNX Runtime session
on the CPU. At load, golden frames must agree with the eager model within the fp32 tolerance (parity.py),
or the graph is removed from the cache and refused. The same file is what TensorRT reads on a Jetson
(`trtexec --onnx=...`, or ONNX Runtime's TensorRT execution provider), beside the torch-tensorrt path.

ONNX Runtime rather than OpenVINO (docs/results.md, "Speed on a CPU"): on AMD cores, fp32, the same graph,
the two run level, both within 1e-5 of eager torch; on Intel cores OpenVINO is a fifth to a third faster
alone but sets how many threads it runs, not how they wait, which is what lets the model share two cores with
the cameras (share_cores); its bf16 default, where a CPU has it, moves scores by 30 %, which no threshold survives.

In the agent the camera threads decode and resize on the same cores; the pool is sized and told how to wait
for the share of the CPU they take (share_cores, told by the pipeline).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import BadInputError, HgadError
from ..groups import InferenceModel
from ..model_dir import LoadedModel
from ..scoring import MAX_ANOMALY
from .backend import Backend, BackendInfo, Inference
from .engine_cache import EngineCache, EngineKey
from .parity import ParityResult, compare, golden_frames, require

log = logging.getLogger(__name__)

OPSET = 18
# How the pool runs beside the agent's cameras, by their CPU time per judged frame over the model's own (its
# time per frame alone, times the cores): spinning workers while the cameras take little; sleeping ones from
# SPIN_BELOW; from FEWER_THREADS_FROM, threads in proportion, leaving the cameras the cores they need. Within
# SHARE_MARGIN of a bound the session stays as it is, so that a share near one is not reopened back and forth.
SPIN_BELOW, FEWER_THREADS_FROM, SHARE_MARGIN = 0.15, 0.5, 0.05
INPUTS = ("frames", "class_bias")
OUTPUTS = ("maps", "scores", "ll")


class OnnxRuntimeUnavailable(HgadError):
    """onnxruntime does not import here; `auto` falls back to torch."""


def onnxruntime_status() -> tuple[bool, str]:
    """(usable, explanation) without raising."""
    try:
        import onnxruntime
    except Exception as exc:  # ImportError, or a missing shared library raising OSError
        return False, f"onnxruntime does not import ({type(exc).__name__}: {exc})"
    return True, f"onnxruntime {onnxruntime.__version__}"


class GraphWithGrid(nn.Module):
    """The model's graph with the log-likelihood grid as a third output, for parity (see parity.py)."""

    def __init__(self, model: InferenceModel):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, class_bias: torch.Tensor):
        m = self.model
        ll = m.forward_ll(m.forward_features(m.preprocess(frames)), class_bias)
        amap, score = m.forward_map(ll)
        return amap, score, ll


def export_onnx(model: InferenceModel, path: Path, batch: int) -> None:
    s = model.cfg.image_size
    example = (torch.zeros(batch, s, s, 3, dtype=torch.uint8), model.class_bias(None, batch).cpu())
    module = GraphWithGrid(model.cpu().eval())
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs onnxscript;
        # its warnings say nothing an operator could act on.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), input_names=list(INPUTS), output_names=list(OUTPUTS),
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip


def onnx_key(loaded: LoadedModel, batch: int) -> EngineKey:
    import onnxruntime

    return EngineKey(
        model_id=loaded.model_id,
        runtime="onnxruntime",
        device="cpu",
        versions=f"hgad-edge={__version__} onnxruntime={onnxruntime.__version__} torch={torch.__version__} "
        f"opset={OPSET}",
        precision="fp32",
        batch=batch,
        image_size=loaded.model.cfg.image_size,
        suffix=".onnx",
    )


@dataclasses.dataclass(frozen=True)
class Workers:
    threads: int
    spin: bool  # between the operators of one run; a single thread has no pool and never waits

    def __str__(self) -> str:
        if self.threads == 1:
            return "1 thread"
        return f"{self.threads} threads, workers {'spin' if self.spin else 'sleep'}"


def workers_for(share: float, cores: int) -> Workers:
    """The pool for cameras whose CPU time per frame is `share` times the model's (see SPIN_BELOW)."""
    if share < SPIN_BELOW or cores == 1:
        return Workers(cores, True)
    if share < FEWER_THREADS_FROM:
        return Workers(cores, False)
    # The model's time per frame on t threads (cores / t times its own) against the cameras' on the cores
    # left (share * cores / (cores - t)): even when t = cores / (1 + share).
    threads = max(1, min(cores, round(cores / (1 + share))))
    return Workers(threads, threads == 1)


def open_session(path: Path, threads: int, spin: bool = True):
    """`spin`: the pool's workers spin between the operators of one run instead of sleeping. Alone on its
    cores a run is faster for it (waking a sleeping worker for each of the graph's few hundred nodes costs
    more than the spin); beside other busy threads (the agent's cameras decoding and resizing) a spinning
    worker burns the time they need, and the whole pipeline is slower. Either way the workers stop when a
    run returns."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # errors only: its own warnings are not ours to pass on
    # NoopElimination drops the `* ll_spread` of a model whose spread is exactly 1 (a degenerate fit, a model
    # before training) and leaves its consumer reading a tensor no node makes: the session refuses the graph.
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["NoopElimination"]
    )


class OnnxRuntimeBackend(Backend):
    def __init__(self, loaded: LoadedModel, cache_dir: Path, batch: int = 1, precision: str = "fp32"):
        ok, why = onnxruntime_status()
        if not ok:
            raise OnnxRuntimeUnavailable(f"onnxruntime backend: {why}")
        if precision != "fp32":
            raise BadInputError(f"precision: {precision} is not available on onnxruntime, which runs fp32")
        self.loaded, self.batch = loaded, batch
        self.image_size = loaded.model.cfg.image_size
        self.classes = loaded.model.classes
        self.cores = torch.get_num_threads()
        # Every core, spinning, until told the cameras need some (share_cores): a model alone on them, as in
        # the bench and eval, runs fastest so, and so does an agent whose cameras' work is small beside it.
        self.workers = Workers(self.cores, True)
        self.cache = EngineCache(cache_dir)
        self.key = onnx_key(loaded, batch)
        session = self.cache.load(self.key, lambda p: open_session(p, self.cores))
        built = session is None
        if built:
            log.info("exporting the model to ONNX", extra={"fields": {"model_id": loaded.model_id, "batch": batch}})
            path = self.cache.store(self.key, lambda p: export_onnx(loaded.model, p, batch))
            session = open_session(path, self.cores)
        self.session = session
        self.parity = require(self._check_parity(), "the ONNX graph", lambda: self.cache.discard(self.key))
        # Set by time_alone, which only the agent calls: the bench, eval and export do not pay for it.
        self.frame_ms: float | None = None
        self.info = BackendInfo(
            "onnxruntime", self._device(), "fp32", loaded.model_id,
            f"graph {self.cache.path(self.key).name} ({'built' if built else 'cached'})",
        )  # fmt: skip

    def _run(self, frames: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, ...]:
        n = frames.shape[0]
        if n > self.batch:
            parts = [self._run(frames[i : i + self.batch], bias[i : i + self.batch]) for i in range(0, n, self.batch)]
            return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        if n < self.batch:  # a static graph: pad, frames are scored independently
            frames = np.concatenate([frames, np.repeat(frames[-1:], self.batch - n, axis=0)])
            bias = np.concatenate([bias, np.repeat(bias[-1:], self.batch - n, axis=0)])
        feed = {"frames": np.ascontiguousarray(frames, dtype=np.uint8), "class_bias": bias.astype(np.float32)}
        return tuple(out[:n] for out in self.session.run(list(OUTPUTS), feed))

    def _check_parity(self) -> ParityResult:
        model = self.loaded.model.cpu().eval()
        frames = golden_frames(self.image_size, max(2, self.batch))
        bias = model.class_bias(None, frames.shape[0])
        with torch.inference_mode():
            ref_maps, ref_scores, ref_ll = GraphWithGrid(model)(torch.from_numpy(frames), bias)
        maps, scores, ll = self._run(frames, bias.numpy())
        in_range = (float(model.ll_ref) - ref_ll.numpy()) < MAX_ANOMALY
        refs = (ref_scores.numpy(), ref_maps.numpy())
        return compare(*refs, scores, maps, "fp32", ref_ll.numpy()[in_range], ll[in_range])

    def time_alone(self, runs: int = 3) -> None:
        """Milliseconds per frame alone on the cores (golden frames, after the parity check's warm run; the
        median of `runs`): what the cameras' CPU time is weighed against. Timed beside running cameras, the
        model's time would grow with their share and hide it."""
        frames = golden_frames(self.image_size, self.batch)
        bias = self.loaded.model.class_bias(None, self.batch).numpy()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self._run(frames, bias)
            times.append((time.perf_counter() - t0) * 1000.0 / self.batch)
        self.frame_ms = float(np.median(times))

    def share_cores(self, cameras_ms: float) -> None:
        if self.frame_ms is None:  # never timed alone: nothing to weigh the cameras against
            return
        share = cameras_ms / (self.frame_ms * self.cores)
        workers = workers_for(share, self.cores)
        # Near a bound, the pool in hand stands if it is the answer on either side of it.
        near = (workers_for(share - SHARE_MARGIN, self.cores), workers_for(share + SHARE_MARGIN, self.cores))
        if self.workers == workers or self.workers in near:
            return
        try:
            self.session = open_session(self.cache.path(self.key), workers.threads, workers.spin)
        except Exception as exc:  # the cached graph gone since: the session in hand still runs
            log.info("onnxruntime session kept", extra={"fields": {"why": f"{type(exc).__name__}: {exc}"}})
            return
        self.workers = workers
        self.info = dataclasses.replace(self.info, device=self._device())
        fields = {"device": self.info.device, "cameras_cpu_share": round(share, 3)}
        log.info("onnxruntime pool", extra={"fields": fields})

    def _device(self) -> str:
        """What the status and the stats show: the pool's threads, and how its workers wait between operators."""
        return f"cpu ({self.workers})"

    def infer(self, frames: np.ndarray, line: str | None = None) -> Inference:
        self.check_line(line)
        bias = self.loaded.model.class_bias(line, frames.shape[0]).cpu().numpy()
        maps, scores, _ = self._run(frames, bias)
        return Inference(maps.astype(np.float32, copy=False), scores.astype(np.float32, copy=False))
