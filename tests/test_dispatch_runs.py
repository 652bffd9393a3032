"""The one-lane ``ShardDispatcher`` (pending records held as runs, one per chunk read)
against the same dispatcher with several lanes (one entry per record).

A dispatcher with two lanes whose records all hash to lane 0 goes through the
per-record path; with the same calls, lane 0 must do exactly what the one-lane
dispatcher does: every batch, discard, closing, deadline, checkpoint and lane
position. Random programs of reads (chunks read whole or in pieces, skips),
retention drops, polls and outcomes drive both; the tests after them pin down
the cases the runs make delicate: chunk boundaries inside batches, splits and
partial responses across them, drops and skips inside a run, windows.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore._dispatch import DISCARD_RECORD_AGE, FINAL, INVOKE, ShardDispatcher


class Log:
    """Chunks of (first_seq, sizes, arrival_ms), appended in seq order."""

    def __init__(self, start: int) -> None:
        self.chunks: list[tuple[int, pa.UInt32Array, int]] = []
        self.next_seq = start

    def append(self, sizes: list[int], arrival_ms: int) -> None:
        self.chunks.append((self.next_seq, pa.array(sizes, pa.uint32()), arrival_ms))
        self.next_seq += len(sizes)


class Pair:
    """A one-lane dispatcher and a two-lane one fed only lane 0, driven alike and compared."""

    def __init__(self, start: int, window_ms: int, **options: Any) -> None:
        args = [options["batch_size"], options["max_batch_bytes"], options["batch_window"], start]
        kwargs = {
            "bisect": options["bisect"],
            "max_retries": options["max_retries"],
            "max_record_age": options["max_record_age"],
            "backoff": (0.5, 1.5, 60.0),
            "tumbling_window": window_ms / 1000,
        }
        self.one = ShardDispatcher(1, *args, **kwargs)
        self.ref = ShardDispatcher(2, *args, **kwargs)
        self.log = Log(start)
        self.hashes: dict[int, pa.UInt64Array] = {}
        self.in_flight: tuple | None = None
        self.ingests = 0

    def same(self, name: str, *args: Any) -> Any:
        got = getattr(self.one, name)(*args)
        want = getattr(self.ref, name)(*args)
        assert got == want, (name, args, got, want)
        return got

    def read(self, room: int, now: float) -> None:
        """What ``StreamConsumer._ingest`` does: up to ``room`` records, chunk by chunk."""
        nxt = self.one.next_read
        assert nxt == self.ref.next_read
        for first, sizes, arrival in self.log.chunks:
            end = first + len(sizes)
            if end <= nxt or room <= 0:
                continue
            start = max(nxt - first, 0)
            stop = min(len(sizes), start + room)
            self.one.ingest(first, None, sizes, arrival, start, now, stop)
            self.ingests += 1
            hashes = self.hashes.get(first)
            if hashes is None:  # even hashes: every record goes to lane 0 of the two
                hashes = self.hashes[first] = pa.array([2 * i for i in range(len(sizes))], pa.uint64())
            self.ref.ingest(first, hashes, sizes, arrival, start, now, stop)
            room -= stop - start
            nxt = first + stop
        assert self.one.next_read == self.ref.next_read

    def check(self, now: float) -> None:
        assert self.one.checkpoint() == self.ref.checkpoint()
        cp, lanes = self.one.progress()
        ref_cp, ref_lanes = self.ref.progress()
        assert (cp, lanes) == (ref_cp, ref_lanes[:1])
        assert ref_lanes[1] == -1
        assert self.one.pending() == self.ref.pending()
        assert self.one.lane_progress() == self.ref.lane_progress()[:1]
        one_state = self.one.lane_state(0)
        ref_state = self.ref.lane_state(0)
        runs = one_state.pop("runs")  # none empty, and never more than one per ingest
        assert runs <= min(one_state["pending"], self.ingests) and (runs == 0) == (one_state["pending"] == 0)
        assert ref_state.pop("runs") == 0
        assert one_state == ref_state
        assert self.one.next_deadline(now) == self.ref.next_deadline(now)
        assert self.one.finished() == self.ref.finished()
        assert self.one.open_window(0) == self.ref.open_window(0)
        if self.in_flight is not None and self.in_flight[3] != FINAL:
            bounds = self.same("batch_bounds", 0)
            self.same("batch_arrivals", 0)
            self.same("batch_offsets", 0, max(bounds[0] - 3, 0))
            for seq in range(max(bounds[0] - 1, 0), bounds[1] + 2):
                self.same("index_of", 0, seq)


OPS = ("append", "append", "read", "read", "poll", "poll", "poll", "drop", "skip", "end")


def run_program(data: st.DataObject, pair: Pair, window_ms: int, steps: int) -> None:
    now = 1_000.0
    arrival = int(now * 1000) - data.draw(st.integers(0, 5_000))
    for _ in range(steps):
        op = data.draw(st.sampled_from(OPS))
        if op == "append" and not pair.one.at_end:
            arrival += data.draw(st.integers(-400, 2_500))  # arrivals may go back
            sizes = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=14))
            pair.log.append(sizes, arrival)
        elif op == "read":
            pair.read(data.draw(st.integers(1, 25)), now)
        elif op == "skip":
            seq = pair.one.next_read + data.draw(st.integers(0, 6))
            pair.same("skip_to", min(seq, pair.log.next_seq))
        elif op == "drop":
            pair.same("drop_before", pair.one.checkpoint() + 1 + data.draw(st.integers(0, 8)))
        elif op == "end" and pair.one.next_read == pair.log.next_seq:
            pair.same("end_of_shard")
        elif op == "poll":
            now += data.draw(st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.4, 1.0, 7.0, 61.0]))
            if pair.in_flight is None:
                pair.in_flight = pair.same("poll_batch", now)
            else:
                finish(data, pair, now)
        pair.check(now)
    # Drain: read everything, finish every action, end the shard.
    for _ in range(400):
        pair.read(10**6, now)
        if pair.in_flight is None:
            pair.in_flight = pair.same("poll_batch", now)
            if pair.in_flight is None:
                if not pair.one.at_end:
                    pair.same("end_of_shard")
                    continue
                now += 61.0
                pair.in_flight = pair.same("poll_batch", now)
                if pair.in_flight is None:
                    break
        else:
            finish(data, pair, now, drain=True)
        pair.check(now)
    pair.check(now)
    assert pair.one.pending() == 0


def finish(data: st.DataObject, pair: Pair, now: float, drain: bool = False) -> None:
    assert pair.in_flight is not None
    lane, count, _attempt, kind = pair.in_flight[:4]
    assert lane == 0
    if kind not in (INVOKE, FINAL):
        choice = data.draw(st.sampled_from(["discarded", "discarded", "defer", "release"]))
    else:
        choices = ["complete", "complete", "fail", "fail", "release"]
        if kind == INVOKE and count > 1:
            choices += ["partial", "partial"]
        if pair.one.open_window(0) is not None:
            choices.append("terminate_early")
        if drain:
            choices = ["complete"]
        choice = data.draw(st.sampled_from(choices))
    if choice == "complete":
        pair.same("complete", 0, now)
    elif choice == "discarded":
        pair.same("discarded", 0, now)
    elif choice == "fail":
        pair.same("fail", 0, now, data.draw(st.floats(0, 1)))
    elif choice == "partial":
        pair.same("partial", 0, data.draw(st.integers(0, count - 1)), now, data.draw(st.floats(0, 1)))
    elif choice == "defer":
        pair.same("defer", 0, now + data.draw(st.sampled_from([0.0, 0.5, 2.0])))
    elif choice == "release":
        pair.same("release", 0)
    else:
        pair.same("terminate_early", 0)
        return  # the action stays in flight
    pair.in_flight = None


options = st.fixed_dictionaries(
    {
        "batch_size": st.integers(1, 12),
        "max_batch_bytes": st.sampled_from([1, 30, 100, 6 * 2**20]),
        "batch_window": st.sampled_from([0.0, 0.0, 0.3]),
        "bisect": st.booleans(),
        "max_retries": st.sampled_from([-1, 0, 1, 3]),
        "max_record_age": st.sampled_from([-1, -1, 2.0, 30.0]),
    }
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), opts=options, window_ms=st.sampled_from([0, 0, 1_000, 5_000]), start=st.integers(0, 3))
def test_one_lane_runs_do_what_per_record_entries_do(
    data: st.DataObject, opts: dict[str, Any], window_ms: int, start: int
) -> None:
    pair = Pair(start, window_ms, **opts)
    run_program(data, pair, window_ms, steps=60)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), opts=options, window_ms=st.sampled_from([0, 1_000]), done=st.integers(-1, 25))
def test_restored_lane_positions_skip_inside_runs(
    data: st.DataObject, opts: dict[str, Any], window_ms: int, done: int
) -> None:
    # After a restart, the records up to the lane's last done seq are skipped wherever
    # that seq falls: inside a chunk, at its end, or beyond what was read so far.
    pair = Pair(0, window_ms, **opts)
    pair.one.restore_lanes([done])
    pair.ref.restore_lanes([done, -1])
    run_program(data, pair, window_ms, steps=40)


# -- cases pinned down -----------------------------------------------------------------


def one_lane(batch_size: int = 10, max_bytes: int = 10**9, window_ms: int = 0, **kw: Any) -> ShardDispatcher:
    return ShardDispatcher(1, batch_size, max_bytes, 0.0, 0, tumbling_window=window_ms / 1000, **kw)


def feed(d: ShardDispatcher, chunks: list[tuple[int, list[int]]], now: float = 0.0) -> list[pa.UInt32Array]:
    arrays = []
    for arrival, sizes in chunks:
        array = pa.array(sizes, pa.uint32())
        d.ingest(d.next_read, None, array, arrival, 0, now)
        arrays.append(array)
    return arrays


def test_a_batch_spans_several_chunks_and_stops_inside_one() -> None:
    d = one_lane(batch_size=7)
    feed(d, [(0, [1, 1, 1]), (0, [1, 1]), (0, [1, 1, 1, 1]), (0, [1])])
    assert d.lane_state(0)["runs"] == 4
    polled = d.poll_batch(0.0)
    assert polled[:7] == (0, 7, 1, INVOKE, 0, 6, True)
    d.complete(0, 0.0)
    assert d.lane_state(0)["runs"] == 2  # the third chunk's last two records, the fourth chunk
    assert d.progress() == (6, [6])
    assert d.poll_batch(0.0)[:7] == (0, 3, 1, INVOKE, 7, 9, True)
    d.complete(0, 0.0)
    assert d.lane_state(0)["runs"] == 0 and d.pending() == 0 and d.checkpoint() == 9


def test_the_byte_limit_falls_inside_a_later_chunk() -> None:
    # 40 + 30 fit in 100, then 20 + 10 do (100 inclusive), then 5 does not.
    d = one_lane(batch_size=10, max_bytes=100)
    feed(d, [(0, [40]), (0, [30, 20]), (0, [10, 5, 5])])
    assert d.poll(0.0) == (0, 4, 1, INVOKE)
    d.complete(0, 0.0)
    assert d.poll(0.0) == (0, 2, 1, INVOKE)


def test_an_oversize_record_at_a_chunk_start_goes_alone() -> None:
    d = one_lane(batch_size=10, max_bytes=10)
    feed(d, [(0, [4, 4]), (0, [50, 1]), (0, [2])])
    counts = []
    while (polled := d.poll(0.0)) is not None:
        counts.append(polled[1])
        d.complete(0, 0.0)
    assert counts == [2, 1, 2]


def test_a_chunk_read_in_pieces_is_one_run() -> None:
    d = one_lane(batch_size=4)
    sizes = pa.array([1] * 10, pa.uint32())
    for start, stop in ((0, 3), (3, 4), (4, 10)):
        d.ingest(0, None, sizes, 0, start, 0.0, stop)
    assert d.lane_state(0)["runs"] == 1 and d.pending() == 10
    assert [d.poll(0.0)[1], d.complete(0, 0.0), d.poll(0.0)[1]] == [4, None, 4]


def test_splits_and_partials_across_chunk_boundaries() -> None:
    # Chunks [0..2] [3..4] [5..8]; the batch of 9 fails and splits at 5 (ceil(9/2)):
    # the left half ends at a chunk boundary, its own split (3) ends at another.
    d = one_lane(batch_size=9, bisect=True, max_retries=0)
    feed(d, [(0, [1, 1, 1]), (0, [1, 1]), (0, [1, 1, 1, 1])])
    assert d.poll_batch(0.0)[:6] == (0, 9, 1, INVOKE, 0, 8)
    assert d.fail(0, 0.0, 0.5) == "split"
    assert d.poll_batch(0.0)[:6] == (0, 5, 1, INVOKE, 0, 4)
    assert d.fail(0, 0.0, 0.5) == "split"
    assert d.poll_batch(0.0)[:6] == (0, 3, 1, INVOKE, 0, 2)
    d.complete(0, 0.0)
    assert d.progress() == (2, [2])
    # The pinned [3..4] answers partially: record 3 done, 4 failed (max_retries 0: discard).
    assert d.poll_batch(0.0)[:6] == (0, 2, 1, INVOKE, 3, 4)
    assert d.index_of(0, 4) == 1 and d.index_of(0, 5) == -1
    assert d.partial(0, 1, 0.0, 0.5) == "discard"
    assert d.checkpoint() == 3
    polled = d.poll_batch(0.0)
    assert polled[1:6] == (1, 1, 1, 4, 4) and polled[3] != INVOKE
    d.discarded(0, 0.0)
    # The right half of the first split is whole chunk [5..8].
    assert d.poll_batch(0.0)[:6] == (0, 4, 1, INVOKE, 5, 8)
    assert d.partial(0, 2, 0.0, 0.5) == "discard"  # 5, 6 done; 7, 8 discarded
    assert d.progress() == (6, [6])
    assert d.poll_batch(0.0)[1:6] == (2, 1, 1, 7, 8)
    d.discarded(0, 0.0)
    assert d.checkpoint() == 8 and d.pending() == 0 and d.lane_state(0)["runs"] == 0


def test_drop_before_inside_a_run_and_across_runs() -> None:
    d = one_lane(batch_size=3)
    feed(d, [(0, [1] * 5), (0, [1] * 5)])
    assert d.drop_before(2) == 2
    assert d.checkpoint() == 1 and d.pending() == 8 and d.lane_state(0)["runs"] == 2
    assert d.poll_batch(0.0)[4:6] == (2, 4)
    d.complete(0, 0.0)
    assert d.drop_before(7) == 2  # 5, 6: the first run is gone, the second starts at 7
    assert d.lane_state(0)["runs"] == 1 and d.checkpoint() == 6
    assert d.poll_batch(0.0)[4:6] == (7, 9)
    assert d.drop_before(12) == 0  # a batch in flight: the lane is left alone
    d.complete(0, 0.0)
    assert d.drop_before(12) == 0 and d.next_read == 12 and d.checkpoint() == 11


def test_drop_before_shortens_a_pinned_retry_inside_a_run() -> None:
    d = one_lane(batch_size=6, max_retries=5)
    feed(d, [(0, [1] * 4), (0, [1] * 4)])
    d.poll(0.0)
    assert d.fail(0, 0.0, 0.5) == "retry"
    assert d.drop_before(5) == 5  # the pinned batch 0..5 keeps 5
    assert d.lane_state(0)["pinned"] == [1]
    polled = d.poll_batch(100.0)
    assert polled[1:6] == (1, 2, INVOKE, 5, 5)


def test_skip_to_leaves_a_gap_between_runs() -> None:
    # Pending records 2..4, then the read position jumps to 8 (retention while a batch
    # was in flight): one batch may hold 4 and 8, which are not contiguous.
    d = one_lane(batch_size=5)
    sizes = pa.array([1] * 10, pa.uint32())
    d.ingest(0, None, sizes, 0, 0, 0.0, 5)
    d.poll(0.0)
    d.complete(0, 0.0)
    assert d.poll(0.0) is None and d.pending() == 0
    d2 = one_lane(batch_size=4)
    d2.ingest(0, None, sizes, 0, 0, 0.0, 5)
    d2.skip_to(8)
    d2.ingest(0, None, sizes, 0, 8, 0.0)
    assert d2.lane_state(0)["runs"] == 2 and d2.pending() == 7
    d2.poll(0.0)
    d2.complete(0, 0.0)
    polled = d2.poll_batch(0.0)
    assert polled[:7] == (0, 3, 1, INVOKE, 4, 9, False)
    assert d2.batch_offsets(0, 0).to_pylist() == [4, 8, 9]
    assert d2.batch_bounds(0) == (4, 9, False)
    assert [d2.index_of(0, s) for s in (4, 5, 8, 9)] == [0, -1, 1, 2]
    d2.complete(0, 0.0)
    assert d2.checkpoint() == 9


def test_a_window_boundary_between_two_reads_of_chunks() -> None:
    # Window 1 s: chunks at 500 ms and 900 ms are window 0, the one at 1000 ms window 1;
    # a batch never crosses into window 1, whatever was read.
    d = one_lane(batch_size=100, window_ms=1_000)
    feed(d, [(500, [1] * 3), (900, [1] * 2), (1_000, [1] * 4), (1_999, [1]), (2_000, [1])], now=-10.0)
    actions = []
    while (polled := d.poll_batch(-10.0)) is not None:
        actions.append((polled[1], polled[3], polled[8]))
        d.complete(0, -10.0)
    assert actions == [(5, INVOKE, 0), (0, FINAL, 0), (5, INVOKE, 1), (0, FINAL, 1), (1, INVOKE, 2)]


def test_record_age_discards_whole_runs_then_part_of_a_pinned_batch() -> None:
    # max_record_age 1 s: a record is too old once arrival + 1000 ms < now.
    d = one_lane(batch_size=10, max_record_age=1.0, max_retries=5)
    feed(d, [(0, [1] * 3), (500, [1] * 3), (5_000, [1] * 3)], now=0.0)
    assert d.poll_batch(1.2)[:6] == (0, 3, 1, DISCARD_RECORD_AGE, 0, 2)
    d.discarded(0, 1.2)
    assert d.poll_batch(1.6)[:6] == (0, 3, 1, DISCARD_RECORD_AGE, 3, 5)
    d.discarded(0, 1.6)
    assert d.poll_batch(1.6)[:6] == (0, 3, 1, INVOKE, 6, 8)
    d.complete(0, 1.6)
    # A failed batch of two runs ages out one run at a time while pinned.
    feed(d, [(10_000, [1] * 2), (10_500, [1] * 2)], now=10.0)
    assert d.poll_batch(10.6)[:6] == (0, 4, 1, INVOKE, 9, 12)
    assert d.fail(0, 10.6, 0.0) == "retry"
    assert d.poll_batch(11.2)[:6] == (0, 2, 1, DISCARD_RECORD_AGE, 9, 10)
    d.discarded(0, 11.2)
    assert d.lane_state(0)["pinned"] == [2]
    assert d.poll_batch(11.6)[:6] == (0, 2, 1, DISCARD_RECORD_AGE, 11, 12)
    d.discarded(0, 11.6)
    assert d.lane_state(0)["pinned"] == [] and d.checkpoint() == 12


def test_the_sizes_are_kept_alive_while_their_records_are_pending() -> None:
    d = one_lane(batch_size=2, max_bytes=10)
    sizes = pa.array([6, 4, 9, 1], pa.uint32())
    before = sys.getrefcount(sizes)
    d.ingest(0, None, sizes, 0, 0, 0.0)
    assert sys.getrefcount(sizes) == before + 1
    del sizes
    gc.collect()
    pa.array([99] * 1000, pa.uint32())  # reuse freed memory, if it had been freed
    counts = []
    while (polled := d.poll(0.0)) is not None:
        counts.append(polled[1])
        d.complete(0, 0.0)
    assert counts == [2, 2]


def test_a_run_lets_go_of_its_sizes_once_done() -> None:
    d = one_lane(batch_size=3)
    sizes = pa.array([1] * 5, pa.uint32())
    before = sys.getrefcount(sizes)
    d.ingest(0, None, sizes, 0, 0, 0.0, 2)
    d.ingest(0, None, sizes, 0, 2, 0.0)
    assert sys.getrefcount(sizes) == before + 1  # one run, one reference
    d.poll(0.0)
    d.complete(0, 0.0)
    assert sys.getrefcount(sizes) == before + 1
    d.poll(0.0)
    d.complete(0, 0.0)
    assert sys.getrefcount(sizes) == before
    d.ingest(5, None, pa.array([1], pa.uint32()), 0, 0, 0.0)
    other = pa.array([1] * 3, pa.uint32())
    d.ingest(6, None, other, 0, 0, 0.0)
    del d  # pending runs let go of their sizes with the dispatcher
    assert sys.getrefcount(other) == before


def test_reading_costs_a_run_per_chunk() -> None:
    d = one_lane(batch_size=1000)
    for _ in range(50):
        d.ingest(d.next_read, None, pa.array([1] * 10_000, pa.uint32()), 0, 0, 0.0)
    assert d.lane_state(0)["runs"] == 50 and d.pending() == 500_000
    while d.poll(0.0) is not None:
        d.complete(0, 0.0)
    assert d.checkpoint() == 499_999 and d.lane_state(0)["runs"] == 0


@pytest.mark.parametrize("n_lanes", [1, 2])
def test_batch_arrivals_needs_a_batch_in_flight(n_lanes: int) -> None:
    d = ShardDispatcher(n_lanes, 5, 10**9, 0.0, 0)
    with pytest.raises(ValueError):
        d.batch_arrivals(0)
