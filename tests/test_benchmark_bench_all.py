"""`make bench`'s matrix and the GPU one benchmarks/bench_gpu.sh runs: every row is a bench command the CLI
takes, the GPU rows run the agent on the bench's device and precision, a row that fails is named while the
others run, and on a box without CUDA the GPU script stops with one line. (The GPU matrix itself runs only
where CUDA is; this machine has none.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser
from benchmarks.bench_all import runs, table

ROOT = Path(__file__).resolve().parents[1]


def _parsed(args: list[str]):
    a = build_parser().parse_args(["bench", *args, "--json", "x.json"])
    assert a.agent, args  # every row sets the agent beside the bare model
    return a


def test_the_cpu_matrix_is_torch_and_onnxruntime_on_the_cpu(tmp_path):
    plan = dict(runs(tmp_path, tmp_path / "model"))
    parsed = {name: _parsed(args) for name, args in plan.items()}
    assert {a.backend for a in parsed.values()} == {"torch", "onnxruntime"}
    assert {a.device for a in parsed.values()} == {"auto"} and not any(a.precision for a in parsed.values())
    assert parsed["default-onnxruntime-live-25fps-2cam"].camera_fps == 25


def test_the_gpu_matrix_is_fp32_and_fp16_on_cuda_with_tensorrt_only_where_it_imports(tmp_path):
    plan = dict(runs(tmp_path, tmp_path / "model", "cuda", tensorrt=False))
    parsed = {name: _parsed(args) for name, args in plan.items()}
    assert set(parsed) == {
        f"{m}-{row}" for m in ("demo", "default") for row in ("torch-fp32", "torch-fp16", "torch-fp16-1920x1080-4cam")
    }
    assert all(a.device == "cuda" for a in parsed.values())
    assert [parsed[f"default-torch-{p}"].precision for p in ("fp32", "fp16")] == ["fp32", "fp16"]
    four = parsed["default-torch-fp16-1920x1080-4cam"]
    assert (four.cameras, four.frame) == (4, (1080, 1920))
    assert parsed["demo-torch-fp16"].demo and parsed["default-torch-fp16"].model == tmp_path / "model"
    with_trt = dict(runs(tmp_path, tmp_path / "model", "cuda:1", tensorrt=True))
    trt = {name: _parsed(args) for name, args in with_trt.items() if "tensorrt" in name}
    assert set(trt) == {"demo-tensorrt-fp16", "default-tensorrt-fp16"}
    assert all(a.backend == "tensorrt" and a.device == "cuda:1" for a in trt.values())


def _result(backend: str, precision: str, device: str) -> dict:
    """The keys of a bench JSON the table reads."""
    return {
        "host": {"cores": 16, "cpu": "a test CPU"},
        "device": device,
        "backend": backend,
        "precision": precision,
        "image_size": 768,
        "batches": {"1": {"ms_per_frame": 4.0, "fps": 250.0}},
        "agent": {
            "camera_frame": [720, 1280],
            "cameras": 1,
            "agent_fps": 200.0,
            "agent_to_model_fps_ratio": 0.8,
            "bare_model_fps_batch1_before_after": [240.0, 260.0],
            "startup_s": {"ready": 5.0, "first_judged_frame": 6.0},
        },
    }


def test_the_gpu_table_names_the_gpu_the_precisions_and_what_did_not_run(tmp_path):
    for name, precision in (("default-torch-fp32", "fp32"), ("default-torch-fp16", "fp16")):
        (tmp_path / f"{name}.json").write_text(json.dumps(_result("torch", precision, "cuda:0 (NVIDIA H100)")))
    text = table(tmp_path, ["default-torch-fp32", "default-torch-fp16"], ("TensorRT not run: no tensorrt.",))
    assert text.startswith("Measured by `bash benchmarks/bench_gpu.sh` on cuda:0 (NVIDIA H100) beside 16 cores")
    assert "| default (768 px) | torch | 1280x720 |" in text and "| default (768 px) | torch fp16 | 1280x720 |" in text
    # The model's rates the agent's ratio is taken to, on both sides of its run.
    assert "| 4.0 | 240.0 / 260.0 | 200.0 | 0.80 |" in text
    assert text.rstrip().endswith("TensorRT not run: no tensorrt.")


def test_the_gpu_script_without_cuda_says_so_in_one_line(tmp_path):
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    # No GPU seen even where one is: the refusal is what is tested.
    env = os.environ | {"PYTHON": sys.executable, "GPU_KIT": str(kit), "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "bench_gpu.sh"), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "bench_all: --device cuda: CUDA is not available here; use --device cpu"
    ), r.stderr
    assert not (tmp_path / "out").exists()  # nothing trained or measured


def test_a_row_that_fails_is_named_and_the_others_still_run(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from benchmarks import bench_all

    good = ["--model", str(tiny_model_dir), "--backend", "torch", "--iters", "2", "--batch", "2", "--agent",
            "--frame", "160x90", "--seconds", "2"]  # fmt: skip
    bad = ["--model", str(tmp_path / "no-model"), "--agent"]
    monkeypatch.setattr(bench_all, "default_model", lambda out: tiny_model_dir)
    monkeypatch.setattr(bench_all, "runs", lambda out, model, device, tensorrt: [("broken", bad), ("tiny", good)])
    monkeypatch.setattr(sys, "argv", ["bench_all", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        bench_all.main()
    assert exit_.value.code == 1
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| torch | 160x90 | 1 |" in summary  # the row after the failed one ran
    assert summary.rstrip().endswith("broken failed (exit 2; its output is above).")
