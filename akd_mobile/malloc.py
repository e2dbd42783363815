"""Keep freed memory in the process while training (glibc only).

By default glibc's malloc serves large blocks with `mmap` and hands them back to the
kernel when freed, so every training step takes its activations' memory back from the
kernel page by page, zero-filled: thousands of page faults per step on a student (how
many varies from run to run with glibc's adaptive thresholds). Inside
`retain_freed_memory()` blocks up to 32 MiB come from the heap and freed memory stays
there for the next step (after the first few steps, once the heap holds free blocks large
enough for the aligned requests torch makes). On exit glibc's initial thresholds are set
again (its dynamic adjustment of them stays off, as after any `mallopt`) and the heap is
trimmed of what it can give back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value of both
HEAP_BLOCK_BYTES = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit hosts
KEEP_BYTES = 1 << 30


_open_blocks = [0]  # how many retain_freed_memory blocks are open; the outermost one sets and resets


@contextmanager
def retain_freed_memory() -> Iterator[None]:
    """Within the block, serve blocks up to 32 MiB from the heap and keep up to 1 GiB freed.

    Blocks may nest: only the outermost one changes the settings. Does nothing where the
    C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    if _open_blocks[0] == 0:
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    _open_blocks[0] += 1
    try:
        yield
    finally:
        _open_blocks[0] -= 1
        if _open_blocks[0] == 0:
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_THRESHOLD_BYTES)
            libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_THRESHOLD_BYTES)
            libc.malloc_trim(0)


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
