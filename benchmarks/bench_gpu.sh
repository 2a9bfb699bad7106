#!/usr/bin/env bash
# The GPU benchmark in one command, on a CUDA box with PyTorch that may reach no registry (a lent GPU machine):
#
#   bash benchmarks/bench_gpu.sh OUT
#
# Packages the box's Python lacks come from gpu-kit/wheels (made here by `make gpu-kit`) into a private
# folder; Mosquitto is unpacked from gpu-kit/debs when the box has no broker; then
# `python -m benchmarks.bench_all OUT --device cuda`: eager torch fp32 and fp16 for the demo model and the
# default recipe, the agent beside each, and TensorRT where torch-tensorrt imports. OUT/summary.md is the table.
# Environment: PYTHON (default python3), GPU_KIT (default gpu-kit), DEVICE (default cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/bench_gpu.sh OUT}
py=${PYTHON:-python3}
kit=${GPU_KIT:-gpu-kit}
work=$(mktemp -d)

# Wheels whose distribution the box's Python does not have.
missing=$("$py" - "$kit/wheels" <<'EOF'
import importlib.metadata, pathlib, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        importlib.metadata.version(wheel.name.split("-")[0])
    except importlib.metadata.PackageNotFoundError:
        print(wheel)
EOF
)
if [ -n "$missing" ]; then
  echo "installing from $kit: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
  # shellcheck disable=SC2086  # one path per word
  PIP_ROOT_USER_ACTION=ignore "$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" $missing
fi
export PYTHONPATH="$PWD:$work/site${PYTHONPATH:+:$PYTHONPATH}"

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  debs=("$kit"/debs/*.deb)
  [ -e "${debs[0]}" ] || { echo "bench_gpu: no MQTT broker here and no $kit/debs/*.deb: run make gpu-kit" >&2; exit 2; }
  for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$work/root"; done
  libs="$work/root/usr/lib/x86_64-linux-gnu:$work/root/lib/x86_64-linux-gnu"
  if LD_LIBRARY_PATH="$libs" ldd "$work/root/usr/sbin/mosquitto" | grep 'not found' >&2; then
    echo "bench_gpu: the kit's Mosquitto lacks the libraries above on this box" >&2
    exit 2
  fi
  # Only the broker sees the kit's libraries; the Python processes keep the box's own.
  mkdir -p "$work/bin"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$libs" "$work/root/usr/sbin/mosquitto" >"$work/bin/mosquitto"
  chmod +x "$work/bin/mosquitto"
  export PATH="$work/bin:$PATH"
fi

"$py" -m benchmarks.bench_all "$out" --device "${DEVICE:-cuda}"
