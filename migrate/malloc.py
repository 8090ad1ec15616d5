"""The C allocator's settings for the tool's process."""

from __future__ import annotations

import ctypes
import platform

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let glibc's malloc keep at most `arenas` arenas (what MALLOC_ARENA_MAX does); True if set.

    By default each thread that meets a busy arena gets one of its own, up to eight per core, and
    an arena keeps what was freed in it. The extract's eight reader threads left that much behind
    for the transform that follows: at a million records the process and its transform workers
    peaked at 473–493 MB over earlier runs (482 in the same hour), against 460–480 MB with two
    arenas over four runs, in the same time (`benchmarks/pipeline.py --records 1000000
    --skip-load --plan ultimate`). Call it before any thread starts; elsewhere than glibc it does
    nothing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
