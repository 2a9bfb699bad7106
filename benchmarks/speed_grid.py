"""Milliseconds per frame of the recipe at each image size and flow depth, on both CPU backends.

    python -m benchmarks.speed_grid OUT [--sizes 384,512,768] [--blocks 8,16]

A frame's cost does not depend on the weights, so each model here is the recipe untrained (two lines); its
accuracy comes from `benchmarks.ablation` at the same size and depth. One JSON line per model and backend:
batch-1 milliseconds per frame on a 1280x720 camera frame (resize included), from `hgad-edge bench`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from hgad.config import FlowConfig, ModelConfig
from hgad.model import HGAD
from hgad.model_dir import save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="384,512,768")
    ap.add_argument("--blocks", default="8,16")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("hgad-edge"))
    for size in map(int, a.sizes.split(",")):
        for blocks in map(int, a.blocks.split(",")):
            model = a.out / f"model-{size}-{blocks}"
            if not (model / "model.json").is_file():
                cfg = ModelConfig(classes=("a", "b"), image_size=size, flow=FlowConfig(n_blocks=blocks))
                save_model(HGAD(cfg), model)
            for backend in ("torch", "onnxruntime"):
                with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                    bench = [exe, "bench", "--model", str(model), "--backend", backend, "--batch", "1", "--iters", "15"]
                    subprocess.run([*bench, "--cache", str(a.out / "engines"), "--json", tmp.name], check=True)
                    result = json.loads(Path(tmp.name).read_text())
                b1 = result["batches"]["1"]
                row = {"image_size": size, "blocks": blocks, "backend": backend, "ms_per_frame": b1["ms_per_frame"]}
                print(json.dumps(row | {"stages_ms": b1["stages_ms"]}), flush=True)


if __name__ == "__main__":
    main()
