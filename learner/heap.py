"""The learner process's C heap: how much of it is resident, and giving its free pages back.

Every SFT/GRPO batch has new shapes, so glibc's heap fills with free blocks of ever-changing sizes
that it keeps resident: over a long run the learner's resident size grows by gigabytes (SmolLM2 on
2 CPU cores: 9.4 GiB at stage-1 step 12, 15.7 GiB at step 92). `malloc_trim` returns the free
pages to the OS, which the next step then faults in again.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache


@cache
def _glibc():
    """glibc's handle, or None where the C library has no `malloc_trim` (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS; False where there is no glibc to ask."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def resident_gib() -> float:
    """This process's resident set size now, in GiB (Linux; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30
