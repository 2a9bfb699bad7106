"""`make bench`: the benchmark matrix into one folder, and the README's table from it.

    python -m benchmarks.bench_all OUT [--device cuda]

Models: the demo's (the recipe at 256 px) and the default recipe (768 px), the latter trained for speed only
on a small synthetic set. On the CPU, for each model and backend (torch, onnxruntime): `hgad-edge bench
--agent` at 1280x720 with one camera (OUT/MODEL-BACKEND.json); for each model on onnxruntime (what `auto` takes
on a CPU) the agent also at 1920x1080 and with four cameras, and two live cameras beside the default recipe.
On CUDA (`--device cuda`, what benchmarks/bench_gpu.sh runs on a GPU box): eager torch fp32 and fp16 for each
model, fp16 also with four full-HD cameras, and TensorRT fp16 where torch-tensorrt imports (else the summary
says why not). OUT/summary.md is the table; it names the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

FRAMES = ("1280x720", "1920x1080")


def hgad_edge(*args: str) -> None:
    exe = Path(sys.executable).with_name("hgad-edge")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
    print("$ hgad-edge " + " ".join(args), flush=True)
    subprocess.run([*cmd, *args], check=True)


def default_model(out: Path) -> Path:
    """The default recipe (768 px), trained on 2 synthetic lines for one epoch: its speed is the recipe's."""
    model = out / "default-model"
    if not (model / "model.json").is_file():
        hgad_edge("synth", str(out / "default-data"), "--classes", "2", "--train", "16", "--test", "4")
        hgad_edge("train", "--data", str(out / "default-data"), "--out", str(model), "--epochs", "1")
    return model


def runs(out: Path, model: Path, device: str = "cpu", tensorrt: bool = False) -> list[tuple[str, list[str]]]:
    """(json name, bench arguments) of the matrix on `device`; `tensorrt`: torch-tensorrt imports."""
    if device != "cpu":
        return gpu_runs(model, device, tensorrt)
    plan = []
    extra = ["--backend", "onnxruntime", "--batch", "1", "--iters", "10", "--agent"]
    for name, source in (("demo", ["--demo"]), ("default", ["--model", str(model)])):
        for backend in ("torch", "onnxruntime"):
            plan.append((f"{name}-{backend}", [*source, "--backend", backend, "--agent"]))
        for frame, cameras in ((FRAMES[1], "1"), (FRAMES[0], "4"), (FRAMES[1], "4")):
            plan.append(
                (f"{name}-onnxruntime-{frame}-{cameras}cam", [*source, *extra, "--frame", frame, "--cameras", cameras])
            )
    # Two live full-HD cameras at 25 frames/s beside the default recipe: more frames than the model can judge,
    # so the cameras leave most of them undecoded.
    live = ["--frame", FRAMES[1], "--cameras", "2", "--camera-fps", "25", "--seconds", "30"]
    plan.append(("default-onnxruntime-live-25fps-2cam", ["--model", str(model), *extra, *live]))
    return plan


def gpu_runs(model: Path, device: str, tensorrt: bool) -> list[tuple[str, list[str]]]:
    """On CUDA the model takes milliseconds, so the agent's own work per frame is what the ratio shows."""
    plan = []
    for name, source in (("demo", ["--demo"]), ("default", ["--model", str(model)])):
        gpu = [*source, "--device", device, "--agent"]
        for precision in ("fp32", "fp16"):
            plan.append((f"{name}-torch-{precision}", [*gpu, "--backend", "torch", "--precision", precision]))
        four = ["--frame", FRAMES[1], "--cameras", "4"]
        plan.append((f"{name}-torch-fp16-{FRAMES[1]}-4cam", [*gpu, "--backend", "torch", "--precision", "fp16", *four]))
        if tensorrt:
            plan.append((f"{name}-tensorrt-fp16", [*gpu, "--backend", "tensorrt", "--precision", "fp16"]))
    return plan


def table(out: Path, names: list[str], notes: tuple[str, ...] = ()) -> str:
    first = json.loads((out / f"{names[0]}.json").read_text())
    host = first["host"]
    where, by = f"{host['cores']} cores of {host['cpu']} ({platform.machine()})", "`make bench`"
    if first["device"].startswith("cuda"):
        where, by = f"{first['device']} beside {where}", "`bash benchmarks/bench_gpu.sh`"
    lines = [
        f"Measured by {by} on {where}; camera frames MJPG-decoded, resized, judged by the real agent against a broker.",
        "",
        "| model | backend | frame | cameras | model ms/frame (batch 1) | model frames/s before / after "
        "| agent frames/s | agent/model | start to READY / first frame (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = json.loads((out / f"{name}.json").read_text())
        a, b1 = r["agent"], r["batches"]["1"]
        before, after = a["bare_model_fps_batch1_before_after"]
        model = "demo (256 px)" if name.startswith("demo") else f"default ({r['image_size']} px)"
        h, w = a["camera_frame"]
        s = a["startup_s"]
        cameras = f"{a['cameras']} live at {a['camera_fps']:g} fps" if a.get("camera_fps") else a["cameras"]
        backend = r["backend"] if r["precision"] == "fp32" else f"{r['backend']} {r['precision']}"
        lines.append(
            f"| {model} | {backend} | {w}x{h} | {cameras} | {b1['ms_per_frame']:.1f} | {before:.1f} / {after:.1f} | "
            f"{a['agent_fps']:.1f} | {a['agent_to_model_fps_ratio']:.2f} | {s['ready']} / {s['first_judged_frame']} |"
        )
    return "\n".join([*lines, *("", *notes)] if notes else lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_all", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("bench-out"), help="folder of the results")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for a GPU box's matrix")
    a = parser.parse_args()
    notes: tuple[str, ...] = ()
    tensorrt = False
    if a.device != "cpu":
        import torch

        from hgad.runtime.tensorrt_backend import tensorrt_status

        if not a.device.startswith("cuda"):
            sys.exit(f"bench_all: --device {a.device}: not a device this bench knows; use cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            sys.exit(f"bench_all: --device {a.device}: CUDA is not available here; use --device cpu")
        tensorrt, why = tensorrt_status()
        notes = () if tensorrt else (f"TensorRT not run: {why}.",)
    a.out.mkdir(parents=True, exist_ok=True)
    names, failed = [], []
    try:
        model = default_model(a.out)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"bench_all: making the default recipe's model failed (exit {exc.returncode}; its output is above)")
    for name, args in runs(a.out, model, a.device, tensorrt):
        # A row that fails is named at the end; the others still run (a lent GPU's minutes are few).
        try:
            hgad_edge("bench", *args, "--json", str(a.out / f"{name}.json"))
            names.append(name)
        except subprocess.CalledProcessError as exc:
            failed.append(f"{name} failed (exit {exc.returncode}; its output is above).")
    if not names:
        sys.exit("bench_all: every row failed; their output is above")
    text = table(a.out, names, (*notes, *failed))
    (a.out / "summary.md").write_text(text)
    print(text)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
