"""Reading and building Arrow buffers without libarrow, and the two-thread task runner.

``row_nbytes``: per-record byte sizes of a record batch. The dispatcher cuts
batches at ``max_batch_bytes``; a record's size is the sum, over every column,
of its fixed width (bool counts 1 byte) or, for binary/utf8 columns, its
offset width plus its value's length. Validity bitmaps are not counted.
Nested columns count their average bytes per row.

``gather``: the columns of a put reordered by the shard grouping, in one call
(what ``MemoryStream.put`` spends most of its time on).

``run_tasks`` (cimported by ``_hashing`` and ``_partition``): the per-record
loops of a large put (hash, partition, gather) run on two threads, the caller
and one helper thread; ``parallel_config`` sets how many threads and from how
many rows.
"""

from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t, uint8_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import pyarrow as pa

from streamcore.errors import InvalidRecordsError

from streamcore._arrow cimport buffer_address
from streamcore._threads cimport (
    available_cpus,
    cpu_relax,
    load_int,
    load_u64,
    now_ns,
    pthread_atfork,
    pthread_cond_init,
    pthread_cond_signal,
    pthread_cond_t,
    pthread_cond_wait,
    pthread_mutex_init,
    pthread_mutex_lock,
    pthread_mutex_t,
    pthread_mutex_unlock,
    sched_yield,
    start_thread,
    store_int,
    store_u64,
)

cdef uint8_t _EMPTY = 0


cdef const uint8_t* input_address(object buf) except NULL:
    if buf is None:
        return &_EMPTY
    if not buf.is_cpu:
        msg = f"Arrow buffers must be in CPU memory, got a buffer on {buf.device}"
        raise InvalidRecordsError(msg)
    if buf.size == 0:
        return &_EMPTY
    return <const uint8_t*><uintptr_t>buf.address


# -- the task runner ---------------------------------------------------------------
#
# One helper thread, one job at a time (a second concurrent call runs its tasks on
# its own thread). All state is changed under _pool_lock; tasks run without it.
#
# Waking a sleeping thread takes tens of microseconds here (hundreds on a busy
# virtual machine), as long as a task. So each side spins a little before it
# sleeps: the helper for _IDLE_SPIN_NS after a job (a put makes four jobs within
# a few tens of microseconds; the spin yields the CPU to any other runnable
# thread, so it does not hold up a Python thread on a busy CPU), and a caller done
# with its tasks for _WAIT_SPIN_NS while the helper finishes its last one. The
# spins only read (atomically) what the lock guards, to know when to take it.

cdef enum:
    _IDLE_SPIN_NS = 100_000
    _WAIT_SPIN_NS = 1_000_000


cdef pthread_mutex_t _pool_lock
cdef pthread_cond_t _job_posted  # the helper waits here for a job
cdef pthread_cond_t _helper_idle  # a caller waits here for the helper's last task
cdef int _helper = 0  # 0: not started, 1: running, -1: could not be started
cdef bint _busy = False  # a call is running its tasks with the helper
cdef int _helper_working = 0  # the helper has taken up the current job (atomic)
cdef uint64_t _job_id = 0  # bumped for every job, so the helper takes each one once (atomic)
cdef task_fn _job_fn = NULL
cdef void* _job_ctx = NULL
cdef Py_ssize_t _job_tasks = 0
cdef Py_ssize_t _job_next = 0  # the next task to hand out
cdef uint64_t _helper_ran = 0  # tasks the helper has run (for tests)
# Set once at import and by parallel_config (read without the lock: a call that
# races with a change runs either way).
cdef int _threads = 1
cdef Py_ssize_t _min_rows = 16384


cdef void _spin_while_job(uint64_t seen, int64_t limit_ns) noexcept nogil:
    """Spin while no job after `seen` is posted, for at most limit_ns."""
    cdef int64_t until = now_ns() + limit_ns
    cdef int i
    while load_u64(&_job_id) == seen:
        for i in range(64):
            cpu_relax()
        if now_ns() > until:
            return
        sched_yield()


cdef void _spin_while_working(int64_t limit_ns) noexcept nogil:
    """Spin while the helper runs a task of the current job, for at most limit_ns."""
    cdef int64_t until = now_ns() + limit_ns
    while load_int(&_helper_working):
        cpu_relax()
        if now_ns() > until:
            return


cdef void _reset_pool() noexcept nogil:
    global _helper, _busy, _helper_working, _job_fn, _job_ctx, _job_tasks, _job_next
    pthread_mutex_init(&_pool_lock, NULL)
    pthread_cond_init(&_job_posted, NULL)
    pthread_cond_init(&_helper_idle, NULL)
    _helper = 0
    _busy = False
    store_int(&_helper_working, 0)
    _job_fn = NULL
    _job_ctx = NULL
    _job_tasks = 0
    _job_next = 0


# fork(): the prepare handler waits until no thread is inside the lock, so the
# child's copy of the state is whole; the child has no helper thread, so it starts
# over with fresh locks and starts a helper on first use.
cdef void _before_fork() noexcept nogil:
    pthread_mutex_lock(&_pool_lock)


cdef void _after_fork_in_parent() noexcept nogil:
    pthread_mutex_unlock(&_pool_lock)


cdef void _after_fork_in_child() noexcept nogil:
    _reset_pool()


cdef void* _helper_main(void* arg) noexcept nogil:
    global _job_next, _helper_ran
    cdef uint64_t seen = 0
    cdef Py_ssize_t task
    cdef task_fn fn
    cdef void* ctx
    pthread_mutex_lock(&_pool_lock)
    while True:
        if _job_id == seen:
            pthread_mutex_unlock(&_pool_lock)
            _spin_while_job(seen, _IDLE_SPIN_NS)
            pthread_mutex_lock(&_pool_lock)
            while _job_id == seen:
                pthread_cond_wait(&_job_posted, &_pool_lock)
        seen = _job_id
        store_int(&_helper_working, 1)
        while _job_next < _job_tasks:
            task = _job_next
            _job_next += 1
            fn = _job_fn
            ctx = _job_ctx
            pthread_mutex_unlock(&_pool_lock)
            fn(ctx, task)
            pthread_mutex_lock(&_pool_lock)
            _helper_ran += 1
        store_int(&_helper_working, 0)
        pthread_cond_signal(&_helper_idle)
    return NULL


cdef bint _start_helper_locked() noexcept nogil:
    global _helper
    if _helper == 0:
        _helper = 1 if start_thread(_helper_main) else -1
    return _helper == 1


cdef void run_tasks(task_fn fn, void* ctx, Py_ssize_t n_tasks) noexcept nogil:
    global _busy, _job_fn, _job_ctx, _job_tasks, _job_next
    cdef Py_ssize_t task
    if n_tasks > 1 and _threads > 1:
        pthread_mutex_lock(&_pool_lock)
        if not _busy and _start_helper_locked():
            _busy = True
            _job_fn = fn
            _job_ctx = ctx
            _job_tasks = n_tasks
            _job_next = 0
            store_u64(&_job_id, _job_id + 1)
            pthread_cond_signal(&_job_posted)
            while _job_next < _job_tasks:
                task = _job_next
                _job_next += 1
                pthread_mutex_unlock(&_pool_lock)
                fn(ctx, task)
                pthread_mutex_lock(&_pool_lock)
            # Every task is handed out; wait for the one the helper may be running.
            while _helper_working:
                pthread_mutex_unlock(&_pool_lock)
                _spin_while_working(_WAIT_SPIN_NS)
                pthread_mutex_lock(&_pool_lock)
                if _helper_working:
                    pthread_cond_wait(&_helper_idle, &_pool_lock)
            _job_fn = NULL
            _job_ctx = NULL
            _job_tasks = 0
            _job_next = 0
            _busy = False
            pthread_mutex_unlock(&_pool_lock)
            return
        pthread_mutex_unlock(&_pool_lock)
    for task in range(n_tasks):
        fn(ctx, task)


cdef void run_tasks_gil(task_fn fn, void* ctx, Py_ssize_t n_tasks, Py_ssize_t n_rows) noexcept:
    if n_rows >= NOGIL_ROWS:
        with nogil:
            run_tasks(fn, ctx, n_tasks)
    else:
        run_tasks(fn, ctx, n_tasks)


cdef bint parallel_rows(Py_ssize_t n) noexcept nogil:
    return _threads > 1 and n >= _min_rows


cdef enum:
    _TASK_ROWS = 4096


cdef Py_ssize_t tasks_for(Py_ssize_t n) noexcept nogil:
    if not parallel_rows(n):
        return 1
    return max(2, (n + _TASK_ROWS - 1) // _TASK_ROWS)


_reset_pool()
pthread_atfork(_before_fork, _after_fork_in_parent, _after_fork_in_child)
_threads = 2 if available_cpus() >= 2 else 1


def parallel_config(threads=None, min_rows=None):
    """Set how the per-record loops of large calls use threads; returns the previous ``(threads, min_rows)``.

    ``_hashing.hash_array``, ``_partition.partition``, ``assign`` and
    ``assign_keys``, and ``gather`` (``MemoryStream.put`` runs the last two)
    split a call over at least
    ``min_rows`` rows (default 16384) into tasks that ``threads`` threads take
    in turn: the calling thread and one helper thread. The default is 2 when
    the process may run on two CPUs or more, else 1. Results are the same
    either way. Independently, loops over 65536 rows or more release the GIL.

    Parameters
    ----------
    threads : {1, 2}, optional
        1 runs everything on the calling thread.
    min_rows : int, optional
        The fewest rows a call splits across threads (>= 1).

    Returns
    -------
    tuple of (int, int)
        The settings before this call.
    """
    global _threads, _min_rows
    previous = (_threads, _min_rows)
    if threads is not None and threads not in (1, 2):
        raise ValueError(f"threads={threads!r} is invalid: expected 1 or 2")
    if min_rows is not None and (not isinstance(min_rows, int) or min_rows < 1):
        raise ValueError(f"min_rows={min_rows!r} is invalid: expected an integer >= 1")
    if threads is not None:
        _threads = threads
    if min_rows is not None:
        _min_rows = min_rows
    return previous


def helper_tasks():
    """How many tasks the helper thread has run since import (it takes those the caller has not)."""
    cdef uint64_t ran
    with nogil:
        pthread_mutex_lock(&_pool_lock)
        ran = _helper_ran
        pthread_mutex_unlock(&_pool_lock)
    return ran


# -- row sizes, seqs ----------------------------------------------------------------

ctypedef fused _size_offset_t:
    int32_t
    int64_t


cdef void _add_var(
    uint32_t* out, const _size_offset_t* offsets, Py_ssize_t n, uint32_t times, uint32_t base
) noexcept nogil:
    """out[i] = base + times * (offset width + length of value i), or out[i] += that when base is 0.

    Without a multiply when times is 1 or 2 (a key column that is also a payload
    column): 32-bit multiplies do not vectorise on the baseline x86-64 target.
    """
    cdef Py_ssize_t i
    cdef uint32_t width = sizeof(_size_offset_t)
    if times == 1 and base:
        for i in range(n):
            out[i] = base + <uint32_t>(width + offsets[i + 1] - offsets[i])
    elif times == 1:
        for i in range(n):
            out[i] += <uint32_t>(width + offsets[i + 1] - offsets[i])
    elif times == 2:
        for i in range(n):
            out[i] = (base if base else out[i]) + (<uint32_t>(width + offsets[i + 1] - offsets[i]) << 1)
    else:
        for i in range(n):
            out[i] = (base if base else out[i]) + times * <uint32_t>(width + offsets[i + 1] - offsets[i])


cdef void _add_const(uint32_t* out, uint32_t value, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] += value


cdef struct _Sizes:
    uint32_t* out
    Py_ssize_t n
    uint32_t fixed  # bytes every record has: fixed widths, var-length columns without offsets
    Py_ssize_t n_var
    const uint8_t** offsets  # offsets of each var-length column, at its first row
    bint* wide  # whether those offsets are int64
    # How many columns have those offsets: a put's key column is also a payload
    # column, its one array sized once and counted twice.
    uint32_t* times


cdef void _fill_sizes(const _Sizes* z) noexcept nogil:
    # Block by block, so that each block of `out` stays in cache across the columns.
    cdef Py_ssize_t i, c, lo, m
    cdef uint32_t* out
    cdef uint32_t base
    for lo in range(0, z.n, 4096):
        m = min(z.n - lo, 4096)
        out = z.out + lo
        if z.n_var == 0 or z.fixed == 0:
            for i in range(m):
                out[i] = z.fixed
        for c in range(z.n_var):
            # The first column's pass also sets the fixed bytes (when there are some:
            # a base of 0 adds to what is there).
            base = z.fixed if c == 0 else 0
            if z.wide[c]:
                _add_var(out, (<const int64_t*>z.offsets[c]) + lo, m, z.times[c], base)
            else:
                _add_var(out, (<const int32_t*>z.offsets[c]) + lo, m, z.times[c], base)


def row_nbytes(batch, groups=None):
    """Per-record byte sizes of a ``pyarrow.RecordBatch`` as a ``uint32`` array.

    ``batch`` may also be the list of its columns (equal-length arrays): a
    batch's ``columns`` makes a pyarrow Array (and its type) per column, which
    costs more than sizing a put of a few hundred records.

    ``groups`` (row counts adding up to ``num_rows``) sizes the batch as the
    consecutive slices it will be cut into: a nested column counts its average
    per slice, so the result equals ``row_nbytes`` of each slice, concatenated.
    """
    cdef list columns
    cdef Py_ssize_t n
    if isinstance(batch, list):
        columns = batch
        n = len(columns[0]) if columns else 0
        for column in columns:
            if not isinstance(column, pa.Array) or len(column) != n:
                raise ValueError("columns must be pyarrow Arrays of equal length")
    else:
        columns = batch.columns
        n = batch.num_rows
    cdef Py_ssize_t start, count
    cdef Py_ssize_t n_cols = len(columns)
    cdef _Sizes z
    if groups is not None and sum(groups) != n:
        raise ValueError(f"groups add up to {sum(groups)} rows, the batch has {n}")
    out_buf = pa.allocate_buffer(4 * n)
    z.out = <uint32_t*>buffer_address(out_buf)
    z.n = n
    z.fixed = 0
    z.n_var = 0
    z.offsets = <const uint8_t**>malloc(max(n_cols, 1) * sizeof(uint8_t*))
    z.wide = <bint*>malloc(max(n_cols, 1) * sizeof(bint))
    z.times = <uint32_t*>malloc(max(n_cols, 1) * sizeof(uint32_t))
    nested = []  # columns of no fixed width, sized per row by their average
    cdef const uint8_t* at
    cdef Py_ssize_t seen
    try:
        if z.offsets == NULL or z.wide == NULL or z.times == NULL:
            raise MemoryError()
        for column in columns:
            layout, width = _layout(column.type)
            if layout == LAYOUT_VAR32 or layout == LAYOUT_VAR64:
                z.wide[z.n_var] = layout == LAYOUT_VAR64
                raw = buffer_address(column.buffers()[1])
                if raw == NULL:  # an all-null or empty column may have no offsets buffer
                    z.fixed += 8 if z.wide[z.n_var] else 4
                    continue
                # `batch` keeps the offsets alive.
                at = raw + (8 if z.wide[z.n_var] else 4) * <Py_ssize_t>column.offset
                for seen in range(z.n_var):
                    if z.offsets[seen] == at and z.wide[seen] == z.wide[z.n_var]:
                        z.times[seen] += 1  # the same offsets again
                        break
                else:
                    z.offsets[z.n_var] = at
                    z.times[z.n_var] = 1
                    z.n_var += 1
                continue
            if layout == LAYOUT_FIXED:
                z.fixed += width
                continue
            if layout == LAYOUT_BITS:
                z.fixed += 1
                continue
            try:
                width = column.type.bit_width
            except ValueError:
                width = 0
            if width:
                z.fixed += max(1, width // 8)
            elif groups is not None:
                nested.append(column)
            elif n:
                z.fixed += (column.nbytes + n - 1) // n
        if n >= NOGIL_ROWS:
            with nogil:
                _fill_sizes(&z)
        else:
            _fill_sizes(&z)
    finally:
        free(z.offsets)
        free(z.wide)
        free(z.times)
    for column in nested:
        start = 0
        for count in groups:
            if count:
                _add_const(z.out + start, (column.slice(start, count).nbytes + count - 1) // count, count)
            start += count
    return pa.Array.from_buffers(pa.uint32(), n, [None, out_buf])


def sequence(uint64_t first, Py_ssize_t n):
    """``first, first + 1, ..., first + n - 1`` as a uint64 array."""
    return ranges([first], [n])


cdef void _fill_ranges(
    uint64_t* out, const uint64_t* firsts, const Py_ssize_t* counts, Py_ssize_t n_groups
) noexcept nogil:
    cdef Py_ssize_t g, j
    cdef uint64_t first
    for g in range(n_groups):
        first = firsts[g]
        for j in range(counts[g]):
            out[j] = first + <uint64_t>j
        out += counts[g]


def ranges(firsts, counts):
    """Runs ``firsts[g], firsts[g] + 1, ...`` of ``counts[g]`` values each, concatenated, as uint64.

    The seqs of one put's records grouped by shard, in one array.
    """
    cdef Py_ssize_t n_groups = len(counts)
    if len(firsts) != n_groups:
        raise ValueError(f"firsts has {len(firsts)} values for {n_groups} counts")
    cdef Py_ssize_t n = 0, g
    cdef uint64_t* c_firsts = <uint64_t*>malloc(max(n_groups, 1) * sizeof(uint64_t))
    cdef Py_ssize_t* c_counts = <Py_ssize_t*>malloc(max(n_groups, 1) * sizeof(Py_ssize_t))
    cdef uint64_t* out
    try:
        if c_firsts == NULL or c_counts == NULL:
            raise MemoryError()
        for g in range(n_groups):
            c_counts[g] = counts[g]
            if c_counts[g] < 0:
                raise ValueError(f"counts[{g}] is {c_counts[g]}, expected >= 0")
            c_firsts[g] = firsts[g]
            n += c_counts[g]
        buf = pa.allocate_buffer(8 * n)
        out = <uint64_t*>buffer_address(buf)
        if n >= NOGIL_ROWS:
            with nogil:
                _fill_ranges(out, c_firsts, c_counts, n_groups)
        else:
            _fill_ranges(out, c_firsts, c_counts, n_groups)
    finally:
        free(c_firsts)
        free(c_counts)
    return pa.Array.from_buffers(pa.uint64(), n, [None, buf])


cdef void _fill64(int64_t* out, int64_t value, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = value


def repeat64(int64_t value, Py_ssize_t n, dtype):
    """``value`` ``n`` times as an array of ``dtype``, a 64-bit fixed-width type (int64, timestamp...).

    ``pa.repeat`` of a scalar costs several times more (it goes through a scalar
    and a generic kernel).
    """
    if n < 0:
        raise ValueError(f"n is {n}, expected >= 0")
    if _fixed_width(dtype) != 8:
        raise TypeError(f"dtype must be a 64-bit fixed-width type, got {dtype}")
    buf = pa.allocate_buffer(8 * n)
    cdef int64_t* out = <int64_t*>buffer_address(buf)
    if n >= NOGIL_ROWS:
        with nogil:
            _fill64(out, value, n)
    else:
        _fill64(out, value, n)
    return pa.Array.from_buffers(dtype, n, [None, buf])


cdef const int64_t* _order_address(object order, Py_ssize_t n) except? NULL:
    if order.type != pa.int64() or order.null_count:
        raise TypeError(f"order must be an int64 array without nulls, got {order.type}")
    if n == 0:
        return NULL
    return (<const int64_t*>buffer_address(order.buffers()[1])) + <Py_ssize_t>order.offset


_INT32_ID = pa.int32().id
_INT64_ID = pa.int64().id


def scatter_sequences(order, starts, counts):
    """Seq of every input row, in input order, after a grouping by shard.

    ``order`` is the stable permutation from ``_partition.partition``; group
    ``g`` holds ``counts[g]`` rows whose seqs start at ``starts[g]``.
    """
    return scatter_groups(order, starts, counts, [0] * len(counts))[1]


cdef void _scatter_group(
    const int64_t* perm, Py_ssize_t count, uint64_t first, int64_t group_id,
    uint64_t* out_seq, int64_t* out_id,
) noexcept nogil:
    cdef Py_ssize_t j, row
    for j in range(count):
        row = perm[j]
        out_seq[row] = first + <uint64_t>j
        out_id[row] = group_id


def scatter_groups(order, starts, counts, ids):
    """Group id (int64) and seq (uint64) of every input row, in input order, after a grouping.

    ``order`` is the stable permutation from ``_partition.partition``; group
    ``g`` holds ``counts[g]`` rows, whose id is ``ids[g]`` and whose seqs start
    at ``starts[g]``: shard and seq of every row (``_partition.assign`` makes
    them in its own pass).
    """
    cdef Py_ssize_t n = len(order)
    cdef Py_ssize_t n_groups = len(counts)
    if len(starts) != n_groups or len(ids) != n_groups:
        raise ValueError(f"starts, counts and ids must have one value per group, got "
                         f"{len(starts)}, {n_groups} and {len(ids)}")
    if sum(counts) != n:
        raise ValueError(f"counts add up to {sum(counts)} for {n} rows")
    cdef const int64_t* perm = _order_address(order, n)
    id_buf = pa.allocate_buffer(8 * n)
    seq_buf = pa.allocate_buffer(8 * n)
    cdef int64_t* out_id = <int64_t*>buffer_address(id_buf)
    cdef uint64_t* out_seq = <uint64_t*>buffer_address(seq_buf)
    cdef Py_ssize_t pos = 0, g
    cdef uint64_t first
    cdef int64_t group_id
    cdef Py_ssize_t count
    for g in range(n_groups):
        first = starts[g]
        group_id = ids[g]
        count = counts[g]
        if count >= NOGIL_ROWS:
            with nogil:
                _scatter_group(perm + pos, count, first, group_id, out_seq, out_id)
        else:
            _scatter_group(perm + pos, count, first, group_id, out_seq, out_id)
        pos += count
    return (
        pa.Array.from_buffers(pa.int64(), n, [None, id_buf]),
        pa.Array.from_buffers(pa.uint64(), n, [None, seq_buf]),
    )


# -- gather ------------------------------------------------------------------------
#
# Each column is gathered in two parts, each a task of run_tasks: part 0 the output
# rows [0, split), part 1 the rows [split, n); split is a multiple of 8, so each
# part writes whole bytes of the bitmaps. Without threads split is n (part 1 has
# no rows). A var-length column's part 0 writes its bytes forwards from the start
# of the output and part 1 backwards from its end (a permutation moves exactly the
# input's bytes), so neither needs to know where the other's bytes begin; they
# must meet, which also checks that `order` moved exactly the input's bytes.

cdef enum _Layout:
    LAYOUT_NONE = 0  # not gathered natively: pyarrow's take
    LAYOUT_FIXED
    LAYOUT_BITS
    LAYOUT_VAR32
    LAYOUT_VAR64


cdef struct _Job:
    _Layout layout
    Py_ssize_t width  # bytes per value (LAYOUT_FIXED)
    Py_ssize_t offset  # the input's offset (a slice's first row in its buffers)
    const uint8_t* validity  # NULL when the input has no nulls
    const uint8_t* values  # values, bits or offsets
    const uint8_t* data  # bytes of var-length values
    int64_t data_size  # readable bytes at data
    int64_t capacity  # bytes in out_data
    uint8_t* out_validity
    uint8_t* out_values
    uint8_t* out_data
    # Var-length: where part 0's bytes end and where part 1's begin; -1 when a
    # part's values did not fit (order is not a permutation).
    int64_t part_end
    int64_t part_start


cdef struct _Gather:
    _Job* jobs
    Py_ssize_t n_jobs
    const void* perm  # int32_t (perm32) or int64_t per row
    bint perm32
    Py_ssize_t n
    Py_ssize_t split


ctypedef struct _Word16:
    uint64_t lo
    uint64_t hi


ctypedef fused _word_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t
    _Word16


ctypedef fused _offset_t:
    int32_t
    int64_t


# A gather's permutation: int32 (what _partition.assign makes below 2**31 rows:
# half the bytes to read per row) or int64.
ctypedef fused _index_t:
    int32_t
    int64_t


cdef void _gather_words(const _word_t* src, const _index_t* perm, Py_ssize_t n, _word_t* out) noexcept nogil:
    cdef Py_ssize_t i = 0
    # Four rows a step: one row a step spends half its instructions on the loop.
    while i + 4 <= n:
        out[i] = src[perm[i]]
        out[i + 1] = src[perm[i + 1]]
        out[i + 2] = src[perm[i + 2]]
        out[i + 3] = src[perm[i + 3]]
        i += 4
    while i < n:
        out[i] = src[perm[i]]
        i += 1


cdef void _gather_wide(
    const uint8_t* src, size_t width, const _index_t* perm, Py_ssize_t n, uint8_t* out
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        memcpy(out + <size_t>i * width, src + <size_t>perm[i] * width, width)


cdef void _gather_bits(
    const uint8_t* src, int64_t src_offset, const _index_t* perm, Py_ssize_t n, uint8_t* out
) noexcept nogil:
    cdef Py_ssize_t i, k, full = n >> 3, tail = n & 7
    cdef int64_t j
    cdef uint32_t byte
    for i in range(full):
        byte = 0
        for k in range(8):
            j = perm[8 * i + k] + src_offset
            byte |= <uint32_t>((src[j >> 3] >> (j & 7)) & 1) << k
        out[i] = <uint8_t>byte
    if tail:
        byte = 0
        for k in range(tail):
            j = perm[8 * full + k] + src_offset
            byte |= <uint32_t>((src[j >> 3] >> (j & 7)) & 1) << k
        out[full] = <uint8_t>byte


cdef inline void _copy_value(uint8_t* dst, const uint8_t* src, size_t n) noexcept nogil:
    # Two overlapping fixed-size copies compile to a few loads and stores, where
    # a memcpy call per value costs more.
    if n > 32:
        memcpy(dst, src, n)
    elif n >= 16:
        memcpy(dst, src, 16)
        memcpy(dst + n - 16, src + n - 16, 16)
    elif n >= 8:
        memcpy(dst, src, 8)
        memcpy(dst + n - 8, src + n - 8, 8)
    elif n >= 4:
        memcpy(dst, src, 4)
        memcpy(dst + n - 4, src + n - 4, 4)
    elif n:
        dst[0] = src[0]
        dst[n >> 1] = src[n >> 1]
        dst[n - 1] = src[n - 1]


# Bytes a var-length gather may write past its last value (the output is
# allocated this much longer): short values are copied as one 16-byte block.
cdef enum:
    _SLACK = 16


cdef inline int64_t _length(const _offset_t* offsets, int64_t j) noexcept nogil:
    return offsets[j + 1] - offsets[j]


# Rows a var-length gather takes at a time in its fast loop: it checks once per
# chunk, not per row, that the chunk's writes stay in the output (every short
# value writes at most 16 bytes), and then checks per row only what picks the copy.
cdef enum:
    _CHUNK = 32


cdef int64_t _gather_var_forward(
    const _offset_t* offsets,
    const uint8_t* data,
    int64_t data_size,
    const _index_t* perm,
    Py_ssize_t lo,
    Py_ssize_t hi,
    bint bounded,
    _offset_t* out_offsets,
    uint8_t* out_data,
    int64_t capacity,
) noexcept nogil:
    """Rows [lo, hi) written from byte 0 on; where they end, or -1 if they do not fit in ``capacity``.

    ``bounded``: other bytes follow these (part 1's), so no copy may write past
    the last value.
    """
    cdef Py_ssize_t i = lo, exact_from = hi, chunk_end
    cdef int64_t j, start, length, pos = 0, tail = 0
    cdef int64_t read_limit = data_size - 16  # a value starting after it cannot be read as 16 bytes
    if bounded:
        # Values of the last rows, less than 16 bytes before the end, are copied exactly.
        while exact_from > lo and tail < 16:
            exact_from -= 1
            tail += _length(offsets, perm[exact_from])
        if tail >= 16:
            exact_from += 1
    out_offsets[lo] = 0
    # Fast loop, by chunks: invariant pos + 16 * (rows left in the chunk) <= capacity,
    # so a short value's 16-byte copy stays in the output without a check of its
    # own; a longer value is checked against what the rows after it may still need.
    # Values of varying short lengths would mispredict the size branches of
    # _copy_value; one 16-byte copy does not branch (the bytes written past the
    # value are overwritten by the next one, or land in the slack).
    while i < exact_from:
        chunk_end = min(exact_from, i + _CHUNK)
        if pos + 16 * (chunk_end - i) > capacity:
            break  # near the end: the checked loop below takes the rest
        while i < chunk_end:
            j = perm[i]
            start = offsets[j]
            length = offsets[j + 1] - start
            # Unsigned: a negative length (corrupt offsets) fails too.
            if <uint64_t>length <= 16 and start <= read_limit:
                memcpy(out_data + pos, data + start, 16)
            elif <uint64_t>length <= <uint64_t>(capacity - pos - 16 * (chunk_end - i - 1)):
                _copy_value(out_data + pos, data + start, <size_t>length)
            else:
                break
            pos += length
            out_offsets[i + 1] = <_offset_t>pos
            i += 1
        if i < chunk_end:
            break
    # Checked loop: the rows the fast loop left, each checked against capacity.
    while i < hi:
        j = perm[i]
        start = offsets[j]
        length = offsets[j + 1] - start
        if <uint64_t>length > <uint64_t>(capacity - pos):
            return -1
        if length <= 16 and start <= read_limit and i < exact_from:
            memcpy(out_data + pos, data + start, 16)
        else:
            _copy_value(out_data + pos, data + start, <size_t>length)
        pos += length
        out_offsets[i + 1] = <_offset_t>pos
        i += 1
    return pos


cdef int64_t _gather_var_backward(
    const _offset_t* offsets,
    const uint8_t* data,
    const _index_t* perm,
    Py_ssize_t lo,
    Py_ssize_t hi,
    _offset_t* out_offsets,
    uint8_t* out_data,
    int64_t capacity,
) noexcept nogil:
    """Rows [lo, hi) written backwards from byte ``capacity``; where they begin, or -1 if they do not fit.

    Writes ``out_offsets[lo + 1 .. hi]``; ``out_offsets[lo]`` is part 0's end.
    """
    cdef Py_ssize_t i = hi, block_from = lo, chunk_start  # rows [i, hi) are done
    cdef int64_t j, end, length, pos = capacity, head = 0
    # A short value is copied as the 16 bytes that end where it ends, when at
    # least 16 bytes of this part's values lie before that end (rows >= block_from).
    while block_from < hi:
        head += _length(offsets, perm[block_from])
        if head >= 16:
            break
        block_from += 1
    # Fast loop, by chunks, as _gather_var_forward's, mirrored: invariant
    # pos - 16 * (rows left in the chunk) >= 0.
    while i > block_from:
        chunk_start = max(block_from, i - _CHUNK)
        if pos < 16 * (i - chunk_start):
            break
        while i > chunk_start:
            j = perm[i - 1]
            end = offsets[j + 1]
            length = end - offsets[j]
            if <uint64_t>length <= 16 and end >= 16:
                memcpy(out_data + pos - 16, data + end - 16, 16)
            elif <uint64_t>length <= <uint64_t>(pos - 16 * (i - 1 - chunk_start)):
                _copy_value(out_data + pos - length, data + end - length, <size_t>length)
            else:
                break
            out_offsets[i] = <_offset_t>pos
            pos -= length
            i -= 1
        if i > chunk_start:
            break
    # Checked loop: the rows the fast loop left.
    while i > lo:
        i -= 1
        j = perm[i]
        end = offsets[j + 1]
        length = end - offsets[j]
        if <uint64_t>length > <uint64_t>pos:
            return -1
        out_offsets[i + 1] = <_offset_t>pos
        if length <= 16 and i >= block_from and end >= 16 and pos >= 16:
            memcpy(out_data + pos - 16, data + end - 16, 16)
        else:
            _copy_value(out_data + pos - length, data + end - length, <size_t>length)
        pos -= length
    return pos


cdef void _run_job(
    _Job* job, const _index_t* perm, Py_ssize_t lo, Py_ssize_t hi, bint forward, bint bounded
) noexcept nogil:
    cdef const uint8_t* src
    cdef Py_ssize_t n = hi - lo
    if job.validity != NULL:
        _gather_bits(job.validity, job.offset, perm + lo, n, job.out_validity + (lo >> 3))
    if job.layout == LAYOUT_BITS:
        _gather_bits(job.values, job.offset, perm + lo, n, job.out_values + (lo >> 3))
    elif job.layout == LAYOUT_VAR32:
        if forward:
            job.part_end = _gather_var_forward(
                (<const int32_t*>job.values) + job.offset, job.data, job.data_size, perm, lo, hi, bounded,
                <int32_t*>job.out_values, job.out_data, job.capacity,
            )
        else:
            job.part_start = _gather_var_backward(
                (<const int32_t*>job.values) + job.offset, job.data, perm, lo, hi,
                <int32_t*>job.out_values, job.out_data, job.capacity,
            )
    elif job.layout == LAYOUT_VAR64:
        if forward:
            job.part_end = _gather_var_forward(
                (<const int64_t*>job.values) + job.offset, job.data, job.data_size, perm, lo, hi, bounded,
                <int64_t*>job.out_values, job.out_data, job.capacity,
            )
        else:
            job.part_start = _gather_var_backward(
                (<const int64_t*>job.values) + job.offset, job.data, perm, lo, hi,
                <int64_t*>job.out_values, job.out_data, job.capacity,
            )
    else:
        src = job.values + job.offset * job.width
        perm += lo
        if job.width == 8:
            _gather_words(<const uint64_t*>src, perm, n, (<uint64_t*>job.out_values) + lo)
        elif job.width == 4:
            _gather_words(<const uint32_t*>src, perm, n, (<uint32_t*>job.out_values) + lo)
        elif job.width == 2:
            _gather_words(<const uint16_t*>src, perm, n, (<uint16_t*>job.out_values) + lo)
        elif job.width == 1:
            _gather_words(<const uint8_t*>src, perm, n, (<uint8_t*>job.out_values) + lo)
        elif job.width == 16:
            _gather_words(<const _Word16*>src, perm, n, (<_Word16*>job.out_values) + lo)
        else:
            _gather_wide(src, <size_t>job.width, perm, n, job.out_values + lo * job.width)


cdef void _gather_task(void* ctx, Py_ssize_t task) noexcept nogil:
    """Task 2k: part 0 of column k, task 2k + 1: its part 1."""
    cdef _Gather* g = <_Gather*>ctx
    cdef _Job* job = &g.jobs[task >> 1]
    if task & 1 == 0:
        if g.perm32:
            _run_job(job, <const int32_t*>g.perm, 0, g.split, True, g.split < g.n)
        else:
            _run_job(job, <const int64_t*>g.perm, 0, g.split, True, g.split < g.n)
    elif g.split < g.n:
        if g.perm32:
            _run_job(job, <const int32_t*>g.perm, g.split, g.n, False, False)
        else:
            _run_job(job, <const int64_t*>g.perm, g.split, g.n, False, False)


cdef Py_ssize_t _fixed_width(object dtype) except -1:
    """Bytes per value of a fixed-width primitive type (values in one buffer), else 0."""
    if pa.types.is_dictionary(dtype) or isinstance(dtype, pa.BaseExtensionType):
        return 0  # a dictionary's bit_width is its indices'
    if dtype.num_buffers != 2 or dtype.num_fields:
        return 0
    try:
        bits = dtype.bit_width
    except ValueError:
        return 0
    return bits // 8 if bits > 0 and bits % 8 == 0 else 0


_LAYOUTS: dict = {}
# By type id, for the ids whose layout the id alone fixes: hashing a DataType formats
# it as a string, ~1 us, and a put asks for the layout of every column twice.
_LAYOUTS_BY_ID: dict = {}
_ID_FIXES_LAYOUT = frozenset(
    t.id for t in (
        pa.bool_(), pa.utf8(), pa.binary(), pa.large_utf8(), pa.large_binary(),
        pa.int8(), pa.int16(), pa.int32(), pa.int64(),
        pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
        pa.float16(), pa.float32(), pa.float64(),
        pa.date32(), pa.date64(), pa.time32("s"), pa.time64("us"), pa.timestamp("ms"),
        pa.duration("ms"), pa.month_day_nano_interval(),
    )
)


cdef tuple _layout(object dtype):
    cdef int type_id = dtype.id
    found = _LAYOUTS_BY_ID.get(type_id)
    if found is not None:
        return found
    found = _LAYOUTS.get(dtype)
    if found is not None:
        return found
    if dtype == pa.bool_():
        found = (LAYOUT_BITS, 0)
    elif dtype == pa.utf8() or dtype == pa.binary():
        found = (LAYOUT_VAR32, 0)
    elif dtype == pa.large_utf8() or dtype == pa.large_binary():
        found = (LAYOUT_VAR64, 0)
    else:
        width = _fixed_width(dtype)
        found = (LAYOUT_FIXED if width else LAYOUT_NONE, width)
    if type_id in _ID_FIXES_LAYOUT:
        _LAYOUTS_BY_ID[type_id] = found
    elif len(_LAYOUTS) < 1024:  # a handful of types in practice; bounded all the same
        _LAYOUTS[dtype] = found
    return found


def gather(arrays, order):
    """``[a.take(order) for a in arrays]``, for a permutation ``order``, natively.

    Parameters
    ----------
    arrays : list of pyarrow.Array
        Columns of the same length, sliced or not. Fixed-width primitive types
        (integers, floats, temporal types, decimals, fixed-size binary),
        boolean, utf8, binary and their large variants, with or without nulls,
        are gathered natively, every column in one pass; other types go through
        ``Array.take``. From ``parallel_config``'s ``min_rows`` rows on, each
        column is gathered in two halves of its rows, which two threads take
        in turn; from 65536 rows on, with the GIL released.
    order : pyarrow.Int32Array or pyarrow.Int64Array
        A permutation of ``range(len(order))``, as ``_partition.partition`` and
        ``assign`` make. Its values are not bounds-checked (a value out of range
        reads out of bounds); only its length is checked.

    Returns
    -------
    list of pyarrow.Array
        The gathered columns, in new buffers owned by the returned arrays.

    Raises
    ------
    ValueError
        If a column's length differs from ``order``'s, or the gathered values of
        a var-length column are not exactly its input's bytes (``order`` is not a
        permutation; detected before anything is written out of bounds).
    TypeError
        If ``order`` is not an int32 or int64 array without nulls.
    """
    cdef Py_ssize_t n = len(order)
    order_id = order.type.id if isinstance(order, pa.Array) else None
    if (order_id != _INT32_ID and order_id != _INT64_ID) or order.null_count:
        got = order.type if isinstance(order, pa.Array) else type(order).__name__
        raise TypeError(f"order must be an int32 or int64 array without nulls, got {got}")
    cdef bint perm32 = order_id == _INT32_ID
    cdef const uint8_t* perm = NULL
    if n:
        perm = buffer_address(order.buffers()[1]) + (4 if perm32 else 8) * <Py_ssize_t>order.offset
    cdef Py_ssize_t n_cols = len(arrays), k
    out = list(arrays)
    native = []  # (index, array, output buffers) of the natively gathered columns
    cdef _Job* jobs = <_Job*>malloc(max(n_cols, 1) * sizeof(_Job))
    if jobs == NULL:
        raise MemoryError()
    cdef _Job* job
    cdef _Gather g
    cdef Py_ssize_t n_tasks
    cdef int64_t first, last
    g.jobs = jobs
    g.n_jobs = 0
    g.perm = perm
    g.perm32 = perm32
    g.n = n
    g.split = (n // 2) & ~(<Py_ssize_t>7) if parallel_rows(n) else n
    try:
        for k in range(n_cols):
            arr = out[k]
            if len(arr) != n:
                raise ValueError(f"arrays[{k}] has {len(arr)} rows, order has {n}")
            layout, width = _layout(arr.type) if isinstance(arr, pa.Array) else (LAYOUT_NONE, 0)
            if layout == LAYOUT_NONE or n == 0:
                out[k] = arr.take(order)
                continue
            buffers = arr.buffers()
            job = &jobs[g.n_jobs]
            memset(job, 0, sizeof(_Job))
            job.layout = layout
            job.width = width
            job.offset = arr.offset
            out_validity = None
            if arr.null_count:
                job.validity = buffer_address(buffers[0])
                out_validity = pa.allocate_buffer((n + 7) >> 3)
                job.out_validity = <uint8_t*>buffer_address(out_validity)
            job.values = buffer_address(buffers[1])
            out_data = None
            if layout == LAYOUT_BITS:
                out_values = pa.allocate_buffer((n + 7) >> 3)
            elif layout == LAYOUT_FIXED:
                out_values = pa.allocate_buffer(n * width)
            else:
                job.data = buffer_address(buffers[2])
                job.data_size = buffers[2].size if buffers[2] is not None else 0
                if layout == LAYOUT_VAR32:
                    out_values = pa.allocate_buffer(4 * (n + 1))
                    first = (<const int32_t*>job.values)[job.offset]
                    last = (<const int32_t*>job.values)[job.offset + n]
                else:
                    out_values = pa.allocate_buffer(8 * (n + 1))
                    first = (<const int64_t*>job.values)[job.offset]
                    last = (<const int64_t*>job.values)[job.offset + n]
                job.capacity = last - first  # a permutation moves the same bytes
                job.part_start = job.capacity  # where part 1's bytes begin when it has no rows
                out_data = pa.allocate_buffer(job.capacity + _SLACK)
                job.out_data = <uint8_t*>buffer_address(out_data)
            job.out_values = <uint8_t*>buffer_address(out_values)
            # `buffers` keeps the input memory alive until the gather is done.
            native.append((k, arr, buffers, out_validity, out_values, out_data))
            g.n_jobs += 1
        if g.split < n:
            run_tasks_gil(_gather_task, &g, 2 * g.n_jobs, n)
        else:
            for k in range(g.n_jobs):
                _gather_task(&g, 2 * k)
        for k in range(g.n_jobs):
            job = &jobs[k]
            if (job.layout == LAYOUT_VAR32 or job.layout == LAYOUT_VAR64) and (
                job.part_end < 0 or job.part_end != job.part_start
            ):
                index = native[k][0]
                raise ValueError(f"order is not a permutation: the values of arrays[{index}] do not fit")
    finally:
        free(jobs)
    for index, arr, _, out_validity, out_values, out_data in native:
        if out_data is None:
            bufs = [out_validity, out_values]
        else:
            bufs = [out_validity, out_values, out_data.slice(0, out_data.size - _SLACK)]
        out[index] = pa.Array.from_buffers(arr.type, n, bufs, null_count=arr.null_count)
    return out
