"""Keyed aggregation of Arrow columns: per-group count, sum, min, max and mean.

``GroupTable`` folds record batches into per-group accumulators without a
Python object per row. A batch is processed in chunks of ``CHUNK`` rows, each
in three passes:

1. hash: per row a hash of its key: XXH3-64 of the bytes of a binary/utf8 key
   of up to 16 bytes (XXH3's short-input paths, bit-exact: a few multiplies
   where XXH64 steps through the key word by word and byte by byte), XXH64 of
   a longer one, XXH64 of the value of an integer; per-column hashes of a
   composite key chained through ``xxh64_u64``; a null hashes as a constant.
   The hash only places groups in this table: it never leaves it. With one
   key column and a table that fits in cache (below ``_PREFETCH_SLOTS``
   slots) the hash is made in the assign loop instead, and the rows are
   counted there too;
2. assign: look each hash up in an open-addressing table (linear probing,
   power-of-two capacity, load <= 1/2) whose slots hold the upper 32 bits of
   the hash, the group number and the group's first key column (the integer,
   or where its bytes start in the arena and, below 0xFFFF, how many); a tag
   match is confirmed by comparing the full key with the group's stored key,
   and a miss appends a new group (growing the per-group arrays and the table
   only then, so memory follows the groups);
3. fold: one pass per value column adds each row into its group's
   accumulators.

Groups are numbered in order of first appearance, which is the row order of
the output. The same passes merge a partial state (the ``state_columns`` of
another table): its key columns are assigned like rows and its partial
accumulators are added instead of values. The keys of a binary column are
stored back to back in an arena, group after group (``offs[g]`` is where
group g's key starts; the next group's start, or the arena's length, ends
it), so the output's key column is its offsets and one copy of the arena.

Copies share memory (copy-on-write). Every per-group array, the arena and the
slot table live in a block with a header: a reference count and a *writer*,
the one table allowed to append to the block in place. What the table holds
falls in two classes:

- append-only: the key arena, the keys, their null flags, the group hashes
  and the slot table. Groups are only ever appended, so a copy shares these
  and the writer role passes to it (a tumbling window commits the copy and
  drops the original). A table that drops a block it writes says how much of
  it it used and gives the role up; a holder may then claim it if no holder
  uses more (a retry's copy of the original after a failed invocation's copy
  added nothing). A table that can neither write nor claim a shared block
  (the original after a copy; a stale copy, e.g. of a timed-out invocation,
  after the committed one was copied again) copies the part it uses before
  its next change, and rebuilds its slot table (the writer may have added
  slots for groups it does not have). Appending never moves a block that
  another table holds: growth makes a new block and drops the old one, so
  the groups a reader has stay where they are.
- accumulators: counts, sums, minima, maxima, null counts. They change in
  place, so a table copies a shared one (reference count above one) before
  its first change.

``copy()`` therefore moves no data; the invocation that updates the copy pays
for the accumulators only. Reference counts are atomic, and the writer of a
block only changes hands under the lock of a table that holds it (its copy, a
claim: a compare-and-swap from no writer, or a holder that holds it alone),
so tables that share blocks may be used from different threads, with or
without the GIL.

Semantics follow pyarrow's hash aggregations: null keys form one group per
column combination; null values are skipped; an aggregate over no non-null
value is null; integer sums wrap in 64 bits, float sums and means propagate
NaN, min and max skip NaN unless every value is NaN; the mean of an integer
column is a float64 sum divided by the count (no wrap-around).

Arrow memory is read directly through ``pyarrow.Buffer.address``; libarrow is
not linked. Outputs are exported through the Arrow C Data Interface: one
``ArrowArray`` per batch, imported by ``pyarrow.RecordBatch._import_from_c``,
whose release callback frees the buffers this module allocated for it. A
column laid out as a block of the table is (counts, 8-byte sums, minima and
maxima, 8-byte integer keys, the key arena): the buffer is the block, holding a
reference to it like a copy of the table would, so the table copies it before
it changes it and the output stays as it was.

The GIL is released only for large inputs: a handler thread that gives it up
for a few microseconds of work may wait a whole switch interval to get it back
(pyarrow's own import of an exported batch gives it up briefly whatever the
size; so does every pyarrow Table constructor, which validates).

What a windowed handler's Aggregator costs its thread per invocation is native
too: ``AggregatorCore`` (the base of ``streamcore.Aggregator``) holds the
table and does ``update`` of the records handed to the handler, ``copy``,
``len`` and ``nbytes`` without Python frames; ``handed`` keeps the handed
records per thread in C thread-local storage; ``copy_window_state`` and
``aggregators_nbytes`` are the window state's copy per invocation and its size
check. A ``BatchBinding`` finds a stored batch's columns once and, once it has
checked the batch's schema against an aggregator's plan, serves every slice
of it to every aggregator of that plan.
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
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport PyObject, Py_XDECREF, Py_XINCREF
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

import pyarrow as pa

from streamcore._arrow cimport input_address
from streamcore._hashing cimport read_le32, read_le64, rotl64, xxh64, xxh64_avalanche, xxh64_u64
from streamcore._threads cimport (
    available_cpus,
    cpu_relax,
    load_int,
    load_u64,
    now_ns,
    pthread_atfork,
    pthread_cond_broadcast,
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

from streamcore.errors import InvalidRecordsError


cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_trylock(pthread_mutex_t* mutex)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define SC_PREFETCH(p) __builtin_prefetch((p))
    #define SC_BSWAP64(x) __builtin_bswap64((x))
    static inline int64_t sc_refs_add(int64_t* p, int64_t d) {
        return __atomic_add_fetch(p, d, __ATOMIC_ACQ_REL);
    }
    static inline int64_t sc_refs_load(const int64_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline uintptr_t sc_writer_load(const uintptr_t* p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void sc_writer_store(uintptr_t* p, uintptr_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline int sc_writer_cas(uintptr_t* p, uintptr_t* expected, uintptr_t v) {
        return __atomic_compare_exchange_n(p, expected, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    #elif defined(_MSC_VER)
    #include <intrin.h>
    #define SC_PREFETCH(p) ((void)(p))
    #define SC_BSWAP64(x) _byteswap_uint64((x))
    static __inline int64_t sc_refs_add(int64_t* p, int64_t d) {
        return _InterlockedExchangeAdd64((volatile __int64*)p, d) + d;
    }
    static __inline int64_t sc_refs_load(const int64_t* p) {
        return *(const volatile int64_t*)p;
    }
    static __inline uintptr_t sc_writer_load(const uintptr_t* p) {
        return *(const volatile uintptr_t*)p;
    }
    static __inline void sc_writer_store(uintptr_t* p, uintptr_t v) {
        *(volatile uintptr_t*)p = v;
    }
    static __inline int sc_writer_cas(uintptr_t* p, uintptr_t* expected, uintptr_t v) {
        void* seen = _InterlockedCompareExchangePointer((void* volatile*)p, (void*)v, (void*)*expected);
        if ((uintptr_t)seen == *expected) return 1;
        *expected = (uintptr_t)seen;
        return 0;
    }
    #else
    #error "streamcore._aggregate needs GCC, Clang or MSVC atomics"
    #endif

    /* The 64-bit halves of a 64 x 64-bit product, xored (XXH3's mul128_fold64). */
    static inline uint64_t sc_mul128_fold64(uint64_t a, uint64_t b) {
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        /* One mul: GCC moves an __int128 product through the stack. */
        uint64_t lo, hi;
        __asm__("mulq %3" : "=a"(lo), "=d"(hi) : "a"(a), "rm"(b) : "cc");
        return lo ^ hi;
    #elif defined(__SIZEOF_INT128__)
        __uint128_t p = (__uint128_t)a * b;
        return (uint64_t)p ^ (uint64_t)(p >> 64);
    #else
        uint64_t lo_lo = (a & 0xFFFFFFFFu) * (b & 0xFFFFFFFFu);
        uint64_t hi_lo = (a >> 32) * (b & 0xFFFFFFFFu);
        uint64_t lo_hi = (a & 0xFFFFFFFFu) * (b >> 32);
        uint64_t hi_hi = (a >> 32) * (b >> 32);
        uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + lo_hi;
        uint64_t upper = (hi_lo >> 32) + (cross >> 32) + hi_hi;
        uint64_t lower = (cross << 32) | (lo_lo & 0xFFFFFFFFu);
        return lower ^ upper;
    #endif
    }

    /* int64 key offsets as int32 (they fit: checked before). restrict: the compiler
       then vectorises the loop (a result's keys are its largest copy). */
    static void sc_narrow_offsets(int32_t* __restrict out, const int64_t* __restrict src, int64_t n) {
        for (int64_t i = 0; i < n; i++) out[i] = (int32_t)src[i];
    }

    /* The Arrow C Data Interface, verbatim from the specification. */
    #ifndef ARROW_C_DATA_INTERFACE
    #define ARROW_C_DATA_INTERFACE
    #define ARROW_FLAG_DICTIONARY_ORDERED 1
    #define ARROW_FLAG_NULLABLE 2
    #define ARROW_FLAG_MAP_KEYS_SORTED 4
    struct ArrowSchema {
      const char* format;
      const char* name;
      const char* metadata;
      int64_t flags;
      int64_t n_children;
      struct ArrowSchema** children;
      struct ArrowSchema* dictionary;
      void (*release)(struct ArrowSchema*);
      void* private_data;
    };
    struct ArrowArray {
      int64_t length;
      int64_t null_count;
      int64_t offset;
      int64_t n_buffers;
      int64_t n_children;
      const void** buffers;
      struct ArrowArray** children;
      struct ArrowArray* dictionary;
      void (*release)(struct ArrowArray*);
      void* private_data;
    };
    #endif
    """
    void SC_PREFETCH(const void* p) noexcept nogil
    uint64_t SC_BSWAP64(uint64_t x) noexcept nogil
    int64_t sc_refs_add(int64_t* p, int64_t d) noexcept nogil
    int64_t sc_refs_load(const int64_t* p) noexcept nogil
    uintptr_t sc_writer_load(const uintptr_t* p) noexcept nogil
    void sc_writer_store(uintptr_t* p, uintptr_t v) noexcept nogil
    bint sc_writer_cas(uintptr_t* p, uintptr_t* expected, uintptr_t v) noexcept nogil
    uint64_t sc_mul128_fold64(uint64_t a, uint64_t b) noexcept nogil
    void sc_narrow_offsets(int32_t* out, const int64_t* src, int64_t n) noexcept nogil

    cdef struct CArrowArray "ArrowArray":
        int64_t length
        int64_t null_count
        int64_t offset
        int64_t n_buffers
        int64_t n_children
        const void** buffers
        CArrowArray** children
        CArrowArray* dictionary
        void (*release)(CArrowArray*) noexcept nogil
        void* private_data

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

# Output columns (the layouts of result_batch and state_columns).
cdef enum:
    OUT_KEY = 1
    OUT_COUNT
    OUT_NONNULL
    OUT_SUM
    OUT_MSUM
    OUT_MIN
    OUT_MAX
    OUT_MEAN

cdef enum:
    # Rows per pass; the pass's hashes and group numbers live on the stack (12 KiB).
    CHUNK = 1024
    # Rows ahead whose hash-table slot is prefetched while a row is assigned.
    PREFETCH_AHEAD = 16

# What the Python layer asks for per value column.
WANT_SUM = 1
WANT_MEAN = 2
WANT_MIN = 4
WANT_MAX = 8

# Tables with at least this many slots (256 KiB) are prefetched into while probed;
# smaller ones stay in cache, where prefetching only costs instructions.
cdef uint64_t _PREFETCH_SLOTS = 1 << 14
# The slot stores group + 1 in 32 bits.
cdef int64_t _MAX_GROUPS = 0xFFFFFFFE
cdef uint64_t _NULL_HASH = 0x2545F4914F6CDD1DULL
# First capacities: small, as many windows hold few groups.
cdef int64_t _MIN_GROUPS = 64
cdef uint64_t _MIN_SLOTS = 128
# Below these sizes the work runs with the GIL held (see the module docstring).
cdef int64_t _NOGIL_ROWS = 1 << 16
# What a missing input buffer reads as.
cdef uint64_t _ZEROS[2]

_SUPPORTED_KEYS = (
    "utf8, large_utf8, binary, large_binary, an integer, a timestamp, date, time "
    "or duration (dictionaries are decoded, string/binary views cast to large)"
)
_SUPPORTED_VALUES = "an integer, float32 or float64"
# Looked up once: a module attribute lookup per call costs what the rest of a small
# call's checks do.
cdef object _RecordBatch = pa.RecordBatch
cdef object _import_batch = pa.RecordBatch._import_from_c
# A RecordBatch's column by position: _column skips column()'s name-or-index dispatch
# (a third of its cost).
cdef object _batch_column = getattr(pa.RecordBatch, "_column", None) or pa.RecordBatch.column
_OPS = {"count": OUT_COUNT, "sum": OUT_SUM, "min": OUT_MIN, "max": OUT_MAX, "mean": OUT_MEAN}

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


cdef inline bint _is_bin(int kind) noexcept nogil:
    return kind == K_BIN32 or kind == K_BIN64


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


cdef inline int64_t _key_len(const KeyCol* kc, int64_t g, int64_t n_groups) noexcept nogil:
    # Length of group g's key in a binary column: up to the next group's start.
    cdef int64_t end = kc.offs[g + 1] if g + 1 < n_groups else kc.arena_len
    return end - kc.offs[g]


cdef inline uint64_t _bin_key0(int64_t off, int64_t n) noexcept nogil:
    # Slot.key0 of a binary first key column: where the key starts in the arena
    # (above bit 16) and its length (below; 0xFFFF when it is that long or longer,
    # then the offsets say): a probe compares lengths without touching offs.
    return (<uint64_t>off << 16) | <uint64_t>(n if n < 0xFFFF else 0xFFFF)


cdef inline int64_t _at_least(int64_t n, int64_t smallest) noexcept nogil:
    # The least power-of-two multiple of `smallest` that is >= n.
    cdef int64_t cap = smallest
    while cap < n:
        cap *= 2
    return cap


cdef inline void* _alloc(size_t size) noexcept nogil:
    # malloc that never asks for 0 bytes (malloc(0) may return NULL).
    return malloc(size if size else 1)


# --- shared blocks (copy-on-write; see the module docstring) -------------------------

cdef struct _Head:
    # In front of every per-group array, arena and slot table of a GroupTable.
    int64_t refs            # tables holding the block (atomic)
    uintptr_t writer        # the table that may append to it in place, 0 for none
    int64_t len             # once writer is 0: how much the last writer had (bytes; groups
                            # for a slot table): no holder has more
    void* src               # a block whose first bytes a background fold copies here
                            # before it reads this one (see _pending); else NULL. (Also
                            # keeps the data 16-byte aligned.)


cdef enum:
    # What _for_arrays does to each block of a table (see _visit).
    _DROP = 1
    _SHARE
    _OWN
    _SETTLE     # copy in what a block's src holds, and drop src (see _pending)
    _ABANDON    # drop src without copying (the fold that would have is dropped)


cdef inline _Head* _head(const void* p) noexcept nogil:
    return (<_Head*>p) - 1


cdef inline uintptr_t _token(GroupTable t) noexcept nogil:
    # A table's name as a block's writer: its address, unique while it holds blocks
    # (a table gives up the writer role of every block it drops).
    return <uintptr_t><void*>t


cdef void* _b_alloc(size_t size, uintptr_t owner, bint zero) noexcept nogil:
    # A new block of `size` bytes (zeroed when asked), written by `owner`; NULL when
    # out of memory.
    cdef _Head* h = <_Head*>(calloc(1, sizeof(_Head) + size) if zero else malloc(sizeof(_Head) + size))
    if h == NULL:
        return NULL
    h.refs = 1
    h.writer = owner
    h.len = 0
    h.src = NULL
    return <void*>(h + 1)


cdef inline bint _b_writer(const void* p, uintptr_t owner) noexcept nogil:
    return sc_writer_load(&_head(p).writer) == owner


cdef inline bint _b_alone(const void* p) noexcept nogil:
    # Only the caller holds p: no other table can get hold of it meanwhile, as a
    # reference is only ever given by a holder.
    return sc_refs_load(&_head(p).refs) == 1


cdef bint _b_claim(void* p, uintptr_t owner, int64_t used, bint exact) noexcept nogil:
    # Make `owner`, a holder of p using its first `used` bytes (groups of a slot
    # table), p's writer if it may be: when owner holds it alone, or when it has no
    # writer and no holder uses more of it than owner (the last writer said how much
    # it had). `exact`: the block must hold nothing beyond `used` either (a slot
    # table, whose extra slots would name groups owner does not have).
    cdef _Head* h = _head(p)
    cdef uintptr_t none = 0
    if sc_writer_load(&h.writer) == owner:
        return True
    if _b_alone(p):
        if exact and (sc_writer_load(&h.writer) != 0 or h.len != used):
            return False
        sc_writer_store(&h.writer, owner)
        return True
    if not sc_writer_cas(&h.writer, &none, owner):
        return False
    if h.len == used:
        return True
    sc_writer_store(&h.writer, 0)  # another holder may use more: not ours to append to
    return False


cdef void _b_drop(void* p, uintptr_t owner, int64_t used) noexcept nogil:
    # `owner` lets go of p (NULL: nothing), saying how much of it it used; the last
    # holder frees it.
    cdef _Head* h
    if p == NULL:
        return
    h = _head(p)
    if sc_writer_load(&h.writer) == owner:
        h.len = used
        sc_writer_store(&h.writer, 0)
    if sc_refs_add(&h.refs, -1) == 0:
        free(h)


cdef void _b_unref(void* p) noexcept nogil:
    # An exported array lets go of p: a holder that never writes (unlike _b_drop, it
    # leaves the writer and its length alone).
    if sc_refs_add(&_head(p).refs, -1) == 0:
        free(_head(p))


cdef void* _b_resize(void* p, size_t used, size_t size, uintptr_t owner) noexcept nogil:
    # p's first `used` bytes in a block of `size` bytes that `owner` writes: p itself,
    # reallocated, when owner is its only holder; else a new block, and p is dropped
    # (its other holders keep it as it is). NULL when out of memory (p unchanged).
    cdef _Head* h
    cdef void* q
    if p == NULL:
        return _b_alloc(size, owner, False)
    if _b_alone(p):
        h = <_Head*>realloc(_head(p), sizeof(_Head) + size)
        if h == NULL:
            return NULL
        h.writer = owner
        return <void*>(h + 1)
    q = _b_alloc(size, owner, False)
    if q == NULL:
        return NULL
    if used:
        memcpy(q, p, used)
    _b_drop(p, owner, <int64_t>used)
    return q


cdef inline void* _grow(void* p, size_t used, size_t size, uintptr_t owner, int* rc) noexcept nogil:
    # _b_resize that leaves p as it is and sets rc to -1 when out of memory (or when
    # an earlier call did).
    cdef void* q
    if rc[0]:
        return p
    q = _b_resize(p, used, size, owner)
    if q == NULL:
        rc[0] = -1
        return p
    return q


cdef inline bint _writable(void* p, size_t used, bint append_only, uintptr_t me) noexcept nogil:
    # Whether `me` may write p in place: an append-only block when it may claim what
    # lies beyond its `used` bytes, any other when nobody else holds it.
    if append_only:
        return _b_claim(p, me, <int64_t>used, False)
    return _b_alone(p)


cdef void* _visit(void* p, size_t used, size_t size, bint append_only, int op, uintptr_t me,
                  uintptr_t twin, int* rc) noexcept nogil:
    # One block of table `me`, of which it uses `used` bytes (see _for_arrays);
    # returns what the table holds after.
    #   _DROP: let go of it.
    #   _SHARE: one more holder, the new table `twin`, which becomes the writer of an
    #     append-only block that `me` writes or may claim (_b_claim).
    #   _OWN: make it writable by `me`: an append-only block needs `me` as writer
    #     (_b_claim), an accumulator needs `me` as its only holder; otherwise `me`
    #     gets a copy of the `used` bytes in a block of `size`.
    #   _SETTLE, _ABANDON: see the enum.
    # A failed copy sets rc to -1 and leaves the block as it was.
    cdef void* q
    if p == NULL or rc[0]:
        return p
    if op == _SETTLE or op == _ABANDON:
        q = _head(p).src
        if q != NULL:
            if op == _SETTLE and used:
                memcpy(p, q, used)
            _head(p).src = NULL
            _b_drop(q, me, <int64_t>used)
        return p
    if op == _DROP:
        _b_drop(p, me, <int64_t>used)
        return NULL
    if op == _SHARE:
        # Claimed before the twin holds it: `me` alone may claim whatever the block
        # holds beyond `used` (a dropped copy's groups).
        if append_only and _b_claim(p, me, <int64_t>used, False):
            sc_writer_store(&_head(p).writer, twin)
        sc_refs_add(&_head(p).refs, 1)
        return p
    if _writable(p, used, append_only, me):
        return p
    q = _b_alloc(size, me, False)
    if q == NULL:
        rc[0] = -1
        return p
    if used:
        memcpy(q, p, used)
    _b_drop(p, me, <int64_t>used)
    return q


cdef int _for_arrays(GroupTable t, int op, uintptr_t twin) noexcept nogil:
    # _visit every block of t but the slot table under _OWN (see _own); -1 when a
    # copy ran out of memory (then the blocks visited before it are t's own).
    cdef uintptr_t me = _token(t)
    cdef size_t used = <size_t>t.n_groups * 8
    cdef size_t cap = <size_t>t.group_cap * 8
    cdef int rc = 0
    cdef Py_ssize_t k
    cdef Py_ssize_t j
    cdef KeyCol* kc
    cdef ValCol* c
    t.group_hash = <uint64_t*>_visit(t.group_hash, used, cap, True, op, me, twin, &rc)
    if op == _DROP:
        _b_drop(t.slots, me, t.n_groups)
        t.slots = NULL
    elif op == _SHARE and t.slots != NULL:
        if _b_claim(t.slots, me, t.n_groups, True):
            sc_writer_store(&_head(t.slots).writer, twin)
        sc_refs_add(&_head(t.slots).refs, 1)
    if t.keys != NULL:
        for k in range(t.n_keys):
            kc = &t.keys[k]
            kc.ints = <uint64_t*>_visit(kc.ints, used, cap, True, op, me, twin, &rc)
            kc.offs = <int64_t*>_visit(kc.offs, used, cap, True, op, me, twin, &rc)
            kc.nulls = <uint8_t*>_visit(kc.nulls, used // 8, cap // 8, True, op, me, twin, &rc)
            kc.arena = <uint8_t*>_visit(kc.arena, <size_t>kc.arena_len, <size_t>kc.arena_cap, True, op,
                                        me, twin, &rc)
    t.counts = <int64_t*>_visit(t.counts, used, cap, False, op, me, twin, &rc)
    if t.vals != NULL:
        for j in range(t.n_vals):
            c = &t.vals[j]
            c.nulls = <int64_t*>_visit(c.nulls, used, cap, False, op, me, twin, &rc)
            c.sum = <uint64_t*>_visit(c.sum, used, cap, False, op, me, twin, &rc)
            c.msum = <double*>_visit(c.msum, used, cap, False, op, me, twin, &rc)
            c.mn = <uint64_t*>_visit(c.mn, used, cap, False, op, me, twin, &rc)
            c.mx = <uint64_t*>_visit(c.mx, used, cap, False, op, me, twin, &rc)
    return rc


cdef void* _pending(void* p, size_t used, size_t size, bint append_only, bint grow, uintptr_t me,
                    int* rc, bint* left) noexcept nogil:
    # For a fold on the background thread (see _reserve): p made writable by `me`
    # with room for `size` bytes (`grow`: more than p has), with no data copied on
    # the calling thread. p itself when `me` may write it in place (as _OWN) and it
    # need not grow; else a new block of `size` bytes whose src is p: the fold
    # copies p's first `used` bytes in (_settle) before it reads them, and only then
    # drops p, so that what it copies stays as it was. rc: as _visit; `left` set
    # when a copy is left to the fold.
    cdef void* q
    if rc[0]:
        return p
    if p != NULL and not grow and _writable(p, used, append_only, me):
        return p
    q = _b_alloc(size, me, False)
    if q == NULL:
        rc[0] = -1
        return p
    if p != NULL:
        if used:
            _head(q).src = p
            left[0] = True
        else:
            _b_drop(p, me, 0)
    return q


cdef void _settle(GroupTable t, bint copy) noexcept nogil:
    # The copies _pending left to the fold: made (`copy`), or dropped with the fold.
    if t.bg_copies:
        _for_arrays(t, _SETTLE if copy else _ABANDON, 0)
        t.bg_copies = False


cdef int _reserve_blocks(GroupTable t, int64_t cap, int64_t n, int64_t* arena_bytes) noexcept nogil:
    # _reserve's per-group arrays (room for `cap` groups) and key arenas (room for
    # the n rows bound: *arena_bytes, all columns), through _pending (which also
    # allocates the arrays a new table has not yet). 0, or -1 when
    # out of memory (then the capacities are unchanged; blocks replaced hold more
    # room, and the copies left are left: see _settle).
    cdef uintptr_t me = _token(t)
    cdef size_t used = <size_t>t.n_groups * 8
    cdef size_t size = <size_t>cap * 8
    cdef bint grow = cap > t.group_cap
    cdef int rc = 0
    cdef Py_ssize_t k
    cdef Py_ssize_t j
    cdef KeyCol* kc
    cdef ValCol* c
    cdef int64_t span
    cdef int64_t arena_cap
    cdef bint left = False
    arena_bytes[0] = 0
    t.counts = <int64_t*>_pending(t.counts, used, size, False, grow, me, &rc, &left)
    t.group_hash = <uint64_t*>_pending(t.group_hash, used, size, True, grow,
                                       me, &rc, &left)
    for k in range(t.n_keys):
        kc = &t.keys[k]
        if kc.nulls != NULL:
            kc.nulls = <uint8_t*>_pending(kc.nulls, used // 8, size // 8, True, grow, me, &rc, &left)
        if _is_bin(kc.kind):
            kc.offs = <int64_t*>_pending(kc.offs, used, size, True, grow, me, &rc, &left)
            # The rows' bytes, nulls' included: at most what their keys add.
            if kc.kind == K_BIN32:
                span = (<const int32_t*>kc.inp.values)[n] - (<const int32_t*>kc.inp.values)[0]
            else:
                span = (<const int64_t*>kc.inp.values)[n] - (<const int64_t*>kc.inp.values)[0]
            arena_bytes[0] += kc.arena_len + span
            arena_cap = kc.arena_cap
            if kc.arena_len + span > arena_cap:
                arena_cap = _arena_cap_for(kc, kc.arena_len + span)
            kc.arena = <uint8_t*>_pending(kc.arena, <size_t>kc.arena_len, <size_t>arena_cap, True,
                                          arena_cap > kc.arena_cap, me, &rc, &left)
            if rc == 0:
                kc.arena_cap = arena_cap
        else:
            kc.ints = <uint64_t*>_pending(kc.ints, used, size, True, grow, me, &rc, &left)
    for j in range(t.n_vals):
        c = &t.vals[j]
        if c.nulls != NULL:
            c.nulls = <int64_t*>_pending(c.nulls, used, size, False, grow, me, &rc, &left)
        if c.flags & HAS_SUM:
            c.sum = <uint64_t*>_pending(c.sum, used, size, False, grow, me, &rc, &left)
        if c.flags & HAS_MSUM:
            c.msum = <double*>_pending(c.msum, used, size, False, grow, me, &rc, &left)
        if c.flags & HAS_MIN:
            c.mn = <uint64_t*>_pending(c.mn, used, size, False, grow, me, &rc, &left)
        if c.flags & HAS_MAX:
            c.mx = <uint64_t*>_pending(c.mx, used, size, False, grow, me, &rc, &left)
    if left:
        t.bg_copies = True
    if rc:
        return -1
    t.group_cap = cap
    return 0


cdef int _own(GroupTable t) noexcept nogil:
    # Before t changes: every block writable by t (_OWN), and a slot table t may not
    # claim rebuilt from t's groups. 0, or -1 when out of memory (t unchanged in
    # content).
    if _for_arrays(t, _OWN, 0):
        return -1
    if t.slots != NULL and not _b_claim(t.slots, _token(t), t.n_groups, True):
        return t._rehash(t.slot_mask + 1)
    return 0


# --- pass 1: hash --------------------------------------------------------------------

cdef inline uint64_t _xxh3_avalanche(uint64_t h) noexcept nogil:
    h ^= h >> 37
    h *= 0x165667919E3779F9ULL
    return h ^ (h >> 32)


cdef inline uint64_t _xxh3_rrmxmx(uint64_t h, uint64_t n) noexcept nogil:
    h ^= rotl64(h, 49) ^ rotl64(h, 24)
    h *= 0x9FB21C651E98DF25ULL
    h ^= (h >> 35) + n
    h *= 0x9FB21C651E98DF25ULL
    return h ^ (h >> 28)


cdef inline uint64_t _xxh3_9to16(uint64_t first, uint64_t last, int64_t n) noexcept nogil:
    # XXH3-64 of a key of 9 to 16 bytes, from its first and last 8 bytes (little-endian).
    cdef uint64_t lo = first ^ 0x6782737BEA4239B9ULL
    cdef uint64_t hi = last ^ 0xAF56BC3B0996523AULL
    return _xxh3_avalanche(<uint64_t>n + SC_BSWAP64(lo) + hi + sc_mul128_fold64(lo, hi))


cdef uint64_t _hash_long(const uint8_t* p, int64_t n) noexcept nogil:
    # Out of line, so that _hash_key is small enough to inline into the loops.
    return xxh64(p, <size_t>n, 0)


cdef inline uint64_t _hash_key(const uint8_t* p, int64_t n) noexcept nogil:
    """The hash of a binary key p[:n]: XXH3-64 (seed 0, default secret) up to 16 bytes,
    XXH64 beyond. The constants are the secret's words that those lengths read, xored
    together as XXH3 does (checked against the ``xxhash`` package by the tests)."""
    cdef uint64_t lo
    cdef uint32_t c
    if n > 16:
        return _hash_long(p, n)
    if n > 8:
        return _xxh3_9to16(read_le64(p), read_le64(p + n - 8), n)
    if n >= 4:
        lo = (<uint64_t>read_le32(p) << 32) + read_le32(p + n - 4)
        return _xxh3_rrmxmx(lo ^ 0xC73AB174C5ECD5A2ULL, <uint64_t>n)
    if n > 0:
        c = (<uint32_t>p[0] << 16) | (<uint32_t>p[n >> 1] << 24) | p[n - 1] | (<uint32_t>n << 8)
        return xxh64_avalanche(c ^ 0x87275A9BULL)
    return 0x2D06800538D394C2ULL


cdef void _hash_ints(
    const int_t* v, const Input* inp, int64_t start, int64_t m, uint64_t* out, bint first
) noexcept nogil:
    cdef int64_t i
    cdef uint64_t x
    v += start
    if inp.valid == NULL and first:
        for i in range(m):
            out[i] = xxh64_u64(<uint64_t>v[i], 0)
        return
    for i in range(m):
        if _is_null(inp, start + i):
            x = _NULL_HASH
        else:
            x = xxh64_u64(<uint64_t>v[i], 0)
        out[i] = x if first else xxh64_u64(out[i], x)


cdef void _hash_bytes(
    const offset_t* offs, const Input* inp, int64_t start, int64_t m, uint64_t* out, bint first
) noexcept nogil:
    cdef int64_t i
    cdef uint64_t x
    cdef const uint8_t* data = inp.data
    offs += start
    if inp.valid == NULL and first:
        for i in range(m):
            out[i] = _hash_key(data + offs[i], offs[i + 1] - offs[i])
        return
    for i in range(m):
        if _is_null(inp, start + i):
            x = _NULL_HASH
        else:
            x = _hash_key(data + offs[i], offs[i + 1] - offs[i])
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


# --- pass 2: assign (helpers) -------------------------------------------------------

cdef inline bint _same_bytes(const uint8_t* a, const uint8_t* b, int64_t n) noexcept nogil:
    # Keys are short (ids, names): compare whole words, the last one overlapping,
    # instead of calling memcmp.
    cdef uint64_t x
    cdef uint64_t y
    cdef uint32_t u
    cdef uint32_t v
    cdef uint64_t x2
    cdef uint64_t y2
    cdef int64_t i = 0
    if n >= 8:
        if n <= 16:
            # The usual id: first and last words, no loop, one branch.
            memcpy(&x, a, 8)
            memcpy(&y, b, 8)
            memcpy(&x2, a + n - 8, 8)
            memcpy(&y2, b + n - 8, 8)
            return ((x ^ y) | (x2 ^ y2)) == 0
        while i + 8 < n:
            memcpy(&x, a + i, 8)
            memcpy(&y, b + i, 8)
            if x != y:
                return False
            i += 8
        memcpy(&x, a + n - 8, 8)
        memcpy(&y, b + n - 8, 8)
        return x == y
    if n >= 4:
        memcpy(&u, a, 4)
        memcpy(&v, b, 4)
        if u != v:
            return False
        memcpy(&u, a + n - 4, 4)
        memcpy(&v, b + n - 4, 4)
        return u == v
    while i < n:
        if a[i] != b[i]:
            return False
        i += 1
    return True


cdef inline bint _col_equals(const KeyCol* kc, uint64_t ref, int64_t g, int64_t row,
                             int64_t n_groups) noexcept nogil:
    """Whether input ``row`` has group ``g``'s key in this column (nulls equal nulls).

    ``ref`` is the group's integer key (unused for a binary column).
    """
    cdef bint row_null = _is_null(&kc.inp, row)
    cdef bint group_null = kc.nulls != NULL and kc.nulls[g]
    cdef const uint8_t* p
    cdef int64_t n
    if row_null or group_null:
        return row_null and group_null
    if _is_bin(kc.kind):
        _bytes_at(&kc.inp, kc.kind, row, &p, &n)
        return n == _key_len(kc, g, n_groups) and _same_bytes(p, kc.arena + kc.offs[g], n)
    return _int_at(kc.inp.values, kc.kind, row) == ref


cdef inline bint _row_equals(
    const KeyCol* keys, Py_ssize_t n_keys, int64_t g, int64_t row, uint64_t key0, int64_t n_groups
) noexcept nogil:
    """Whether input ``row`` has the key of group ``g``, whose first column is ``key0``."""
    cdef Py_ssize_t k
    cdef const KeyCol* kc
    if not _col_equals(&keys[0], key0, g, row, n_groups):
        return False
    for k in range(1, n_keys):
        kc = &keys[k]
        if not _col_equals(kc, 0 if _is_bin(kc.kind) else kc.ints[g], g, row, n_groups):
            return False
    return True


cdef inline int64_t _find_bin(
    GroupTable t, const Slot* slots, uint64_t mask, const KeyCol* kc, const uint8_t* arena,
    const uint8_t* key_nulls, uint64_t h, const uint8_t* p, int64_t n, bint null, bint nullable,
) noexcept nogil:
    # The group of a row whose only key is p[:n] (or null), of hash h; a new group
    # (_add_bin) when there is none yet. A slot matches when its tag is h's upper
    # half and the key compares equal: length (in key0 when below 0xFFFF), then
    # bytes. `nullable`: the input or the table has a null key (else `null` is
    # False and key_nulls NULL, and the compiler drops the checks).
    cdef uint64_t pos = h & mask
    cdef uint64_t want = <uint64_t>(n if n < 0xFFFF else 0xFFFF)
    cdef uint64_t s
    cdef uint64_t key0
    cdef int64_t g
    while True:
        s = slots[pos].tag_gid
        if s == 0:
            return _add_bin(t, h, pos, p, n, null)
        if ((s ^ h) >> 32) == 0:
            g = <int64_t>(s & 0xFFFFFFFFULL) - 1
            key0 = slots[pos].key0
            if nullable and key_nulls != NULL and key_nulls[g]:
                if null:
                    return g
            elif (not (nullable and null) and (key0 & 0xFFFF) == want
                    and (want < 0xFFFF or _key_len(kc, g, t.n_groups) == n)
                    and _same_bytes(p, arena + (key0 >> 16), n)):
                return g
        pos = (pos + 1) & mask


cdef inline int64_t _find_int(
    GroupTable t, const Slot* slots, uint64_t mask, const KeyCol* kc, uint64_t h,
    uint64_t v, bint null,
) noexcept nogil:
    # As _find_bin for an integer key v: the slot holds the key itself.
    cdef uint64_t pos = h & mask
    cdef uint64_t s
    cdef int64_t g
    while True:
        s = slots[pos].tag_gid
        if s == 0:
            return _add_int(t, h, pos, v, null)
        if ((s ^ h) >> 32) == 0:
            g = <int64_t>(s & 0xFFFFFFFFULL) - 1
            if kc.nulls != NULL and kc.nulls[g]:
                if null:
                    return g
            elif not null and slots[pos].key0 == v:
                return g
        pos = (pos + 1) & mask


cdef inline void _prefetch_row(const Slot* slots, uint64_t mask, const KeyCol* kc,
                               const uint64_t* hashes, int64_t i, int64_t m) noexcept nogil:
    # Two stages hide the cache misses of a large table: the slot of row i + 2D,
    # then the arena bytes that the slot of row i + D names.
    cdef const Slot* ahead
    if i + 2 * PREFETCH_AHEAD < m:
        SC_PREFETCH(&slots[hashes[i + 2 * PREFETCH_AHEAD] & mask])
    if _is_bin(kc.kind) and i + PREFETCH_AHEAD < m:
        ahead = &slots[hashes[i + PREFETCH_AHEAD] & mask]
        if ahead.tag_gid != 0:
            SC_PREFETCH(kc.arena + (ahead.key0 >> 16))


cdef inline int _assign_bin_rows(
    GroupTable t, const offset_t* offs, int64_t start, int64_t m, const uint64_t* hashes,
    uint32_t* gid, bint count, bint nullable, bint fused,
) noexcept nogil:
    # _assign_bin's loop, compiled for each `nullable` (null checks) and `fused` (the
    # hash computed here, not read from `hashes`: no hash pass, no prefetching).
    cdef const KeyCol* kc = &t.keys[0]
    cdef const uint8_t* data = kc.inp.data
    cdef const uint8_t* valid = kc.inp.valid
    cdef int64_t voff = kc.inp.voff + start
    cdef const Slot* slots = t.slots
    cdef uint64_t mask = t.slot_mask
    cdef int64_t groups = t.n_groups
    cdef const uint8_t* arena = kc.arena
    cdef const uint8_t* key_nulls = kc.nulls
    cdef int64_t* counts = t.counts
    cdef bint prefetch = not fused and mask + 1 >= _PREFETCH_SLOTS
    cdef int64_t i
    cdef int64_t g
    cdef int64_t n
    cdef uint64_t h
    cdef offset_t a
    cdef bint null = False
    offs += start
    for i in range(m):
        if not fused and prefetch:
            _prefetch_row(slots, mask, kc, hashes, i, m)
        a = offs[i]
        n = offs[i + 1] - a
        if nullable:
            null = valid != NULL and not _bit(valid, voff + i)
        if not fused:
            h = hashes[i]
        elif nullable and null:
            h = _NULL_HASH
        else:
            h = _hash_key(data + a, n)
        g = _find_bin(t, slots, mask, kc, arena, key_nulls, h, data + a, n, null, nullable)
        if g < 0:
            return <int>g
        if g >= groups:
            # A new group: the table, the arena, the null flags and the per-group
            # arrays may have grown.
            slots = t.slots
            mask = t.slot_mask
            groups = t.n_groups
            arena = kc.arena
            key_nulls = kc.nulls
            counts = t.counts
            prefetch = not fused and mask + 1 >= _PREFETCH_SLOTS
        gid[i] = <uint32_t>g
        if count:
            counts[g] += 1
    return 0


cdef inline uint64_t _load64(const uint8_t* p) noexcept nogil:
    cdef uint64_t x
    memcpy(&x, p, 8)
    return x


cdef inline void _store64(uint8_t* p, uint64_t x) noexcept nogil:
    memcpy(p, &x, 8)


cdef inline (Slot*, uint64_t, int64_t, uint8_t*, int64_t*, int64_t*, uint64_t*, int64_t) _refresh(
        GroupTable t, KeyCol* kc) noexcept nogil:
    # What _assign_bin_fused holds of the table, read again after it may have grown;
    # last, how many groups fit without growing anything: n_groups may reach neither
    # the group capacity, nor half the slots, nor _MAX_GROUPS.
    cdef int64_t room = t.group_cap
    if <int64_t>((t.slot_mask + 1) >> 1) < room:
        room = <int64_t>((t.slot_mask + 1) >> 1)
    if _MAX_GROUPS < room:
        room = _MAX_GROUPS
    return t.slots, t.slot_mask, t.n_groups, kc.arena, t.counts, kc.offs, t.group_hash, room


cdef int _assign_bin_fused(
    GroupTable t, const offset_t* offs, int64_t start, int64_t m, uint32_t* gid,
) noexcept nogil:
    # _assign_bin_rows of an update (each row counted) for a table that fits in
    # cache with no null key in the input nor in the table (the clickstream's ids),
    # with the usual id, 9 to 16 bytes, special-cased: its two words (the first
    # eight bytes and the last eight) are loaded once, for the hash (XXH3's 9-16
    # path, as _hash_key), for the compare with a group's key (the length in key0,
    # then the same two words in the arena) and, for a new group, for its copy into
    # the arena. A new group that fits in the room allocated is appended here; else,
    # and for other lengths, the general path (_find_bin, _add_bin) runs.
    cdef KeyCol* kc = &t.keys[0]
    cdef const uint8_t* data = kc.inp.data
    cdef Slot* slots
    cdef uint64_t mask
    cdef int64_t groups
    cdef uint8_t* arena
    cdef int64_t* counts
    cdef int64_t* key_offs
    cdef uint64_t* group_hash
    cdef int64_t room                   # groups that fit without growing anything
    cdef int64_t i
    cdef int64_t g
    cdef int64_t n
    cdef int64_t at
    cdef uint64_t h
    cdef uint64_t w0
    cdef uint64_t w1
    cdef uint64_t s
    cdef uint64_t key0
    cdef uint64_t pos
    cdef const uint8_t* p
    cdef const uint8_t* q
    cdef offset_t a
    slots, mask, groups, arena, counts, key_offs, group_hash, room = _refresh(t, kc)
    offs += start
    for i in range(m):
        a = offs[i]
        n = offs[i + 1] - a
        p = data + a
        if <uint64_t>(n - 9) >= 8:
            g = _find_bin(t, slots, mask, kc, arena, NULL, _hash_key(p, n), p, n, False, False)
            if g < 0:
                return <int>g
            if g >= groups:
                slots, mask, groups, arena, counts, key_offs, group_hash, room = _refresh(t, kc)
        else:
            w0 = _load64(p)
            w1 = _load64(p + n - 8)
            h = _xxh3_9to16(read_le64(p), read_le64(p + n - 8), n)
            pos = h & mask
            while True:
                s = slots[pos].tag_gid
                if s == 0:
                    at = kc.arena_len
                    if groups < room and at + n <= kc.arena_cap:
                        # A new group, in place (as _add_bin and _commit).
                        g = groups
                        _store64(arena + at, w0)
                        _store64(arena + at + n - 8, w1)
                        key_offs[g] = at
                        kc.arena_len = at + n
                        kc.key_bytes += n
                        group_hash[g] = h
                        counts[g] = 0
                        slots[pos].tag_gid = (h & 0xFFFFFFFF00000000ULL) | <uint64_t>(g + 1)
                        slots[pos].key0 = _bin_key0(at, n)
                        groups = g + 1
                        t.n_groups = groups
                    else:
                        # The arrays, the arena or the table grow.
                        g = _add_bin(t, h, pos, p, n, False)
                        if g < 0:
                            return <int>g
                        slots, mask, groups, arena, counts, key_offs, group_hash, room = _refresh(t, kc)
                    break
                if ((s ^ h) >> 32) == 0:
                    key0 = slots[pos].key0
                    if (key0 & 0xFFFF) == <uint64_t>n:
                        q = arena + (key0 >> 16)
                        if ((_load64(q) ^ w0) | (_load64(q + n - 8) ^ w1)) == 0:
                            # (The slot holds group + 1 >= 1 in its low half.)
                            g = <int64_t>(<uint32_t>s - 1)
                            break
                pos = (pos + 1) & mask
        gid[i] = <uint32_t>g
        counts[g] += 1
    return 0


cdef int _assign_bin(
    GroupTable t, const offset_t* offs, int64_t start, int64_t m, const uint64_t* hashes,
    uint32_t* gid, bint count,
) noexcept nogil:
    # _assign for one binary/utf8 key column: the compare is inlined, a table that
    # fits in cache is probed without a hash pass nor prefetching (hashes NULL), and
    # the usual case (no null key in the input nor in the table) without null checks.
    if t.keys[0].inp.valid == NULL and t.keys[0].nulls == NULL:
        if hashes == NULL:
            if count:
                return _assign_bin_fused(t, offs, start, m, gid)
            return _assign_bin_rows(t, offs, start, m, hashes, gid, count, False, True)
        return _assign_bin_rows(t, offs, start, m, hashes, gid, count, False, False)
    if hashes == NULL:
        return _assign_bin_rows(t, offs, start, m, hashes, gid, count, True, True)
    return _assign_bin_rows(t, offs, start, m, hashes, gid, count, True, False)


cdef int _assign_int(
    GroupTable t, const int_t* v, int64_t start, int64_t m, const uint64_t* hashes,
    uint32_t* gid, bint count,
) noexcept nogil:
    # _assign for one integer key column (as _assign_bin).
    cdef const KeyCol* kc = &t.keys[0]
    cdef const uint8_t* valid = kc.inp.valid
    cdef int64_t voff = kc.inp.voff + start
    cdef const Slot* slots = t.slots
    cdef uint64_t mask = t.slot_mask
    cdef int64_t groups = t.n_groups
    cdef int64_t* counts = t.counts
    cdef bint prefetch = hashes != NULL and mask + 1 >= _PREFETCH_SLOTS
    cdef int64_t i
    cdef int64_t g
    cdef uint64_t x
    cdef uint64_t h
    cdef bint null
    v += start
    for i in range(m):
        if prefetch:
            _prefetch_row(slots, mask, kc, hashes, i, m)
        x = <uint64_t>v[i]
        null = valid != NULL and not _bit(valid, voff + i)
        if hashes != NULL:
            h = hashes[i]
        else:
            h = _NULL_HASH if null else xxh64_u64(x, 0)
        g = _find_int(t, slots, mask, kc, h, x, null)
        if g < 0:
            return <int>g
        if g >= groups:
            slots = t.slots
            mask = t.slot_mask
            groups = t.n_groups
            counts = t.counts
            prefetch = hashes != NULL and mask + 1 >= _PREFETCH_SLOTS
        gid[i] = <uint32_t>g
        if count:
            counts[g] += 1
    return 0


cdef int _assign_one(GroupTable t, int64_t start, int64_t m, const uint64_t* hashes,
                     uint32_t* gid, bint count) noexcept nogil:
    cdef const Input* inp = &t.keys[0].inp
    cdef int kind = t.keys[0].kind
    if kind == K_BIN32:
        return _assign_bin(t, <const int32_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_BIN64:
        return _assign_bin(t, <const int64_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_I8:
        return _assign_int(t, <const int8_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_I16:
        return _assign_int(t, <const int16_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_I32:
        return _assign_int(t, <const int32_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_I64:
        return _assign_int(t, <const int64_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_U8:
        return _assign_int(t, <const uint8_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_U16:
        return _assign_int(t, <const uint16_t*>inp.values, start, m, hashes, gid, count)
    if kind == K_U32:
        return _assign_int(t, <const uint32_t*>inp.values, start, m, hashes, gid, count)
    return _assign_int(t, <const uint64_t*>inp.values, start, m, hashes, gid, count)


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
    const num_t* v, const Input* inp, int64_t start, int64_t m, const uint32_t* gid,
    uint64_t* slots, int op,
) noexcept nogil:
    # One accumulator per pass: each pass is a tight loop (the compiler unswitches
    # on the invariant `op`), and the slots pointer lives in a register.
    cdef const uint8_t* valid = inp.valid
    cdef int64_t voff = inp.voff + start
    cdef int64_t i = 0
    v += start
    if valid == NULL:
        # Four rows a step: the loop's own instructions are a third of a row's.
        # Rows still add in order (float sums are not reassociated).
        while i + 4 <= m:
            _apply(slots, op, gid[i], v[i])
            _apply(slots, op, gid[i + 1], v[i + 1])
            _apply(slots, op, gid[i + 2], v[i + 2])
            _apply(slots, op, gid[i + 3], v[i + 3])
            i += 4
        while i < m:
            _apply(slots, op, gid[i], v[i])
            i += 1
    else:
        for i in range(m):
            if _bit(valid, voff + i):
                _apply(slots, op, gid[i], v[i])


cdef void _fold_kind(
    int kind, const Input* inp, int64_t start, int64_t m, const uint32_t* gid,
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


cdef void _count_rows(int64_t m, const uint32_t* gid, int64_t* counts) noexcept nogil:
    cdef int64_t i
    for i in range(m):
        counts[gid[i]] += 1


cdef void _count_nulls(
    const Input* inp, int64_t start, int64_t m, const uint32_t* gid, int64_t* nulls
) noexcept nogil:
    cdef int64_t i
    for i in range(m):
        if not _bit(inp.valid, inp.voff + start + i):
            nulls[gid[i]] += 1


cdef void _add_counts(
    const Input* inp, int64_t start, int64_t m, const uint32_t* gid, int64_t* dst
) noexcept nogil:
    # State columns of counts have no nulls (checked when they are bound).
    cdef const int64_t* v = (<const int64_t*>inp.values) + start
    cdef int64_t i
    for i in range(m):
        dst[gid[i]] += v[i]


cdef bint _any_nulls(const Input* count, const Input* nonnull, int64_t start, int64_t m) noexcept nogil:
    cdef const int64_t* c = (<const int64_t*>count.values) + start
    cdef const int64_t* v = (<const int64_t*>nonnull.values) + start
    cdef int64_t i
    for i in range(m):
        if c[i] != v[i]:
            return True
    return False


cdef void _add_nulls(
    const Input* count, const Input* nonnull, int64_t start, int64_t m, const uint32_t* gid,
    int64_t* nulls,
) noexcept nogil:
    cdef const int64_t* c = (<const int64_t*>count.values) + start
    cdef const int64_t* v = (<const int64_t*>nonnull.values) + start
    cdef int64_t i
    for i in range(m):
        nulls[gid[i]] += c[i] - v[i]


cdef void _value_inits(ValCol* c) noexcept nogil:
    # What min and max start as: NaN marks "no non-NaN value yet" (see _min_into),
    # else the type's extremes. Sums start at 0 (also 0.0 for a double sum).
    cdef double nan = NAN
    if _is_float(c.kind):
        memcpy(&c.mn_init, &nan, 8)
        memcpy(&c.mx_init, &nan, 8)
    elif _is_signed(c.kind):
        c.mn_init = <uint64_t>INT64_MAX
        c.mx_init = <uint64_t>INT64_MIN
    else:
        c.mn_init = UINT64_MAX
        c.mx_init = 0


cdef void _fill_u64(uint64_t* a, int64_t g0, int64_t g1, uint64_t v) noexcept nogil:
    cdef int64_t g
    for g in range(g0, g1):
        a[g] = v


cdef void _init_values(GroupTable t, int64_t g0, int64_t g1) noexcept nogil:
    # The value accumulators of the new groups g0 .. g1 - 1: zero, or min/max's
    # start (see _value_inits). One pass per array after the assign pass, rather
    # than a look at every accumulator of the spec per new group.
    cdef Py_ssize_t j
    cdef ValCol* c
    if g1 <= g0:
        return
    for j in range(t.n_vals):
        c = &t.vals[j]
        if c.nulls != NULL:
            _fill_u64(<uint64_t*>c.nulls, g0, g1, 0)
        if c.sum != NULL:
            _fill_u64(c.sum, g0, g1, 0)
        if c.msum != NULL:
            _fill_u64(<uint64_t*>c.msum, g0, g1, 0)  # 0.0
        if c.mn != NULL:
            _fill_u64(c.mn, g0, g1, c.mn_init)
        if c.mx != NULL:
            _fill_u64(c.mx, g0, g1, c.mx_init)


cdef inline void _copy_key(uint8_t* dst, const uint8_t* src, int64_t n) noexcept nogil:
    # Keys are short: whole words (the last one overlapping) rather than a memcpy call.
    cdef uint64_t x
    cdef int64_t i = 0
    if n >= 8:
        while i + 8 < n:
            memcpy(&x, src + i, 8)
            memcpy(dst + i, &x, 8)
            i += 8
        memcpy(&x, src + n - 8, 8)
        memcpy(dst + n - 8, &x, 8)
        return
    while i < n:
        dst[i] = src[i]
        i += 1


cdef inline int64_t _arena_cap_for(const KeyCol* kc, int64_t need) noexcept nogil:
    # The capacity kc's arena grows to for `need` bytes: doubled until they fit.
    cdef int64_t cap = kc.arena_cap * 2 if kc.arena_cap else 4096
    while cap < need:
        cap *= 2
    return cap


cdef int _grow_arena(GroupTable t, KeyCol* kc, int64_t need) noexcept nogil:
    # Room for `need` bytes in kc's arena; -1 when out of memory.
    cdef int64_t cap = _arena_cap_for(kc, need)
    cdef void* grown
    grown = _b_resize(kc.arena, <size_t>kc.arena_len, <size_t>cap, _token(t))
    if grown == NULL:
        return -1
    kc.arena = <uint8_t*>grown
    kc.arena_cap = cap
    return 0


cdef inline void _put_key(KeyCol* kc, int64_t g, const uint8_t* p, int64_t n) noexcept nogil:
    # Group g's key p[:n] at the end of the arena (the room is there).
    _copy_key(kc.arena + kc.arena_len, p, n)
    kc.offs[g] = kc.arena_len
    kc.arena_len += n
    kc.key_bytes += n


cdef int _first_null_key(GroupTable t, KeyCol* kc) noexcept nogil:
    # The column's first null key: from now on a flag per group (zero: not null).
    if kc.nulls == NULL:
        kc.nulls = <uint8_t*>_b_alloc(<size_t>t.group_cap, _token(t), True)
        if kc.nulls == NULL:
            return -1
    return 0


cdef int _first_null_value(GroupTable t, ValCol* c) noexcept nogil:
    # The column's first null values: from now on a count per group.
    c.nulls = <int64_t*>_b_alloc(<size_t>t.group_cap * sizeof(int64_t), _token(t), True)
    return -1 if c.nulls == NULL else 0


cdef int64_t _add_bin(GroupTable t, uint64_t h, uint64_t pos, const uint8_t* p, int64_t n,
                      bint null) noexcept nogil:
    # _add for one binary key column, whose bytes the probe already found.
    cdef int64_t g = t.n_groups
    cdef KeyCol* kc = &t.keys[0]
    cdef int rc
    if g == t.group_cap or g >= _MAX_GROUPS or <uint64_t>(g + 1) * 2 > t.slot_mask + 1:
        rc = t._make_room(h, &pos)
        if rc:
            return rc
    if null:
        n = 0
        if _first_null_key(t, kc):
            return -1
    if kc.arena_len + n > kc.arena_cap and _grow_arena(t, kc, kc.arena_len + n):
        return -1
    if kc.nulls != NULL:
        kc.nulls[g] = null
    _put_key(kc, g, p, n)
    t._commit(g, h, pos, _bin_key0(kc.offs[g], n))
    return g


cdef int64_t _add_int(GroupTable t, uint64_t h, uint64_t pos, uint64_t v, bint null) noexcept nogil:
    # _add for one integer key column.
    cdef int64_t g = t.n_groups
    cdef KeyCol* kc = &t.keys[0]
    cdef int rc
    if g == t.group_cap or g >= _MAX_GROUPS or <uint64_t>(g + 1) * 2 > t.slot_mask + 1:
        rc = t._make_room(h, &pos)
        if rc:
            return rc
    if null:
        v = 0
        if _first_null_key(t, kc):
            return -1
    if kc.nulls != NULL:
        kc.nulls[g] = null
    kc.ints[g] = v
    t._commit(g, h, pos, v)
    return g


cdef inline int64_t _nulls_at(const int64_t* nulls, int64_t g) noexcept nogil:
    return nulls[g] if nulls != NULL else 0


# --- input helpers -------------------------------------------------------------------

cdef inline uint8_t* _mutable(object buf):
    return <uint8_t*><uintptr_t>buf.address


cdef int _bind_state(GroupTable t, list columns, list fields, Py_ssize_t at, int kind, Input* inp) except -1:
    field = fields[at]
    arr, name, dtype = columns[at], field.name, field.type
    return t._bind_input(arr, name, dtype, kind, inp)


cdef int _no_nulls(list columns, list fields, Py_ssize_t at) except -1:
    if columns[at].null_count:
        msg = f"state column {fields[at].name!r} must not contain nulls"
        raise ValueError(msg)
    return 0


cdef inline const uint8_t* _address(object buf):
    # Where an input buffer's bytes are: input_address without its size check (an
    # empty buffer is never read). Array.is_cpu would check once per array, but
    # costs more than three Buffer.is_cpu (it builds an enum member).
    if buf is None:
        return <const uint8_t*>_ZEROS
    if not buf.is_cpu:
        input_address(buf)  # raises, naming the device
    return <const uint8_t*><uintptr_t>buf.address


cdef int _bind_array(object arr, object name, object dtype, int kind, Input* inp) except -1:
    # Point `inp` at the buffers of `arr` (column `name`, which must be of type
    # `dtype`), which the caller keeps alive.
    if not arr.type.equals(dtype):
        msg = f"column {name!r} has type {arr.type}, but this aggregator holds {dtype} for it"
        raise InvalidRecordsError(msg)
    return _bind_buffers(arr, kind, inp)


cdef int _bind_buffers(object arr, int kind, Input* inp) except -1:
    # _bind_array of an array whose type the caller checked.
    buffers = arr.buffers()
    cdef int64_t offset = arr.offset
    inp.voff = offset
    inp.valid = _address(buffers[0]) if arr.null_count else NULL
    inp.values = _address(buffers[1]) + _width(kind) * offset
    inp.data = _address(buffers[2]) if _is_bin(kind) else NULL
    return 0


@cython.final
cdef class BatchBinding:
    """Where the columns of one ``pyarrow.RecordBatch`` are, found once for all its slices.

    Finding a column's buffers costs microseconds of pyarrow calls (a slice
    builds its column's Array, then its buffers are listed), about what
    folding a few hundred rows costs. A shard log hands handlers slices of the
    batches its puts stored, several slices each: ``update_batch`` of such a
    slice, given the binding of the batch it was cut from and where, finds
    each column once per stored batch. Columns are found when first asked
    for; the binding keeps the batch alive.
    """

    cdef readonly object batch
    cdef int64_t n_rows
    cdef Py_ssize_t n_cols
    cdef Input* inputs  # per column, at offset 0, once found
    cdef list types     # per column: the type it was found with, None before
    # The last Aggregator plan (aggregate._Plan) found to fit the batch's schema, and
    # its key then value column indices. Index arrays are kept (in `_kept`) until the
    # binding dies: a thread that read `idx` may use it after another adopted a plan.
    cdef object plan
    cdef const Py_ssize_t* idx
    cdef list _kept

    def __init__(self, batch):
        if not isinstance(batch, pa.RecordBatch):
            msg = f"batch must be a pyarrow.RecordBatch, got {type(batch).__name__}"
            raise TypeError(msg)
        n_cols = batch.num_columns
        inputs = <Input*>calloc(n_cols if n_cols else 1, sizeof(Input))
        if inputs == NULL:
            raise MemoryError()
        free(self.inputs)  # __init__ called again
        self.inputs = inputs
        self.batch = batch
        self.n_rows = batch.num_rows
        self.n_cols = n_cols
        self.types = [None] * n_cols

    def __dealloc__(self):
        free(self.inputs)

    cdef int adopt(self, object plan, GroupTable t) except -1:
        # Make `plan` (the _Plan that t was bound with) this binding's: 1 when the
        # batch's schema is the plan's, its columns then found once for every table
        # of that plan (the handed slices share the schema: Aggregator.update's fast
        # path checks nothing more per slice); 0 when it does not fit.
        cdef Py_ssize_t n = t.n_keys + t.n_vals
        cdef Py_ssize_t i
        cdef Py_ssize_t* idx
        cdef Input found
        if plan.any_fix:
            return 0
        schema = self.batch.schema
        wanted = plan.schema
        if schema is not wanted and not schema.equals(wanted):
            return 0
        key_idx = plan.key_idx
        value_idx = plan.value_idx
        if len(key_idx) != t.n_keys or len(value_idx) != t.n_vals:
            return 0
        kept = PyBytes_FromStringAndSize(NULL, (n if n else 1) * sizeof(Py_ssize_t))
        idx = <Py_ssize_t*>PyBytes_AS_STRING(kept)
        for i in range(n):
            if i < t.n_keys:
                at, name, dtype, kind = key_idx[i], t._key_names[i], t._key_types[i], t.keys[i].kind
            else:
                j = i - t.n_keys
                at, name, dtype, kind = value_idx[j], t._value_names[j], t._value_types[j], t.vals[j].kind
            self.bind(at, name, dtype, kind, 0, &found, True)  # found once
            idx[i] = at
        if self._kept is None:
            self._kept = []
        self._kept.append(kept)
        self.idx = idx
        self.plan = plan
        return 1

    cdef int bind(self, object at, object name, object dtype, int kind, int64_t offset,
                  Input* inp, bint checked=False) except -1:
        # Point `inp` at column `at` of the slice starting at row `offset`, which
        # must be of type `dtype` (_bind_array for a slice, without pyarrow calls).
        # `checked`: the caller knows it is (the batch has the schema it expects).
        cdef Py_ssize_t i = at
        cdef const Input* base
        if i < 0 or i >= self.n_cols:
            msg = f"column index {at} out of range for a batch of {self.n_cols} columns"
            raise IndexError(msg)
        held = self.types[i]
        if held is not dtype:
            if held is None:
                # Written before `types` says it is there: a table on another thread
                # that reads the type then reads the input whole (both threads may
                # find the column; they write the same).
                if checked:
                    _bind_buffers(_batch_column(self.batch, i), kind, &self.inputs[i])
                else:
                    _bind_array(_batch_column(self.batch, i), name, dtype, kind, &self.inputs[i])
            elif not held.equals(dtype):
                msg = f"column {name!r} has type {held}, but this aggregator holds {dtype} for it"
                raise InvalidRecordsError(msg)
            self.types[i] = dtype  # the next table of this spec passes with `is`
        base = &self.inputs[i]
        inp.values = base.values + _width(kind) * offset
        inp.data = base.data
        inp.valid = base.valid
        inp.voff = base.voff + offset
        return 0


cdef int _run_fold(GroupTable t, int64_t n, bint merge) except -1:
    # t._fold of the n rows bound (t's lock held), without the GIL for large inputs.
    cdef int rc
    if n == 0:
        return 0
    if n >= _NOGIL_ROWS:
        with nogil:
            rc = t._fold(n, merge)
    else:
        rc = t._fold(n, merge)
    if rc != 0:
        t._raise_for(rc)
    return 0


# --- background folds ----------------------------------------------------------------
#
# A tumbling window's handler folds its batch into the window's aggregator, and the
# framework then spends about as long committing the invocation and starting the
# next one (other shards' windows, other aggregators) as the fold took. So
# update_batch(background=True) of a batch under _NOGIL_ROWS rows hands the fold to
# one background thread and returns: the fold runs beside the Python work, on the
# second core. The caller vouches that the batch's buffers do not change meanwhile
# (the Python layer asks for it only for the records streamcore itself handed to a
# handler: a numpy array under a user's batch may be refilled after update returns).
# The table keeps the batch until its next call. Every later call on that table
# first waits for the fold (_sync, under the table's lock), so nothing can see it
# half done; other tables, copies included, need not wait (see the module
# docstring: the writer of a shared block appends beyond what the other holders
# use).
#
# The fold must not fail where nobody can see it: _reserve makes every allocation
# the fold could need beforehand (room for every row as a new group, the batch's
# key bytes, null flags), on the calling thread, where a failure raises. With room
# made, a fold cannot fail. The copies that room needs (the blocks the table
# shares with a copy, or that grow) are left to the fold (_pending): the caller
# only allocates.
#
# A fold goes to whichever thread takes it first: a table that needs its fold done
# before the background thread has taken it takes it back and runs it itself. So
# a busy machine, where the background thread waits for a CPU, costs what a fold
# in the call costs; only a fold the thread is running is waited for.
#
# The thread never holds the GIL, and its signals are blocked. Like _arrow's
# helper it spins a little after a fold before it sleeps (the next one comes within
# tens of microseconds). Queue and fold states change under _bg_lock only. fork()
# waits until no fold is queued or running, so the child's tables have none.

cdef enum:
    # GroupTable.bg_state
    _BG_NONE = 0        # no fold since the last _sync
    _BG_QUEUED          # in the queue, at bg_ticket
    _BG_RUNNING         # taken by the background thread or by _sync
    _BG_DONE            # done; _sync has not seen it yet

cdef enum:
    _BG_QUEUE = 64                 # folds queued at most (more fold in the call)
    _BG_IDLE_SPIN_NS = 200_000     # the thread, after a fold, before it sleeps

cdef pthread_mutex_t _bg_lock
cdef pthread_cond_t _bg_posted     # the thread waits here for a fold
cdef pthread_cond_t _bg_done       # waiters wait here for the thread's fold
cdef void* _bg_queue[_BG_QUEUE]    # GroupTables (borrowed: a queued table takes its fold
                                   # back before it dies); NULL when taken back
cdef uint64_t _bg_head = 0         # next to take (atomic: the idle spin reads it)
cdef uint64_t _bg_tail = 0         # next free (atomic)
cdef int64_t _bg_live = 0          # folds queued or running, by the thread or a caller
cdef int _bg_thread = 0            # 0: not started, 1: running, -1: could not be started
cdef bint _bg_sleeping = False
cdef int _bg_waiters = 0
cdef bint _bg_enabled = False      # see background_folds
cdef uint64_t _bg_queued = 0       # folds queued (for tests)
cdef uint64_t _bg_ran = 0          # folds the thread ran (for tests)
cdef uint64_t _bg_taken_back = 0   # folds taken back by _sync (for tests)


cdef void* _bg_next_locked() noexcept nogil:
    # The next queued table, taken (NULL when none).
    cdef void* job
    while _bg_head != _bg_tail:
        job = _bg_queue[_bg_head % _BG_QUEUE]
        store_u64(&_bg_head, _bg_head + 1)
        if job != NULL:
            store_int(&(<GroupTable>job).bg_state, _BG_RUNNING)
            return job
    return NULL


cdef void _bg_ended_locked(GroupTable t) noexcept nogil:
    # t's fold is done (or dropped): say so, and wake whoever waits for a fold.
    global _bg_live
    _bg_live -= 1
    store_int(&t.bg_state, _BG_DONE)
    if _bg_waiters:
        pthread_cond_broadcast(&_bg_done)


cdef void* _bg_main(void* arg) noexcept nogil:
    global _bg_sleeping, _bg_ran
    cdef void* job
    cdef int64_t until
    cdef int i
    pthread_mutex_lock(&_bg_lock)
    while True:
        job = _bg_next_locked()
        if job == NULL:
            pthread_mutex_unlock(&_bg_lock)
            until = now_ns() + _BG_IDLE_SPIN_NS
            while load_u64(&_bg_tail) == load_u64(&_bg_head) and now_ns() < until:
                for i in range(64):
                    cpu_relax()
                sched_yield()
            pthread_mutex_lock(&_bg_lock)
            while _bg_head == _bg_tail:
                _bg_sleeping = True
                pthread_cond_wait(&_bg_posted, &_bg_lock)
                _bg_sleeping = False
            continue
        pthread_mutex_unlock(&_bg_lock)
        (<GroupTable>job).bg_rc = (<GroupTable>job)._fold_owned((<GroupTable>job).bg_rows, False)
        pthread_mutex_lock(&_bg_lock)
        _bg_ran += 1
        _bg_ended_locked(<GroupTable>job)


cdef bint _bg_post(GroupTable t) noexcept nogil:
    # Queue t's fold (its inputs bound, room reserved); False when it must fold in
    # the call: no thread, or the queue is full.
    global _bg_thread, _bg_queued, _bg_live
    cdef bint posted = False
    pthread_mutex_lock(&_bg_lock)
    if _bg_thread == 0:
        _bg_thread = 1 if start_thread(_bg_main) else -1
    if _bg_thread == 1 and _bg_tail - _bg_head < _BG_QUEUE:
        t.bg_ticket = _bg_tail
        store_int(&t.bg_state, _BG_QUEUED)
        _bg_queue[_bg_tail % _BG_QUEUE] = <void*>t
        store_u64(&_bg_tail, _bg_tail + 1)
        _bg_queued += 1
        _bg_live += 1
        if _bg_sleeping:
            pthread_cond_signal(&_bg_posted)
        posted = True
    pthread_mutex_unlock(&_bg_lock)
    return posted


cdef bint _bg_finish(GroupTable t, bint run) noexcept nogil:
    # Make t's fold done: take it back if still queued (and run it here when `run`),
    # else wait for the thread to end it. Returns whether it was taken back.
    global _bg_waiters, _bg_taken_back
    pthread_mutex_lock(&_bg_lock)
    if t.bg_state == _BG_QUEUED:
        _bg_queue[t.bg_ticket % _BG_QUEUE] = NULL
        _bg_taken_back += 1
        store_int(&t.bg_state, _BG_RUNNING)
        if run:
            pthread_mutex_unlock(&_bg_lock)
            t.bg_rc = t._fold_owned(t.bg_rows, False)
            pthread_mutex_lock(&_bg_lock)
        _bg_ended_locked(t)
        pthread_mutex_unlock(&_bg_lock)
        return True
    _bg_waiters += 1
    while t.bg_state == _BG_RUNNING:
        pthread_cond_wait(&_bg_done, &_bg_lock)
    _bg_waiters -= 1
    pthread_mutex_unlock(&_bg_lock)
    return False


cdef void _bg_reset() noexcept nogil:
    global _bg_head, _bg_tail, _bg_live, _bg_thread, _bg_sleeping, _bg_waiters
    pthread_mutex_init(&_bg_lock, NULL)
    pthread_cond_init(&_bg_posted, NULL)
    pthread_cond_init(&_bg_done, NULL)
    _bg_head = 0
    _bg_tail = 0
    _bg_live = 0
    _bg_thread = 0
    _bg_sleeping = False
    _bg_waiters = 0


# fork(): the prepare handler waits until no fold is queued or running (on the
# thread, or taken back by a caller: neither needs the GIL to end), and holds the
# lock so that none is posted meanwhile; the child has no background thread and
# starts over (a queued fold would never end there).
cdef void _bg_before_fork() noexcept nogil:
    global _bg_waiters
    pthread_mutex_lock(&_bg_lock)
    _bg_waiters += 1
    while _bg_live:
        pthread_cond_wait(&_bg_done, &_bg_lock)
    _bg_waiters -= 1


cdef void _bg_after_fork_in_parent() noexcept nogil:
    pthread_mutex_unlock(&_bg_lock)


cdef void _bg_after_fork_in_child() noexcept nogil:
    _bg_reset()


_bg_reset()
pthread_atfork(_bg_before_fork, _bg_after_fork_in_parent, _bg_after_fork_in_child)
_bg_enabled = available_cpus() >= 2


def background_folds(enabled=None):
    """Whether ``update_batch(..., background=True)`` of a batch under 65536 rows
    folds on the background thread (see the source); with ``enabled``, set it. The
    default is True when the process may run on two CPUs or more. Results are the
    same either way.

    Returns the previous setting.
    """
    global _bg_enabled
    previous = _bg_enabled
    if enabled is not None:
        _bg_enabled = bool(enabled)
    return previous


def background_stats():
    """``(folds queued, run by the background thread, taken back by their table)``, for tests."""
    pthread_mutex_lock(&_bg_lock)
    out = (_bg_queued, _bg_ran, _bg_taken_back)
    pthread_mutex_unlock(&_bg_lock)
    return out


# --- output: Arrow arrays through the C Data Interface --------------------------------

cdef struct _Owned:
    # private_data of an exported array: what its buffers point to (allocated here,
    # or a block of the table: see _share), and for the batch (a struct array) the
    # storage of its children.
    const void* buffers[3]
    void* blocks[3]         # the table's block buffers[i] holds a reference to, or NULL
    CArrowArray* children
    CArrowArray** child_ptrs


cdef void _release(CArrowArray* a) noexcept nogil:
    cdef _Owned* own = <_Owned*>a.private_data
    cdef int64_t i
    if own != NULL:
        for i in range(a.n_children):
            if a.children[i].release != NULL:
                a.children[i].release(a.children[i])
        for i in range(3):
            if own.blocks[i] != NULL:
                _b_unref(own.blocks[i])
            else:
                free(<void*>own.buffers[i])
        free(own.children)
        free(own.child_ptrs)
        free(own)
    a.private_data = NULL
    a.release = NULL


cdef _Owned* _start(CArrowArray* a, int64_t length, int64_t n_buffers) noexcept nogil:
    # Make `a` a released-on-demand array with no buffers yet; NULL when out of memory.
    # (malloc and stores: calloc costs several times more for a few words.)
    cdef _Owned* own = <_Owned*>malloc(sizeof(_Owned))
    cdef int i
    if own == NULL:
        return NULL
    for i in range(3):
        own.buffers[i] = NULL
        own.blocks[i] = NULL
    own.children = NULL
    own.child_ptrs = NULL
    a.length = length
    a.null_count = 0
    a.offset = 0
    a.n_buffers = n_buffers
    a.n_children = 0
    a.buffers = own.buffers
    a.children = NULL
    a.dictionary = NULL
    a.release = _release
    a.private_data = own
    return own


cdef inline bint _share(_Owned* own, int i, void* p) noexcept nogil:
    # buffers[i] = the table's block p itself (when there is one), held until the
    # array is released. The exported bytes never change: accumulators are changed
    # in place only by their only holder (so the table copies them first, as for a
    # copy of the table), append-only blocks only beyond what any holder uses.
    if p == NULL:
        return False
    sc_refs_add(&_head(p).refs, 1)
    own.blocks[i] = p
    own.buffers[i] = p
    return True


cdef uint8_t* _buffer(_Owned* own, int i, size_t size) noexcept nogil:
    cdef void* p = _alloc(size)
    own.buffers[i] = p
    return <uint8_t*>p


cdef int _key_validity(_Owned* own, const uint8_t* nulls, int64_t n, int64_t* null_count) noexcept nogil:
    # buffers[0]: 0 where the group's key is null; none when no key is.
    cdef int64_t i
    cdef int64_t count = 0
    cdef uint8_t* bits
    null_count[0] = 0
    if nulls == NULL:
        return 0
    for i in range(n):
        count += nulls[i] != 0
    if count == 0:
        return 0
    bits = _buffer(own, 0, <size_t>((n + 7) // 8))
    if bits == NULL:
        return -1
    memset(bits, 0, <size_t>((n + 7) // 8))
    for i in range(n):
        if not nulls[i]:
            bits[i >> 3] |= <uint8_t>(1 << (i & 7))
    null_count[0] = count
    return 0


cdef int _value_validity(
    _Owned* own, const int64_t* counts, const int64_t* nulls, int64_t n, int64_t* null_count
) noexcept nogil:
    # buffers[0]: 0 where the group has no non-null value; none when every group has one.
    cdef int64_t i
    cdef int64_t count = 0
    cdef uint8_t* bits
    if nulls == NULL:
        for i in range(n):  # (vectorised: the usual column has no nulls)
            count += counts[i] == 0
    else:
        for i in range(n):
            count += counts[i] == nulls[i]
    null_count[0] = count
    if count == 0:
        return 0
    bits = _buffer(own, 0, <size_t>((n + 7) // 8))
    if bits == NULL:
        return -1
    memset(bits, 0, <size_t>((n + 7) // 8))
    for i in range(n):
        if counts[i] != _nulls_at(nulls, i):
            bits[i >> 3] |= <uint8_t>(1 << (i & 7))
    return 0


cdef void _narrow(uint8_t* out, const uint64_t* src, int kind, int64_t n) noexcept nogil:
    """Per-group 8-byte slots as values of ``kind``'s width."""
    cdef int64_t i
    if kind == K_I64 or kind == K_U64 or kind == K_F64:
        memcpy(out, src, <size_t>(8 * n))
    elif kind == K_F32:
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


cdef int _fill_key(const KeyCol* kc, _Owned* own, CArrowArray* a, int64_t n) noexcept nogil:
    # A key column: the integers narrowed, or the arena's offsets and one copy of
    # its bytes (the keys of groups 0 .. n - 1, back to back).
    cdef uint8_t* offsets
    cdef uint8_t* data
    cdef int64_t i
    if _key_validity(own, kc.nulls, n, &a.null_count):
        return -1
    if not _is_bin(kc.kind):
        if _width(kc.kind) == 8 and _share(own, 1, kc.ints):
            return 0
        data = _buffer(own, 1, <size_t>(_width(kc.kind) * n))
        if data == NULL:
            return -1
        _narrow(data, kc.ints, kc.kind, n)
        return 0
    a.n_buffers = 3
    offsets = _buffer(own, 1, <size_t>((8 if kc.kind == K_BIN64 else 4) * (n + 1)))
    if offsets == NULL:
        return -1
    if _share(own, 2, kc.arena):
        data = NULL
    else:
        data = _buffer(own, 2, <size_t>kc.arena_len)
        if data == NULL:
            return -1
    if kc.kind == K_BIN64:
        memcpy(offsets, kc.offs, <size_t>(8 * n))
        (<int64_t*>offsets)[n] = kc.arena_len
    else:
        sc_narrow_offsets(<int32_t*>offsets, kc.offs, n)
        (<int32_t*>offsets)[n] = <int32_t>kc.arena_len
    if data != NULL and kc.arena_len:
        memcpy(data, kc.arena, <size_t>kc.arena_len)
    return 0


cdef int _fill(GroupTable t, CArrowArray* a, int code, Py_ssize_t at) noexcept nogil:
    # One output column of t's groups into `a` (see OUT_*); -1 when out of memory.
    cdef int64_t n = t.n_groups
    cdef int64_t i
    cdef _Owned* own = _start(a, n, 2)
    cdef const ValCol* c
    cdef uint8_t* out
    cdef const double* sums
    if own == NULL:
        return -1
    if code == OUT_KEY:
        return _fill_key(&t.keys[at], own, a, n)
    # Columns that are a per-group array of the table as it is: shared, not copied.
    if code == OUT_COUNT and _share(own, 1, t.counts):
        return 0
    c = &t.vals[at] if code != OUT_COUNT else NULL
    if code != OUT_COUNT and code != OUT_NONNULL:
        if _value_validity(own, t.counts, c.nulls, n, &a.null_count):
            return -1
        if ((code == OUT_SUM and _share(own, 1, c.sum))
                or (code == OUT_MSUM and _share(own, 1, c.msum))
                or (code == OUT_MIN and _width(c.kind) == 8 and _share(own, 1, c.mn))
                or (code == OUT_MAX and _width(c.kind) == 8 and _share(own, 1, c.mx))):
            return 0
    out = _buffer(own, 1, <size_t>(8 * n))
    if out == NULL:
        return -1
    if code == OUT_COUNT:
        memcpy(out, t.counts, <size_t>(8 * n))
        return 0
    if code == OUT_NONNULL:
        for i in range(n):
            (<int64_t*>out)[i] = t.counts[i] - _nulls_at(c.nulls, i)
        return 0
    if code == OUT_SUM:
        memcpy(out, c.sum, <size_t>(8 * n))
    elif code == OUT_MSUM:
        memcpy(out, c.msum, <size_t>(8 * n))
    elif code == OUT_MIN:
        _narrow(out, c.mn, c.kind, n)
    elif code == OUT_MAX:
        _narrow(out, c.mx, c.kind, n)
    else:
        sums = <const double*>c.sum if _is_float(c.kind) else c.msum
        for i in range(n):
            if t.counts[i] != _nulls_at(c.nulls, i):
                (<double*>out)[i] = sums[i] / <double>(t.counts[i] - _nulls_at(c.nulls, i))
            else:
                (<double*>out)[i] = 0.0
    return 0


cdef int _fill_all(GroupTable t, CArrowArray* arrays, const int* codes, const Py_ssize_t* ats,
                   Py_ssize_t n_cols) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n_cols):
        if _fill(t, &arrays[i], codes[i], ats[i]):
            return -1
    return 0


cdef int _fill_columns(GroupTable t, CArrowArray* arrays, list codes, int64_t* length) except -1:
    # arrays[i] (zeroed by the caller) = t's column codes[i] = (OUT_*, column index);
    # *length = the groups. Each filled array owns its buffers (freed by its release
    # callback, which the caller calls for any array it does not hand on).
    cdef Py_ssize_t n_cols = len(codes)
    cdef Py_ssize_t i
    cdef Py_ssize_t k
    cdef int c_codes[64]
    cdef Py_ssize_t c_ats[64]
    cdef int* p_codes = c_codes
    cdef Py_ssize_t* p_ats = c_ats
    cdef int rc = 0
    cdef int64_t total
    if n_cols > 64:
        p_codes = <int*>malloc(n_cols * sizeof(int))
        p_ats = <Py_ssize_t*>malloc(n_cols * sizeof(Py_ssize_t))
    try:
        if p_codes == NULL or p_ats == NULL:
            raise MemoryError()
        for i in range(n_cols):
            p_codes[i], p_ats[i] = codes[i]
        _t_lock(t)
        try:
            t._sync()
            for i in range(n_cols):
                if p_codes[i] == OUT_KEY and t.keys[p_ats[i]].kind == K_BIN32:
                    k = p_ats[i]
                    total = t.keys[k].key_bytes
                    if total > INT32_MAX:
                        msg = (f"the keys of column {t._key_names[k]!r} hold {total} bytes, "
                               f"more than {t._key_types[k]} can address; use the large_ "
                               f"variant of the type")
                        raise OverflowError(msg)
            length[0] = t.n_groups
            if t.n_groups >= _NOGIL_ROWS:
                with nogil:
                    rc = _fill_all(t, arrays, p_codes, p_ats, n_cols)
            else:
                rc = _fill_all(t, arrays, p_codes, p_ats, n_cols)
        finally:
            _t_unlock(t)
        if rc:
            raise MemoryError()
    finally:
        if p_codes != c_codes:
            free(p_codes)
            free(p_ats)
    return 0


# --- the table -----------------------------------------------------------------------

# The spec of the last table __init__ checked: its lists (never mutated, so tables
# may share them), and its columns as they start (kinds, flags, min/max starts). An
# aggregator makes a table per window with the same name and type objects: the
# next one is compared by identity and copied, not checked again.
cdef tuple _last_spec = None


cdef bint _like_last_spec(GroupTable t, list key_names, list key_types, list value_names,
                          list value_types, list value_flags) except -1:
    last = _last_spec
    if (last is None or not _same_items(key_names, last[0]) or not _same_items(key_types, last[1])
            or not _same_items(value_names, last[2]) or not _same_items(value_types, last[3])
            or value_flags != last[4]):
        return False
    t._key_names, t._key_types, t._value_names, t._value_types, t._value_flags = last[:5]
    t.n_keys = len(key_names)
    t.n_vals = len(value_names)
    t.per_group = last[6]
    _alloc_columns(t, False)
    memcpy(t.keys, <const char*>last[5], len(<bytes>last[5]))
    return True


cdef void _keep_spec(GroupTable t) except *:
    global _last_spec
    cdef size_t size = <size_t>t.n_keys * sizeof(KeyCol) + <size_t>t.n_vals * sizeof(ValCol)
    _last_spec = (t._key_names, t._key_types, t._value_names, t._value_types, t._value_flags,
                  (<char*>t.keys)[:size], t.per_group)


cdef int _t_lock(GroupTable t) except -1:
    # Take t's lock with the GIL held: at once when it is free, else waiting without
    # the GIL (its holder may need the GIL to let go). A pthread mutex in the table:
    # a threading.Lock cost a Python object per copy and ~1k instructions per call.
    if t.keys == NULL:
        raise TypeError("GroupTable.__init__ was not called")
    if pthread_mutex_trylock(&t._mutex) != 0:
        with nogil:
            pthread_mutex_lock(&t._mutex)
    return 0


cdef inline void _t_unlock(GroupTable t) noexcept nogil:
    pthread_mutex_unlock(&t._mutex)


cdef int _alloc_columns(GroupTable t, bint zero) except -1:
    # t.keys and t.vals in one allocation (zeroed when asked), and t's lock: what
    # every initialised table has (keys not NULL).
    cdef size_t key_bytes = <size_t>t.n_keys * sizeof(KeyCol)
    cdef size_t size = key_bytes + <size_t>t.n_vals * sizeof(ValCol)
    cdef void* p = calloc(1, size if size else 1) if zero else _alloc(size)
    if p == NULL:
        raise MemoryError()
    pthread_mutex_init(&t._mutex, NULL)
    t.keys = <KeyCol*>p
    t.vals = <ValCol*>(<char*>p + key_bytes)
    return 0


@cython.final
@cython.no_gc_clear  # a queued fold reads _bg_batch's buffers until __dealloc__ has waited
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
    threads; the per-row work of large ``update`` and ``merge_state`` calls
    runs with the GIL released. ``copy`` shares the groups copy-on-write (see
    the module docstring): a table and its copies may be used from different
    threads at once, each under its own lock.
    """

    def __init__(self, list key_names, list key_types, list value_names, list value_types,
                 list value_flags):
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef int kind
        cdef int want
        if self.keys != NULL:
            raise TypeError("GroupTable.__init__ must not be called twice")
        if not key_names or len(key_names) != len(key_types):
            raise ValueError("key_names and key_types must be non-empty and of equal length")
        if len(value_names) != len(value_types) or len(value_names) != len(value_flags):
            raise ValueError("value_names, value_types and value_flags must have equal length")
        if _like_last_spec(self, key_names, key_types, value_names, value_types, value_flags):
            return
        self._key_names = list(key_names)
        self._key_types = list(key_types)
        self._value_names = list(value_names)
        self._value_types = list(value_types)
        self._value_flags = list(value_flags)
        self.n_keys = len(key_names)
        self.n_vals = len(value_names)
        _alloc_columns(self, True)
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
            _value_inits(&self.vals[j])
            self.vals[j].flags = (
                (HAS_SUM if want & WANT_SUM or (want & WANT_MEAN and _is_float(kind)) else 0)
                | (HAS_MSUM if want & WANT_MEAN and not _is_float(kind) else 0)
                | (HAS_MIN if want & WANT_MIN else 0)
                | (HAS_MAX if want & WANT_MAX else 0)
            )
        self.per_group = self._nbytes_for(1, 0)
        _keep_spec(self)

    def __dealloc__(self):
        if load_int(&self.bg_state) == _BG_QUEUED or load_int(&self.bg_state) == _BG_RUNNING:
            with nogil:
                _bg_finish(self, False)  # a queued fold is dropped: nobody will see it
        self._free_groups()
        if self.keys != NULL:
            pthread_mutex_destroy(&self._mutex)
        free(self.keys)  # (vals are in the same allocation)

    def __len__(self):
        return self._groups()

    cdef int64_t _groups(self) except -1:
        _t_lock(self)
        try:
            self._sync()
            return self.n_groups
        finally:
            _t_unlock(self)

    cdef int _sync(self) except -1:
        # Before any use of the table (under its lock, so that no fold is posted
        # meanwhile): wait for its background fold, if any.
        cdef int rc
        if self._bg_batch is None:
            return 0
        if load_int(&self.bg_state) != _BG_DONE:
            with nogil:
                _bg_finish(self, True)
        self._bg_batch = None
        store_int(&self.bg_state, _BG_NONE)
        rc = self.bg_rc
        self.bg_rc = 0
        if rc != 0:  # cannot happen (_reserve made room); raised if it ever does
            self._raise_for(rc)
        return 0

    cdef void _free_groups(self) noexcept nogil:
        # Let go of every block (shared ones live on in the tables that hold them).
        cdef Py_ssize_t k
        cdef KeyCol* kc
        _settle(self, False)  # a fold dropped with its table
        _for_arrays(self, _DROP, 0)
        _b_drop(self.bg_slots, _token(self), 0)
        self.bg_slots = NULL
        self.slot_mask = 0
        self.n_groups = 0
        self.group_cap = 0
        if self.keys != NULL:
            for k in range(self.n_keys):
                kc = &self.keys[k]
                kc.arena_len = 0
                kc.arena_cap = 0
                kc.key_bytes = 0

    def clear(self):
        """Forget every group and release the memory."""
        _t_lock(self)
        try:
            self._sync()
            self._free_groups()
        finally:
            _t_unlock(self)

    def copy(self):
        """An independent table with the same spec and groups.

        Copy-on-write: the copy shares every array with this table and takes
        over the right to append groups in place (see the module docstring), so
        a copy costs the same whatever the groups. Whichever of the two changes
        first copies the accumulators it changes; this table, if it changes
        again, copies what it uses first. That is what a tumbling window needs:
        each invocation folds into a private copy, committed (and the original
        dropped) only when the invocation succeeds.
        """
        return self._twin()

    cdef GroupTable _twin(self):
        # copy() (see there).
        cdef GroupTable twin = GroupTable.__new__(GroupTable)
        # The spec objects are never mutated: share them.
        twin._key_names = self._key_names
        twin._key_types = self._key_types
        twin._value_names = self._value_names
        twin._value_types = self._value_types
        twin._value_flags = self._value_flags
        twin._out = self._out
        twin.n_keys = self.n_keys
        twin.n_vals = self.n_vals
        twin.per_group = self.per_group
        _t_lock(self)
        try:
            self._sync()
            _alloc_columns(twin, False)  # (not zeroed: _copy fills them)
            twin._copy(self)
        finally:
            _t_unlock(self)
        return twin

    cdef int _copy(self, GroupTable src) noexcept nogil:
        # Into a new table (keys and vals allocated, nothing else set): src's groups,
        # by sharing src's blocks; the writer role of src's passes to self. Moves no
        # data, cannot fail.
        _for_arrays(src, _SHARE, _token(self))
        memcpy(self.keys, src.keys, <size_t>self.n_keys * sizeof(KeyCol))
        memcpy(self.vals, src.vals, <size_t>self.n_vals * sizeof(ValCol))
        self.counts = src.counts
        self.group_hash = src.group_hash
        self.slots = src.slots
        self.slot_mask = src.slot_mask
        self.n_groups = src.n_groups
        self.group_cap = src.group_cap
        return 0

    def nbytes(self, bint bound=False):
        """Bytes held for the groups: what a window state limit counts for an aggregator.

        A size per group (count and hash, per key column its value and null
        flag, per value column its null count and accumulators) plus the key
        bytes, whatever capacity is allocated ahead. Memory shared with copies
        counts in full for each of them.

        ``bound``: while a background fold runs, an upper bound of what it
        will be after the fold (every row a new group), without waiting.
        """
        return self._size(bound)

    cdef int64_t _size(self, bint bound) except -1:
        # nbytes(bound) (see there).
        cdef Py_ssize_t k
        cdef int64_t arena = 0
        cdef int state = load_int(&self.bg_state)
        if bound and (state == _BG_QUEUED or state == _BG_RUNNING):
            return self.bg_bound
        _t_lock(self)
        try:
            self._sync()
            for k in range(self.n_keys):
                arena += self.keys[k].arena_len
            return self.n_groups * self.per_group + arena
        finally:
            _t_unlock(self)

    cdef int64_t _nbytes_for(self, int64_t groups, int64_t arena_bytes) noexcept nogil:
        # nbytes() of `groups` groups whose keys take `arena_bytes` (all key columns).
        cdef int64_t per_group = 16 + 9 * self.n_keys
        cdef Py_ssize_t j
        cdef int flags
        for j in range(self.n_vals):
            flags = self.vals[j].flags
            per_group += 8 * (1 + ((flags & HAS_SUM) != 0) + ((flags & HAS_MSUM) != 0)
                              + ((flags & HAS_MIN) != 0) + ((flags & HAS_MAX) != 0))
        return groups * per_group + arena_bytes

    cdef int _grow_groups(self, int64_t cap) noexcept nogil:
        # Per-group arrays for `cap` groups (self writes them all: see _own). 0, or
        # -1 when out of memory (then the capacity is unchanged; arrays already
        # grown just hold more room).
        cdef uintptr_t me = _token(self)
        cdef size_t used = <size_t>self.n_groups * 8
        cdef size_t size = <size_t>cap * 8
        cdef int rc = 0
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef KeyCol* kc
        cdef ValCol* c
        self.counts = <int64_t*>_grow(self.counts, used, size, me, &rc)
        self.group_hash = <uint64_t*>_grow(self.group_hash, used, size, me, &rc)
        for k in range(self.n_keys):
            kc = &self.keys[k]
            if kc.nulls != NULL:
                kc.nulls = <uint8_t*>_grow(kc.nulls, used // 8, size // 8, me, &rc)
            if _is_bin(kc.kind):
                kc.offs = <int64_t*>_grow(kc.offs, used, size, me, &rc)
            else:
                kc.ints = <uint64_t*>_grow(kc.ints, used, size, me, &rc)
        for j in range(self.n_vals):
            c = &self.vals[j]
            if c.nulls != NULL:
                c.nulls = <int64_t*>_grow(c.nulls, used, size, me, &rc)
            if c.flags & HAS_SUM:
                c.sum = <uint64_t*>_grow(c.sum, used, size, me, &rc)
            if c.flags & HAS_MSUM:
                c.msum = <double*>_grow(c.msum, used, size, me, &rc)
            if c.flags & HAS_MIN:
                c.mn = <uint64_t*>_grow(c.mn, used, size, me, &rc)
            if c.flags & HAS_MAX:
                c.mx = <uint64_t*>_grow(c.mx, used, size, me, &rc)
        if rc:
            return -1
        self.group_cap = cap
        return 0

    cdef int _rehash(self, uint64_t capacity) noexcept nogil:
        # A new slot table of `capacity` slots holding every group (the old one is
        # dropped: a table that shares it keeps it).
        cdef Slot* slots = <Slot*>_b_alloc(capacity * sizeof(Slot), _token(self), True)
        if slots == NULL:
            return -1
        self._rehash_into(slots, capacity - 1)
        return 0

    cdef void _rehash_into(self, Slot* slots, uint64_t mask) noexcept nogil:
        # _rehash into `slots`, a zeroed block of mask + 1 slots the table writes.
        cdef uintptr_t me = _token(self)
        cdef uint64_t pos
        cdef uint64_t h
        cdef int64_t g
        cdef const KeyCol* first = &self.keys[0]
        for g in range(self.n_groups):
            h = self.group_hash[g]
            pos = h & mask
            while slots[pos].tag_gid != 0:
                pos = (pos + 1) & mask
            slots[pos].tag_gid = (h & 0xFFFFFFFF00000000ULL) | <uint64_t>(g + 1)
            if _is_bin(first.kind):
                slots[pos].key0 = _bin_key0(first.offs[g], _key_len(first, g, self.n_groups))
            else:
                slots[pos].key0 = first.ints[g]
        _b_drop(self.slots, me, self.n_groups)
        self.slots = slots
        self.slot_mask = mask

    cdef int _make_room(self, uint64_t h, uint64_t* pos) noexcept nogil:
        # Room for one more group: the per-group arrays and the table grow when
        # full (then *pos, the empty slot found for hash h, is found again).
        # 0, -1 when out of memory or -2 for too many groups.
        cdef int64_t g = self.n_groups
        if g >= _MAX_GROUPS:
            return -2
        if g == self.group_cap and self._grow_groups(_at_least(2 * g, _MIN_GROUPS)):
            return -1
        if <uint64_t>(g + 1) * 2 > self.slot_mask + 1:
            if self.bg_slots != NULL and <uint64_t>(g + 1) * 2 <= self.bg_mask + 1:
                # The slot table _reserve allocated for a background fold.
                memset(self.bg_slots, 0, (self.bg_mask + 1) * sizeof(Slot))
                self._rehash_into(self.bg_slots, self.bg_mask)
                self.bg_slots = NULL
            elif self._rehash((self.slot_mask + 1) * 2):
                return -1
            pos[0] = h & self.slot_mask
            while self.slots[pos[0]].tag_gid != 0:
                pos[0] = (pos[0] + 1) & self.slot_mask
        return 0

    cdef void _commit(self, int64_t g, uint64_t h, uint64_t pos, uint64_t key0) noexcept nogil:
        # Make g (= n_groups, its keys stored) a group: zero its count and point the
        # empty slot `pos` at it. Its value accumulators are set by _init_values once
        # the assign pass is done (they are not read before).
        self.group_hash[g] = h
        self.counts[g] = 0
        self.slots[pos].tag_gid = (h & 0xFFFFFFFF00000000ULL) | <uint64_t>(g + 1)
        self.slots[pos].key0 = key0
        self.n_groups = g + 1

    cdef int64_t _add(self, int64_t row, uint64_t h, uint64_t pos) noexcept nogil:
        # Append row's key (any key columns) as a new group in the empty slot `pos`
        # found for hash h. Returns the group, -1 when out of memory or -2 for too
        # many groups (then nothing changed but capacities).
        cdef int64_t g = self.n_groups
        cdef Py_ssize_t k
        cdef KeyCol* kc
        cdef const uint8_t* p
        cdef int64_t n
        cdef bint null
        cdef int rc = self._make_room(h, &pos)
        if rc:
            return rc
        for k in range(self.n_keys):
            # First every allocation, so that a failure leaves no partial group.
            kc = &self.keys[k]
            null = _is_null(&kc.inp, row)
            if null and _first_null_key(self, kc):
                return -1
            if _is_bin(kc.kind):
                n = 0
                if not null:
                    _bytes_at(&kc.inp, kc.kind, row, &p, &n)
                if kc.arena_len + n > kc.arena_cap and _grow_arena(self, kc, kc.arena_len + n):
                    return -1
        for k in range(self.n_keys):
            kc = &self.keys[k]
            null = _is_null(&kc.inp, row)
            if kc.nulls != NULL:
                kc.nulls[g] = null
            if _is_bin(kc.kind):
                n = 0
                if not null:
                    _bytes_at(&kc.inp, kc.kind, row, &p, &n)
                _put_key(kc, g, p, n)
            else:
                kc.ints[g] = 0 if null else _int_at(kc.inp.values, kc.kind, row)
        kc = &self.keys[0]
        # Group g's key is the arena's last.
        self._commit(g, h, pos, _bin_key0(kc.offs[g], kc.arena_len - kc.offs[g]) if _is_bin(kc.kind)
                     else kc.ints[g])
        return g

    cdef int _assign(self, int64_t start, int64_t m, const uint64_t* hashes, uint32_t* gid) noexcept nogil:
        # Group number of rows start .. start + m - 1 into gid; a new key gets a new
        # group (_add). Two prefetch stages hide the cache misses of a large table:
        # the slot of row i + 2D, then the arena bytes that the slot of row i + D names.
        cdef int64_t i
        cdef int64_t g
        cdef uint64_t h
        cdef uint64_t tag
        cdef uint64_t pos
        cdef uint64_t s
        cdef Slot* slots
        cdef uint64_t mask
        cdef const Slot* ahead
        cdef const KeyCol* first = &self.keys[0]
        cdef bint prefetch_records = _is_bin(first.kind)
        if self.n_keys == 1:
            return _assign_one(self, start, m, hashes, gid, False)
        slots = self.slots
        mask = self.slot_mask
        for i in range(m):
            if i + 2 * PREFETCH_AHEAD < m:
                SC_PREFETCH(&slots[hashes[i + 2 * PREFETCH_AHEAD] & mask])
            if prefetch_records and i + PREFETCH_AHEAD < m:
                ahead = &slots[hashes[i + PREFETCH_AHEAD] & mask]
                if ahead.tag_gid != 0:
                    SC_PREFETCH(first.arena + (ahead.key0 >> 16))
            h = hashes[i]
            tag = h >> 32
            pos = h & mask
            while True:
                s = slots[pos].tag_gid
                if s == 0:
                    g = self._add(start + i, h, pos)
                    if g < 0:
                        return <int>g
                    slots = self.slots
                    mask = self.slot_mask
                    break
                if (s >> 32) == tag:
                    g = <int64_t>(s & 0xFFFFFFFFULL) - 1
                    if _row_equals(self.keys, self.n_keys, g, start + i, slots[pos].key0, self.n_groups):
                        break
                pos = (pos + 1) & mask
            gid[i] = <uint32_t>g
        return 0

    cdef int _reserve(self, int64_t n) noexcept nogil:
        # Every allocation a fold of the n rows bound could make, made now (see
        # "background folds"): 0, -1 when out of memory, -2 when n more groups
        # could be too many (the fold itself says whether they are). Blocks the
        # table may not write in place, or that must grow, are replaced by new
        # ones that the fold fills (_pending): the copies run on the thread that
        # folds, beside the caller, and read memory where the fold then works.
        cdef int64_t need = self.n_groups + n
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef KeyCol* kc
        cdef ValCol* c
        cdef int64_t arena = 0
        cdef uint64_t capacity
        cdef bint grow
        if need > _MAX_GROUPS:
            return -2
        if _reserve_blocks(self, self.group_cap if self.group_cap >= need
                           else _at_least(need, _MIN_GROUPS), n, &arena):
            _settle(self, True)  # the table as it was, in blocks of its own
            return -1
        if self.bg_slots != NULL and <uint64_t>need * 2 > self.bg_mask + 1:
            # Made by a reservation that failed later, for fewer rows.
            _b_drop(self.bg_slots, _token(self), 0)
            self.bg_slots = NULL
        grow = self.slots == NULL or <uint64_t>need * 2 > self.slot_mask + 1
        # The table may not claim its slots (another may have added some): the fold
        # rebuilds them first. Else it moves to the larger table only if its groups
        # do outgrow the slots (_make_room): most folds add far fewer groups than rows.
        self.bg_rebuild = (self.slots == NULL
                           or not _b_claim(self.slots, _token(self), self.n_groups, True))
        if self.bg_slots == NULL and (grow or self.bg_rebuild):
            # Only the memory: the fold zeroes it and moves the groups in.
            capacity = <uint64_t>_at_least(2 * need, _MIN_SLOTS) if grow else self.slot_mask + 1
            self.bg_slots = <Slot*>_b_alloc(capacity * sizeof(Slot), _token(self), False)
            if self.bg_slots == NULL:
                _settle(self, True)
                return -1
            self.bg_mask = capacity - 1
        for k in range(self.n_keys):
            kc = &self.keys[k]
            if kc.inp.valid != NULL and kc.nulls == NULL and _first_null_key(self, kc):
                _settle(self, True)
                return -1
        for j in range(self.n_vals):
            c = &self.vals[j]
            if c.inp[0].valid != NULL and c.nulls == NULL and _first_null_value(self, c):
                _settle(self, True)
                return -1
        self.bg_bound = self._nbytes_for(need, arena)
        return 0

    cdef int _fold(self, int64_t n, bint merge) noexcept nogil:
        # Fold n rows of the bound inputs: values (update) or a partial state (merge).
        _settle(self, True)  # a reservation whose fold was not posted
        if _own(self):
            return -1
        return self._fold_owned(n, merge)

    cdef int _fold_owned(self, int64_t n, bint merge) noexcept nogil:
        # _fold once every block is the table's to write.
        cdef uint64_t hashes[CHUNK]
        cdef uint32_t gid[CHUNK]
        cdef int64_t start = 0
        cdef int64_t m
        cdef int rc
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef ValCol* c
        cdef bint single = self.n_keys == 1
        cdef bint fused
        cdef int64_t groups
        _settle(self, True)
        if self.bg_slots != NULL and self.bg_rebuild:
            # The slot table _reserve made room for, when the table may not keep its own.
            memset(self.bg_slots, 0, (self.bg_mask + 1) * sizeof(Slot))
            self._rehash_into(self.bg_slots, self.bg_mask)
            self.bg_slots = NULL
        self.bg_rebuild = False
        if self.n_groups == 0:
            # A new table: room for the first chunk's rows as groups rather than
            # growing step by step while they arrive.
            m = n if n < CHUNK else CHUNK
            if self.group_cap < m and self._grow_groups(_at_least(m, _MIN_GROUPS)):
                return -1
            if ((self.slots == NULL or self.slot_mask + 1 < <uint64_t>(2 * m))
                    and self._rehash(<uint64_t>_at_least(2 * m, _MIN_SLOTS))):
                return -1
        while start < n:
            m = n - start if n - start < CHUNK else CHUNK
            # One key column and a table that fits in cache: the hashes are made
            # while probing, and the rows counted there too (update).
            fused = single and self.slot_mask + 1 < _PREFETCH_SLOTS
            if not fused:
                for k in range(self.n_keys):
                    _hash_column(&self.keys[k], start, m, hashes, k == 0)
            groups = self.n_groups
            if single:
                rc = _assign_one(self, start, m, NULL if fused else hashes, gid, not merge)
            else:
                rc = self._assign(start, m, hashes, gid)
            _init_values(self, groups, self.n_groups)
            if rc != 0:
                return rc
            if merge:
                _add_counts(&self.in_count, start, m, gid, self.counts)
            elif not single:
                _count_rows(m, gid, self.counts)
            for j in range(self.n_vals):
                c = &self.vals[j]
                if merge:
                    if _any_nulls(&self.in_count, &c.inp[0], start, m):
                        if c.nulls == NULL and _first_null_value(self, c):
                            return -1
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
                if c.inp[0].valid != NULL:
                    if c.nulls == NULL and _first_null_value(self, c):
                        return -1
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
        if self.bg_slots != NULL:  # not needed after all
            _b_drop(self.bg_slots, _token(self), 0)
            self.bg_slots = NULL
        return 0

    cdef int _bind_input(self, object arr, object name, object dtype, int kind, Input* inp) except -1:
        # Point `inp` at the buffers of `arr` (column `name`, of type `dtype`), which
        # the caller keeps alive.
        if not isinstance(arr, pa.Array):
            msg = f"column {name!r} must be a pyarrow.Array, got {type(arr).__name__}"
            raise TypeError(msg)
        return _bind_array(arr, name, dtype, kind, inp)

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
        if len(key_arrays) != self.n_keys or len(value_arrays) != self.n_vals:
            raise ValueError("one array per key column and per value column is expected")
        n = len(key_arrays[0])
        for arr in key_arrays:
            if len(arr) != n:
                raise ValueError("every column must have the same length")
        for arr in value_arrays:
            if len(arr) != n:
                raise ValueError("every column must have the same length")
        _t_lock(self)
        try:
            self._sync()
            for k in range(self.n_keys):
                arr, name, dtype = key_arrays[k], self._key_names[k], self._key_types[k]
                self._bind_input(arr, name, dtype, self.keys[k].kind, &self.keys[k].inp)
            for j in range(self.n_vals):
                arr, name, dtype = value_arrays[j], self._value_names[j], self._value_types[j]
                self._bind_input(arr, name, dtype, self.vals[j].kind, &self.vals[j].inp[0])
            _run_fold(self, n, False)
        finally:
            _t_unlock(self)

    def update_batch(self, batch, list key_idx, list value_idx, bint background=False,
                     BatchBinding source=None, int64_t offset=0):
        """Fold a ``pyarrow.RecordBatch``: its columns ``key_idx`` (one per key column)
        and ``value_idx`` (one per value column), in constructor order.

        What ``update`` does for the columns of a batch, with less work per call.
        ``background``: a batch of fewer than 65536 rows may fold on the background
        thread after the call returns (see ``background_folds``); the caller
        vouches that nothing changes the batch's buffers meanwhile. ``source``:
        the binding of the batch that ``batch`` was sliced from, at row
        ``offset`` (the caller vouches for that too); its columns are found
        there instead of in ``batch``.
        """
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef int64_t n
        cdef int kind
        cdef Input* inp
        if not isinstance(batch, _RecordBatch):
            msg = f"batch must be a pyarrow.RecordBatch, got {type(batch).__name__}"
            raise TypeError(msg)
        if len(key_idx) != self.n_keys or len(value_idx) != self.n_vals:
            raise ValueError("one column index per key column and per value column is expected")
        n = batch.num_rows
        if source is not None and (offset < 0 or offset > source.n_rows - n):  # no overflow
            msg = f"rows {offset}..{offset + n} are not within the source's {source.n_rows}"
            raise ValueError(msg)
        column = batch.column if source is None else None
        _t_lock(self)
        try:
            self._sync()
            # `batch` holds every buffer bound here until the fold is done.
            for k in range(self.n_keys):
                name, dtype, at = self._key_names[k], self._key_types[k], key_idx[k]
                kind, inp = self.keys[k].kind, &self.keys[k].inp
                if source is None:
                    _bind_array(column(at), name, dtype, kind, inp)
                else:
                    source.bind(at, name, dtype, kind, offset, inp)
            for j in range(self.n_vals):
                name, dtype, at = self._value_names[j], self._value_types[j], value_idx[j]
                kind, inp = self.vals[j].kind, &self.vals[j].inp[0]
                if source is None:
                    _bind_array(column(at), name, dtype, kind, inp)
                else:
                    source.bind(at, name, dtype, kind, offset, inp)
            self._post_or_fold(batch, n, background)
        finally:
            _t_unlock(self)

    cdef int _post_or_fold(self, object batch, int64_t n, bint background) except -1:
        # The bound inputs' fold (the table's lock held): posted to the background
        # thread when `background` allows it and room for its groups is made, else
        # run in the call. `batch` holds the bound buffers until the fold is done.
        cdef int rc
        if background and _bg_enabled and 0 < n < _NOGIL_ROWS:
            rc = self._reserve(n)
            if rc == -1:
                raise MemoryError()
            if rc == 0:
                self.bg_rows = n
                if _bg_post(self):
                    self._bg_batch = batch
                    return 0
        _run_fold(self, n, False)
        return 0

    cdef int _fold_inputs(self, object batch, const Input* inputs, int64_t n) except -1:
        # update_batch(batch, ..., background=True) with its columns found already:
        # inputs[k] for key column k, then inputs[n_keys + j] for value column j, each
        # at the batch's first row and of the type this table holds.
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        _t_lock(self)
        try:
            self._sync()
            for k in range(self.n_keys):
                self.keys[k].inp = inputs[k]
            for j in range(self.n_vals):
                self.vals[j].inp[0] = inputs[self.n_keys + j]
            self._post_or_fold(batch, n, True)
        finally:
            _t_unlock(self)
        return 0

    def input_types(self):
        """The key column types, then the value column types."""
        return self._key_types + self._value_types

    cdef tuple _state_layout(self):
        # Names and (code, column) of the state columns, in order.
        cdef Py_ssize_t j
        cdef int flags
        names = list(self._key_names) + ["count"]
        codes = [(OUT_KEY, k) for k in range(self.n_keys)] + [(OUT_COUNT, 0)]
        for j in range(self.n_vals):
            flags = self.vals[j].flags
            name = self._value_names[j]
            names.append(f"{name}.nonnull")
            codes.append((OUT_NONNULL, j))
            for bit, suffix, code in ((HAS_SUM, "sum", OUT_SUM), (HAS_MSUM, "msum", OUT_MSUM),
                                      (HAS_MIN, "min", OUT_MIN), (HAS_MAX, "max", OUT_MAX)):
                if flags & bit:
                    names.append(f"{name}.{suffix}")
                    codes.append((code, j))
        return names, codes

    cdef object _out_type(self, int code, Py_ssize_t at):
        if code == OUT_KEY:
            return self._key_types[at]
        if code == OUT_COUNT or code == OUT_NONNULL:
            return pa.int64()
        if code == OUT_SUM:
            return _sum_type(self.vals[at].kind)
        if code == OUT_MSUM or code == OUT_MEAN:
            return pa.float64()
        return self._value_types[at]

    def state_schema(self):
        """The schema of ``state_columns``: names and types."""
        names, codes = self._state_layout()
        return self._schema(names, codes)

    def merge_state(self, list columns):
        """Fold a partial state: one array per field of ``state_schema()``, in order."""
        cdef list fields = list(self.state_schema())
        cdef Py_ssize_t k
        cdef Py_ssize_t j
        cdef Py_ssize_t at
        cdef int64_t n
        cdef ValCol* c
        if len(columns) != len(fields):
            msg = f"a state has {len(fields)} columns, got {len(columns)}"
            raise ValueError(msg)
        n = len(columns[0])
        for arr in columns:
            if len(arr) != n:
                raise ValueError("every column must have the same length")
        _t_lock(self)
        try:
            self._sync()
            for k in range(self.n_keys):
                _bind_state(self, columns, fields, k, self.keys[k].kind, &self.keys[k].inp)
            at = self.n_keys
            _bind_state(self, columns, fields, at, K_I64, &self.in_count)
            _no_nulls(columns, fields, at)
            at += 1
            for j in range(self.n_vals):
                c = &self.vals[j]
                _bind_state(self, columns, fields, at, K_I64, &c.inp[0])
                _no_nulls(columns, fields, at)
                at += 1
                if c.flags & HAS_SUM:
                    _bind_state(self, columns, fields, at, _sum_kind(c.kind), &c.inp[1])
                    at += 1
                if c.flags & HAS_MSUM:
                    _bind_state(self, columns, fields, at, K_F64, &c.inp[2])
                    at += 1
                if c.flags & HAS_MIN:
                    _bind_state(self, columns, fields, at, c.kind, &c.inp[3])
                    at += 1
                if c.flags & HAS_MAX:
                    _bind_state(self, columns, fields, at, c.kind, &c.inp[4])
                    at += 1
            _run_fold(self, n, True)
        finally:
            _t_unlock(self)

    cdef object _export(self, list codes, object schema):
        # A RecordBatch of the groups: column i is codes[i] = (OUT_*, column index),
        # of the type schema[i] has (see _schema). Its buffers are allocated here
        # and freed by its release callback.
        cdef Py_ssize_t n_cols = len(codes)
        cdef Py_ssize_t i
        cdef CArrowArray batch
        cdef _Owned* own = _start(&batch, 0, 1)
        if own == NULL:
            raise MemoryError()
        try:
            own.children = <CArrowArray*>calloc(n_cols if n_cols else 1, sizeof(CArrowArray))
            own.child_ptrs = <CArrowArray**>malloc((n_cols if n_cols else 1) * sizeof(CArrowArray*))
            if own.children == NULL or own.child_ptrs == NULL:
                raise MemoryError()
            for i in range(n_cols):
                own.child_ptrs[i] = &own.children[i]
            batch.children = own.child_ptrs
            batch.n_children = n_cols
            _fill_columns(self, own.children, codes, &batch.length)
            # The import takes the struct over (and releases it if it fails).
            return _import_batch(<uintptr_t>&batch, schema)
        finally:
            if batch.release != NULL:
                batch.release(&batch)

    cdef object _schema(self, list names, list codes):
        return pa.schema([pa.field(name, self._out_type(code, at))
                          for name, (code, at) in zip(names, codes)])

    def state_columns(self):
        """The partial state as arrays, one per field of ``state_schema()``."""
        names, codes = self._state_layout()
        return self._export(codes, self._schema(names, codes)).columns

    def result_batch(self, list names, list layout):
        """The groups as a ``pyarrow.RecordBatch``: the key columns, then one column
        per ``(op, value column index)`` of ``layout`` with ``op`` one of ``"count"``
        (index ignored), ``"sum"``, ``"min"``, ``"max"``, ``"mean"`` (asked for at
        construction); ``names`` names every column."""
        out = _result_layout(self, names, layout)
        return self._export(out[2], out[3])


# Result layouts by (types, flags, names, layout): a window makes a new table per
# window, whose first result would otherwise build the same schema again.
cdef dict _LAYOUTS = {}
# The last layout found or built, and the spec lists of the table it was for: a new
# table of the same aggregator holds the same type objects, which are compared by
# identity here (hashing DataTypes for _LAYOUTS costs microseconds).
cdef tuple _last_layout = None


cdef bint _same_items(list a, list b):
    cdef Py_ssize_t i
    if len(a) != len(b):
        return False
    for i in range(len(a)):
        if a[i] is not b[i]:
            return False
    return True


cdef tuple _result_layout(GroupTable t, list names, list layout):
    # t._out for this result layout: (names, layout, codes, schema), built and cached
    # when the layout is not the last one asked for.
    global _last_layout
    cdef Py_ssize_t k
    cdef int code
    out = t._out
    if out is not None and names == out[0] and layout == out[1]:
        return out
    last = _last_layout
    if last is not None:
        out = last[3]
        if (names == out[0] and layout == out[1] and _same_items(t._key_types, last[0])
                and _same_items(t._value_types, last[1]) and t._value_flags == last[2]):
            t._out = out
            return out
    key = (tuple(t._key_types), tuple(t._value_types), tuple(t._value_flags), tuple(names),
           tuple([tuple(e) for e in layout]))
    out = _LAYOUTS.get(key)
    if out is not None:
        t._out = out
        _last_layout = (t._key_types, t._value_types, t._value_flags, out)
        return out
    if len(names) != t.n_keys + len(layout):
        raise ValueError("one name per key column and per layout entry is expected")
    codes = [(OUT_KEY, k) for k in range(t.n_keys)]
    for op, at in layout:
        code = _OPS.get(op, 0)
        if code == OUT_COUNT:
            codes.append((code, 0))
            continue
        if code == 0 or not 0 <= at < t.n_vals:
            raise ValueError(f"layout entry {(op, at)!r} is not a count or an aggregate of a value column")
        want = t._value_flags[at]
        if not want & {OUT_SUM: WANT_SUM, OUT_MIN: WANT_MIN, OUT_MAX: WANT_MAX, OUT_MEAN: WANT_MEAN}[code]:
            raise ValueError(f"{op} of {t._value_names[at]!r} was not asked for")
        codes.append((code, at))
    schema = t._schema(names, codes)
    # Copies of the caller's lists: the cache must not change with them.
    out = (list(names), [tuple(e) for e in layout], codes, schema)
    t._out = out
    if len(_LAYOUTS) >= 64:
        _LAYOUTS.clear()
    _LAYOUTS[key] = out
    _last_layout = (t._key_types, t._value_types, t._value_flags, out)
    return out


# --- the records handed to a handler, per thread -------------------------------------

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #define SC_THREAD_LOCAL __declspec(thread)
    #else
    #define SC_THREAD_LOCAL __thread
    #endif
    /* Handed.records / .source (strong references, NULL for None) and .offset. */
    static SC_THREAD_LOCAL PyObject* sc_handed_records = NULL;
    static SC_THREAD_LOCAL PyObject* sc_handed_source = NULL;
    static SC_THREAD_LOCAL int64_t sc_handed_offset = 0;

    static PyObject* sc_tp_new(PyObject* type, PyObject* args) {
        return ((PyTypeObject*)type)->tp_new((PyTypeObject*)type, args, NULL);
    }

    /* Whether instances of `type` may hold more than `base`'s fields: an instance
       dict or slots of a subclass. */
    static int sc_has_more_fields(PyObject* type, PyObject* base) {
        return ((PyTypeObject*)type)->tp_dictoffset != 0
            || ((PyTypeObject*)type)->tp_basicsize != ((PyTypeObject*)base)->tp_basicsize;
    }
    """
    PyObject* sc_handed_records
    PyObject* sc_handed_source
    int64_t sc_handed_offset
    object sc_tp_new(object type, object args)
    bint sc_has_more_fields(object type, object base)


cdef inline void _store_ref(PyObject** slot, object value) noexcept:
    # slot = value (NULL for None), the old reference dropped after the store.
    cdef PyObject* old = slot[0]
    cdef PyObject* new = NULL if value is None else <PyObject*>value
    Py_XINCREF(new)
    slot[0] = new
    Py_XDECREF(old)


@cython.final
@cython.auto_pickle(False)
cdef class Handed:
    """Per thread, the records streamcore handed the handler running on it.

    ``records``: the handler's ``Batch.records`` (streamcore made them and
    nothing changes their buffers, so an Aggregator may fold them on its
    background thread); ``source``: the ``BatchBinding`` of the batch a log
    stored that they are a slice of, and ``offset`` the slice's first row
    (else None and 0). The consumer sets them around each handler call. Each
    thread sees its own values (C thread-local storage: an attribute store costs
    what a slot store does, where a ``threading.local`` looked up the thread's
    dict); a thread that ends should leave ``records`` and ``source`` None, or
    their last values stay referenced.
    """

    @property
    def records(self):
        return <object>sc_handed_records if sc_handed_records != NULL else None

    @records.setter
    def records(self, value):
        global sc_handed_records
        _store_ref(&sc_handed_records, value)

    @property
    def source(self):
        return <object>sc_handed_source if sc_handed_source != NULL else None

    @source.setter
    def source(self, value):
        global sc_handed_source
        if value is not None and not isinstance(value, BatchBinding):
            msg = f"source must be a BatchBinding or None, got {type(value).__name__}"
            raise TypeError(msg)
        _store_ref(&sc_handed_source, value)

    @property
    def offset(self):
        return sc_handed_offset

    @offset.setter
    def offset(self, int64_t value):
        global sc_handed_offset
        sc_handed_offset = value


handed = Handed()


# --- Aggregator's native part --------------------------------------------------------

cdef tuple _NO_ARGS = ()


@cython.no_gc  # its fields are a spec, a plan and a table: none can lead back to it
@cython.auto_pickle(False)
cdef class AggregatorCore:
    """The native part of ``streamcore.Aggregator`` (its base class): what a windowed
    handler calls per invocation, without Python frames.

    ``_s`` is the aggregator's spec (``aggregate._Spec``), ``_plan`` the
    ``aggregate._Plan`` its table was bound with (None before), ``_table`` its
    ``GroupTable`` (None before the first records). Not for direct use: the
    subclass supplies ``_update_any``, the general path of ``update``.
    """

    cdef public object _s
    cdef public object _plan
    cdef public GroupTable _table

    def update(self, records):
        """Fold records into the groups.

        Parameters
        ----------
        records : pyarrow.RecordBatch or pyarrow.Table
            Any chunking; also any object exporting the Arrow PyCapsule
            interface (``__arrow_c_stream__`` or ``__arrow_c_array__``). It
            must hold the ``by`` and aggregated columns; other columns are
            ignored. An empty batch only fixes the column types.

        Notes
        -----
        Inside a handler, ``update(batch.records)`` of fewer than 65536 rows
        may return before the fold is done: the fold runs on a background
        native thread beside the framework's work (committing the invocation,
        starting the next). The records are checked and room for their
        groups is made before it returns, so the fold cannot fail; every
        later call on this aggregator (``len``, ``result``, ``copy``,
        ``update`` ...) waits for it, or runs it itself if the thread has not
        started it yet, so results are the same as folding in the call. Only
        the records streamcore handed the handler fold this way (their
        buffers cannot change); other records fold in the call.
        ``streamcore._aggregate.background_folds(False)`` turns it off. The
        handed records are a slice of a batch the stream stored: their columns
        are found in that batch once (``_aggregate.BatchBinding``), not in
        every slice, and once its schema is found to be the one this
        aggregator's columns were bound with, an update of such a slice is one
        native call.

        Raises
        ------
        InvalidRecordsError
            (a ``ValueError``) when a column is missing, has a type that
            cannot be grouped or aggregated, or a type other than the records
            folded before.
        TypeError
            When ``records`` is not Arrow data.
        """
        if <PyObject*>records == sc_handed_records and self._fold_handed(records):
            return
        self._update_any(records)

    cdef bint _fold_handed(self, records) except -1:
        # The fast path of update for the records handed to the running handler: True
        # when it folded them (or handed the fold to the background thread), False
        # when the general path must (a first update, another schema, no binding...).
        cdef GroupTable table = self._table
        cdef BatchBinding src
        cdef const Py_ssize_t* idx
        cdef Input inputs_buf[8]
        cdef Input* inputs = inputs_buf
        cdef const Input* base
        cdef Input* inp
        cdef Py_ssize_t n_cols
        cdef Py_ssize_t i
        cdef int64_t n
        cdef int64_t offset
        cdef int kind
        plan = self._plan
        if sc_handed_source == NULL or type(records) is not _RecordBatch:
            return False
        src = <BatchBinding>sc_handed_source
        if table is None:
            # A new aggregator (a window's first invocation): its spec's last plan,
            # when the stored batch has that plan's schema (the general path's
            # _plan_for and _bind, for that case).
            if plan is not None:
                return False
            spec = self._s
            plan = spec.plan
            if plan is None or plan.any_fix:
                return False
            if src.plan is not plan:
                schema = src.batch.schema
                wanted = plan.schema
                if schema is not wanted and not schema.equals(wanted):
                    return False
            table = GroupTable(spec.by, plan.key_types, spec.values, plan.value_types, spec.flags)
            if self._table is not None:  # bound by another thread meanwhile: its path
                return False
            self._table = table
            self._plan = plan
        elif plan is None:
            return False
        offset = sc_handed_offset
        n = records.num_rows
        if src.plan is not plan and not src.adopt(plan, table):
            return False
        idx = src.idx  # read with the GIL held since the check: the plan's
        if offset < 0 or offset > src.n_rows - n:  # (no overflow)
            msg = f"rows {offset}..{offset + n} are not within the source's {src.n_rows}"
            raise ValueError(msg)
        n_cols = table.n_keys + table.n_vals
        memset(inputs_buf, 0, sizeof(inputs_buf))  # (all filled below; the compiler cannot tell)
        if n_cols > 8:
            inputs = <Input*>malloc(n_cols * sizeof(Input))
            if inputs == NULL:
                raise MemoryError()
        try:
            for i in range(n_cols):
                kind = table.keys[i].kind if i < table.n_keys else table.vals[i - table.n_keys].kind
                base = &src.inputs[idx[i]]
                inp = &inputs[i]
                inp.values = base.values + _width(kind) * offset
                inp.data = base.data
                inp.valid = base.valid
                inp.voff = base.voff + offset
            table._fold_inputs(records, inputs, n)
        finally:
            if inputs != inputs_buf:
                free(inputs)
        return True

    def copy(self):
        """An independent copy, in constant time: the groups are shared copy-on-write.

        This is what a tumbling window's state uses: every invocation works on a
        private copy, committed only when the invocation succeeds. The copy takes
        over appending groups in place; the first of the two to change copies the
        accumulators it changes, and this aggregator, if it is updated again while
        the copy lives, first copies the groups it has (what a copy used to cost).
        A subclass's own attributes are shared, as ``copy.copy`` shares them
        (``copy.deepcopy`` and a window state's copy copy them deeply).
        """
        return self._copy(None)

    def __copy__(self):
        return self._copy(None)

    def __deepcopy__(self, memo):
        return self._copy({} if memo is None else memo)

    cdef AggregatorCore _copy(self, object memo):
        # copy(); with `memo` (a deepcopy memo), a subclass's own attributes are
        # deep-copied (else shared, as copy.copy shares them).
        cls = type(self)
        cdef AggregatorCore twin = <AggregatorCore>sc_tp_new(cls, _NO_ARGS)
        # The spec and the plan are never mutated in place: share them.
        twin._s = self._s
        twin._plan = self._plan
        twin._table = None if self._table is None else self._table._twin()
        if sc_has_more_fields(cls, AggregatorCore):
            _copy_fields(self, twin, memo)
        return twin

    def __len__(self):
        """Number of groups seen."""
        return 0 if self._table is None else self._table._groups()

    @property
    def nbytes(self):
        """Bytes held for the groups (what ``max_state_bytes`` counts for an aggregator in window state)."""
        return 0 if self._table is None else self._table._size(False)

    def _nbytes_bound(self):
        """``nbytes``, or an upper bound of it while a background fold runs (no wait)."""
        return self._size(True)

    cdef int64_t _size(self, bint bound) except -1:
        return 0 if self._table is None else self._table._size(bound)


cdef object _deepcopy = None


cdef int _copy_fields(AggregatorCore self, AggregatorCore twin, object memo) except -1:
    # What a subclass adds (its instance dict, its slots) from self to twin, as
    # copy.copy (memo None) or copy.deepcopy (memo) would: __getstate__, then
    # __setstate__ or the dict and slots set (copy._reconstruct).
    global _deepcopy
    state = self.__getstate__()
    if state is None:
        return 0
    if memo is not None:
        memo[id(self)] = twin  # (a reference back to self is one to twin)
        if _deepcopy is None:
            from copy import deepcopy
            _deepcopy = deepcopy
        state = _deepcopy(state, memo)
    setstate = getattr(twin, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return 0
    slots = None
    if isinstance(state, tuple) and len(<tuple>state) == 2:
        state, slots = state
    if state:
        twin.__dict__.update(state)
    if slots:
        for name, value in slots.items():
            setattr(twin, name, value)
    return 0


# --- window state with aggregators -----------------------------------------------------


def copy_window_state(state):
    """A private copy of a window's state for one invocation (``windows.copy_state``).

    A deep copy, but values that cannot change in place (str, int, float,
    bool, bytes, None) are shared and an aggregator is copied natively
    (``copy()``, in constant time); values that share an object still share
    its copy.
    """
    global _deepcopy
    cdef dict out = dict(state)  # (any mapping; a plain dict out)
    cdef dict memo = None
    for key, value in out.items():  # (only existing keys' values are replaced)
        cls = type(value)
        if cls is str or cls is int or cls is float or cls is bool or cls is bytes or value is None:
            continue
        if memo is None:
            memo = {}
        if isinstance(value, AggregatorCore):
            twin = memo.get(id(value))
            if twin is None:
                twin = (<AggregatorCore>value)._copy(memo)
                memo[id(value)] = twin
            out[key] = twin
            continue
        if _deepcopy is None:
            from copy import deepcopy
            _deepcopy = deepcopy
        out[key] = _deepcopy(value, memo)
    return out


def aggregators_nbytes(state, limit=None):
    """``windows.state_nbytes`` of a state whose values are all aggregators, -1 for any
    other state (empty included): 2 (``{}``) plus each aggregator's ``nbytes``; with
    ``limit``, upper bounds of them (no wait for a background fold) when their sum is
    at most ``limit``."""
    cdef int64_t total = 2
    if type(state) is not dict or not state:
        return -1
    for value in (<dict>state).values():
        if not isinstance(value, AggregatorCore):
            return -1
    if limit is not None:
        for value in (<dict>state).values():
            total += (<AggregatorCore>value)._size(True)
        if total <= limit:
            return total
        total = 2
    for value in (<dict>state).values():
        total += (<AggregatorCore>value)._size(False)
    return total


# --- the group hash, for tests -------------------------------------------------------

def key_hashes(arr):
    """The hash a ``GroupTable`` gives each element of a binary or utf8 array (any of
    the four; nulls hash as a constant), as a uint64 array: XXH3-64 of keys up to 16
    bytes, XXH64 of longer ones. What the tests check against the ``xxhash`` package."""
    cdef KeyCol kc
    cdef int64_t n = len(arr)
    cdef int64_t start = 0
    cdef int64_t m
    cdef uint64_t* out
    dtype = arr.type
    kc.kind = _key_kind(dtype)
    if not _is_bin(kc.kind):
        raise TypeError(f"expected a binary or utf8 array, got {dtype}")
    _bind_array(arr, "keys", dtype, kc.kind, &kc.inp)
    hashes = pa.allocate_buffer(8 * n)
    out = <uint64_t*><uintptr_t>hashes.address
    while start < n:
        m = n - start if n - start < CHUNK else CHUNK
        _hash_column(&kc, start, m, out + start, True)
        start += m
    return pa.Array.from_buffers(pa.uint64(), n, [None, hashes])


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
        valid = input_address(buffers[0])
        validity = pa.allocate_buffer((n + 7) // 8)
        bits = _mutable(validity)
        with nogil:
            memset(bits, 0, (n + 7) // 8)
            for i in range(n):
                if _bit(valid, offset + i):
                    bits[i >> 3] |= <uint8_t>(1 << (i & 7))
    values = input_address(buffers[1]) + 8 * offset
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
