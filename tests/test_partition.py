"""The native shard assignment and stable grouping, against a plain-Python model."""

from __future__ import annotations

import bisect
import random

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from test_arrow_gather import threads

from streamcore import _arrow, _partition

U64 = st.integers(0, 2**64 - 1)


def model(hashes: list[int], starts: list[int]) -> tuple[list[int], list[int], list[int]]:
    owner = [bisect.bisect_right(starts, h) - 1 for h in hashes]
    order = sorted(range(len(hashes)), key=lambda i: (owner[i], i))
    counts = [owner.count(r) for r in range(len(starts))]
    return owner, order, counts


def test_even_ranges_are_floor_of_i_times_2_64_over_n() -> None:
    for n in (1, 2, 3, 7, 8, 16, 1000):
        assert _partition.even_ranges(n) == [(i << 64) // n for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(
    hashes=st.lists(U64, max_size=300),
    n=st.integers(1, 20),
    extra=st.lists(U64, max_size=5),
)
def test_partition_matches_the_model(hashes: list[int], n: int, extra: list[int]) -> None:
    starts = sorted(set(_partition.even_ranges(n)) | set(extra) | {0})  # also uneven (resharded) ranges
    # boundaries themselves, and one below each, are the interesting hashes
    probes = hashes + starts + [s - 1 for s in starts if s] + [2**64 - 1]
    owner, order, counts = _partition.partition(pa.array(probes, pa.uint64()), starts)
    assert (owner.to_pylist(), order.to_pylist(), counts) == model(probes, starts)


def test_sliced_input_and_seq_scatter() -> None:
    hashes = pa.array([5, 2**63, 7, 2**64 - 1, 1], pa.uint64()).slice(1)
    owner, order, counts = _partition.partition(hashes, _partition.even_ranges(2))
    assert owner.to_pylist() == [1, 0, 1, 0]
    assert order.to_pylist() == [1, 3, 0, 2]
    seqs = _arrow.scatter_sequences(order, [10, 20], counts)
    assert seqs.to_pylist() == [20, 10, 21, 11]


def assign_model(
    hashes: list[int], starts: list[int], ids: list[int], firsts: list[int]
) -> tuple[list[int], list[int], list[int], list[int]]:
    owner, order, counts = model(hashes, starts)
    seq = [0] * len(hashes)
    for s in range(len(starts)):
        for j, row in enumerate(r for r in order if owner[r] == s):
            seq[row] = firsts[s] + j
    return order, counts, [ids[o] for o in owner], seq


@settings(max_examples=200, deadline=None)
@given(
    hashes=st.lists(U64, max_size=300),
    n=st.integers(1, 20),
    extra=st.lists(U64, max_size=5),
    data=st.data(),
)
def test_assign_matches_the_model(hashes: list[int], n: int, extra: list[int], data: st.DataObject) -> None:
    starts = sorted(set(_partition.even_ranges(n)) | set(extra) | {0})
    probes = hashes + starts + [s - 1 for s in starts if s]
    ids = data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(starts), max_size=len(starts)))
    firsts = data.draw(st.lists(st.integers(0, 2**63), min_size=len(starts), max_size=len(starts)))
    order, counts, shard, seq = _partition.assign(pa.array(probes, pa.uint64()), starts, ids, firsts)
    assert (order.to_pylist(), counts, shard.to_pylist(), seq.to_pylist()) == assign_model(
        probes, starts, ids, firsts
    )
    assert shard.type == pa.int64() and seq.type == pa.uint64()


def test_assign_equals_partition_then_scatter_groups() -> None:
    rng = random.Random(7)
    hashes = pa.array([rng.getrandbits(64) for _ in range(5000)], pa.uint64()).slice(3)
    starts = sorted({0, *(rng.getrandbits(64) for _ in range(6))})
    ids = list(range(100, 100 + len(starts)))
    firsts = [rng.getrandbits(40) for _ in starts]
    _, order, counts = _partition.partition(hashes, starts)
    shard, seq = _arrow.scatter_groups(order, firsts, counts, ids)
    got_order, *rest = _partition.assign(hashes, starts, ids, firsts)
    assert got_order.type == pa.int32()  # narrow below 2**31 rows: what gather reads per row
    assert (got_order.cast(pa.int64()), *rest) == (order, counts, shard, seq)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 3000), n_shards=st.integers(1, 12), seed=st.integers(0, 2**32), offset=st.integers(0, 9)
)
def test_partition_and_assign_on_two_threads_equal_one_thread(
    n: int, n_shards: int, seed: int, offset: int
) -> None:
    rng = random.Random(seed)
    hashes = pa.array([rng.getrandbits(64) for _ in range(n + offset)], pa.uint64()).slice(offset)
    starts = _partition.even_ranges(n_shards)
    ids = [rng.getrandbits(32) for _ in starts]
    firsts = [rng.getrandbits(40) for _ in starts]
    with threads(1):
        one = (_partition.partition(hashes, starts), _partition.assign(hashes, starts, ids, firsts))
    with threads(2):
        two = (_partition.partition(hashes, starts), _partition.assign(hashes, starts, ids, firsts))
    assert one == two
    owner, order, counts = one[0]
    assert (owner.to_pylist(), order.to_pylist(), counts) == model(hashes.to_pylist(), starts)


def test_partition_threshold_boundary() -> None:
    # With min_rows=1000: 999 rows on the caller alone, 1000 and 1001 on two threads.
    rng = random.Random(11)
    values = [rng.getrandbits(64) for _ in range(1001)]
    starts = _partition.even_ranges(5)
    for n in (999, 1000, 1001):
        hashes = pa.array(values[:n], pa.uint64())
        with threads(2, min_rows=1000):
            owner, order, counts = _partition.partition(hashes, starts)
            got = _partition.assign(hashes, starts, [7, 8, 9, 10, 11], [0, 10, 20, 30, 40])
        assert (owner.to_pylist(), order.to_pylist(), counts) == model(values[:n], starts)
        assert (got[0].cast(pa.int64()), got[1]) == (order, counts)
