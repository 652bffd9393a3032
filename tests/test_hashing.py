"""streamcore._hashing: XXH64 checked bit for bit against the xxhash package."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from test_arrow_gather import threads

from streamcore import _hashing, errors

InvalidRecordsError = errors.InvalidRecordsError

U64 = st.integers(min_value=0, max_value=2**64 - 1)
SEEDS = st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), U64)

INT_TYPES = {
    "int8": (pa.int8(), -(2**7), 2**7 - 1),
    "int16": (pa.int16(), -(2**15), 2**15 - 1),
    "int32": (pa.int32(), -(2**31), 2**31 - 1),
    "int64": (pa.int64(), -(2**63), 2**63 - 1),
    "uint8": (pa.uint8(), 0, 2**8 - 1),
    "uint16": (pa.uint16(), 0, 2**16 - 1),
    "uint32": (pa.uint32(), 0, 2**32 - 1),
    "uint64": (pa.uint64(), 0, 2**64 - 1),
}
BYTES_TYPES = {
    "utf8": pa.utf8(),
    "large_utf8": pa.large_utf8(),
    "binary": pa.binary(),
    "large_binary": pa.large_binary(),
    "string_view": pa.string_view(),
    "binary_view": pa.binary_view(),
}


def key_bytes(value: str | bytes | int) -> bytes:
    """The bytes SEMANTICS 0.3 hashes for one key."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    return struct.pack("<Q", value & (2**64 - 1))  # int64 little-endian; uint64 raw


def expected(values: list[str] | list[bytes] | list[int], seed: int = 0) -> list[int]:
    return [xxhash.xxh64_intdigest(key_bytes(v), seed) for v in values]


def text_values(type_name: str) -> st.SearchStrategy[list[str]] | st.SearchStrategy[list[bytes]]:
    if "binary" in type_name:
        return st.lists(st.binary(max_size=80), max_size=40)
    return st.lists(st.text(max_size=40), max_size=40)


# --- xxh64 on bytes -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=1000), seed=SEEDS)
def test_xxh64_matches_xxhash(data: bytes, seed: int) -> None:
    assert _hashing.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


def test_xxh64_every_length_up_to_four_stripes() -> None:
    # Every split of a length into 32-byte stripes and 8/4/1-byte tail pieces.
    stream = bytes((i * 37 + 11) & 0xFF for i in range(130))
    for length in range(len(stream) + 1):
        data = stream[:length]
        for seed in (0, 0x9E3779B185EBCA87, 2**64 - 1):
            assert _hashing.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed), length


def test_xxh64_accepts_bytes_like_and_default_seed() -> None:
    data = b"user-42" * 20_000  # long enough to take the GIL-free path
    want = xxhash.xxh64_intdigest(data)
    assert _hashing.xxh64(data) == want
    assert _hashing.xxh64(bytearray(data)) == want
    assert _hashing.xxh64(memoryview(data)) == want
    assert _hashing.xxh64(memoryview(data)[7:14]) == xxhash.xxh64_intdigest(data[7:14])
    assert _hashing.xxh64(b"") == xxhash.xxh64_intdigest(b"")


def test_xxh64_negative_seed_is_twos_complement() -> None:
    assert _hashing.xxh64(b"abc", -1) == xxhash.xxh64_intdigest(b"abc", 2**64 - 1)
    assert _hashing.xxh64(b"abc", -(2**63)) == xxhash.xxh64_intdigest(b"abc", 2**63)


def test_xxh64_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        _hashing.xxh64("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _hashing.xxh64(b"abc", 1.5)  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        _hashing.xxh64(b"abc", 2**64)
    with pytest.raises(OverflowError):
        _hashing.xxh64(b"abc", -(2**63) - 1)


# --- hash_array -----------------------------------------------------------------------


@pytest.mark.parametrize("type_name", sorted(BYTES_TYPES))
@settings(max_examples=25, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_hash_array_bytes_types(type_name: str, data: st.DataObject, seed: int) -> None:
    values = data.draw(text_values(type_name))
    keys = pa.array(values, type=BYTES_TYPES[type_name])
    result = _hashing.hash_array(keys, seed)
    assert result.type == pa.uint64()
    assert result.to_pylist() == expected(values, seed)


@pytest.mark.parametrize("type_name", sorted(INT_TYPES))
@settings(max_examples=25, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_hash_array_integer_types(type_name: str, data: st.DataObject, seed: int) -> None:
    arrow_type, low, high = INT_TYPES[type_name]
    edges = st.sampled_from([low, high, 0, -1 if low < 0 else 1, low + 1])
    values = data.draw(st.lists(st.one_of(edges, st.integers(low, high)), max_size=40))
    result = _hashing.hash_array(pa.array(values, type=arrow_type), seed)
    assert result.to_pylist() == expected(values, seed)


def test_integer_keys_hash_as_int64_across_widths() -> None:
    for arrow_type, _low, _high in INT_TYPES.values():
        got = _hashing.hash_array(pa.array([0, 1, 100], type=arrow_type)).to_pylist()
        assert got == expected([0, 1, 100])
    # int64 -1 and uint64 2**64-1 share a bit pattern, so they share a hash.
    assert (
        _hashing.hash_array(pa.array([-1], pa.int8())).to_pylist()
        == _hashing.hash_array(pa.array([2**64 - 1], pa.uint64())).to_pylist()
    )
    big = [2**63, 2**63 + 12345, 2**64 - 2]
    assert _hashing.hash_array(pa.array(big, pa.uint64())).to_pylist() == expected(big)


@pytest.mark.parametrize("arrow_type", [pa.utf8(), pa.large_binary(), pa.int16(), pa.uint64()])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_hash_array_slices(arrow_type: pa.DataType, data: st.DataObject, seed: int) -> None:
    if pa.types.is_integer(arrow_type):
        values = data.draw(st.lists(st.integers(0, 2**15 - 1), max_size=40))
    else:
        values = data.draw(st.lists(st.binary(max_size=40), max_size=40))
        if pa.types.is_string(arrow_type):
            values = [v.hex() for v in values]
    start = data.draw(st.integers(0, len(values)))
    length = data.draw(st.integers(0, len(values) - start))
    keys = pa.array(values, type=arrow_type).slice(start, length)
    assert keys.offset == start
    got = _hashing.hash_array(keys, seed).to_pylist()
    assert got == expected(values[start : start + length], seed)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.lists(st.text(max_size=12), max_size=8), max_size=6),
    seed=SEEDS,
)
def test_hash_array_chunked_with_empty_chunks(chunks: list[list[str]], seed: int) -> None:
    keys = pa.chunked_array([[], *chunks, []], type=pa.utf8())
    flat = [v for chunk in chunks for v in chunk]
    result = _hashing.hash_array(keys, seed)
    assert isinstance(result, pa.UInt64Array)
    assert result.to_pylist() == expected(flat, seed)


def test_hash_array_chunked_of_sliced_chunks() -> None:
    base = pa.array(list(range(-10, 10)), pa.int32())
    keys = pa.chunked_array([base.slice(3, 5), base.slice(0, 0), base.slice(12)])
    want = expected(list(range(-7, -2)) + list(range(2, 10)))
    assert _hashing.hash_array(keys).to_pylist() == want


def test_hash_array_dictionary() -> None:
    values = ["b", "a", "b", "", "c", "a"]
    keys = pa.array(values).dictionary_encode()
    assert pa.types.is_dictionary(keys.type)
    assert _hashing.hash_array(keys, 7).to_pylist() == expected(values, 7)
    assert _hashing.hash_array(keys.slice(2, 3), 7).to_pylist() == expected(values[2:5], 7)
    ints = pa.DictionaryArray.from_arrays(
        pa.array([1, 0, 1], pa.int8()), pa.array([-5, 2**40], pa.int64())
    )
    assert _hashing.hash_array(ints).to_pylist() == expected([2**40, -5, 2**40])
    chunked = pa.chunked_array([keys.slice(0, 2), keys.slice(2)])
    assert _hashing.hash_array(chunked).to_pylist() == expected(values)


@pytest.mark.parametrize(
    "keys",
    [
        pa.array([], pa.utf8()),
        pa.array([], pa.int64()),
        pa.array(["a", "b"]).slice(2),
        pa.chunked_array([], pa.utf8()),
        pa.chunked_array([[], []], pa.uint16()),
    ],
    ids=["utf8", "int64", "sliced-to-empty", "no-chunks", "empty-chunks"],
)
def test_hash_array_empty(keys: pa.Array | pa.ChunkedArray) -> None:
    result = _hashing.hash_array(keys)
    assert result.type == pa.uint64()
    assert len(result) == 0


def test_hash_array_matches_xxh64_on_long_values() -> None:
    values = [bytes([i & 0xFF]) * i for i in range(0, 300, 7)]
    keys = pa.array(values, pa.binary())
    assert _hashing.hash_array(keys, 99).to_pylist() == [_hashing.xxh64(v, 99) for v in values]


# --- two threads ----------------------------------------------------------------------


def hashed_both_ways(keys: pa.Array | pa.ChunkedArray, seed: int = 0) -> list[int]:
    with threads(1):
        one = _hashing.hash_array(keys, seed)
    with threads(2):
        two = _hashing.hash_array(keys, seed)
    assert one.equals(two)
    return two.to_pylist()


@pytest.mark.parametrize("type_name", sorted(BYTES_TYPES) + sorted(INT_TYPES))
@settings(max_examples=20, deadline=None)
@given(data=st.data(), seed=SEEDS)
def test_hash_array_on_two_threads_equals_one_thread(type_name: str, data: st.DataObject, seed: int) -> None:
    if type_name in INT_TYPES:
        arrow_type, low, high = INT_TYPES[type_name]
        values: list = data.draw(st.lists(st.integers(low, high), max_size=60))
    else:
        arrow_type = BYTES_TYPES[type_name]
        values = data.draw(text_values(type_name))
    start = data.draw(st.integers(0, len(values)))
    keys = pa.array(values, arrow_type).slice(start)
    assert hashed_both_ways(keys, seed) == expected(values[start:], seed)
    chunked = pa.chunked_array([keys.slice(0, len(keys) // 2), keys.slice(len(keys) // 2)], arrow_type)
    assert hashed_both_ways(chunked, seed) == expected(values[start:], seed)
    if "view" not in type_name:  # pyarrow cannot dictionary-encode views
        assert hashed_both_ways(keys.dictionary_encode(), seed) == expected(values[start:], seed)


def test_hash_array_threshold_boundary_and_many_tasks() -> None:
    values = [f"user-{i:05d}" for i in range(40_000)]
    for n, min_rows in ((99, 100), (100, 100), (101, 100), (40_000, 16384)):  # 40,000: ten tasks
        keys = pa.array(values[:n])
        with threads(2, min_rows=min_rows):
            assert _hashing.hash_array(keys, 5).to_pylist() == expected(values[:n], 5)
    ints = pa.array(range(-20_000, 20_000), pa.int64()).slice(3)
    assert hashed_both_ways(ints) == expected(list(range(-19_997, 20_000)))


# --- errors ---------------------------------------------------------------------------


def null_row(keys: pa.Array | pa.ChunkedArray) -> int | None:
    with pytest.raises(InvalidRecordsError, match=r"key is null at row \d+") as info:
        _hashing.hash_array(keys)
    assert isinstance(info.value, ValueError)
    row = info.value.row
    assert str(info.value) == f"key is null at row {row}"
    return row


def test_null_key_names_its_row() -> None:
    assert null_row(pa.array(["a", "b", None, "d", None])) == 2
    assert null_row(pa.array([None], pa.int64())) == 0
    assert null_row(pa.array([1, 2, 3, None], pa.uint8())) == 3
    assert null_row(pa.array(["x", None, "y"]).dictionary_encode()) == 1


def test_null_key_row_in_sliced_input() -> None:
    base = pa.array(["a", None, "b", "c", "d", None, "e"], pa.large_utf8())
    assert null_row(base.slice(2)) == 3
    assert null_row(base.slice(1)) == 0
    assert _hashing.hash_array(base.slice(2, 3)).to_pylist() == expected(["b", "c", "d"])


def test_null_key_row_in_chunked_input() -> None:
    base = pa.array([10, None, 12, 13, 14, None, 16], pa.int32())
    keys = pa.chunked_array([base.slice(2, 2), pa.array([], pa.int32()), base.slice(3)])
    # rows: 12 13 | | 13 14 None 16  -> first null at row 4
    assert null_row(keys) == 4


@settings(max_examples=50, deadline=None)
@given(
    chunks=st.lists(st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=6), max_size=5),
    start=st.integers(0, 3),
)
def test_null_key_row_matches_first_null(chunks: list[list[str | None]], start: int) -> None:
    arrays = [pa.array(c, pa.utf8()).slice(min(start, len(c))) for c in chunks]
    flat = [v for a in arrays for v in a.to_pylist()]
    keys = pa.chunked_array(arrays, type=pa.utf8())
    if None in flat:
        assert null_row(keys) == flat.index(None)
    else:
        assert _hashing.hash_array(keys).to_pylist() == expected(flat)


@pytest.mark.parametrize(
    "keys",
    [
        pa.array([1.5], pa.float64()),
        pa.array([True]),
        pa.array([0], pa.timestamp("ms")),
        pa.array([[1]]),
        pa.array([None], pa.null()),
        pa.array([b"ab"], pa.binary(2)),
        pa.array([1.5, 2.5]).dictionary_encode(),
        pa.chunked_array([], pa.float32()),
    ],
    ids=["float64", "bool", "timestamp", "list", "null", "fixed-binary", "dict-float", "chunked"],
)
def test_unsupported_types_raise(keys: pa.Array | pa.ChunkedArray) -> None:
    with pytest.raises(ValueError, match="is not supported: expected utf8") as info:
        _hashing.hash_array(keys)
    assert isinstance(info.value, InvalidRecordsError)
    assert info.value.row is None
    assert str(keys.type) in str(info.value)
    assert "int64" in str(info.value)


def test_hash_array_rejects_non_arrow_input() -> None:
    with pytest.raises(TypeError, match=r"pyarrow\.Array or pyarrow\.ChunkedArray, got list"):
        _hashing.hash_array(["a", "b"])
