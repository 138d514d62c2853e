"""The learner's heap trim gives freed C-heap pages back to the OS (glibc only)."""

import ctypes

import pytest

from learner.heap import _glibc, resident_gib, trim_heap

pytestmark = pytest.mark.skipif(_glibc() is None, reason="malloc_trim needs glibc")


def test_trim_returns_free_heap_pages_to_the_os():
    libc = _glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 64 << 10, 3200  # 200 MiB in blocks below glibc's mmap threshold: heap, not mmap
    blocks = [libc.malloc(block) for _ in range(count)]
    for address in blocks:
        ctypes.memset(address, 1, block)  # make every page resident
    keep_top = libc.malloc(block)  # a live block above them, so free() cannot shrink the heap itself
    before = resident_gib()
    for address in blocks:
        libc.free(address)
    after_free = resident_gib()
    assert trim_heap()
    after_trim = resident_gib()
    libc.free(keep_top)
    assert after_free > before - 0.05  # freed, but still resident
    assert after_trim < after_free - 0.15  # most of the 0.195 GiB went back
