# XXH64, written from the public algorithm description, bit-exact with the
# reference implementation (the `xxhash` package is the test oracle).
#
# The core and its helpers are defined here, not in _hashing.pyx, so that
# _partition, _dispatch and _aggregate can `cimport` them and the C compiler
# inlines them into their loops. Everything below is `noexcept nogil`.
#
# Byte order: XXH64 reads its input as little-endian words. read_le64/read_le32
# load with memcpy (no alignment requirement) and swap only on a big-endian
# host; the host test folds to a constant, so on little-endian hosts each read
# compiles to one plain load. xxh64_u64 hashes an integer by value, so integer
# keys read natively from Arrow buffers hash the same on either byte order.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

# The five 64-bit primes of XXH64, written as literals in the functions below:
#   PRIME64_1 = 0x9E3779B185EBCA87
#   PRIME64_2 = 0xC2B2AE3D27D4EB4F
#   PRIME64_3 = 0x165667B19E3779F9
#   PRIME64_4 = 0x85EBCA77C2B2AE63
#   PRIME64_5 = 0x27D4EB2F165667C5


cdef inline bint host_is_little_endian() noexcept nogil:
    cdef uint32_t probe = 1
    return (<const uint8_t*>&probe)[0] == 1


cdef inline uint64_t bswap64(uint64_t x) noexcept nogil:
    x = ((x & 0x00000000FFFFFFFFULL) << 32) | (x >> 32)
    x = ((x & 0x0000FFFF0000FFFFULL) << 16) | ((x >> 16) & 0x0000FFFF0000FFFFULL)
    return ((x & 0x00FF00FF00FF00FFULL) << 8) | ((x >> 8) & 0x00FF00FF00FF00FFULL)


cdef inline uint32_t bswap32(uint32_t x) noexcept nogil:
    x = ((x & 0x0000FFFFU) << 16) | (x >> 16)
    return ((x & 0x00FF00FFU) << 8) | ((x >> 8) & 0x00FF00FFU)


cdef inline uint64_t read_le64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    if host_is_little_endian():
        return v
    return bswap64(v)


cdef inline uint32_t read_le32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    if host_is_little_endian():
        return v
    return bswap32(v)


cdef inline uint64_t rotl64(uint64_t x, int r) noexcept nogil:
    # Callers pass 0 < r < 64 only, so neither shift is by 64.
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t xxh64_round(uint64_t acc, uint64_t lane) noexcept nogil:
    acc += lane * 0xC2B2AE3D27D4EB4FULL
    acc = rotl64(acc, 31)
    return acc * 0x9E3779B185EBCA87ULL


cdef inline uint64_t xxh64_merge(uint64_t h, uint64_t acc) noexcept nogil:
    h ^= xxh64_round(0, acc)
    return h * 0x9E3779B185EBCA87ULL + 0x85EBCA77C2B2AE63ULL


cdef inline uint64_t xxh64_avalanche(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xC2B2AE3D27D4EB4FULL
    h ^= h >> 29
    h *= 0x165667B19E3779F9ULL
    h ^= h >> 32
    return h


cdef inline uint64_t xxh64_word(uint64_t h, const uint8_t* p) noexcept nogil:
    h ^= xxh64_round(0, read_le64(p))
    return rotl64(h, 27) * 0x9E3779B185EBCA87ULL + 0x85EBCA77C2B2AE63ULL


cdef inline uint64_t xxh64_byte(uint64_t h, uint8_t byte) noexcept nogil:
    h ^= <uint64_t>byte * 0x27D4EB2F165667C5ULL
    return rotl64(h, 11) * 0x9E3779B185EBCA87ULL


cdef inline uint64_t xxh64_finalize(uint64_t h, const uint8_t* p, size_t remaining) noexcept nogil:
    # Tail of fewer than 32 bytes: its 8-byte words, then one 4-byte word, then
    # bytes. The bits of `remaining` (< 32) give the steps without a loop, whose
    # counter and exit branch would cost as much as the short keys' hashing.
    if remaining & 16:
        h = xxh64_word(h, p)
        h = xxh64_word(h, p + 8)
        p += 16
    if remaining & 8:
        h = xxh64_word(h, p)
        p += 8
    if remaining & 4:
        h ^= <uint64_t>read_le32(p) * 0x9E3779B185EBCA87ULL
        h = rotl64(h, 23) * 0xC2B2AE3D27D4EB4FULL + 0x165667B19E3779F9ULL
        p += 4
    if remaining & 2:
        h = xxh64_byte(h, p[0])
        h = xxh64_byte(h, p[1])
        p += 2
    if remaining & 1:
        h = xxh64_byte(h, p[0])
    return xxh64_avalanche(h)


cdef inline uint64_t xxh64(const uint8_t* data, size_t length, uint64_t seed) noexcept nogil:
    """XXH64 of data[0:length]. data may be NULL only when length is 0."""
    cdef const uint8_t* p = data
    cdef size_t remaining = length
    cdef uint64_t v1
    cdef uint64_t v2
    cdef uint64_t v3
    cdef uint64_t v4
    cdef uint64_t h
    if remaining >= 32:
        v1 = seed + 0x9E3779B185EBCA87ULL + 0xC2B2AE3D27D4EB4FULL
        v2 = seed + 0xC2B2AE3D27D4EB4FULL
        v3 = seed
        v4 = seed - 0x9E3779B185EBCA87ULL
        while remaining >= 32:
            v1 = xxh64_round(v1, read_le64(p))
            v2 = xxh64_round(v2, read_le64(p + 8))
            v3 = xxh64_round(v3, read_le64(p + 16))
            v4 = xxh64_round(v4, read_le64(p + 24))
            p += 32
            remaining -= 32
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18)
        h = xxh64_merge(h, v1)
        h = xxh64_merge(h, v2)
        h = xxh64_merge(h, v3)
        h = xxh64_merge(h, v4)
    else:
        h = seed + 0x27D4EB2F165667C5ULL
    h += <uint64_t>length
    return xxh64_finalize(h, p, remaining & 31)


cdef inline uint64_t xxh64_u64(uint64_t value, uint64_t seed) noexcept nogil:
    """XXH64 of the 8 little-endian bytes of value (an integer key, SEMANTICS 0.3).

    Equal to xxh64 over those 8 bytes; reads no memory, so it is byte-order free.
    """
    cdef uint64_t h = seed + 0x27D4EB2F165667C5ULL + 8
    h ^= xxh64_round(0, value)
    h = rotl64(h, 27) * 0x9E3779B185EBCA87ULL + 0x85EBCA77C2B2AE63ULL
    return xxh64_avalanche(h)


# Hash every element of a pyarrow Array or ChunkedArray of keys into out[0:len(keys)]
# (SEMANTICS 0.3: utf8/binary bytes as stored, integers as little-endian int64,
# dictionaries decoded, views cast). The caller owns `out` and sizes it. Call with
# the GIL held. A chunk of _arrow.parallel_config's min_rows keys or more is hashed
# on two threads (_arrow.run_tasks), and from _arrow.NOGIL_ROWS keys on with the
# GIL released. Raises InvalidRecordsError for an
# unsupported key type or a null key (row = row_base + 0-based row in keys), and
# TypeError when keys is neither an Array nor a ChunkedArray.
cdef int hash_array_into(object keys, uint64_t* out, uint64_t seed, int64_t row_base) except -1


# A key column ready to hash row by row: key_view checks a pyarrow Array of keys
# (type, nulls) as hash_array_into does, raising the same errors, decodes a
# dictionary and casts a view type, and fills `view`; it returns the array whose
# buffers `view` points into, which the caller keeps referenced while it hashes.
# hash_keys writes the hashes of rows [lo, lo + n) of the view to out[0:n].
cdef enum KeyKind:
    KIND_OFFSETS32 = 1  # utf8, binary
    KIND_OFFSETS64  # their large variants (and the view types, cast)
    KIND_INT8
    KIND_INT16
    KIND_INT32
    KIND_INT64
    KIND_UINT8
    KIND_UINT16
    KIND_UINT32
    KIND_UINT64

cdef struct KeyView:
    int kind  # a KeyKind
    const uint8_t* values  # offsets or integers, at the first row
    const uint8_t* data  # bytes of var-length keys (NULL for integer keys)
    Py_ssize_t n

cdef object key_view(object arr, KeyView* view, int64_t row_base)
cdef void hash_keys(const KeyView* keys, Py_ssize_t lo, Py_ssize_t n, uint64_t seed, uint64_t* out) noexcept nogil
