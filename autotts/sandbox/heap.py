"""The zygote's small-object heap, laid out for the batches it forks (docs/sandbox.md).

A batch process shares the zygote's memory copy-on-write: the first write to each of its pages
copies it (a page fault). CPython's allocator (pymalloc) serves a small object from the pools
that already hold objects of its size before it opens a new pool, so a batch's first few
thousand small objects land in the free blocks scattered over the zygote's pools, and nearly
each one writes to a page of its own: a copy-on-write fault per object. Filled by the zygote
before it forks, those blocks hold objects that nothing ever touches again; a batch's objects go
to fresh pools instead, packed about 16 KiB to four faults.

Only CPython's own statistics say where the free blocks are (`_PyObject_DebugMallocStats`, a
private function that writes a table: size class, pools, blocks in use, free blocks). Where it
is missing or says something else (another interpreter, pymalloc turned off), nothing is
filled, and nothing changes but the faults.
"""

from __future__ import annotations

import ctypes
from typing import Any


def pool_stats() -> list[tuple[int, int]]:
    """(block size, free blocks in the pools in use) for each of pymalloc's size classes, as
    CPython reports them; [] where it does not. Writes to a stream in memory (no descriptor:
    the zygote has locked itself down by now)."""
    try:
        libc = ctypes.CDLL(None)
        stats = ctypes.pythonapi._PyObject_DebugMallocStats
    except (OSError, AttributeError):
        return []
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p),
                                    ctypes.POINTER(ctypes.c_size_t)]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    stats.argtypes = [ctypes.c_void_p]
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return []
    try:
        stats(stream)
    finally:
        libc.fclose(stream)  # sets buf and size
    try:
        text = ctypes.string_at(buf, size.value).decode("ascii", "replace")
    finally:
        libc.free(ctypes.cast(buf, ctypes.c_void_p))
    out = []
    for line in text.splitlines():
        # "class size num-pools blocks-in-use avail-blocks"
        f = line.split()
        if len(f) == 5 and all(x.isdigit() for x in f):
            out.append((int(f[1]), int(f[4])))
    return out


def _blocks(size: int, n: int) -> list[Any]:
    """n new objects that each take one block of `size` bytes (3.11, 64-bit: an object() is
    16 bytes, an int past the cached ones 28, a bytes of length k is 33 + k); [] for a size no
    such object has."""
    if size == 16:
        return [object() for _ in range(n)]
    if size == 32:
        return [i for i in range(1 << 20, (1 << 20) + n)]
    if size >= 48:
        return [bytes(size - 33) for _ in range(n)]
    return []


def fill_free_blocks() -> list[Any]:
    """In the zygote, right before it forks: fill every free block of the pools in use with an
    object no one will touch, and return them (the caller keeps them alive)."""
    keep = []
    for size, free in pool_stats():
        if free:
            keep.append(_blocks(size, free))
    return keep
