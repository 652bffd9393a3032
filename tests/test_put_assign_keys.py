"""``_partition.assign_keys`` (hash, shard and seq of a put's keys in one pass), ``_hashing.check_keys``."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore import _arrow, _hashing, _partition
from streamcore.errors import InvalidRecordsError


def _keys(n: int, rng: random.Random) -> pa.Array:
    # Short keys of varied lengths, some long enough for XXH64's 32-byte stripes.
    values = [f"user-{rng.randrange(100_000):05d}" + "x" * rng.choice([0, 0, 3, 30]) for _ in range(n)]
    return pa.array(values, pa.utf8())


@pytest.mark.parametrize("n", [0, 1, 7, 31, 32, 33, 1000, 20_000])
@pytest.mark.parametrize("n_ranges", [1, 3, 8, 300])  # 300: owners stored as int32, not one byte
@pytest.mark.parametrize("threads", [1, 2])
def test_assign_keys_equals_hash_array_then_assign(n: int, n_ranges: int, threads: int) -> None:
    rng = random.Random(n * 31 + n_ranges)
    keys = _keys(n, rng)
    variants = [
        keys,
        keys.slice(min(3, n)),
        keys.cast(pa.large_utf8()),
        keys.cast(pa.binary()),
        keys.dictionary_encode(),
        keys.cast(pa.string_view()),
        pa.array([rng.randrange(-(2**40), 2**40) for _ in range(n)], pa.int64()),
        pa.array([rng.randrange(256) for _ in range(n)], pa.uint8()),
    ]
    starts = _partition.even_ranges(n_ranges)
    ids = [10 + i for i in range(n_ranges)]
    firsts = [rng.randrange(1000) for _ in range(n_ranges)]
    previous = _arrow.parallel_config(threads=threads, min_rows=1000)
    try:
        for k in variants:
            want = _partition.assign(_hashing.hash_array(k), starts, ids, firsts)
            order, counts, shard, seq, grouped = _partition.assign_keys(k, starts, ids, firsts)
            assert order.equals(want[0]) and counts == want[1]
            assert shard.equals(want[2]) and seq.equals(want[3])
            assert grouped.equals(_arrow.ranges(firsts, counts))
            assert grouped.equals(seq.take(order))
    finally:
        _arrow.parallel_config(*previous)


def test_assign_keys_and_check_keys_raise_as_hash_array() -> None:
    with pytest.raises(InvalidRecordsError) as raised:
        _partition.assign_keys(pa.array(["a", "b", None]), [0], [0], [0])
    assert raised.value.row == 2
    with pytest.raises(InvalidRecordsError) as raised:
        _hashing.check_keys(pa.chunked_array([["a"], ["b", None]]))
    assert raised.value.row == 2
    with pytest.raises(InvalidRecordsError):
        _hashing.check_keys(pa.array([1.5]))
    with pytest.raises(InvalidRecordsError):
        _hashing.check_keys(pa.chunked_array([], pa.float64()))
    with pytest.raises(TypeError):
        _hashing.check_keys([b"a"])
    with pytest.raises(TypeError):
        _partition.assign_keys(pa.chunked_array([["a"]]), [0], [0], [0])
    _hashing.check_keys(pa.chunked_array([["a"], ["b"]]))  # fine: no error


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.binary(max_size=40), max_size=400),
    extra=st.lists(st.integers(0, 2**64 - 1), max_size=6),
    near=st.lists(st.integers(0, 2**20), max_size=4),
    n_shards=st.integers(1, 9),
    threads=st.sampled_from([1, 2]),
)
def test_assign_keys_matches_hash_array_then_assign(
    keys: list[bytes], extra: list[int], near: list[int], n_shards: int, threads: int
) -> None:
    # Uneven ranges too, some narrower than a lookup bucket (boundaries close together).
    base = extra[0] if extra else 2**63
    starts = sorted({0, *_partition.even_ranges(n_shards), *extra, *((base + d) % 2**64 for d in near)})
    ids = list(range(7, 7 + len(starts)))
    firsts = [3 * i for i in range(len(starts))]
    arr = pa.array(keys, pa.binary())
    previous = _arrow.parallel_config(threads=threads, min_rows=1)
    try:
        order, counts, shard, seq, grouped = _partition.assign_keys(arr, starts, ids, firsts)
        want = _partition.assign(_hashing.hash_array(arr), starts, ids, firsts)
    finally:
        _arrow.parallel_config(*previous)
    assert (order.to_pylist(), counts, shard.to_pylist(), seq.to_pylist()) == (
        want[0].to_pylist(), want[1], want[2].to_pylist(), want[3].to_pylist()
    )
    assert grouped.to_pylist() == [firsts[s] + j for s in range(len(starts)) for j in range(counts[s])]
