"""Keep freed memory in the process during CPU training and inference (glibc's allocator).

By default glibc gives every block above a threshold (at most 32 MiB) its own ``mmap`` and
returns it to the kernel on ``free``, so each training step faults its large activation and
gradient buffers in afresh, a sizeable share of a small model's step (BENCHMARKS.md, "Training
throughput"). With ``mmap`` off and no trimming, freed blocks stay in the
heap for the next step; the process keeps its peak memory instead of giving it back between
steps, which a training run reaches on every step anyway; in `remamber segment` and `eval` each
image repeats the previous one's allocations. Those three commands set it on the CPU (the
library's Trainer and predictors leave the process's allocator alone); it lasts for the process.
The price is peak memory: fragments of freed blocks are not given back (BENCHMARKS.md, "Segment
latency"). ``REMAMBER_KEEP_FREED_MEMORY=0`` keeps
glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def _mallopt(settings: dict[int, int]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return all(mallopt(param, value) == 1 for param, value in settings.items())


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed memory to the kernel; True when the allocator took it
    (False also when ``REMAMBER_KEEP_FREED_MEMORY=0`` asks for glibc's defaults)."""
    if os.environ.get("REMAMBER_KEEP_FREED_MEMORY", "1") == "0":
        return False
    return _mallopt({M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1})
