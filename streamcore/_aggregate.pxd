# Layout of the keyed aggregator (see _aggregate.pyx for the algorithm).
#
# Groups are numbered 0, 1, 2, ... in order of first appearance. Every
# per-group array below is indexed by that number and grows by doubling when a
# new group needs room; the open-addressing table maps a key hash to a group
# number and doubles when it would be more than half full. Arrays that only
# matter once a null is seen (`nulls`) stay NULL until then, so a table
# without nulls is smaller and cheaper to copy.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from streamcore._threads cimport pthread_mutex_t


cdef struct Input:
    # One Arrow array of the batch being folded, read in place.
    const uint8_t* values   # element 0 of the array (its offset applied); offsets for binary
    const uint8_t* data     # the bytes of a binary/utf8 array, else NULL
    const uint8_t* valid    # validity bitmap, or NULL when the array has no nulls
    int64_t voff            # bit offset of element 0 in ``valid``


cdef struct KeyCol:
    int kind
    uint64_t* ints          # integer keys: the value, sign- or zero-extended to 64 bits
    int64_t* offs           # binary keys: where group g's key starts in the arena; keys are
    uint8_t* arena          # back to back (a null key is empty): the next start or arena_len ends it
    int64_t arena_len
    int64_t arena_cap
    int64_t key_bytes       # total length of the keys in the arena
    uint8_t* nulls          # 1 when the group's key is null; NULL while no group's is
    Input inp


cdef struct Slot:
    # One entry of the open-addressing table. key0 lets a probe compare the first
    # key column without touching per-group arrays: the integer itself, or
    # (arena offset << 16) | key length when the length is below 0xFFFF.
    # The per-group arrays, the arena and the slot table are shared copy-on-write
    # between a table and its copies (see _aggregate.pyx).
    uint64_t tag_gid        # 0 = empty, else (hash >> 32) << 32 | (group + 1)
    uint64_t key0


cdef struct ValCol:
    int kind                # kind of the input column
    int flags               # which accumulators exist (HAS_* in _aggregate.pyx)
    int64_t* nulls          # null values folded (non-null values = count - nulls); NULL while none
    uint64_t* sum           # int64 / uint64 / double bits, by the kind's sum type
    double* msum            # float sum for the mean of an integer column (as pyarrow)
    uint64_t* mn            # min / max: int64, uint64 or double bits, by kind
    uint64_t* mx
    uint64_t mn_init        # what mn / mx of a new group start as (see _value_inits)
    uint64_t mx_init
    # Inputs: [0] values (update) or the state's non-null counts (merge), then its
    # [1] sum, [2] msum, [3] min, [4] max columns (merge only).
    Input inp[5]


cdef class GroupTable:
    cdef Py_ssize_t n_keys
    cdef Py_ssize_t n_vals
    cdef KeyCol* keys
    cdef ValCol* vals
    cdef int64_t n_groups
    cdef int64_t group_cap
    cdef int64_t* counts
    cdef uint64_t* group_hash       # the hash of each group's key, for rehashing
    cdef Slot* slots
    cdef uint64_t slot_mask         # capacity - 1; capacity is a power of two
    cdef Input in_count
    # The spec: never mutated after __init__, so copies share these objects.
    cdef list _key_names
    cdef list _key_types
    cdef list _value_names
    cdef list _value_types
    cdef list _value_flags
    # The last result layout asked for: (names, layout, codes, schema), replaced whole.
    cdef tuple _out
    cdef pthread_mutex_t _mutex      # serialises calls (see _t_lock)
    cdef int64_t per_group          # nbytes() per group (of the spec)
    # A fold handed to the background thread (see "background folds" in _aggregate.pyx).
    cdef int bg_state               # _BG_NONE, _QUEUED, _RUNNING or _DONE (atomic)
    cdef uint64_t bg_ticket         # its place in the queue while queued
    cdef int bg_rc                  # its result, read once it is done
    cdef int64_t bg_rows
    cdef int64_t bg_bound           # an upper bound of nbytes() once it is done
    cdef object _bg_batch           # the batch it reads, kept alive until _sync
    cdef Slot* bg_slots             # a larger slot table _reserve allocated, for the fold to fill
    cdef bint bg_copies             # _reserve left copies to the fold (see _pending)
    cdef bint bg_rebuild            # the fold moves the groups into bg_slots before it starts
    cdef uint64_t bg_mask

    cdef void _free_groups(self) noexcept nogil
    cdef int _copy(self, GroupTable src) noexcept nogil
    cdef int _grow_groups(self, int64_t cap) noexcept nogil
    cdef int _rehash(self, uint64_t capacity) noexcept nogil
    cdef void _rehash_into(self, Slot* slots, uint64_t mask) noexcept nogil
    cdef int _make_room(self, uint64_t h, uint64_t* pos) noexcept nogil
    cdef void _commit(self, int64_t g, uint64_t h, uint64_t pos, uint64_t key0) noexcept nogil
    cdef int64_t _add(self, int64_t row, uint64_t h, uint64_t pos) noexcept nogil
    cdef int _assign(self, int64_t start, int64_t m, const uint64_t* hashes, uint32_t* gid) noexcept nogil
    cdef int _fold(self, int64_t n, bint merge) noexcept nogil
    cdef int _fold_owned(self, int64_t n, bint merge) noexcept nogil
    cdef int _reserve(self, int64_t n) noexcept nogil
    cdef int64_t _nbytes_for(self, int64_t groups, int64_t arena_bytes) noexcept nogil
    cdef int _sync(self) except -1
    cdef int64_t _groups(self) except -1
    cdef GroupTable _twin(self)
    cdef int64_t _size(self, bint bound) except -1
    cdef int _fold_inputs(self, object batch, const Input* inputs, int64_t n) except -1
    cdef int _post_or_fold(self, object batch, int64_t n, bint background) except -1
    cdef int _bind_input(self, object arr, object name, object dtype, int kind, Input* inp) except -1
    cdef int _raise_for(self, int rc) except -1
    cdef tuple _state_layout(self)
    cdef object _out_type(self, int code, Py_ssize_t at)
    cdef object _schema(self, list names, list codes)
    cdef object _export(self, list codes, object schema)
