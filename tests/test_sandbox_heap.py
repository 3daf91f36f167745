"""The zygote fills the free blocks of its small-object pools before it forks
(autotts.sandbox.heap), so that a batch's small objects go to fresh pools rather than to blocks
scattered over pages it shares with the zygote (a copy-on-write fault each)."""

from __future__ import annotations

import sys

import pytest

from autotts.sandbox import heap

POOL = 16 * 1024  # pymalloc's pool in CPython 3.10+ (48 bytes of it its header)


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="pymalloc is CPython's")
def test_pool_stats_reads_every_size_class():
    stats = heap.pool_stats()
    sizes = [s for s, _ in stats]
    assert sizes == list(range(16, 513, 16))  # 3.11, 64-bit: 32 classes of 16 bytes
    assert all(free >= 0 for _, free in stats)


@pytest.mark.parametrize("size", [16, 32, 48, 64, 256, 512])
def test_each_filler_takes_one_block_of_its_class(size):
    objs = heap._blocks(size, 3)
    assert len(objs) == 3
    assert all(-(-sys.getsizeof(o) // 16) * 16 == size for o in objs)
    assert len({id(o) for o in objs}) == 3


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="pymalloc is CPython's")
def test_after_filling_no_class_has_more_than_a_fresh_pool_free():
    """What is left free after the fill is at most one pool per class (one the fill itself
    opened, or its own temporaries freed): the scattered free blocks are taken."""
    before = dict(heap.pool_stats())
    keep = heap.fill_free_blocks()
    after = dict(heap.pool_stats())
    assert keep and sum(map(len, keep)) >= sum(before.values()) // 2
    for size, free in after.items():
        assert free <= (POOL - 48) // size, (size, before[size], free)
