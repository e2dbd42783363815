"""retain_freed_memory: inside the block large blocks come from the heap and are reused
without page faults; on leaving it, what is free goes back to the kernel."""

from __future__ import annotations

import contextlib
import ctypes
import platform
import resource

import pytest
import torch

from akd_mobile.malloc import retain_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

BLOCK_FLOATS = 4_000_000  # 16 MB: above glibc's default mmap threshold, below our heap ceiling
BLOCK_PAGES = BLOCK_FLOATS * 4 // resource.getpagesize()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _mmapped_regions() -> int:
    """glibc's count of blocks it serves with their own mmap (mallinfo2's hblks)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblks


def _faults_of_blocks(count: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        torch.ones(BLOCK_FLOATS)  # allocated, written, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_inside_the_block_large_blocks_come_from_the_heap_and_are_reused_without_page_faults():
    with retain_freed_memory():
        before = _mmapped_regions()
        kept = torch.ones(BLOCK_FLOATS)
        assert _mmapped_regions() == before  # not a mapping of its own
        del kept
        _faults_of_blocks(30)  # the heap grows until freed blocks fit the next request
        steady = _faults_of_blocks(20)
    assert steady < 0.05 * 20 * BLOCK_PAGES


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.parametrize("raises", [False, True])
def test_on_exit_the_freed_memory_goes_back_to_the_kernel(raises):
    with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
        with retain_freed_memory():
            _faults_of_blocks(5)  # at least the last block's memory is kept, resident
            held = _resident_bytes()
            if raises:
                raise RuntimeError("boom")
    assert held - _resident_bytes() > 0.8 * BLOCK_FLOATS * 4


def test_after_the_block_large_blocks_still_come_from_the_heap():
    """glibc's initial 128 KiB mmap threshold would fault more than glibc's own dynamic defaults."""
    with retain_freed_memory():
        pass
    before = _mmapped_regions()
    kept = torch.ones(BLOCK_FLOATS)
    assert _mmapped_regions() == before
    del kept


def test_a_nested_block_leaves_the_settings_to_the_outer_one():
    with retain_freed_memory():
        with retain_freed_memory():
            pass
        before = _mmapped_regions()
        kept = torch.ones(BLOCK_FLOATS)
        assert _mmapped_regions() == before  # still served from the heap
        del kept
