"""How the process uses memory: the C allocator's settings and how many frames go through at once.

A 768 px frame makes activations of 50-100 MB in the backbone's first stages. glibc serves every block
above 32 MB with a fresh mmap and unmaps it on free, so each frame faults all of them in again, page by
page: on 2 CPU cores, training at 768 px spent more time in the kernel than in the convolutions (815 s of
system time, 365 M minor faults for 1200 images). Keeping freed memory in the heap makes the next frame
reuse it; the process's RSS then stays at its peak instead of breathing, and that peak is bounded by
feeding the backbone a fixed number of pixels per batch instead of a fixed number of frames.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

# Pixels per batch through the backbone: two 768 px frames, four at 512 px, sixteen at 256 px (the cap).
# Larger batches are no faster on a CPU (its cores are busy at two 768 px frames) and only raise the peak.
BATCH_PIXELS = 2 * 768 * 768
MAX_BATCH = 16


def frames_per_batch(image_size: int, max_batch: int = MAX_BATCH) -> int:
    """Frames of `image_size` px per batch so that one batch holds about BATCH_PIXELS pixels."""
    return max(1, min(max_batch, BATCH_PIXELS // (image_size * image_size)))


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse (no mmap per large block, no trimming of the heap).

    Process-wide and one-way, so only entry points call it (the CLI), never library code. Returns False,
    changing nothing, where the C library is not glibc (musl, macOS): the cost there is speed, not memory.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; True only when both settings took effect.
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    log.debug("allocator", extra={"fields": {"keep_freed_memory": ok, "libc": name}})
    return ok
