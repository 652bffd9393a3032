"""Review of the one-lane runs of ``ShardDispatcher``: what test_dispatch_runs does not reach.

Sizes near 2^32 (the OR x count bound and the sums in uint64), byte limits around
them, sizes arrays that are slices of a larger array (a non-zero Arrow offset, as
the memory source's puts make), several runs sharing one sizes array, a chunk read
in pieces of one record, and a constructor that fails after allocating its lanes.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pyarrow as pa
import test_dispatch_runs as base
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore._dispatch import FINAL, INVOKE, ShardDispatcher

BIG = 2**32 - 1


def pair(
    batch_size: int, max_bytes: int, window_ms: int = 0, **kw: Any
) -> tuple[ShardDispatcher, ShardDispatcher]:
    args = (batch_size, max_bytes, 0.0, 0)
    kwargs = {"tumbling_window": window_ms / 1000, **kw}
    return ShardDispatcher(1, *args, **kwargs), ShardDispatcher(2, *args, **kwargs)


def ingest_both(
    one: ShardDispatcher,
    ref: ShardDispatcher,
    first: int,
    sizes: pa.Array,
    arrival: int,
    start: int,
    stop: int,
    now: float = 0.0,
) -> None:
    one.ingest(first, None, sizes, arrival, start, now, stop)
    hashes = pa.array([0] * len(sizes), pa.uint64())  # all to lane 0 of the two
    ref.ingest(first, hashes, sizes, arrival, start, now, stop)


def drain_compare(one: ShardDispatcher, ref: ShardDispatcher, data: st.DataObject | None, now: float) -> list:
    batches = []
    for _ in range(10_000):
        got = one.poll_batch(now)
        want = ref.poll_batch(now)
        assert got == want
        if got is None:
            break
        if got[3] == INVOKE:
            assert one.batch_offsets(0, 0).to_pylist() == ref.batch_offsets(0, 0).to_pylist()
            batches.append((got[4], got[5], got[1]))
        choice = (
            "complete"
            if data is None or got[3] != INVOKE
            else data.draw(st.sampled_from(["complete", "complete", "partial", "fail"]))
        )
        if choice == "partial" and got[1] > 1:
            done = data.draw(st.integers(0, got[1] - 1))
            assert one.partial(0, done, now, 0.5) == ref.partial(0, done, now, 0.5)
        elif choice == "fail":
            assert one.fail(0, now, 0.5) == ref.fail(0, now, 0.5)
        elif got[3] == INVOKE or got[3] == FINAL:
            one.complete(0, now)
            ref.complete(0, now)
        else:
            one.discarded(0, now)
            ref.discarded(0, now)
        assert one.progress()[0] == ref.progress()[0]
        assert one.progress()[1] == ref.progress()[1][:1]
        now += 100.0  # past any back-off
    assert one.pending() == ref.pending() == 0
    return batches


sizes_st = st.lists(
    st.one_of(st.integers(0, 8), st.sampled_from([BIG, BIG - 1, 2**31, 2**31 - 1, 2**16])),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    chunks=st.lists(sizes_st, min_size=1, max_size=6),
    batch_size=st.integers(1, 10),
    max_bytes=st.sampled_from([1, 7, BIG - 1, BIG, BIG + 1, 2 * BIG, 2**33, 3 * 2**31, 2**62, 2**63 - 1]),
    pad=st.integers(0, 3),
)
def test_huge_sizes_and_limits_cut_like_the_per_record_path(
    data: st.DataObject, chunks: list[list[int]], batch_size: int, max_bytes: int, pad: int
) -> None:
    # Sizes near 2^32 make the OR bound and the sums large; each sizes array is a
    # slice (non-zero offset) of a padded array, read whole or in pieces.
    one, ref = pair(batch_size, max_bytes)
    first = 0
    for sizes in chunks:
        padded = pa.array([*([BIG] * pad), *sizes, *([BIG] * pad)], pa.uint32())
        array = padded.slice(pad, len(sizes))
        assert array.offset == pad
        start = 0
        while start < len(sizes):
            stop = data.draw(st.integers(start + 1, len(sizes)))
            ingest_both(one, ref, first, array, 0, start, stop)
            start = stop
        first += len(sizes)
    flat = [s for sizes in chunks for s in sizes]
    batches = drain_compare(one, ref, data, 1.0)
    for lo, hi, count in batches:  # within the limit, or one record alone
        assert hi - lo + 1 == count <= batch_size
        assert count == 1 or sum(flat[lo : hi + 1]) <= max_bytes


def test_a_batch_of_huge_records_stops_at_the_limit() -> None:
    # Three records of 2^32 - 1 in one run: OR x count = 3 * (2^32 - 1) passes 2^33,
    # the sum of two does not.
    for max_bytes, want in [(2 * BIG, [2, 1]), (2 * BIG - 1, [1, 1, 1]), (3 * BIG, [3]), (1, [1, 1, 1])]:
        d = ShardDispatcher(1, 10, max_bytes, 0.0, 0)
        d.ingest(0, None, pa.array([BIG] * 3, pa.uint32()), 0, 0, 0.0)
        counts = []
        while (polled := d.poll(0.0)) is not None:
            counts.append(polled[1])
            d.complete(0, 0.0)
        assert counts == want, max_bytes


def test_a_chunk_read_one_record_at_a_time_is_one_run_and_cuts_alike() -> None:
    one, ref = pair(4, 10)
    sizes = pa.array([3, 3, 3, 3, 9, 1, 1, 1], pa.uint32())
    for i in range(len(sizes)):
        ingest_both(one, ref, 0, sizes, 5, i, i + 1)
    assert one.lane_state(0)["runs"] == 1
    assert drain_compare(one, ref, None, 0.0) == [(0, 2, 3), (3, 3, 1), (4, 5, 2), (6, 7, 2)]


def test_two_chunks_sharing_one_sizes_array_are_two_runs() -> None:
    # The memory source slices one put's sizes per shard; here two chunks are slices
    # of one array and a third reuses a chunk's array at another first seq.
    base = pa.array([1, 2, 3, 4, 5, 6], pa.uint32())
    one, ref = pair(10, 7)
    ingest_both(one, ref, 0, base.slice(0, 3), 0, 0, 3)
    ingest_both(one, ref, 3, base.slice(3, 3), 0, 0, 3)
    ingest_both(one, ref, 6, base, 0, 0, 6)
    assert one.lane_state(0)["runs"] == 3
    drain_compare(one, ref, None, 0.0)


def test_a_constructor_failing_after_allocation_does_not_crash() -> None:
    # __init__ allocates the lanes before it unpacks ``backoff``: a bad tuple raised
    # there, and __dealloc__ then freed (and, with runs, decref'd) uninitialised lanes.
    code = (
        "from streamcore._dispatch import ShardDispatcher\n"
        "for n in (1, 3, 8):\n"
        "    for i in range(50):\n"
        "        try:\n"
        "            ShardDispatcher(n, 10, 100, 0.0, 0, backoff=(1.0, 2.0))\n"
        "        except ValueError:\n"
        "            pass\n"
        "        else:\n"
        "            raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        result.returncode,
        result.stderr[-2000:],
    )


# -- the random programs of test_dispatch_runs, with huge sizes and sliced arrays ------


class BigSlicedLog(base.Log):
    """Sizes of 31..40 become ~2^32 (so a few records pass 2^32 bytes), and every
    chunk's sizes are a slice (non-zero offset) of a longer array."""

    def append(self, sizes: list[int], arrival_ms: int) -> None:
        mapped = [s if s <= 30 else BIG - (40 - s) for s in sizes]
        padded = pa.array([BIG, 7, *mapped, BIG], pa.uint32())
        self.chunks.append((self.next_seq, padded.slice(2, len(mapped)), arrival_ms))
        self.next_seq += len(mapped)


big_options = st.fixed_dictionaries(
    {
        "batch_size": st.integers(1, 12),
        "max_batch_bytes": st.sampled_from([1, 100, BIG, BIG + 30, 2 * BIG, 3 * BIG + 5, 2**40, 2**63 - 1]),
        "batch_window": st.sampled_from([0.0, 0.3]),
        "bisect": st.booleans(),
        "max_retries": st.sampled_from([-1, 0, 2]),
        "max_record_age": st.sampled_from([-1, 2.0, 30.0]),
    }
)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), opts=big_options, window_ms=st.sampled_from([0, 1_000]), done=st.integers(-2, 20))
def test_runs_match_entries_with_huge_sizes_sliced_arrays_and_restored_lanes(
    data: st.DataObject, opts: dict[str, Any], window_ms: int, done: int
) -> None:
    pair = base.Pair(0, window_ms, **opts)
    pair.log = BigSlicedLog(0)
    if done >= -1:
        pair.one.restore_lanes([done])
        pair.ref.restore_lanes([done, -1])
    base.run_program(data, pair, window_ms, steps=40)


# -- references: each pending run holds exactly one reference to its sizes ------------


class CountedLog(base.Log):
    """Remembers each chunk's sizes array and its reference count before any ingest."""

    def __init__(self, start: int) -> None:
        super().__init__(start)
        self.baseline: list[int] = []

    def append(self, sizes: list[int], arrival_ms: int) -> None:
        super().append(sizes, arrival_ms)
        self.baseline.append(sys.getrefcount(self.chunks[-1][1]))

    def extra_refs(self) -> int:
        return sum(sys.getrefcount(c[1]) - b for c, b in zip(self.chunks, self.baseline, strict=True))


class CountedPair(base.Pair):
    def check(self, now: float) -> None:
        super().check(now)
        assert isinstance(self.log, CountedLog)
        assert self.log.extra_refs() == self.one.lane_state(0)["runs"]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), opts=base.options, window_ms=st.sampled_from([0, 1_000]))
def test_each_pending_run_holds_one_reference_and_none_is_left(
    data: st.DataObject, opts: dict[str, Any], window_ms: int
) -> None:
    # Every path (pop, partial, split, discard, drop_before, skip_to, release, defer)
    # keeps exactly one reference per pending run: a leak or a second decref shows.
    pair = CountedPair(0, window_ms, **opts)
    pair.log = CountedLog(0)
    base.run_program(data, pair, window_ms, steps=50)
    for _ in range(data.draw(st.integers(0, 3))):  # leave some runs pending
        pair.log.append([1, 2, 3], 10**9)
        pair.read(2, 1_000.0)
    assert pair.log.extra_refs() == pair.one.lane_state(0)["runs"]
    del pair.one
    assert pair.log.extra_refs() == 0
