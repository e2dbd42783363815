"""Keep freed memory in the process while training (glibc only).

glibc's malloc serves large blocks with `mmap` and hands freed memory above a trim
threshold back to the kernel, so a training step takes much of its activations' memory
back from the kernel page by page, zero-filled: 20,000-30,000 page faults per step on a
typical student with glibc's defaults, about 150 inside `retain_freed_memory()`
(docs/distill.md). Inside the block, blocks up to 32 MiB come from the heap and up to
1 GiB of freed memory stays there for the next step. On leaving it the heap is trimmed
and the trim threshold drops to 64 MiB: what glibc's own dynamic thresholds reach once
32 MiB blocks have been freed. (Those dynamic thresholds cannot be switched back on once
`mallopt` has set one, and glibc's initial 128 KiB would fault more than its defaults do.)
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
HEAP_BLOCK_BYTES = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit hosts
KEEP_BYTES = 1 << 30  # freed memory kept inside the block
AFTER_TRIM_BYTES = 2 * HEAP_BLOCK_BYTES  # glibc's dynamic trim threshold for that mmap threshold

_open_blocks = [0]  # how many retain_freed_memory blocks are open; the outermost one sets and resets


@contextmanager
def retain_freed_memory() -> Iterator[None]:
    """Within the block, serve blocks up to 32 MiB from the heap and keep up to 1 GiB freed;
    after it, trim the heap and keep up to 64 MiB.

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
            libc.mallopt(M_TRIM_THRESHOLD, AFTER_TRIM_BYTES)
            libc.malloc_trim(0)


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
