"""Shard assignment by hash range and a stable counting sort by shard.

Each shard owns a contiguous range ``[start, next_start)`` of the 64-bit hash
space (SEMANTICS 0.3), so a split halves one range and a merge joins two
adjacent ones, as Kinesis does. ``partition`` is one native pass: for every
row it finds the owning range by a table lookup, counts rows per shard, then
writes the stable permutation that groups rows by shard while keeping arrival
order within each shard. ``assign`` also gives every row its shard id and seq
(what a put returns); ``assign_keys`` (what ``MemoryStream.put`` calls) hashes
the keys in the pass that counts them, instead of taking an array of hashes.
Large inputs are split across two threads (``_arrow.run_tasks``); the result is
the same.
"""

from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

import pyarrow as pa

from streamcore._arrow cimport NOGIL_ROWS, buffer_address, parallel_rows, run_tasks_gil, task_fn
from streamcore._hashing cimport KIND_OFFSETS32, KIND_OFFSETS64, KeyView, hash_keys, key_view, xxh64


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
    # and the loops take one row of each of a task's blocks in turn: the counter
    # updates then form independent chains, where one set of counters makes every
    # row wait for the previous row's store whenever they hit the same range.
    _BLOCKS = 64
    # The blocks are taken in _TASKS tasks of _arrow.run_tasks (eight blocks each:
    # eight chains), so a helper that wakes late leaves the caller less to wait for
    # (assign_keys' count tasks hash too: a task is an eighth of a put's hashing).
    _TASKS = 8
    _BLOCKS_PER_TASK = _BLOCKS // _TASKS
    # Counters between two tasks' blocks kept free (128 bytes): a counter updated
    # for every row must not share a cache line with the other thread's.
    _PAD = 16
    # assign_keys hashes integer keys this many at a time into a buffer on the
    # stack, which stays in L1 cache until their owners are looked up.
    _HASH_STEP = 256


cdef struct _Bucket:
    uint64_t split  # hashes above it are in range first + 1 (UINT64_MAX: no boundary)
    int64_t first  # range of the bucket's first hash; ~first if the bucket is scanned


cdef Py_ssize_t _scan(const uint64_t* starts, Py_ssize_t last, Py_ssize_t s, uint64_t h) noexcept nogil:
    while s < last and starts[s + 1] <= h:
        s += 1
    return s


cdef inline Py_ssize_t _owner(
    const _Bucket* buckets, const uint64_t* starts, Py_ssize_t last, uint64_t h
) noexcept nogil:
    cdef _Bucket bucket = buckets[h >> _SHIFT]
    if bucket.first >= 0:
        return <Py_ssize_t>bucket.first + (h > bucket.split)
    return _scan(starts, last, <Py_ssize_t>(~bucket.first), h)


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


# Row indices and owners are stored as narrow as they fit: assign's order as
# int32 below 2**31 rows (half the scattered stores of the place pass, and half
# what _arrow.gather reads per row), its owners as uint8 up to 256 ranges (the
# count pass writes and the place pass reads a byte per row).
ctypedef fused owner_t:
    uint8_t
    int32_t

ctypedef fused index_t:
    int32_t
    int64_t


cdef struct _Grouping:
    const uint64_t* h  # the rows' hashes, or NULL: assign_keys hashes `keys` as it counts
    const KeyView* keys  # hashed with seed 0 (SEMANTICS 0.3)
    Py_ssize_t n
    Py_ssize_t n_ranges
    const uint64_t* starts
    const _Bucket* buckets
    Py_ssize_t block  # rows per block; the last block also takes the n % _BLOCKS others
    void* owner  # uint8_t (owner8) or int32_t per row
    void* order  # int32_t (order32) or int64_t per row
    bint owner8
    bint order32
    # _counters(g, k)[s]: rows of block k in range s, then where the next goes.
    int64_t* pos
    # assign only (NULL for partition): per range, its shard id and its first seq
    # less where its rows begin in order (set by _group); per row, the shard id and
    # seq it gets.
    const int64_t* ids
    uint64_t* seq_base
    int64_t* out_id
    uint64_t* out_seq
    # assign_keys only: the seqs in order's order (the stored records'), filled by
    # the place job's last task, beside the place tasks.
    const uint64_t* firsts
    const int64_t* counts
    uint64_t* grouped_seq


cdef inline int64_t* _counters(const _Grouping* g, Py_ssize_t k) noexcept nogil:
    return g.pos + k * g.n_ranges + (k // _BLOCKS_PER_TASK) * _PAD


cdef void _count_rows(const _Grouping* g, Py_ssize_t task, owner_t* owner) noexcept nogil:
    """Owner of every row of the task's blocks, counted per block and range."""
    cdef const _Bucket* buckets = g.buckets
    cdef const uint64_t* starts = g.starts
    cdef const uint64_t* h = g.h
    cdef Py_ssize_t last = g.n_ranges - 1, n_ranges = g.n_ranges, block = g.block
    cdef Py_ssize_t i, k, row, first = task * _BLOCKS_PER_TASK
    cdef Py_ssize_t end = (first + _BLOCKS_PER_TASK) * block  # the last block also has the other rows
    cdef int64_t* pos = _counters(g, first)  # the task's blocks' counters, one after the other
    if first + _BLOCKS_PER_TASK == _BLOCKS:
        end = g.n
    for row in range(first * block, end):
        owner[row] = <owner_t>_owner(buckets, starts, last, h[row])
    for i in range(block):
        for k in range(_BLOCKS_PER_TASK):
            pos[k * n_ranges + owner[(first + k) * block + i]] += 1
    if first + _BLOCKS_PER_TASK == _BLOCKS:  # the last block's other rows
        pos = _counters(g, _BLOCKS - 1)
        for row in range(_BLOCKS * block, g.n):
            pos[owner[row]] += 1


ctypedef fused offset_t:
    int32_t
    int64_t


cdef void _hash_and_count_offsets(
    const _Grouping* g, const offset_t* offsets, Py_ssize_t lo, Py_ssize_t hi, int64_t* pos, owner_t* owner
) noexcept nogil:
    """Rows [lo, hi) of var-length keys: each hashed, looked up and counted in one step.

    Short of registers for all the loop needs, so the seed is the constant 0
    and a scanned bucket's range is found out of line (a rare path).
    """
    cdef const uint8_t* data = g.keys.data
    cdef const _Bucket* buckets = g.buckets
    cdef Py_ssize_t row, o
    cdef uint64_t h
    cdef _Bucket bucket
    cdef offset_t start, end
    if lo >= hi:
        return  # an empty block (offsets may be NULL when there are no keys)
    start = offsets[lo]
    for row in range(lo, hi):
        end = offsets[row + 1]
        h = xxh64(data + start, <size_t>(end - start), 0)
        bucket = buckets[h >> _SHIFT]
        if bucket.first >= 0:
            o = <Py_ssize_t>bucket.first + (h > bucket.split)
        else:
            o = _scan(g.starts, g.n_ranges - 1, <Py_ssize_t>(~bucket.first), h)
        owner[row] = <owner_t>o
        pos[o] += 1
        start = end


cdef void _hash_and_count(const _Grouping* g, Py_ssize_t task, owner_t* owner) noexcept nogil:
    """_count_rows for assign_keys: the task's keys hashed, their owners found and counted.

    Block by block, no array of hashes written and read back: the hashing's own
    latency hides the chains of counter updates that _count_rows' interleaved
    blocks avoid. Var-length keys (the usual ones) are hashed in the loop that
    looks them up; integer keys _HASH_STEP at a time into a buffer on the stack.
    """
    cdef uint64_t hashes[_HASH_STEP]
    cdef const _Bucket* buckets = g.buckets
    cdef const uint64_t* starts = g.starts
    cdef Py_ssize_t last = g.n_ranges - 1
    cdef Py_ssize_t k, lo, hi, step, r, o
    cdef int64_t* pos
    for k in range(task * _BLOCKS_PER_TASK, (task + 1) * _BLOCKS_PER_TASK):
        pos = _counters(g, k)
        lo = k * g.block
        hi = g.n if k == _BLOCKS - 1 else lo + g.block
        if g.keys.kind == KIND_OFFSETS32:
            _hash_and_count_offsets(g, <const int32_t*>g.keys.values, lo, hi, pos, owner)
            continue
        if g.keys.kind == KIND_OFFSETS64:
            _hash_and_count_offsets(g, <const int64_t*>g.keys.values, lo, hi, pos, owner)
            continue
        while lo < hi:
            step = min(hi - lo, _HASH_STEP)
            hash_keys(g.keys, lo, step, 0, hashes)
            for r in range(step):
                o = _owner(buckets, starts, last, hashes[r])
                owner[lo + r] = <owner_t>o
                pos[o] += 1
            lo += step


cdef void _count_task(void* ctx, Py_ssize_t task) noexcept nogil:
    cdef _Grouping* g = <_Grouping*>ctx
    if g.keys != NULL:
        if g.owner8:
            _hash_and_count(g, task, <uint8_t*>g.owner)
        else:
            _hash_and_count(g, task, <int32_t*>g.owner)
    elif g.owner8:
        _count_rows(g, task, <uint8_t*>g.owner)
    else:
        _count_rows(g, task, <int32_t*>g.owner)


cdef void _place_rows(const _Grouping* g, Py_ssize_t task, const owner_t* owner, index_t* order) noexcept nogil:
    """Every row of the task's blocks written to its place in order (and, for assign, its shard and seq)."""
    cdef const int64_t* ids = g.ids
    cdef const uint64_t* seq_base = g.seq_base
    cdef int64_t* out_id = g.out_id
    cdef uint64_t* out_seq = g.out_seq
    cdef Py_ssize_t block = g.block, end = g.n
    cdef Py_ssize_t i, k, row, o, first = task * _BLOCKS_PER_TASK
    cdef int64_t at
    cdef int64_t* last_pos = _counters(g, _BLOCKS - 1)
    # Each block's first row and counters, out of the row loop.
    cdef Py_ssize_t rows[_BLOCKS_PER_TASK]
    cdef int64_t* pos[_BLOCKS_PER_TASK]
    for k in range(_BLOCKS_PER_TASK):
        rows[k] = (first + k) * block
        pos[k] = _counters(g, first + k)
    if first + _BLOCKS_PER_TASK != _BLOCKS:
        end = 0  # only the last block has rows after _BLOCKS * block
    if out_seq == NULL:
        for i in range(block):
            for k in range(_BLOCKS_PER_TASK):
                row = rows[k] + i
                o = owner[row]
                at = pos[k][o]
                order[at] = <index_t>row
                pos[k][o] = at + 1
        for row in range(_BLOCKS * block, end):
            o = owner[row]
            at = last_pos[o]
            order[at] = <index_t>row
            last_pos[o] = at + 1
        return
    # A row's seq is its range's first seq plus its place among the range's rows:
    # seq_base[o] + at (seq_base is the first seq less where the range begins).
    for i in range(block):
        for k in range(_BLOCKS_PER_TASK):
            row = rows[k] + i
            o = owner[row]
            at = pos[k][o]
            order[at] = <index_t>row
            pos[k][o] = at + 1
            out_seq[row] = seq_base[o] + <uint64_t>at
            out_id[row] = ids[o]
    for row in range(_BLOCKS * block, end):
        o = owner[row]
        at = last_pos[o]
        order[at] = <index_t>row
        last_pos[o] = at + 1
        out_seq[row] = seq_base[o] + <uint64_t>at
        out_id[row] = ids[o]


cdef void _fill_grouped_seqs(const _Grouping* g) noexcept nogil:
    cdef uint64_t* out = g.grouped_seq
    cdef Py_ssize_t s, j
    cdef uint64_t first
    for s in range(g.n_ranges):
        first = g.firsts[s]
        for j in range(g.counts[s]):
            out[j] = first + <uint64_t>j
        out += g.counts[s]


cdef void _place_task(void* ctx, Py_ssize_t task) noexcept nogil:
    cdef _Grouping* g = <_Grouping*>ctx
    if task == _TASKS:  # assign_keys' extra task
        _fill_grouped_seqs(g)
    elif g.owner8:
        if g.order32:
            _place_rows(g, task, <const uint8_t*>g.owner, <int32_t*>g.order)
        else:
            _place_rows(g, task, <const uint8_t*>g.owner, <int64_t*>g.order)
    elif g.order32:
        _place_rows(g, task, <const int32_t*>g.owner, <int32_t*>g.order)
    else:
        _place_rows(g, task, <const int32_t*>g.owner, <int64_t*>g.order)


cdef void _run(task_fn fn, _Grouping* g, Py_ssize_t n_tasks) noexcept:
    if parallel_rows(g.n):
        run_tasks_gil(fn, g, n_tasks, g.n)
    elif g.n >= NOGIL_ROWS:  # one thread: a large put (hashing included) still lets others run
        with nogil:
            for task in range(n_tasks):
                fn(g, task)
    else:
        for task in range(n_tasks):
            fn(g, task)


cdef list _group(object hashes, object starts, _Grouping* g):
    """Fill g.owner, g.order (and, for assign, g.out_id, g.out_seq); the rows per range.

    The caller sets g's outputs and assign's inputs; this sets the rest.
    """
    cdef Py_ssize_t n = g.n
    cdef Py_ssize_t n_ranges = len(starts)
    cdef Py_ssize_t s, k, i
    cdef int64_t total = 0, c
    if n_ranges < 1 or starts[0] != 0:
        raise ValueError("starts must be ascending and begin at 0")
    if hashes is not None and hashes.null_count:
        raise ValueError("hashes must not contain nulls")
    cdef uint64_t* c_starts = <uint64_t*>malloc(n_ranges * sizeof(uint64_t))
    cdef _Bucket* buckets = <_Bucket*>malloc((1 << _BITS) * sizeof(_Bucket))
    cdef int64_t* pos = <int64_t*>calloc(_BLOCKS * n_ranges + _TASKS * _PAD, sizeof(int64_t))
    cdef int64_t* c_counts = <int64_t*>malloc(n_ranges * sizeof(int64_t))
    try:
        if c_starts == NULL or buckets == NULL or pos == NULL or c_counts == NULL:
            raise MemoryError()
        for i in range(n_ranges):
            c_starts[i] = starts[i]
        if hashes is not None:
            hash_buf = hashes.buffers()[1] if n else None
            g.h = (<const uint64_t*>buffer_address(hash_buf)) + <Py_ssize_t>hashes.offset if n else NULL
        g.n_ranges = n_ranges
        g.starts = c_starts
        g.buckets = buckets
        g.block = n // _BLOCKS
        g.pos = pos
        g.counts = c_counts
        _fill_buckets(c_starts, n_ranges, buckets)
        _run(_count_task, g, _TASKS)
        for s in range(n_ranges):  # counts -> where each block's rows of range s start
            if g.seq_base != NULL:
                g.seq_base[s] -= <uint64_t>total
            c_counts[s] = -total
            for k in range(_BLOCKS):
                c = _counters(g, k)[s]
                _counters(g, k)[s] = total
                total += c
            c_counts[s] += total
        _run(_place_task, g, _TASKS + (g.grouped_seq != NULL))
        return [c_counts[s] for s in range(n_ranges)]
    finally:
        free(c_starts)
        free(buckets)
        free(pos)
        free(c_counts)


def partition(hashes, starts):
    """Group rows by the shard range that holds their hash.

    From ``_arrow.parallel_config``'s ``min_rows`` rows on, the rows are split
    across two threads (each takes half of the blocks of rows; the result is
    the same); from 65536 on, with the GIL released.

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
    cdef _Grouping g
    memset(&g, 0, sizeof(_Grouping))
    owner_buf = pa.allocate_buffer(4 * n)
    order_buf = pa.allocate_buffer(8 * n)
    g.n = n
    g.owner = <void*>buffer_address(owner_buf)
    g.order = <void*>buffer_address(order_buf)
    counts = _group(hashes, starts, &g)
    return (
        pa.Array.from_buffers(pa.int32(), n, [None, owner_buf]),
        pa.Array.from_buffers(pa.int64(), n, [None, order_buf]),
        counts,
    )


def assign(hashes, starts, ids, firsts):
    """Shard and seq of every row, and the rows grouped by shard: one put's bookkeeping in one pass.

    ``partition``, plus what ``_arrow.scatter_groups`` makes of its result, without
    its scattered writes: range ``s`` is the shard ``ids[s]``, whose rows get the
    seqs ``firsts[s], firsts[s] + 1, ...`` in arrival order. Split across two
    threads as ``partition`` is.

    Parameters
    ----------
    hashes : pyarrow.UInt64Array
        One key hash per row (no nulls).
    starts : list[int]
        Ascending range starts; ``starts[0]`` must be 0.
    ids : list[int]
        The shard id of each range (int64).
    firsts : list[int]
        The first seq of each range (uint64).

    Returns
    -------
    (order, counts, shard, seq)
        ``order`` a stable permutation of the rows grouped by range (int32 below
        2**31 rows, else int64; ``_arrow.gather`` takes either), ``counts`` the
        rows per range, ``shard`` (int64) and ``seq`` (uint64) those of every
        row, in input order.
    """
    cdef _Grouping g
    memset(&g, 0, sizeof(_Grouping))
    return _assign(hashes, len(hashes), starts, ids, firsts, &g)


def assign_keys(keys, starts, ids, firsts):
    """``assign(hash_array(keys), starts, ids, firsts)`` without the array of hashes, and the grouped seqs.

    The keys are hashed (XXH64, seed 0: SEMANTICS 0.3) in the pass, and tasks,
    that ``assign`` counts in, block by block.

    Parameters
    ----------
    keys : pyarrow.Array
        The keys, of a type ``hash_array`` takes, without nulls.
    starts, ids, firsts : list[int]
        As for ``assign``.

    Returns
    -------
    (order, counts, shard, seq, grouped_seq)
        As ``assign``'s, and ``grouped_seq`` (uint64): the seqs in ``order``'s
        order, ``firsts[s], firsts[s] + 1, ...`` for ``counts[s]`` rows, range
        after range (``_arrow.ranges(firsts, counts)``, filled beside the place
        pass).

    Raises
    ------
    InvalidRecordsError
        As ``hash_array``: the key type is not supported, or a key is null.
    TypeError
        If ``keys`` is not a ``pyarrow.Array``.
    """
    cdef _Grouping g
    cdef KeyView view
    if not isinstance(keys, pa.Array):
        raise TypeError(f"keys must be a pyarrow.Array, got {type(keys).__name__}")
    memset(&g, 0, sizeof(_Grouping))
    keys = key_view(keys, &view, 0)  # referenced until return: the key buffers stay alive
    g.keys = &view
    return _assign(None, view.n, starts, ids, firsts, &g)


cdef tuple _assign(object hashes, Py_ssize_t n, object starts, object ids, object firsts, _Grouping* g):
    """assign's result, of ``hashes``, or (``hashes`` None) assign_keys' of g.keys."""
    cdef Py_ssize_t n_ranges = len(starts), s
    if len(ids) != n_ranges or len(firsts) != n_ranges:
        raise ValueError(
            f"starts, ids and firsts must have one value per range, "
            f"got {n_ranges}, {len(ids)} and {len(firsts)}"
        )
    g.owner8 = n_ranges <= 256
    g.order32 = n <= INT32_MAX
    cdef int64_t* c_ids = <int64_t*>malloc(max(n_ranges, 1) * sizeof(int64_t))
    cdef uint64_t* seq_base = <uint64_t*>malloc(max(n_ranges, 1) * sizeof(uint64_t))
    cdef uint64_t* c_firsts = <uint64_t*>malloc(max(n_ranges, 1) * sizeof(uint64_t))
    cdef void* owner = malloc(max(n, 1) * (1 if g.owner8 else 4))
    grouped_buf = None
    try:
        if c_ids == NULL or seq_base == NULL or c_firsts == NULL or owner == NULL:
            raise MemoryError()
        for s in range(n_ranges):
            c_ids[s] = ids[s]
            c_firsts[s] = firsts[s]
            seq_base[s] = c_firsts[s]  # _group takes where the range begins off
        order_buf = pa.allocate_buffer((4 if g.order32 else 8) * n)
        id_buf = pa.allocate_buffer(8 * n)
        seq_buf = pa.allocate_buffer(8 * n)
        if hashes is None:
            grouped_buf = pa.allocate_buffer(8 * n)
            g.grouped_seq = <uint64_t*>buffer_address(grouped_buf)
            g.firsts = c_firsts
        g.n = n
        g.owner = owner
        g.order = <void*>buffer_address(order_buf)
        g.ids = c_ids
        g.seq_base = seq_base
        g.out_id = <int64_t*>buffer_address(id_buf)
        g.out_seq = <uint64_t*>buffer_address(seq_buf)
        counts = _group(hashes, starts, g)
    finally:
        free(c_ids)
        free(seq_base)
        free(c_firsts)
        free(owner)
    result = (
        pa.Array.from_buffers(pa.int32() if g.order32 else pa.int64(), n, [None, order_buf]),
        counts,
        pa.Array.from_buffers(pa.int64(), n, [None, id_buf]),
        pa.Array.from_buffers(pa.uint64(), n, [None, seq_buf]),
    )
    if grouped_buf is None:
        return result
    return result + (pa.Array.from_buffers(pa.uint64(), n, [None, grouped_buf]),)
