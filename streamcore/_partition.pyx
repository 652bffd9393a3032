"""Shard assignment by hash range and a stable counting sort by shard.

Each shard owns a contiguous range ``[start, next_start)`` of the 64-bit hash
space (SEMANTICS 0.3), so a split halves one range and a merge joins two
adjacent ones, as Kinesis does. ``partition`` is one native pass: for every
row it finds the owning range by binary search, counts rows per shard, then
writes the stable permutation that groups rows by shard while keeping arrival
order within each shard.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc

import pyarrow as pa

from streamcore._arrow cimport buffer_address


def even_ranges(object n_shards):
    """Range starts of ``n_shards`` equal shards: ``floor(i * 2**64 / n)``."""
    if n_shards < 1:
        raise ValueError(f"shards={n_shards!r} is invalid: expected an integer >= 1")
    cdef object i
    return [(i << 64) // n_shards for i in range(n_shards)]


cdef inline Py_ssize_t _owner(const uint64_t* starts, Py_ssize_t padded, uint64_t h) noexcept nogil:
    # Largest i with starts[i] <= h, by a branch-free binary search over a table
    # padded to a power of two with UINT64_MAX (random hashes defeat branch
    # prediction). The caller clamps the result to the real range count.
    cdef Py_ssize_t lo = 0, step = padded >> 1
    while step:
        if starts[lo + step] <= h:
            lo += step
        step >>= 1
    return lo


def partition(hashes, starts):
    """Group rows by the shard range that holds their hash.

    Parameters
    ----------
    hashes : pyarrow.UInt64Array
        One key hash per row (no nulls).
    starts : list[int]
        Ascending range starts; ``starts[0]`` must be 0.

    Returns
    -------
    (owner, order, counts)
        ``owner`` (int32) is the range index of every row, ``order`` (int64) a
        stable permutation of the rows grouped by range, ``counts`` the rows
        per range, in range order.
    """
    cdef Py_ssize_t n = len(hashes)
    cdef Py_ssize_t n_ranges = len(starts)
    if n_ranges < 1 or starts[0] != 0:
        raise ValueError("starts must be ascending and begin at 0")
    if hashes.null_count:
        raise ValueError("hashes must not contain nulls")
    cdef Py_ssize_t padded = 1
    while padded < n_ranges:
        padded <<= 1
    cdef uint64_t* c_starts = <uint64_t*>malloc(padded * sizeof(uint64_t))
    cdef int64_t* c_pos = <int64_t*>malloc((n_ranges + 1) * sizeof(int64_t))
    if c_starts == NULL or c_pos == NULL:
        free(c_starts)
        free(c_pos)
        raise MemoryError()
    cdef Py_ssize_t i
    for i in range(padded):
        c_starts[i] = starts[i] if i < n_ranges else 0xFFFFFFFFFFFFFFFF
    for i in range(n_ranges):
        c_pos[i] = 0
    c_pos[n_ranges] = 0

    owner_buf = pa.allocate_buffer(4 * n)
    order_buf = pa.allocate_buffer(8 * n)
    cdef const uint64_t* h = NULL
    cdef Py_ssize_t hash_off = hashes.offset
    hash_buf = hashes.buffers()[1] if n else None
    if n:
        h = (<const uint64_t*>buffer_address(hash_buf)) + hash_off
    cdef int32_t* owner = <int32_t*>buffer_address(owner_buf)
    cdef int64_t* order = <int64_t*>buffer_address(order_buf)
    cdef Py_ssize_t s
    cdef int64_t total = 0, c
    with nogil:
        for i in range(n):
            s = _owner(c_starts, padded, h[i])
            if s >= n_ranges:  # only h == UINT64_MAX reaches the padding
                s = n_ranges - 1
            owner[i] = <int32_t>s
            c_pos[s] += 1
        for i in range(n_ranges):  # counts -> start offset of each range
            c = c_pos[i]
            c_pos[i] = total
            total += c
        c_pos[n_ranges] = total
        for i in range(n):
            s = owner[i]
            order[c_pos[s]] = i
            c_pos[s] += 1
    # c_pos[s] now holds the end offset of range s; rebuild the counts from it.
    counts = [c_pos[0]] + [c_pos[i] - c_pos[i - 1] for i in range(1, n_ranges)]
    free(c_starts)
    free(c_pos)
    return (
        pa.Array.from_buffers(pa.int32(), n, [None, owner_buf]),
        pa.Array.from_buffers(pa.int64(), n, [None, order_buf]),
        counts,
    )
