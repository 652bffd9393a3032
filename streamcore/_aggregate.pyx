"""Keyed aggregation of Arrow columns: per-group count, sum, min, max and mean.

``GroupTable`` folds record batches into per-group accumulators without a
Python object per row. A batch is processed in chunks of ``_CHUNK`` rows, each
in three passes with the GIL released:

1. hash: XXH64 of every row's key (the partition hash of SEMANTICS 0.3 for a
   single key column; per-column hashes chained through ``xxh64_u64`` for a
   composite key; a null hashes as a constant);
2. assign: look each hash up in an open-addressing table (linear probing,
   power-of-two capacity, load <= 1/2) whose slots hold the upper 32 bits of
   the hash, the group number and the group's first key column (the integer,
   or where its bytes are); a tag match is confirmed by comparing the full key
   with the group's stored key, and a miss appends a new group;
3. fold: one pass per value column adds each row into its group's
   accumulators.

Groups are numbered in order of first appearance, which is the row order of
the output. The same passes merge a partial state (the ``state_columns`` of
another table): its key columns are assigned like rows and its partial
accumulators are added instead of values.

Semantics follow pyarrow's hash aggregations: null keys form one group per
column combination; null values are skipped; an aggregate over no non-null
value is null; integer sums wrap in 64 bits, float sums and means propagate
NaN, min and max skip NaN unless every value is NaN; the mean of an integer
column is a float64 sum divided by the count (no wrap-around).

Arrow memory is read directly through ``pyarrow.Buffer.address``; libarrow is
not linked, and outputs are built on buffers from ``pa.allocate_buffer``.
"""

cimport cython
from libc.math cimport NAN
from libc.stdint cimport (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
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
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

import threading

import pyarrow as pa

from streamcore._hashing cimport xxh64, xxh64_u64

from streamcore.errors import InvalidRecordsError

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define SC_PREFETCH(p) __builtin_prefetch((p))
    #else
    #define SC_PREFETCH(p) ((void)(p))
    #endif
    """
    void SC_PREFETCH(const void* p) noexcept nogil

cdef enum:
    K_I8 = 1
    K_I16
    K_I32
    K_I64
    K_U8
    K_U16
    K_U32
    K_U64
    K_F32
    K_F64
    K_BIN32
    K_BIN64

# Accumulators a value column keeps (ValCol.flags); the fold ops use the same bits.
cdef enum:
    HAS_SUM = 1
    HAS_MSUM = 2
    HAS_MIN = 4
    HAS_MAX = 8

# What the Python layer asks for per value column.
WANT_SUM = 1
WANT_MEAN = 2
WANT_MIN = 4
WANT_MAX = 8

cdef int64_t _CHUNK = 4096
# Rows ahead whose hash-table slot is prefetched while a row is assigned.
cdef int64_t _PREFETCH_AHEAD = 16
# The slot stores group + 1 in 32 bits.
cdef int64_t _MAX_GROUPS = 0xFFFFFFFE
cdef uint64_t _NULL_HASH = 0x2545F4914F6CDD1DULL
cdef uint8_t _EMPTY = 0

_SUPPORTED_KEYS = (
    "utf8, large_utf8, binary, large_binary, an integer, a timestamp, date, time "
    "or duration (dictionaries are decoded, string/binary views cast to large)"
)
_SUPPORTED_VALUES = "an integer, float32 or float64"

ctypedef fused int_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t

ctypedef fused num_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t
    float
    double

ctypedef fused offset_t:
    int32_t
    int64_t


# --- kinds ---------------------------------------------------------------------------

cdef dict _INT_KINDS = {
    (8, True): K_I8,
    (16, True): K_I16,
    (32, True): K_I32,
    (64, True): K_I64,
    (8, False): K_U8,
    (16, False): K_U16,
    (32, False): K_U32,
    (64, False): K_U64,
}


cdef int _key_kind(object dtype):
    """Kind of a key column type, 0 when unsupported."""
    if dtype == pa.utf8() or dtype == pa.binary():
        return K_BIN32
    if dtype == pa.large_utf8() or dtype == pa.large_binary():
        return K_BIN64
    if pa.types.is_integer(dtype):
        return _INT_KINDS[(dtype.bit_width, pa.types.is_signed_integer(dtype))]
    if (
        pa.types.is_timestamp(dtype)
        or pa.types.is_date(dtype)
        or pa.types.is_time(dtype)
        or pa.types.is_duration(dtype)
    ):
        return _INT_KINDS[(dtype.bit_width, True)]
    return 0


cdef int _value_kind(object dtype):
    """Kind of a value column type, 0 when unsupported."""
    if pa.types.is_integer(dtype):
        return _INT_KINDS[(dtype.bit_width, pa.types.is_signed_integer(dtype))]
    if dtype == pa.float32():
        return K_F32
    if dtype == pa.float64():
        return K_F64
    return 0


cdef inline bint _is_float(int kind) noexcept nogil:
    return kind == K_F32 or kind == K_F64


cdef inline bint _is_signed(int kind) noexcept nogil:
    return K_I8 <= kind <= K_I64


cdef inline int _sum_kind(int kind) noexcept nogil:
    if _is_float(kind):
        return K_F64
    if _is_signed(kind):
        return K_I64
    return K_U64


cdef object _sum_type(int kind):
    if _is_float(kind):
        return pa.float64()
    if _is_signed(kind):
        return pa.int64()
    return pa.uint64()


cdef inline int _width(int kind) noexcept nogil:
    if kind == K_I8 or kind == K_U8:
        return 1
    if kind == K_I16 or kind == K_U16:
        return 2
    if kind == K_I32 or kind == K_U32 or kind == K_F32 or kind == K_BIN32:
        return 4
    return 8


# --- element helpers -----------------------------------------------------------------

cdef inline bint _bit(const uint8_t* bits, int64_t i) noexcept nogil:
    return (bits[i >> 3] >> (i & 7)) & 1


cdef inline bint _is_null(const Input* inp, int64_t row) noexcept nogil:
    return inp.valid != NULL and not _bit(inp.valid, inp.voff + row)


cdef inline uint64_t _int_at(const uint8_t* values, int kind, int64_t row) noexcept nogil:
    # Conversion to uint64_t sign-extends signed kinds and zero-extends unsigned ones.
    if kind == K_I64 or kind == K_U64:
        return (<const uint64_t*>values)[row]
    if kind == K_I32:
        return <uint64_t>(<const int32_t*>values)[row]
    if kind == K_U32:
        return (<const uint32_t*>values)[row]
    if kind == K_I16:
        return <uint64_t>(<const int16_t*>values)[row]
    if kind == K_U16:
        return (<const uint16_t*>values)[row]
    if kind == K_I8:
        return <uint64_t>(<const int8_t*>values)[row]
    return (<const uint8_t*>values)[row]


cdef inline void _bytes_at(const Input* inp, int kind, int64_t row, const uint8_t** p, int64_t* n) noexcept nogil:
    cdef int64_t a
    if kind == K_BIN32:
        a = (<const int32_t*>inp.values)[row]
        n[0] = (<const int32_t*>inp.values)[row + 1] - a
    else:
        a = (<const int64_t*>inp.values)[row]
        n[0] = (<const int64_t*>inp.values)[row + 1] - a
    p[0] = inp.data + a


# --- pass 1: hash --------------------------------------------------------------------

cdef void _hash_ints(
    const int_t* v, const Input* inp, int64_t start, int64_t m, uint64_t* out, bint first
) noexcept nogil:
    cdef int64_t i
    cdef uint64_t x
    for i in range(m):
        if _is_null(inp, start + i):
            x = _NULL_HASH
        else:
            x = xxh64_u64(<uint64_t>v[start + i], 0)
        out[i] = x if first else xxh64_u64(out[i], x)


cdef void _hash_bytes(
    const offset_t* offs, const Input* inp, int64_t start, int64_t m, uint64_t* out, bint first
) noexcept nogil:
    cdef int64_t i
    cdef uint64_t x
    cdef offset_t a
    for i in range(m):
        if _is_null(inp, start + i):
            x = _NULL_HASH
        else:
            a = offs[start + i]
            x = xxh64(inp.data + a, <size_t>(offs[start + i + 1] - a), 0)
        out[i] = x if first else xxh64_u64(out[i], x)


cdef void _hash_column(const KeyCol* kc, int64_t start, int64_t m, uint64_t* out, bint first) noexcept nogil:
    cdef const Input* inp = &kc.inp
    cdef int kind = kc.kind
    if kind == K_BIN32:
        _hash_bytes(<const int32_t*>inp.values, inp, start, m, out, first)
    elif kind == K_BIN64:
        _hash_bytes(<const int64_t*>inp.values, inp, start, m, out, first)
    elif kind == K_I8:
        _hash_ints(<const int8_t*>inp.values, inp, start, m, out, first)
    elif kind == K_I16:
        _hash_ints(<const int16_t*>inp.values, inp, start, m, out, first)
    elif kind == K_I32:
        _hash_ints(<const int32_t*>inp.values, inp, start, m, out, first)
    elif kind == K_I64:
        _hash_ints(<const int64_t*>inp.values, inp, start, m, out, first)
    elif kind == K_U8:
        _hash_ints(<const uint8_t*>inp.values, inp, start, m, out, first)
    elif kind == K_U16:
        _hash_ints(<const uint16_t*>inp.values, inp, start, m, out, first)
    elif kind == K_U32:
        _hash_ints(<const uint32_t*>inp.values, inp, start, m, out, first)
    else:
        _hash_ints(<const uint64_t*>inp.values, inp, start, m, out, first)


# --- pass 3: fold --------------------------------------------------------------------

cdef inline void _sum_into(uint64_t* sums, int64_t g, num_t x) noexcept nogil:
    if num_t is float or num_t is double:
        (<double*>sums)[g] += x
    else:
        sums[g] += <uint64_t>x  # wraps like pyarrow's integer sums; same bits for int64


cdef inline void _min_into(uint64_t* slots, int64_t g, num_t x) noexcept nogil:
    if num_t is float or num_t is double:
        # NaN is skipped unless every value is NaN (the slot starts as NaN).
        if x < (<double*>slots)[g] or (<double*>slots)[g] != (<double*>slots)[g]:
            (<double*>slots)[g] = x
    elif num_t is int8_t or num_t is int16_t or num_t is int32_t or num_t is int64_t:
        if x < (<int64_t*>slots)[g]:
            (<int64_t*>slots)[g] = x
    else:
        if x < slots[g]:
            slots[g] = x


cdef inline void _max_into(uint64_t* slots, int64_t g, num_t x) noexcept nogil:
    if num_t is float or num_t is double:
        if x > (<double*>slots)[g] or (<double*>slots)[g] != (<double*>slots)[g]:
            (<double*>slots)[g] = x
    elif num_t is int8_t or num_t is int16_t or num_t is int32_t or num_t is int64_t:
        if x > (<int64_t*>slots)[g]:
            (<int64_t*>slots)[g] = x
    else:
        if x > slots[g]:
            slots[g] = x


cdef inline void _apply(uint64_t* slots, int op, int64_t g, num_t x) noexcept nogil:
    if op == HAS_SUM:
        _sum_into(slots, g, x)
    elif op == HAS_MSUM:
        (<double*>slots)[g] += <double>x
    elif op == HAS_MIN:
        _min_into(slots, g, x)
    else:
        _max_into(slots, g, x)


cdef void _fold_values(
    const num_t* v, const Input* inp, int64_t start, int64_t m, const int64_t* gid,
    uint64_t* slots, int op,
) noexcept nogil:
    # One accumulator per pass: each pass is a tight loop (the compiler unswitches
    # on the invariant `op`), and the slots pointer lives in a register.
    cdef const uint8_t* valid = inp.valid
    cdef int64_t voff = inp.voff + start
    cdef int64_t i
    v += start
    if valid == NULL:
        for i in range(m):
            _apply(slots, op, gid[i], v[i])
    else:
        for i in range(m):
            if _bit(valid, voff + i):
                _apply(slots, op, gid[i], v[i])


cdef void _fold_kind(
    int kind, const Input* inp, int64_t start, int64_t m, const int64_t* gid,
    uint64_t* slots, int op,
) noexcept nogil:
    if kind == K_F64:
        _fold_values(<const double*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_F32:
        _fold_values(<const float*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_I64:
        _fold_values(<const int64_t*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_I32:
        _fold_values(<const int32_t*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_I16:
        _fold_values(<const int16_t*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_I8:
        _fold_values(<const int8_t*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_U64:
        _fold_values(<const uint64_t*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_U32:
        _fold_values(<const uint32_t*>inp.values, inp, start, m, gid, slots, op)
    elif kind == K_U16:
        _fold_values(<const uint16_t*>inp.values, inp, start, m, gid, slots, op)
    else:
        _fold_values(<const uint8_t*>inp.values, inp, start, m, gid, slots, op)


cdef void _count_rows(int64_t m, const int64_t* gid, int64_t* counts) noexcept nogil:
    cdef int64_t i
    for i in range(m):
        counts[gid[i]] += 1


cdef void _count_nulls(
    const Input* inp, int64_t start, int64_t m, const int64_t* gid, int64_t* nulls
) noexcept nogil:
    cdef int64_t i
    if inp.valid == NULL:
        return
    for i in range(m):
        if not _bit(inp.valid, inp.voff + start + i):
            nulls[gid[i]] += 1


cdef void _add_counts(
    const Input* inp, int64_t start, int64_t m, const int64_t* gid, int64_t* dst
) noexcept nogil:
    # State columns of counts have no nulls (checked when they are bound).
    cdef const int64_t* v = (<const int64_t*>inp.values) + start
    cdef int64_t i
    for i in range(m):
        dst[gid[i]] += v[i]


cdef void _add_nulls(
    const Input* count, const Input* nonnull, int64_t start, int64_t m, const int64_t* gid,
    int64_t* nulls,
) noexcept nogil:
    cdef const int64_t* c = (<const int64_t*>count.values) + start
    cdef const int64_t* v = (<const int64_t*>nonnull.values) + start
    cdef int64_t i
    for i in range(m):
        nulls[gid[i]] += c[i] - v[i]


cdef void _init_slots(ValCol* c, int64_t g) noexcept nogil:
    c.nulls[g] = 0
    if c.flags & HAS_SUM:
        c.sum[g] = 0  # also 0.0 for a double sum
    if c.flags & HAS_MSUM:
        c.msum[g] = 0.0
    if _is_float(c.kind):
        # NaN marks "no non-NaN value yet" (see _min_into).
        if c.flags & HAS_MIN:
            (<double*>c.mn)[g] = NAN
        if c.flags & HAS_MAX:
            (<double*>c.mx)[g] = NAN
    elif _is_signed(c.kind):
        if c.flags & HAS_MIN:
            (<int64_t*>c.mn)[g] = INT64_MAX
        if c.flags & HAS_MAX:
            (<int64_t*>c.mx)[g] = INT64_MIN
    else:
        if c.flags & HAS_MIN:
            c.mn[g] = UINT64_MAX
        if c.flags & HAS_MAX:
            c.mx[g] = 0


# --- pass 2: assign (helpers) -------------------------------------------------------

cdef inline bint _same_bytes(const uint8_t* a, const uint8_t* b, int64_t n) noexcept nogil:
    # Keys are short (ids, names): compare 8 bytes at a time, the last word
    # overlapping, instead of calling memcmp.
    cdef uint64_t x
    cdef uint64_t y
    cdef int64_t i = 0
    if n < 8:
        while i < n:
            if a[i] != b[i]:
                return False
            i += 1
        return True
    while i + 8 < n:
        memcpy(&x, a + i, 8)
        memcpy(&y, b + i, 8)
        if x != y:
            return False
        i += 8
    memcpy(&x, a + n - 8, 8)
    memcpy(&y, b + n - 8, 8)
    return x == y


cdef inline bint _col_equals(const KeyCol* kc, uint64_t ref, int64_t g, int64_t row) noexcept nogil:
    """Whether input ``row`` has group ``g``'s key in this column (nulls equal nulls).

    ``ref`` is the group's integer key, or the offset of its arena record.
    """
    cdef bint row_null = _is_null(&kc.inp, row)
    cdef bint group_null = kc.any_null and kc.nulls[g]
    cdef const uint8_t* p
    cdef const uint8_t* record
    cdef int64_t n
    cdef int64_t stored
    if row_null or group_null:
        return row_null and group_null
    if kc.kind == K_BIN32 or kc.kind == K_BIN64:
        _bytes_at(&kc.inp, kc.kind, row, &p, &n)
        record = kc.arena + ref
        memcpy(&stored, record, 8)
        return n == stored and _same_bytes(p, record + 8, n)
    return _int_at(kc.inp.values, kc.kind, row) == ref


cdef inline bint _row_equals(
    const KeyCol* keys, Py_ssize_t n_keys, int64_t g, int64_t row, uint64_t key0
) noexcept nogil:
    """Whether input ``row`` has the key of group ``g``, whose first column is ``key0``."""
    cdef Py_ssize_t k
    cdef const KeyCol* kc
    if not _col_equals(&keys[0], key0, g, row):
        return False
    for k in range(1, n_keys):
        kc = &keys[k]
        if kc.kind == K_BIN32 or kc.kind == K_BIN64:
            if not _col_equals(kc, <uint64_t>kc.offs[g], g, row):
                return False
        elif not _col_equals(kc, kc.ints[g], g, row):
            return False
    return True


# --- output helpers ------------------------------------------------------------------

cdef const uint8_t* _address(object buf) except NULL:
    if buf is None:
        return &_EMPTY
    if not buf.is_cpu:
        msg = f"buffers must be in CPU memory, got a buffer on {buf.device}"
        raise InvalidRecordsError(msg)
    if buf.size == 0:
        return &_EMPTY
    return <const uint8_t*><uintptr_t>buf.address


cdef inline uint8_t* _mutable(object buf):
    return <uint8_t*><uintptr_t>buf.address


cdef object _validity_from_flags(const uint8_t* nulls, int64_t n):
    """A validity bitmap that is 0 where ``nulls[i]``, or None when nothing is null."""
    cdef int64_t i
    cdef int64_t null_count = 0
    with nogil:
        for i in range(n):
            null_count += nulls[i] != 0
    if null_count == 0:
        return None, 0
    buf = pa.allocate_buffer((n + 7) // 8)
    cdef uint8_t* bits = _mutable(buf)
    with nogil:
        memset(bits, 0, (n + 7) // 8)
        for i in range(n):
            if not nulls[i]:
                bits[i >> 3] |= <uint8_t>(1 << (i & 7))
    return buf, null_count


cdef object _validity_from_counts(const int64_t* counts, const int64_t* nulls, int64_t n):
    """A validity bitmap that is 0 where a group has no non-null value, or None when none is."""
    cdef int64_t i
    cdef int64_t null_count = 0
    with nogil:
        for i in range(n):
            null_count += counts[i] == nulls[i]
    if null_count == 0:
        return None, 0
    buf = pa.allocate_buffer((n + 7) // 8)
    cdef uint8_t* bits = _mutable(buf)
    with nogil:
        memset(bits, 0, (n + 7) // 8)
        for i in range(n):
            if counts[i] != nulls[i]:
                bits[i >> 3] |= <uint8_t>(1 << (i & 7))
    return buf, null_count


cdef object _copy8(const void* src, int64_t n):
    buf = pa.allocate_buffer(8 * n)
    cdef uint8_t* out = _mutable(buf)
    if n:
        with nogil:
            memcpy(out, src, <size_t>(8 * n))
    return buf


cdef object _narrow(const uint64_t* src, int kind, int64_t n):
    """Per-group 8-byte slots as a values buffer of ``kind``'s width."""
    if kind == K_I64 or kind == K_U64 or kind == K_F64:
        return _copy8(src, n)
    buf = pa.allocate_buffer(_width(kind) * n)
    cdef uint8_t* out = _mutable(buf)
    cdef int64_t i
    with nogil:
        if kind == K_F32:
            for i in range(n):
                (<float*>out)[i] = <float>(<const double*>src)[i]
        elif kind == K_I32 or kind == K_U32:
            for i in range(n):
                (<uint32_t*>out)[i] = <uint32_t>src[i]
        elif kind == K_I16 or kind == K_U16:
            for i in range(n):
                (<uint16_t*>out)[i] = <uint16_t>src[i]
        else:
            for i in range(n):
                out[i] = <uint8_t>src[i]
    return buf


cdef object _fixed_array(object dtype, object values, object validity, int64_t n):
    bits, null_count = validity
    return pa.Array.from_buffers(dtype, n, [bits, values], null_count=null_count)


cdef int _no_nulls(list columns, list fields, Py_ssize_t at) except -1:
    if columns[at].null_count:
        msg = f"state column {fields[at].name!r} must not contain nulls"
        raise ValueError(msg)
    return 0


# --- the table -----------------------------------------------------------------------

@cython.final
cdef void* _dup(const void* src, size_t size) noexcept nogil:
    # malloc + memcpy; NULL when src is NULL or memory runs out.
    cdef void* p
    if src == NULL:
        return NULL
    p = malloc(size if size else 1)
    if p != NULL:
        memcpy(p, src, size)
    return p


cdef class GroupTable:
    """Per-group accumulators over an open-addressing hash table of group keys.

    Parameters
    ----------
    key_names, key_types : list
        The group key columns and their types (see ``key_kind_supported``).
    value_names, value_types : list
        The aggregated columns (distinct) and their types.
    value_flags : list[int]
        Per value column, an or of ``WANT_SUM``, ``WANT_MEAN``, ``WANT_MIN``,
        ``WANT_MAX``.

    Calls are serialised by an internal lock, so a table may be shared by
    threads; the per-row work of ``update`` and ``merge_state`` runs with the
    GIL released.
    """

    def __init__(self, list key_names, list key_types, list value_names, list value_types,
                 list value_flags):
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef int kind
        cdef int want
        if self._lock is not None:
            raise TypeError("GroupTable.__init__ must not be called twice")
        if not key_names or len(key_names) != len(key_types):
            raise ValueError("key_names and key_types must be non-empty and of equal length")
        if len(value_names) != len(value_types) or len(value_names) != len(value_flags):
            raise ValueError("value_names, value_types and value_flags must have equal length")
        self._lock = threading.Lock()
        self._key_names = list(key_names)
        self._key_types = list(key_types)
        self._value_names = list(value_names)
        self._value_types = list(value_types)
        self._value_flags = list(value_flags)
        self._key_fields = [pa.field(name, t) for name, t in zip(key_names, key_types)]
        self._value_fields = [pa.field(name, t) for name, t in zip(value_names, value_types)]
        self.n_keys = len(key_names)
        self.n_vals = len(value_names)
        self.keys = <KeyCol*>calloc(self.n_keys, sizeof(KeyCol))
        self.vals = <ValCol*>calloc(self.n_vals if self.n_vals else 1, sizeof(ValCol))
        self.scratch_hash = <uint64_t*>malloc(_CHUNK * sizeof(uint64_t))
        self.scratch_gid = <int64_t*>malloc(_CHUNK * sizeof(int64_t))
        if (self.keys == NULL or self.vals == NULL or self.scratch_hash == NULL
                or self.scratch_gid == NULL):
            raise MemoryError()
        for k in range(self.n_keys):
            kind = _key_kind(key_types[k])
            if kind == 0:
                msg = (f"column {key_names[k]!r} has type {key_types[k]}, which cannot be a "
                       f"group key: expected {_SUPPORTED_KEYS}")
                raise InvalidRecordsError(msg)
            self.keys[k].kind = kind
        for j in range(self.n_vals):
            kind = _value_kind(value_types[j])
            if kind == 0:
                msg = (f"column {value_names[j]!r} has type {value_types[j]}, which cannot be "
                       f"aggregated: expected {_SUPPORTED_VALUES}")
                raise InvalidRecordsError(msg)
            want = value_flags[j]
            self.vals[j].kind = kind
            self.vals[j].flags = (
                (HAS_SUM if want & WANT_SUM or (want & WANT_MEAN and _is_float(kind)) else 0)
                | (HAS_MSUM if want & WANT_MEAN and not _is_float(kind) else 0)
                | (HAS_MIN if want & WANT_MIN else 0)
                | (HAS_MAX if want & WANT_MAX else 0)
            )

    def __dealloc__(self):
        self._free_groups()
        free(self.keys)
        free(self.vals)
        free(self.scratch_hash)
        free(self.scratch_gid)

    def __len__(self):
        return self.n_groups

    cdef void _free_groups(self) noexcept nogil:
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef KeyCol* kc
        cdef ValCol* c
        free(self.counts)
        free(self.group_hash)
        free(self.slots)
        self.counts = NULL
        self.group_hash = NULL
        self.slots = NULL
        self.slot_mask = 0
        self.n_groups = 0
        self.group_cap = 0
        if self.keys != NULL:
            for k in range(self.n_keys):
                kc = &self.keys[k]
                free(kc.ints)
                free(kc.offs)
                free(kc.arena)
                free(kc.nulls)
                kc.ints = NULL
                kc.offs = NULL
                kc.arena = NULL
                kc.nulls = NULL
                kc.arena_len = 0
                kc.arena_cap = 0
                kc.key_bytes = 0
                kc.any_null = False
        if self.vals != NULL:
            for j in range(self.n_vals):
                c = &self.vals[j]
                free(c.nulls)
                free(c.sum)
                free(c.msum)
                free(c.mn)
                free(c.mx)
                c.nulls = NULL
                c.sum = NULL
                c.msum = NULL
                c.mn = NULL
                c.mx = NULL

    def clear(self):
        """Forget every group and release the memory."""
        with self._lock:
            self._free_groups()

    def copy_from(self, GroupTable src):
        """Make this table, built with ``src``'s spec and types, an exact copy of ``src``.

        A plain copy of every array (no rehashing): what a tumbling window needs
        to give each invocation a private aggregator cheaply.
        """
        if src is self:
            return
        if (self._key_types != src._key_types or self._value_types != src._value_types
                or self._value_flags != src._value_flags):
            raise ValueError("copy_from needs a table with the same spec and types")
        cdef int rc
        with src._lock, self._lock:
            self._free_groups()
            with nogil:
                rc = self._copy(src)
            if rc:
                self._free_groups()
                raise MemoryError()

    cdef int _copy(self, GroupTable src) noexcept nogil:
        cdef int64_t cap = src.group_cap
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef KeyCol* kd
        cdef KeyCol* ks
        cdef ValCol* cd
        cdef ValCol* cs
        if src.group_cap == 0:
            return 0
        self.counts = <int64_t*>_dup(src.counts, cap * sizeof(int64_t))
        self.group_hash = <uint64_t*>_dup(src.group_hash, cap * sizeof(uint64_t))
        self.slots = <Slot*>_dup(src.slots, (src.slot_mask + 1) * sizeof(Slot))
        if self.counts == NULL or self.group_hash == NULL or self.slots == NULL:
            return -1
        self.slot_mask = src.slot_mask
        self.group_cap = cap
        for k in range(self.n_keys):
            kd = &self.keys[k]
            ks = &src.keys[k]
            kd.any_null = ks.any_null
            kd.nulls = <uint8_t*>_dup(ks.nulls, <size_t>cap)
            if kd.nulls == NULL:
                return -1
            if ks.ints != NULL:
                kd.ints = <uint64_t*>_dup(ks.ints, cap * sizeof(uint64_t))
                if kd.ints == NULL:
                    return -1
            if ks.offs != NULL:
                kd.offs = <int64_t*>_dup(ks.offs, cap * sizeof(int64_t))
                if kd.offs == NULL:
                    return -1
            if ks.arena != NULL:
                kd.arena = <uint8_t*>_dup(ks.arena, <size_t>ks.arena_cap)
                if kd.arena == NULL:
                    return -1
            kd.arena_len = ks.arena_len
            kd.arena_cap = ks.arena_cap
            kd.key_bytes = ks.key_bytes
        for j in range(self.n_vals):
            cd = &self.vals[j]
            cs = &src.vals[j]
            cd.nulls = <int64_t*>_dup(cs.nulls, cap * sizeof(int64_t))
            if cd.nulls == NULL:
                return -1
            if cs.sum != NULL:
                cd.sum = <uint64_t*>_dup(cs.sum, cap * sizeof(uint64_t))
                if cd.sum == NULL:
                    return -1
            if cs.msum != NULL:
                cd.msum = <double*>_dup(cs.msum, cap * sizeof(double))
                if cd.msum == NULL:
                    return -1
            if cs.mn != NULL:
                cd.mn = <uint64_t*>_dup(cs.mn, cap * sizeof(uint64_t))
                if cd.mn == NULL:
                    return -1
            if cs.mx != NULL:
                cd.mx = <uint64_t*>_dup(cs.mx, cap * sizeof(uint64_t))
                if cd.mx == NULL:
                    return -1
        self.n_groups = src.n_groups
        return 0

    def nbytes(self):
        """Bytes held for the groups: what a window state limit counts for an aggregator."""
        cdef int64_t total = self.n_groups * 16  # count and hash
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        for k in range(self.n_keys):
            total += self.n_groups * 9 + self.keys[k].arena_len
        for j in range(self.n_vals):
            total += self.n_groups * 8 * (1 + (self.vals[j].sum != NULL) + (self.vals[j].msum != NULL)
                                          + (self.vals[j].mn != NULL) + (self.vals[j].mx != NULL))
        return total

    cdef int _reserve(self, int64_t groups) noexcept nogil:
        # Room for `groups` groups: per-group arrays and a table at load <= 1/2.
        # Returns 0, -1 (out of memory; nothing is lost) or -2 (too many groups).
        cdef int64_t cap
        cdef uint64_t slot_cap
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef KeyCol* kc
        cdef ValCol* c
        cdef void* p
        if groups > _MAX_GROUPS:
            return -2
        if groups > self.group_cap:
            cap = self.group_cap * 2 if self.group_cap else 64
            while cap < groups:
                cap *= 2
            p = realloc(self.counts, cap * sizeof(int64_t))
            if p == NULL:
                return -1
            self.counts = <int64_t*>p
            p = realloc(self.group_hash, cap * sizeof(uint64_t))
            if p == NULL:
                return -1
            self.group_hash = <uint64_t*>p
            for k in range(self.n_keys):
                kc = &self.keys[k]
                p = realloc(kc.nulls, <size_t>cap)
                if p == NULL:
                    return -1
                kc.nulls = <uint8_t*>p
                if kc.kind == K_BIN32 or kc.kind == K_BIN64:
                    p = realloc(kc.offs, cap * sizeof(int64_t))
                    if p == NULL:
                        return -1
                    kc.offs = <int64_t*>p
                else:
                    p = realloc(kc.ints, cap * sizeof(uint64_t))
                    if p == NULL:
                        return -1
                    kc.ints = <uint64_t*>p
            for j in range(self.n_vals):
                c = &self.vals[j]
                p = realloc(c.nulls, cap * sizeof(int64_t))
                if p == NULL:
                    return -1
                c.nulls = <int64_t*>p
                if c.flags & HAS_SUM:
                    p = realloc(c.sum, cap * sizeof(uint64_t))
                    if p == NULL:
                        return -1
                    c.sum = <uint64_t*>p
                if c.flags & HAS_MSUM:
                    p = realloc(c.msum, cap * sizeof(double))
                    if p == NULL:
                        return -1
                    c.msum = <double*>p
                if c.flags & HAS_MIN:
                    p = realloc(c.mn, cap * sizeof(uint64_t))
                    if p == NULL:
                        return -1
                    c.mn = <uint64_t*>p
                if c.flags & HAS_MAX:
                    p = realloc(c.mx, cap * sizeof(uint64_t))
                    if p == NULL:
                        return -1
                    c.mx = <uint64_t*>p
            self.group_cap = cap
        if self.slots == NULL or <uint64_t>groups * 2 > self.slot_mask + 1:
            slot_cap = 256
            while slot_cap < <uint64_t>groups * 2:
                slot_cap *= 2
            return self._rehash(slot_cap)
        return 0

    cdef int _rehash(self, uint64_t capacity) noexcept nogil:
        cdef Slot* slots = <Slot*>calloc(capacity, sizeof(Slot))
        cdef uint64_t mask = capacity - 1
        cdef uint64_t pos
        cdef uint64_t i
        cdef Slot s
        if slots == NULL:
            return -1
        if self.slots != NULL:
            for i in range(self.slot_mask + 1):
                s = self.slots[i]
                if s.tag_gid == 0:
                    continue
                pos = self.group_hash[(s.tag_gid & 0xFFFFFFFFULL) - 1] & mask
                while slots[pos].tag_gid != 0:
                    pos = (pos + 1) & mask
                slots[pos] = s
        free(self.slots)
        self.slots = slots
        self.slot_mask = mask
        return 0

    cdef int64_t _insert(self, int64_t row, uint64_t h, uint64_t* key0) noexcept nogil:
        # Append row's key as a new group and set key0 (see Slot); -1 when out of
        # memory (then no group is added; arena bytes written are just unused).
        cdef int64_t g = self.n_groups
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef KeyCol* kc
        cdef const uint8_t* p
        cdef int64_t n
        cdef int64_t at
        cdef int64_t cap
        cdef void* grown
        cdef bint null
        for k in range(self.n_keys):
            kc = &self.keys[k]
            null = _is_null(&kc.inp, row)
            kc.nulls[g] = null
            if kc.kind == K_BIN32 or kc.kind == K_BIN64:
                n = 0
                if not null:
                    _bytes_at(&kc.inp, kc.kind, row, &p, &n)
                at = kc.arena_len
                if at + 8 + n > kc.arena_cap:
                    cap = kc.arena_cap * 2 if kc.arena_cap else 4096
                    while cap < at + 8 + n:
                        cap *= 2
                    grown = realloc(kc.arena, <size_t>cap)
                    if grown == NULL:
                        return -1
                    kc.arena = <uint8_t*>grown
                    kc.arena_cap = cap
                memcpy(kc.arena + at, &n, 8)
                if n:
                    memcpy(kc.arena + at + 8, p, <size_t>n)
                kc.arena_len = at + 8 + n
                kc.offs[g] = at
            else:
                kc.ints[g] = 0 if null else _int_at(kc.inp.values, kc.kind, row)
        # Committed: nothing below can fail.
        for k in range(self.n_keys):
            kc = &self.keys[k]
            if kc.nulls[g]:
                kc.any_null = True
            elif kc.kind == K_BIN32 or kc.kind == K_BIN64:
                memcpy(&n, kc.arena + kc.offs[g], 8)
                kc.key_bytes += n
        kc = &self.keys[0]
        key0[0] = <uint64_t>kc.offs[g] if kc.kind == K_BIN32 or kc.kind == K_BIN64 else kc.ints[g]
        self.group_hash[g] = h
        self.counts[g] = 0
        for j in range(self.n_vals):
            _init_slots(&self.vals[j], g)
        self.n_groups = g + 1
        return g

    cdef int _assign(self, int64_t start, int64_t m) noexcept nogil:
        # Group number of rows start .. start + m - 1 into scratch_gid; needs
        # _reserve(n_groups + m) first, so the table never grows in here.
        # Two prefetch stages hide the cache misses of a large table: the slot
        # of row i + 2D, then the arena record that the slot of row i + D names.
        cdef int64_t i
        cdef int64_t g
        cdef uint64_t h
        cdef uint64_t tag
        cdef uint64_t key0
        cdef uint64_t pos
        cdef uint64_t mask = self.slot_mask
        cdef Slot* slots = self.slots
        cdef const Slot* ahead
        cdef const uint64_t* hashes = self.scratch_hash
        cdef const KeyCol* first = &self.keys[0]
        cdef bint prefetch_records = first.kind == K_BIN32 or first.kind == K_BIN64
        for i in range(m):
            if i + 2 * _PREFETCH_AHEAD < m:
                SC_PREFETCH(&slots[hashes[i + 2 * _PREFETCH_AHEAD] & mask])
            if prefetch_records and i + _PREFETCH_AHEAD < m:
                ahead = &slots[hashes[i + _PREFETCH_AHEAD] & mask]
                if ahead.tag_gid != 0:
                    SC_PREFETCH(first.arena + ahead.key0)
            h = hashes[i]
            tag = h >> 32
            pos = h & mask
            while True:
                if slots[pos].tag_gid == 0:
                    g = self._insert(start + i, h, &key0)
                    if g < 0:
                        return -1
                    slots[pos].tag_gid = (tag << 32) | <uint64_t>(g + 1)
                    slots[pos].key0 = key0
                    break
                if (slots[pos].tag_gid >> 32) == tag:
                    g = <int64_t>(slots[pos].tag_gid & 0xFFFFFFFFULL) - 1
                    if _row_equals(self.keys, self.n_keys, g, start + i, slots[pos].key0):
                        break
                pos = (pos + 1) & mask
            self.scratch_gid[i] = g
        return 0

    cdef int _fold(self, int64_t n, bint merge) noexcept nogil:
        # Fold n rows of the bound inputs: values (update) or a partial state (merge).
        cdef int64_t start = 0
        cdef int64_t m
        cdef int64_t i
        cdef int rc
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef ValCol* c
        cdef const int64_t* gid = self.scratch_gid
        while start < n:
            m = n - start if n - start < _CHUNK else _CHUNK
            rc = self._reserve(self.n_groups + m)
            if rc != 0:
                return rc
            for k in range(self.n_keys):
                _hash_column(&self.keys[k], start, m, self.scratch_hash, k == 0)
            rc = self._assign(start, m)
            if rc != 0:
                return rc
            if merge:
                _add_counts(&self.in_count, start, m, gid, self.counts)
            else:
                _count_rows(m, gid, self.counts)
            for j in range(self.n_vals):
                c = &self.vals[j]
                if merge:
                    _add_nulls(&self.in_count, &c.inp[0], start, m, gid, c.nulls)
                    if c.flags & HAS_SUM:
                        _fold_kind(_sum_kind(c.kind), &c.inp[1], start, m, gid, c.sum, HAS_SUM)
                    if c.flags & HAS_MSUM:
                        _fold_kind(K_F64, &c.inp[2], start, m, gid, <uint64_t*>c.msum, HAS_MSUM)
                    if c.flags & HAS_MIN:
                        _fold_kind(c.kind, &c.inp[3], start, m, gid, c.mn, HAS_MIN)
                    if c.flags & HAS_MAX:
                        _fold_kind(c.kind, &c.inp[4], start, m, gid, c.mx, HAS_MAX)
                    continue
                _count_nulls(&c.inp[0], start, m, gid, c.nulls)
                if c.flags & HAS_SUM:
                    _fold_kind(c.kind, &c.inp[0], start, m, gid, c.sum, HAS_SUM)
                if c.flags & HAS_MSUM:
                    _fold_kind(c.kind, &c.inp[0], start, m, gid, <uint64_t*>c.msum, HAS_MSUM)
                if c.flags & HAS_MIN:
                    _fold_kind(c.kind, &c.inp[0], start, m, gid, c.mn, HAS_MIN)
                if c.flags & HAS_MAX:
                    _fold_kind(c.kind, &c.inp[0], start, m, gid, c.mx, HAS_MAX)
            start += m
        return 0

    cdef int _bind_input(self, list arrays, list fields, Py_ssize_t at, int kind, Input* inp) except -1:
        # Point `inp` at the buffers of arrays[at], which the caller keeps alive.
        arr = arrays[at]
        field = fields[at]
        if not isinstance(arr, pa.Array):
            msg = f"column {field.name!r} must be a pyarrow.Array, got {type(arr).__name__}"
            raise TypeError(msg)
        if not arr.type.equals(field.type):
            msg = (f"column {field.name!r} has type {arr.type}, but this aggregator holds "
                   f"{field.type} for it")
            raise InvalidRecordsError(msg)
        buffers = arr.buffers()
        cdef int64_t offset = arr.offset
        inp.voff = offset
        inp.valid = _address(buffers[0]) if arr.null_count else NULL
        inp.values = _address(buffers[1]) + _width(kind) * offset
        inp.data = _address(buffers[2]) if kind == K_BIN32 or kind == K_BIN64 else NULL
        return 0

    cdef int _raise_for(self, int rc) except -1:
        if rc == -2:
            msg = f"too many groups: at most {_MAX_GROUPS}"
            raise OverflowError(msg)
        raise MemoryError()

    def update(self, list key_arrays, list value_arrays):
        """Fold rows: ``key_arrays`` and ``value_arrays`` hold one equal-length
        ``pyarrow.Array`` per key and value column, in constructor order."""
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef int64_t n
        cdef int rc
        if len(key_arrays) != self.n_keys or len(value_arrays) != self.n_vals:
            raise ValueError("one array per key column and per value column is expected")
        cdef list key_fields = self._key_fields
        cdef list value_fields = self._value_fields
        n = len(key_arrays[0])
        for arr in key_arrays + value_arrays:
            if len(arr) != n:
                raise ValueError("every column must have the same length")
        with self._lock:
            for k in range(self.n_keys):
                self._bind_input(key_arrays, key_fields, k, self.keys[k].kind, &self.keys[k].inp)
            for j in range(self.n_vals):
                self._bind_input(value_arrays, value_fields, j, self.vals[j].kind,
                                 &self.vals[j].inp[0])
            if n == 0:
                return
            with nogil:
                rc = self._fold(n, False)
            if rc != 0:
                self._raise_for(rc)

    def input_types(self):
        """The key column types, then the value column types."""
        return self._key_types + self._value_types

    def state_schema(self):
        """The schema of ``state_columns``: names and types."""
        cdef Py_ssize_t j
        cdef ValCol* c
        fields = [pa.field(name, dtype) for name, dtype in zip(self._key_names, self._key_types)]
        fields.append(pa.field("count", pa.int64()))
        for j in range(self.n_vals):
            c = &self.vals[j]
            name = self._value_names[j]
            fields.append(pa.field(f"{name}.nonnull", pa.int64()))
            if c.flags & HAS_SUM:
                fields.append(pa.field(f"{name}.sum", _sum_type(c.kind)))
            if c.flags & HAS_MSUM:
                fields.append(pa.field(f"{name}.msum", pa.float64()))
            if c.flags & HAS_MIN:
                fields.append(pa.field(f"{name}.min", self._value_types[j]))
            if c.flags & HAS_MAX:
                fields.append(pa.field(f"{name}.max", self._value_types[j]))
        return pa.schema(fields)

    def merge_state(self, list columns):
        """Fold a partial state: one array per field of ``state_schema()``, in order."""
        cdef list fields = list(self.state_schema())
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef Py_ssize_t at
        cdef int64_t n
        cdef int rc
        cdef ValCol* c
        if len(columns) != len(fields):
            msg = f"a state has {len(fields)} columns, got {len(columns)}"
            raise ValueError(msg)
        n = len(columns[0])
        for arr in columns:
            if len(arr) != n:
                raise ValueError("every column must have the same length")
        with self._lock:
            for k in range(self.n_keys):
                self._bind_input(columns, fields, k, self.keys[k].kind, &self.keys[k].inp)
            at = self.n_keys
            self._bind_input(columns, fields, at, K_I64, &self.in_count)
            _no_nulls(columns, fields, at)
            at += 1
            for j in range(self.n_vals):
                c = &self.vals[j]
                self._bind_input(columns, fields, at, K_I64, &c.inp[0])
                _no_nulls(columns, fields, at)
                at += 1
                if c.flags & HAS_SUM:
                    self._bind_input(columns, fields, at, _sum_kind(c.kind), &c.inp[1])
                    at += 1
                if c.flags & HAS_MSUM:
                    self._bind_input(columns, fields, at, K_F64, &c.inp[2])
                    at += 1
                if c.flags & HAS_MIN:
                    self._bind_input(columns, fields, at, c.kind, &c.inp[3])
                    at += 1
                if c.flags & HAS_MAX:
                    self._bind_input(columns, fields, at, c.kind, &c.inp[4])
                    at += 1
            if n == 0:
                return
            with nogil:
                rc = self._fold(n, True)
            if rc != 0:
                self._raise_for(rc)

    cdef object _key_array(self, Py_ssize_t k):
        cdef KeyCol* kc = &self.keys[k]
        cdef int64_t n = self.n_groups
        cdef int64_t i
        cdef int64_t length
        cdef int64_t at = 0
        cdef int64_t total = kc.key_bytes
        cdef bint wide = kc.kind == K_BIN64
        cdef uint8_t* offsets_out
        cdef uint8_t* data_out
        dtype = self._key_types[k]
        bits, null_count = _validity_from_flags(kc.nulls, n)
        if kc.kind != K_BIN32 and kc.kind != K_BIN64:
            return pa.Array.from_buffers(dtype, n, [bits, _narrow(kc.ints, kc.kind, n)],
                                         null_count=null_count)
        if not wide and total > INT32_MAX:
            msg = (f"the keys of column {self._key_names[k]!r} hold {total} bytes, more "
                   f"than {dtype} can address; use the large_ variant of the type")
            raise OverflowError(msg)
        offsets = pa.allocate_buffer((8 if wide else 4) * (n + 1))
        data = pa.allocate_buffer(total)
        offsets_out = _mutable(offsets)
        data_out = _mutable(data) if total else NULL
        with nogil:
            for i in range(n):
                if wide:
                    (<int64_t*>offsets_out)[i] = at
                else:
                    (<int32_t*>offsets_out)[i] = <int32_t>at
                memcpy(&length, kc.arena + kc.offs[i], 8)
                if length:
                    memcpy(data_out + at, kc.arena + kc.offs[i] + 8, <size_t>length)
                at += length
            if wide:
                (<int64_t*>offsets_out)[n] = at
            else:
                (<int32_t*>offsets_out)[n] = <int32_t>at
        return pa.Array.from_buffers(dtype, n, [bits, offsets, data], null_count=null_count)

    cdef object _mean_array(self, ValCol* c):
        cdef int64_t n = self.n_groups
        cdef int64_t i
        buf = pa.allocate_buffer(8 * n)
        cdef double* out = <double*>_mutable(buf)
        cdef const double* sums = <const double*>c.sum if _is_float(c.kind) else c.msum
        with nogil:
            for i in range(n):
                out[i] = sums[i] / <double>(self.counts[i] - c.nulls[i]) if self.counts[i] != c.nulls[i] else 0.0
        return _fixed_array(pa.float64(), buf, _validity_from_counts(self.counts, c.nulls, n), n)

    cdef object _nonnull(self, ValCol* c):
        cdef int64_t n = self.n_groups
        cdef int64_t i
        buf = pa.allocate_buffer(8 * n)
        cdef int64_t* out = <int64_t*>_mutable(buf)
        with nogil:
            for i in range(n):
                out[i] = self.counts[i] - c.nulls[i]
        return buf

    def state_columns(self):
        """The partial state as arrays, one per field of ``state_schema()``."""
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef ValCol* c
        cdef int64_t n
        with self._lock:
            n = self.n_groups
            out = [self._key_array(k) for k in range(self.n_keys)]
            out.append(pa.Array.from_buffers(pa.int64(), n, [None, _copy8(self.counts, n)]))
            for j in range(self.n_vals):
                c = &self.vals[j]
                dtype = self._value_types[j]
                out.append(pa.Array.from_buffers(pa.int64(), n, [None, self._nonnull(c)]))
                validity = _validity_from_counts(self.counts, c.nulls, n)
                if c.flags & HAS_SUM:
                    out.append(_fixed_array(_sum_type(c.kind), _copy8(c.sum, n), validity, n))
                if c.flags & HAS_MSUM:
                    out.append(_fixed_array(pa.float64(), _copy8(c.msum, n), validity, n))
                if c.flags & HAS_MIN:
                    out.append(_fixed_array(dtype, _narrow(c.mn, c.kind, n), validity, n))
                if c.flags & HAS_MAX:
                    out.append(_fixed_array(dtype, _narrow(c.mx, c.kind, n), validity, n))
            return out

    def result_arrays(self):
        """``(keys, count, aggregates)``: the key arrays, the row counts, and per value
        column a dict with the ``"sum"``, ``"min"``, ``"max"`` and ``"mean"`` arrays asked for."""
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef ValCol* c
        cdef int64_t n
        with self._lock:
            n = self.n_groups
            keys = [self._key_array(k) for k in range(self.n_keys)]
            count = pa.Array.from_buffers(pa.int64(), n, [None, _copy8(self.counts, n)])
            aggregates = []
            for j in range(self.n_vals):
                c = &self.vals[j]
                want = self._value_flags[j]
                dtype = self._value_types[j]
                validity = _validity_from_counts(self.counts, c.nulls, n)
                arrays = {}
                if want & WANT_SUM:
                    arrays["sum"] = _fixed_array(_sum_type(c.kind), _copy8(c.sum, n), validity, n)
                if want & WANT_MIN:
                    arrays["min"] = _fixed_array(dtype, _narrow(c.mn, c.kind, n), validity, n)
                if want & WANT_MAX:
                    arrays["max"] = _fixed_array(dtype, _narrow(c.mx, c.kind, n), validity, n)
                if want & WANT_MEAN:
                    arrays["mean"] = self._mean_array(c)
                aggregates.append(arrays)
            return keys, count, aggregates


# --- window starts -------------------------------------------------------------------

def floor_multiple(arr, size):
    """``floor(value / size) * size`` of every element of an int64 or uint64 array.

    Nulls stay null. ``size`` must be positive. Raises ``OverflowError`` when a
    result is below the type's minimum.
    """
    cdef int64_t n = len(arr)
    cdef int64_t i
    cdef int64_t s64 = 0
    cdef uint64_t u64 = 0
    cdef int64_t q
    cdef int64_t bad = -1
    cdef bint signed
    cdef const uint8_t* valid
    cdef const uint8_t* values
    cdef uint8_t* bits
    cdef int64_t offset = arr.offset
    if arr.type == pa.int64():
        signed = True
        s64 = size
        if s64 <= 0:
            raise ValueError(f"size must be positive, got {size}")
    elif arr.type == pa.uint64():
        signed = False
        u64 = size
        if u64 == 0:
            raise ValueError(f"size must be positive, got {size}")
    else:
        raise TypeError(f"expected an int64 or uint64 array, got {arr.type}")
    buffers = arr.buffers()
    validity = None
    valid = NULL
    if arr.null_count:
        valid = _address(buffers[0])
        validity = pa.allocate_buffer((n + 7) // 8)
        bits = _mutable(validity)
        with nogil:
            memset(bits, 0, (n + 7) // 8)
            for i in range(n):
                if _bit(valid, offset + i):
                    bits[i >> 3] |= <uint8_t>(1 << (i & 7))
    values = _address(buffers[1]) + 8 * offset
    out_buf = pa.allocate_buffer(8 * n)
    cdef uint8_t* out = _mutable(out_buf)
    with nogil:
        if signed:
            for i in range(n):
                if valid != NULL and not _bit(valid, offset + i):
                    (<int64_t*>out)[i] = 0
                    continue
                q = (<const int64_t*>values)[i] / s64
                if (<const int64_t*>values)[i] % s64 < 0:
                    q -= 1
                if q < INT64_MIN / s64:
                    bad = i
                    break
                (<int64_t*>out)[i] = q * s64
        else:
            for i in range(n):
                (<uint64_t*>out)[i] = (<const uint64_t*>values)[i] - (<const uint64_t*>values)[i] % u64
    if bad >= 0:
        msg = f"window start of {arr[bad].as_py()} with size {size} is below the minimum of int64"
        raise OverflowError(msg)
    return pa.Array.from_buffers(arr.type, n, [validity, out_buf], null_count=arr.null_count)
