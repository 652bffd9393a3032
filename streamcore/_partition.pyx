"""Shard assignment by hash range and a stable counting sort by shard.

Each shard owns a contiguous range ``[start, next_start)`` of the 64-bit hash
space (SEMANTICS 0.3), so a split halves one range and a merge joins two
adjacent ones, as Kinesis does. ``partition`` is one native pass: for every
row it finds the owning range by binary search, counts rows per shard, then
writes the stable permutation that groups rows by shard while keeping arrival
order within each shard.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

import pyarrow as pa

from streamcore._arrow cimport buffer_address


def even_ranges(object n_shards):
    """Range starts of ``n_shards`` equal shards: ``floor(i * 2**64 / n)``."""
    if n_shards < 1:
        raise ValueError(f"shards={n_shards!r} is invalid: expected an integer >= 1")
    cdef object i
    return [(i << 64) // n_shards for i in range(n_shards)]


# A hash's range is looked up by its top _BITS bits: its bucket records the
# range holding the bucket's first hash and the boundary, if any, inside the
# bucket, so one load and one compare find the range, without a branch (a
# binary search on random hashes mispredicts at every step). A bucket holding
# more than one boundary (ranges narrower than a bucket) is marked by a
# negative `first` and scanned.
cdef enum:
    _BITS = 10
    _SHIFT = 64 - _BITS
    # The rows are cut into _BLOCKS contiguous blocks, each with its own counters,
    # and the loops take one row of each block in turn: the counter updates then
    # form independent chains, where one set of counters makes every row wait
    # for the previous row's store whenever they hit the same range.
    _BLOCKS = 8


cdef struct _Bucket:
    uint64_t split  # hashes above it are in range first + 1 (UINT64_MAX: no boundary)
    int64_t first  # range of the bucket's first hash; ~first if the bucket is scanned


cdef inline Py_ssize_t _owner(
    const _Bucket* buckets, const uint64_t* starts, Py_ssize_t last, uint64_t h
) noexcept nogil:
    cdef _Bucket bucket = buckets[h >> _SHIFT]
    cdef Py_ssize_t s
    if bucket.first >= 0:
        return <Py_ssize_t>bucket.first + (h > bucket.split)
    s = <Py_ssize_t>(~bucket.first)
    while s < last and starts[s + 1] <= h:
        s += 1
    return s


cdef void _fill_buckets(const uint64_t* starts, Py_ssize_t n_ranges, _Bucket* buckets) noexcept nogil:
    cdef Py_ssize_t b, s = 0, t, last = n_ranges - 1
    cdef uint64_t low, high
    for b in range(1 << _BITS):
        low = (<uint64_t>b) << _SHIFT
        high = low | ((<uint64_t>1 << _SHIFT) - 1)
        while s < last and starts[s + 1] <= low:
            s += 1
        t = s
        while t < last and starts[t + 1] <= high:
            t += 1
        buckets[b].first = s
        buckets[b].split = 0xFFFFFFFFFFFFFFFF
        if t == s + 1:
            buckets[b].split = starts[t] - 1  # starts[t] > low >= 0
        elif t > s + 1:
            buckets[b].first = ~(<int64_t>s)


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
    cdef Py_ssize_t s, i, k, row, last = n_ranges - 1
    cdef Py_ssize_t block = n // _BLOCKS  # rows per block; the remainder goes to the last
    cdef uint64_t* c_starts = <uint64_t*>malloc(n_ranges * sizeof(uint64_t))
    cdef _Bucket* buckets = <_Bucket*>malloc((1 << _BITS) * sizeof(_Bucket))
    # pos[k * n_ranges + s]: rows of block k in range s, then where the next goes.
    cdef int64_t* pos = <int64_t*>calloc(_BLOCKS * n_ranges, sizeof(int64_t))
    cdef const uint64_t* h = NULL
    cdef int32_t* owner
    cdef int64_t* order
    cdef int64_t total = 0, c
    try:
        if c_starts == NULL or buckets == NULL or pos == NULL:
            raise MemoryError()
        for i in range(n_ranges):
            c_starts[i] = starts[i]
        owner_buf = pa.allocate_buffer(4 * n)
        order_buf = pa.allocate_buffer(8 * n)
        hash_buf = hashes.buffers()[1] if n else None
        if n:
            h = (<const uint64_t*>buffer_address(hash_buf)) + <Py_ssize_t>hashes.offset
        owner = <int32_t*>buffer_address(owner_buf)
        order = <int64_t*>buffer_address(order_buf)
        with nogil:
            _fill_buckets(c_starts, n_ranges, buckets)
            for i in range(n):
                owner[i] = <int32_t>_owner(buckets, c_starts, last, h[i])
            for i in range(block):
                for k in range(_BLOCKS):
                    pos[k * n_ranges + owner[k * block + i]] += 1
            for row in range(_BLOCKS * block, n):
                pos[(_BLOCKS - 1) * n_ranges + owner[row]] += 1
            for s in range(n_ranges):  # counts -> where each block's rows of range s start
                for k in range(_BLOCKS):
                    c = pos[k * n_ranges + s]
                    pos[k * n_ranges + s] = total
                    total += c
            for i in range(block):
                for k in range(_BLOCKS):
                    row = k * block + i
                    s = k * n_ranges + owner[row]
                    order[pos[s]] = row
                    pos[s] += 1
            for row in range(_BLOCKS * block, n):
                s = (_BLOCKS - 1) * n_ranges + owner[row]
                order[pos[s]] = row
                pos[s] += 1
        # pos[k * n_ranges + s] now holds the end of block k's rows of range s; the
        # last block's is the end of range s.
        ends = [pos[(_BLOCKS - 1) * n_ranges + s] for s in range(n_ranges)]
        counts = [ends[0]] + [ends[s] - ends[s - 1] for s in range(1, n_ranges)]
    finally:
        free(c_starts)
        free(buckets)
        free(pos)
    return (
        pa.Array.from_buffers(pa.int32(), n, [None, owner_buf]),
        pa.Array.from_buffers(pa.int64(), n, [None, order_buf]),
        counts,
    )
