"""The allocator setting and the pixel budget per batch (hgad/memory.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hgad.memory import BATCH_PIXELS, MAX_BATCH, frames_per_batch

# Runs the real backbone on a 768 px frame a few times and reports the page faults of the last three
# forwards. Runs in a fresh interpreter: the setting is process-wide and one-way, so the test process
# stays as it was.
_PROBE = """
import json, resource, sys
import torch
from hgad.backbone import Backbone
from hgad.config import BackboneConfig
from hgad.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
body = Backbone(BackboneConfig(), pretrained=False)
x = torch.randn(1, 3, 768, 768)
with torch.inference_mode():
    body(x)  # the first forward builds the heap in both modes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        body(x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"applied": applied, "faults": after - before}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; other systems keep the default")
def test_keeping_freed_memory_stops_refaulting_large_blocks():
    default = _probe("default")
    kept = _probe("keep")
    assert kept["applied"] is True
    # Default glibc: every activation above 32 MB is a fresh mmap, faulted in page by page on every
    # forward. Kept: the second forward reuses what the first one freed.
    assert default["faults"] > 5 * kept["faults"], (default, kept)


@pytest.mark.parametrize(("size", "expected"), [(256, MAX_BATCH), (512, 4), (768, 2), (1024, 1), (4096, 1)])
def test_frames_per_batch_holds_a_fixed_pixel_budget(size, expected):
    n = frames_per_batch(size)
    assert n == expected
    assert n == 1 or n * size * size <= BATCH_PIXELS


def test_frames_per_batch_respects_a_smaller_cap():
    assert frames_per_batch(256, max_batch=4) == 4
