"""Reading and building Arrow buffers without libarrow.

``row_nbytes``: per-record byte sizes of a record batch. The dispatcher cuts
batches at ``max_batch_bytes``; a record's size is the sum, over every column,
of its fixed width (bool counts 1 byte) or, for binary/utf8 columns, its
offset width plus its value's length. Validity bitmaps are not counted.
Nested columns count their average bytes per row.

``gather``: the columns of a put reordered by the shard grouping, in one call
with the GIL released (what ``MemoryStream.put`` spends most of its time on).
"""

from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t, uint8_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import pyarrow as pa

from streamcore.errors import InvalidRecordsError

from streamcore._arrow cimport buffer_address

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

_VAR32 = (pa.binary(), pa.utf8())
_VAR64 = (pa.large_binary(), pa.large_utf8())


cdef void _add_var32(uint32_t* out, const int32_t* offsets, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] += <uint32_t>(4 + offsets[i + 1] - offsets[i])


cdef void _add_var64(uint32_t* out, const int64_t* offsets, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] += <uint32_t>(8 + offsets[i + 1] - offsets[i])


cdef void _add_const(uint32_t* out, uint32_t value, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] += value


def row_nbytes(batch, groups=None):
    """Per-record byte sizes of a ``pyarrow.RecordBatch`` as a ``uint32`` array.

    ``groups`` (row counts adding up to ``num_rows``) sizes the batch as the
    consecutive slices it will be cut into: a nested column counts its average
    per slice, so the result equals ``row_nbytes`` of each slice, concatenated.
    """
    cdef Py_ssize_t n = batch.num_rows
    cdef uint32_t fixed = 0
    cdef Py_ssize_t start, count
    if groups is not None and sum(groups) != n:
        raise ValueError(f"groups add up to {sum(groups)} rows, the batch has {n}")
    out_buf = pa.allocate_buffer(4 * n)
    cdef uint32_t* out = <uint32_t*>buffer_address(out_buf)
    cdef const uint8_t* raw
    cdef Py_ssize_t offset
    with nogil:
        memset(out, 0, 4 * n)
    for column in batch.columns:
        dtype = column.type
        if dtype in _VAR32 or dtype in _VAR64:
            offset = column.offset
            offsets_buf = column.buffers()[1]
            raw = buffer_address(offsets_buf)
            if raw == NULL:  # an all-null or empty column may have no offsets buffer
                fixed += 4 if dtype in _VAR32 else 8
                continue
            if dtype in _VAR32:
                with nogil:
                    _add_var32(out, (<const int32_t*>raw) + offset, n)
            else:
                with nogil:
                    _add_var64(out, (<const int64_t*>raw) + offset, n)
            continue
        try:
            width = dtype.bit_width
        except ValueError:
            width = 0
        if width:
            fixed += max(1, width // 8)
        elif groups is not None:
            start = 0
            for count in groups:
                if count:
                    _add_const(out + start, (column.slice(start, count).nbytes + count - 1) // count, count)
                start += count
        elif n:
            fixed += (column.nbytes + n - 1) // n
    if fixed:
        with nogil:
            _add_const(out, fixed, n)
    return pa.Array.from_buffers(pa.uint32(), n, [None, out_buf])


def sequence(uint64_t first, Py_ssize_t n):
    """``first, first + 1, ..., first + n - 1`` as a uint64 array."""
    return ranges([first], [n])


def ranges(firsts, counts):
    """Runs ``firsts[g], firsts[g] + 1, ...`` of ``counts[g]`` values each, concatenated, as uint64.

    The seqs of one put's records grouped by shard, in one array.
    """
    cdef Py_ssize_t n_groups = len(counts)
    if len(firsts) != n_groups:
        raise ValueError(f"firsts has {len(firsts)} values for {n_groups} counts")
    cdef Py_ssize_t n = 0, g, j, count
    for g in range(n_groups):
        count = counts[g]
        if count < 0:
            raise ValueError(f"counts[{g}] is {count}, expected >= 0")
        n += count
    buf = pa.allocate_buffer(8 * n)
    cdef uint64_t* out = <uint64_t*>buffer_address(buf)
    cdef uint64_t first
    for g in range(n_groups):
        first = firsts[g]
        count = counts[g]
        with nogil:
            for j in range(count):
                out[j] = first + <uint64_t>j
        out += count
    return pa.Array.from_buffers(pa.uint64(), n, [None, buf])


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
    cdef Py_ssize_t i
    with nogil:
        for i in range(n):
            out[i] = value
    return pa.Array.from_buffers(dtype, n, [None, buf])


cdef const int64_t* _order_address(object order, Py_ssize_t n) except? NULL:
    if order.type != pa.int64() or order.null_count:
        raise TypeError(f"order must be an int64 array without nulls, got {order.type}")
    if n == 0:
        return NULL
    return (<const int64_t*>buffer_address(order.buffers()[1])) + <Py_ssize_t>order.offset


def scatter_sequences(order, starts, counts):
    """Seq of every input row, in input order, after a grouping by shard.

    ``order`` is the stable permutation from ``_partition.partition``; group
    ``g`` holds ``counts[g]`` rows whose seqs start at ``starts[g]``.
    """
    return scatter_groups(order, starts, counts, [0] * len(counts))[1]


def scatter_groups(order, starts, counts, ids):
    """Group id (int64) and seq (uint64) of every input row, in input order, after a grouping.

    ``order`` is the stable permutation from ``_partition.partition``; group
    ``g`` holds ``counts[g]`` rows, whose id is ``ids[g]`` and whose seqs start
    at ``starts[g]``: what ``put`` returns (shard and seq of every row).
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
    cdef Py_ssize_t pos = 0, j, g, row
    cdef uint64_t first
    cdef int64_t group_id
    cdef Py_ssize_t count
    for g in range(n_groups):
        first = starts[g]
        group_id = ids[g]
        count = counts[g]
        with nogil:
            for j in range(count):
                row = perm[pos + j]
                out_seq[row] = first + <uint64_t>j
                out_id[row] = group_id
        pos += count
    return (
        pa.Array.from_buffers(pa.int64(), n, [None, id_buf]),
        pa.Array.from_buffers(pa.uint64(), n, [None, seq_buf]),
    )


# -- gather ------------------------------------------------------------------------

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
    bint overflow  # the var-length values did not fit: order is not a permutation


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


cdef void _gather_words(const _word_t* src, const int64_t* perm, Py_ssize_t n, _word_t* out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = src[perm[i]]


cdef void _gather_wide(
    const uint8_t* src, size_t width, const int64_t* perm, Py_ssize_t n, uint8_t* out
) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        memcpy(out + <size_t>i * width, src + <size_t>perm[i] * width, width)


cdef void _gather_bits(
    const uint8_t* src, int64_t src_offset, const int64_t* perm, Py_ssize_t n, uint8_t* out
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


cdef bint _gather_var(
    const _offset_t* offsets,
    const uint8_t* data,
    int64_t data_size,
    const int64_t* perm,
    Py_ssize_t n,
    _offset_t* out_offsets,
    uint8_t* out_data,
    int64_t capacity,
) noexcept nogil:
    """Offsets and bytes of the gathered values; False if they do not fit in ``capacity``."""
    cdef Py_ssize_t i
    cdef int64_t j, start, length, pos = 0
    out_offsets[0] = 0
    for i in range(n):
        j = perm[i]
        start = offsets[j]
        length = offsets[j + 1] - start
        # Unsigned: a negative length (corrupt offsets) fails too.
        if <uint64_t>length > <uint64_t>(capacity - pos):
            return False
        # Values of varying short lengths would mispredict the size branches of
        # _copy_value; one 16-byte copy does not branch (the bytes written past
        # the value are overwritten by the next one, or land in the slack).
        if length <= 16 and start + 16 <= data_size:
            memcpy(out_data + pos, data + start, 16)
        else:
            _copy_value(out_data + pos, data + start, <size_t>length)
        pos += length
        out_offsets[i + 1] = <_offset_t>pos
    return True


cdef void _run_job(_Job* job, const int64_t* perm, Py_ssize_t n) noexcept nogil:
    cdef const uint8_t* src
    if job.validity != NULL:
        _gather_bits(job.validity, job.offset, perm, n, job.out_validity)
    if job.layout == LAYOUT_BITS:
        _gather_bits(job.values, job.offset, perm, n, job.out_values)
    elif job.layout == LAYOUT_VAR32:
        job.overflow = not _gather_var(
            (<const int32_t*>job.values) + job.offset, job.data, job.data_size, perm, n,
            <int32_t*>job.out_values, job.out_data, job.capacity,
        )
    elif job.layout == LAYOUT_VAR64:
        job.overflow = not _gather_var(
            (<const int64_t*>job.values) + job.offset, job.data, job.data_size, perm, n,
            <int64_t*>job.out_values, job.out_data, job.capacity,
        )
    else:
        src = job.values + job.offset * job.width
        if job.width == 8:
            _gather_words(<const uint64_t*>src, perm, n, <uint64_t*>job.out_values)
        elif job.width == 4:
            _gather_words(<const uint32_t*>src, perm, n, <uint32_t*>job.out_values)
        elif job.width == 2:
            _gather_words(<const uint16_t*>src, perm, n, <uint16_t*>job.out_values)
        elif job.width == 1:
            _gather_words(<const uint8_t*>src, perm, n, <uint8_t*>job.out_values)
        elif job.width == 16:
            _gather_words(<const _Word16*>src, perm, n, <_Word16*>job.out_values)
        else:
            _gather_wide(src, <size_t>job.width, perm, n, job.out_values)


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


cdef tuple _layout(object dtype):
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
    if len(_LAYOUTS) < 1024:  # a handful of types in practice; bounded all the same
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
        are gathered natively, every column in one pass with the GIL released;
        other types go through ``Array.take``.
    order : pyarrow.Int64Array
        A permutation of ``range(len(order))``, as ``_partition.partition``
        makes. Its values are not bounds-checked (a value out of range reads
        out of bounds); only its length is checked.

    Returns
    -------
    list of pyarrow.Array
        The gathered columns, in new buffers owned by the returned arrays.

    Raises
    ------
    ValueError
        If a column's length differs from ``order``'s, or the gathered values of
        a var-length column do not fit its input's bytes (``order`` is not a
        permutation; detected before anything is written out of bounds).
    TypeError
        If ``order`` is not an int64 array without nulls.
    """
    cdef Py_ssize_t n = len(order)
    cdef const int64_t* perm = _order_address(order, n)
    cdef Py_ssize_t n_cols = len(arrays), k
    out = list(arrays)
    native = []  # (index, array, output buffers) of the natively gathered columns
    cdef _Job* jobs = <_Job*>malloc(max(n_cols, 1) * sizeof(_Job))
    if jobs == NULL:
        raise MemoryError()
    cdef _Job* job
    cdef Py_ssize_t n_jobs = 0
    cdef int64_t first, last
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
            job = &jobs[n_jobs]
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
                out_data = pa.allocate_buffer(job.capacity + _SLACK)
                job.out_data = <uint8_t*>buffer_address(out_data)
            job.out_values = <uint8_t*>buffer_address(out_values)
            # `buffers` keeps the input memory alive until the gather is done.
            native.append((k, arr, buffers, out_validity, out_values, out_data))
            n_jobs += 1
        with nogil:
            for k in range(n_jobs):
                _run_job(&jobs[k], perm, n)
        for k in range(n_jobs):
            if jobs[k].overflow:
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
