"""Reading Arrow buffers without libarrow: per-record byte sizes of a record batch.

The dispatcher cuts batches at ``max_batch_bytes``; a record's size is the sum,
over every column, of its fixed width (bool counts 1 byte) or, for
binary/utf8 columns, its offset width plus its value's length. Validity
bitmaps are not counted. Nested columns count their average bytes per row.
"""

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uint8_t
from libc.string cimport memset

import pyarrow as pa

from streamcore._arrow cimport buffer_address

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


def row_nbytes(batch):
    """Per-record byte sizes of a ``pyarrow.RecordBatch`` as a ``uint32`` array."""
    cdef Py_ssize_t n = batch.num_rows
    cdef uint32_t fixed = 0
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
        elif n:
            fixed += (column.nbytes + n - 1) // n
    if fixed:
        with nogil:
            _add_const(out, fixed, n)
    return pa.Array.from_buffers(pa.uint32(), n, [None, out_buf])


def sequence(uint64_t first, Py_ssize_t n):
    """``first, first + 1, ..., first + n - 1`` as a uint64 array."""
    buf = pa.allocate_buffer(8 * n)
    cdef uint64_t* out = <uint64_t*>buffer_address(buf)
    cdef Py_ssize_t i
    with nogil:
        for i in range(n):
            out[i] = first + <uint64_t>i
    return pa.Array.from_buffers(pa.uint64(), n, [None, buf])


def scatter_sequences(order, starts, counts):
    """Seq of every input row, in input order, after a grouping by shard.

    ``order`` is the stable permutation from ``_partition.partition``; group
    ``g`` holds ``counts[g]`` rows whose seqs start at ``starts[g]``.
    """
    cdef Py_ssize_t n = len(order)
    order_buf = order.buffers()[1] if n else None
    cdef Py_ssize_t order_off = order.offset
    cdef const int64_t* perm = NULL
    if n:
        perm = (<const int64_t*>buffer_address(order_buf)) + order_off
    buf = pa.allocate_buffer(8 * n)
    cdef uint64_t* out = <uint64_t*>buffer_address(buf)
    cdef Py_ssize_t pos = 0, j, g
    cdef uint64_t first
    cdef Py_ssize_t count
    for g in range(len(counts)):
        first = starts[g]
        count = counts[g]
        with nogil:
            for j in range(count):
                out[perm[pos + j]] = first + <uint64_t>j
        pos += count
    return pa.Array.from_buffers(pa.uint64(), n, [None, buf])
