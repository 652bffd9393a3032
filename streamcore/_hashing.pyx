"""XXH64 of byte strings and of Arrow key columns (the partition hash, SEMANTICS 0.3).

Arrow memory is read directly through ``pyarrow.Buffer.address``; libarrow is not
linked, so any pyarrow at run time works with the built extension.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport (
    int8_t,
    int16_t,
    int32_t,
    int64_t,
    uint8_t,
    uint16_t,
    uint32_t,
    uint64_t,
    uintptr_t,
)

import pyarrow as pa

from streamcore._arrow cimport input_address, run_tasks_gil, tasks_for
from streamcore.errors import InvalidRecordsError

# Inputs at least this long are hashed with the GIL released; below it, releasing
# and re-taking the GIL costs more than the hash.
cdef Py_ssize_t _NOGIL_MIN_BYTES = 1 << 16


# View types are cast to the large (64-bit offset) layout, which always fits.
_VIEW_CASTS = {
    pa.string_view(): pa.large_utf8(),
    pa.binary_view(): pa.large_binary(),
}

_KIND_BY_TYPE = {
    pa.utf8(): KIND_OFFSETS32,
    pa.binary(): KIND_OFFSETS32,
    pa.large_utf8(): KIND_OFFSETS64,
    pa.large_binary(): KIND_OFFSETS64,
    pa.string_view(): KIND_OFFSETS64,
    pa.binary_view(): KIND_OFFSETS64,
    pa.int8(): KIND_INT8,
    pa.int16(): KIND_INT16,
    pa.int32(): KIND_INT32,
    pa.int64(): KIND_INT64,
    pa.uint8(): KIND_UINT8,
    pa.uint16(): KIND_UINT16,
    pa.uint32(): KIND_UINT32,
    pa.uint64(): KIND_UINT64,
}

# The same by type id: these types have no parameters, and a DataType's own hash
# formats it as a string (~1 us), which every put would pay.
_VIEW_CASTS_BY_ID = {t.id: cast for t, cast in _VIEW_CASTS.items()}
_KIND_BY_ID = {t.id: kind for t, kind in _KIND_BY_TYPE.items()}
_DICTIONARY_ID = pa.dictionary(pa.int32(), pa.utf8()).id

_SUPPORTED = (
    "utf8, large_utf8, binary, large_binary, string_view, binary_view, "
    "int8, int16, int32, int64, uint8, uint16, uint32, uint64, "
    "or a dictionary of one of these"
)

_U64_MASK = (1 << 64) - 1

ctypedef fused offset_t:
    int32_t
    int64_t

ctypedef fused int_key_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t


cdef object _as_seed(object seed):
    if not isinstance(seed, int):
        msg = f"seed must be an int, got {type(seed).__name__}"
        raise TypeError(msg)
    if seed < -(1 << 63) or seed > _U64_MASK:
        msg = f"seed must be a 64-bit integer in [-2**63, 2**64), got {seed}"
        raise OverflowError(msg)
    # Negative seeds are taken as two's complement, as the xxhash package does.
    return seed & _U64_MASK


cdef int _key_kind(object key_type) except -1:
    value_type = key_type.value_type if key_type.id == _DICTIONARY_ID else key_type
    kind = _KIND_BY_ID.get(value_type.id)
    if kind is None:
        msg = f"key type {key_type} is not supported: expected {_SUPPORTED}"
        raise InvalidRecordsError(msg)
    return kind


cdef Py_ssize_t _int_width(int kind) noexcept nogil:
    if kind == KIND_INT8 or kind == KIND_UINT8:
        return 1
    if kind == KIND_INT16 or kind == KIND_UINT16:
        return 2
    if kind == KIND_INT32 or kind == KIND_UINT32:
        return 4
    return 8


cdef Py_ssize_t _first_null(const uint8_t* validity, Py_ssize_t offset, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef Py_ssize_t bit
    for i in range(n):
        bit = offset + i
        if not (validity[bit >> 3] >> (bit & 7)) & 1:
            return i
    return -1


cdef void _hash_offsets(
    const offset_t* offsets, const uint8_t* data, Py_ssize_t n, uint64_t seed, uint64_t* out
) noexcept nogil:
    cdef Py_ssize_t i
    cdef offset_t start = offsets[0]
    cdef offset_t end
    for i in range(n):
        end = offsets[i + 1]
        out[i] = xxh64(data + start, <size_t>(end - start), seed)
        start = end


cdef void _hash_ints(const int_key_t* values, Py_ssize_t n, uint64_t seed, uint64_t* out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        # Conversion to uint64_t sign-extends signed keys and zero-extends unsigned
        # ones: the bits of the key as an int64 (uint64 keeps its own bits).
        out[i] = xxh64_u64(<uint64_t>values[i], seed)


cdef void hash_keys(const KeyView* keys, Py_ssize_t lo, Py_ssize_t n, uint64_t seed, uint64_t* out) noexcept nogil:
    cdef int kind = keys.kind
    cdef const uint8_t* values = keys.values
    if kind == KIND_OFFSETS32:
        _hash_offsets((<const int32_t*>values) + lo, keys.data, n, seed, out)
    elif kind == KIND_OFFSETS64:
        _hash_offsets((<const int64_t*>values) + lo, keys.data, n, seed, out)
    elif kind == KIND_INT8:
        _hash_ints((<const int8_t*>values) + lo, n, seed, out)
    elif kind == KIND_INT16:
        _hash_ints((<const int16_t*>values) + lo, n, seed, out)
    elif kind == KIND_INT32:
        _hash_ints((<const int32_t*>values) + lo, n, seed, out)
    elif kind == KIND_INT64:
        _hash_ints((<const int64_t*>values) + lo, n, seed, out)
    elif kind == KIND_UINT8:
        _hash_ints((<const uint8_t*>values) + lo, n, seed, out)
    elif kind == KIND_UINT16:
        _hash_ints((<const uint16_t*>values) + lo, n, seed, out)
    elif kind == KIND_UINT32:
        _hash_ints((<const uint32_t*>values) + lo, n, seed, out)
    else:
        _hash_ints((<const uint64_t*>values) + lo, n, seed, out)


cdef object key_view(object arr, KeyView* view, int64_t row_base):
    cdef int kind = _key_kind(arr.type)
    cdef Py_ssize_t n
    cdef Py_ssize_t offset
    cdef Py_ssize_t row
    cdef const uint8_t* validity

    if arr.type.id == _DICTIONARY_ID:
        arr = arr.dictionary_decode()
    view_cast = _VIEW_CASTS_BY_ID.get(arr.type.id)
    if view_cast is not None:
        arr = arr.cast(view_cast)

    n = len(arr)
    view.kind = kind
    view.n = n
    view.values = NULL
    view.data = NULL
    if n == 0:
        return arr
    offset = arr.offset
    buffers = arr.buffers()
    if arr.null_count != 0:
        validity = input_address(buffers[0])
        row = _first_null(validity, offset, n)
        msg = f"key is null at row {row_base + row}"
        raise InvalidRecordsError(msg, row=row_base + row)

    # `arr` holds the buffers these point into.
    view.values = input_address(buffers[1])
    if kind == KIND_OFFSETS32 or kind == KIND_OFFSETS64:
        view.data = input_address(buffers[2])
        view.values += (4 if kind == KIND_OFFSETS32 else 8) * offset
    else:
        view.values += _int_width(kind) * offset
    return arr


cdef struct _HashJob:
    KeyView keys
    uint64_t seed
    uint64_t* out
    Py_ssize_t rows_per_task


cdef void _hash_task(void* ctx, Py_ssize_t task) noexcept nogil:
    cdef _HashJob* job = <_HashJob*>ctx
    cdef Py_ssize_t lo = task * job.rows_per_task
    cdef Py_ssize_t n = min(job.keys.n - lo, job.rows_per_task)
    hash_keys(&job.keys, lo, n, job.seed, job.out + lo)


cdef int _hash_chunk(object arr, uint64_t* out, uint64_t seed, int64_t row_base) except -1:
    cdef Py_ssize_t n_tasks
    cdef _HashJob job
    arr = key_view(arr, &job.keys, row_base)  # kept referenced until return: the memory stays alive
    if job.keys.n == 0:
        return 0
    job.seed = seed
    job.out = out
    n_tasks = tasks_for(job.keys.n)
    job.rows_per_task = (job.keys.n + n_tasks - 1) // n_tasks
    run_tasks_gil(_hash_task, &job, n_tasks, job.keys.n)
    return 0


cdef int hash_array_into(object keys, uint64_t* out, uint64_t seed, int64_t row_base) except -1:
    cdef int64_t position
    if isinstance(keys, pa.Array):
        return _hash_chunk(keys, out, seed, row_base)
    if isinstance(keys, pa.ChunkedArray):
        # Checked once here too, so a chunked array with no chunks is still rejected.
        _key_kind(keys.type)
        position = 0
        for chunk in keys.chunks:
            _hash_chunk(chunk, out + position, seed, row_base + position)
            position += len(chunk)
        return 0
    msg = f"keys must be a pyarrow.Array or pyarrow.ChunkedArray, got {type(keys).__name__}"
    raise TypeError(msg)


@cython.embedsignature(False)
def _xxh64_of_bytes(data, seed=0):
    """xxh64(data, seed=0)

    XXH64 of a bytes-like object, equal to ``xxhash.xxh64_intdigest(data, seed)``.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        Any C-contiguous object supporting the buffer protocol.
    seed : int, default 0
        A 64-bit seed in ``[-2**63, 2**64)``; negative seeds are two's complement.

    Returns
    -------
    int
        The hash, in ``[0, 2**64)``.

    Raises
    ------
    TypeError
        If ``data`` does not support the buffer protocol or ``seed`` is not an int.
    OverflowError
        If ``seed`` does not fit in 64 bits.
    """
    cdef uint64_t c_seed = _as_seed(seed)
    cdef Py_buffer view
    cdef uint64_t h
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= _NOGIL_MIN_BYTES:
            with nogil:
                h = xxh64(<const uint8_t*>view.buf, <size_t>view.len, c_seed)
        else:
            h = xxh64(<const uint8_t*>view.buf, <size_t>view.len, c_seed)
    finally:
        PyBuffer_Release(&view)
    return h


# Cython does not allow a def with the name of the cdef inline core that
# _hashing.pxd exports as `xxh64` to other modules; publish it under that name.
_xxh64_of_bytes.__name__ = "xxh64"
_xxh64_of_bytes.__qualname__ = "xxh64"
globals()["xxh64"] = _xxh64_of_bytes
del globals()["_xxh64_of_bytes"]


def check_keys(keys):
    """Raise as ``hash_array(keys)`` would for these keys, without hashing them.

    For a caller that hashes the keys later (``_partition.assign_keys``) but
    must reject them first.
    """
    cdef KeyView view
    cdef int64_t position = 0
    if isinstance(keys, pa.Array):
        key_view(keys, &view, 0)
        return
    if not isinstance(keys, pa.ChunkedArray):
        msg = f"keys must be a pyarrow.Array or pyarrow.ChunkedArray, got {type(keys).__name__}"
        raise TypeError(msg)
    _key_kind(keys.type)
    for chunk in keys.chunks:
        key_view(chunk, &view, position)
        position += len(chunk)


def hash_array(keys, seed=0):
    """XXH64 of every key of an Arrow array, as a new ``uint64`` array.

    Keys hash by SEMANTICS 0.3: utf8 and binary values (also large and view
    variants) hash their bytes as stored; integer keys hash as the 8
    little-endian bytes of the value as an int64 (uint64 keys hash their own 8
    bytes, the same bit pattern); dictionary arrays are decoded first. Element
    ``i`` equals ``xxhash.xxh64_intdigest(key_bytes(keys[i]), seed)``. From
    ``_arrow.parallel_config``'s ``min_rows`` keys on (per chunk), the keys are
    hashed on two threads, each taking blocks of rows; from 65536 on, with the
    GIL released.

    Parameters
    ----------
    keys : pyarrow.Array or pyarrow.ChunkedArray
        The keys, without nulls. Slices (non-zero offset) are fine.
    seed : int, default 0
        A 64-bit seed in ``[-2**63, 2**64)``; negative seeds are two's complement.

    Returns
    -------
    pyarrow.UInt64Array
        One hash per key, ``len(keys)`` long, in a newly allocated buffer owned
        by the returned array.

    Raises
    ------
    InvalidRecordsError
        (a ``ValueError``) if the key type is not supported, or a key is null;
        then ``row`` is the 0-based row of the first null key in ``keys``.
    TypeError
        If ``keys`` is neither a ``pyarrow.Array`` nor a ``pyarrow.ChunkedArray``.
    """
    cdef uint64_t c_seed = _as_seed(seed)
    if not isinstance(keys, (pa.Array, pa.ChunkedArray)):
        msg = f"keys must be a pyarrow.Array or pyarrow.ChunkedArray, got {type(keys).__name__}"
        raise TypeError(msg)
    n = len(keys)
    out_buffer = pa.allocate_buffer(8 * n)
    hash_array_into(keys, <uint64_t*><uintptr_t>out_buffer.address, c_seed, 0)
    return pa.Array.from_buffers(pa.uint64(), n, [None, out_buffer])
