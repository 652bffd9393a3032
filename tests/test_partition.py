"""The native shard assignment and stable grouping, against a plain-Python model."""

from __future__ import annotations

import bisect

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

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
