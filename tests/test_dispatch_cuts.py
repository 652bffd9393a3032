"""Batch cutting of ``ShardDispatcher`` against a plain greedy model.

The dispatcher skips its pass over the records when it can (binary search for
a window's end when arrivals are sorted, no byte check when no batch can reach
``max_batch_bytes``); these tests drive it directly, arrivals going backwards
included, and compare every batch with the obvious record-by-record cut.
"""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore._dispatch import FINAL, INVOKE, ShardDispatcher

# The clock stays before every arrival: windows close only when a later record is read.
NOW = -100.0


def window_of(arrival_ms: int, window_ms: int) -> int:
    return arrival_ms // window_ms  # Python floors, also before the epoch


def greedy_cuts(
    records: list[tuple[int, int]], batch_size: int, max_bytes: int, window_ms: int
) -> list[tuple[str, int]]:
    """``("batch", n)`` and ``("final", window)`` actions for one lane, records ``(arrival_ms, nbytes)``.

    A batch takes records while it is below ``batch_size``, its bytes stay within
    ``max_bytes`` (a first record always goes) and, with windows, each record is
    of the first record's window. A record of another window than the open one
    (later, or earlier when arrivals go back) closes the open window first.
    """
    out: list[tuple[str, int]] = []
    open_window = None
    i = 0
    while i < len(records):
        first_window = window_of(records[i][0], window_ms) if window_ms else None
        if window_ms and open_window is not None and first_window != open_window:
            out.append(("final", open_window))
            open_window = None
            continue
        count = nbytes = 0
        while i + count < len(records) and count < batch_size:
            arrival, size = records[i + count]
            if count and nbytes + size > max_bytes:
                break
            if window_ms and window_of(arrival, window_ms) != first_window:
                break
            nbytes += size
            count += 1
        out.append(("batch", count))
        if window_ms and open_window is None:
            open_window = first_window
        i += count
    return out


def dispatcher_cuts(
    chunks: list[tuple[int, list[int]]], batch_size: int, max_bytes: int, window_ms: int, read_all: bool
) -> list[tuple[str, int]]:
    """The same actions from a one-lane ``ShardDispatcher``, ingesting ``chunks`` of (arrival_ms, sizes).

    ``read_all``: every chunk is read before the first poll; otherwise one chunk is read
    after each action, so cuts also happen at the end of what was read so far.
    """
    d = ShardDispatcher(1, batch_size, max_bytes, 0.0, 0, tumbling_window=window_ms / 1000)
    seq = 0
    pending = list(chunks)

    def read_one() -> None:
        nonlocal seq
        arrival, sizes = pending.pop(0)
        d.ingest(seq, None, pa.array(sizes, pa.uint32()), arrival, 0, NOW)
        seq += len(sizes)

    while read_all and pending:
        read_one()
    if pending:
        read_one()
    out: list[tuple[str, int]] = []
    while True:
        polled = d.poll(NOW)
        if polled is None:
            if not pending:
                return out
            read_one()
            continue
        lane, count, _, kind = polled
        if kind == FINAL:
            out.append(("final", d.open_window(lane)))
        else:
            assert kind == INVOKE
            out.append(("batch", count))
        d.complete(lane, NOW)


chunk = st.tuples(
    st.integers(-3_000, 30_000),  # arrival ms: may go backwards, may be before the epoch
    st.lists(st.integers(1, 60), min_size=1, max_size=12),  # record sizes
)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(chunk, min_size=1, max_size=8),
    batch_size=st.integers(1, 10),
    max_bytes=st.integers(1, 200),
    window_ms=st.sampled_from([0, 1_000, 5_000]),
    sorted_arrivals=st.booleans(),
)
def test_batches_match_the_greedy_cut_when_all_is_read(
    chunks: list[tuple[int, list[int]]],
    batch_size: int,
    max_bytes: int,
    window_ms: int,
    sorted_arrivals: bool,
) -> None:
    if sorted_arrivals:
        chunks = sorted(chunks, key=lambda c: c[0])
    records = [(arrival, size) for arrival, sizes in chunks for size in sizes]
    assert dispatcher_cuts(chunks, batch_size, max_bytes, window_ms, True) == greedy_cuts(
        records, batch_size, max_bytes, window_ms
    )


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(chunk, min_size=1, max_size=8),
    batch_size=st.integers(1, 10),
    window_ms=st.sampled_from([0, 1_000, 5_000]),
)
def test_reading_chunk_by_chunk_only_cuts_batches_shorter(
    chunks: list[tuple[int, list[int]]], batch_size: int, window_ms: int
) -> None:
    # Reading one chunk after each action also cuts batches at the end of what was
    # read: each batch is then a prefix of the greedy cut of the records still pending.
    chunks = sorted(chunks, key=lambda c: c[0])
    records = [(arrival, size) for arrival, sizes in chunks for size in sizes]
    done = 0
    finals = []
    for action, value in dispatcher_cuts(chunks, batch_size, 10**9, window_ms, False):
        if action == "final":
            finals.append(value)
            continue
        expected = greedy_cuts(records[done:], batch_size, 10**9, window_ms)[0]
        assert expected[0] == "batch" and 1 <= value <= expected[1]
        done += value
    assert done == len(records)
    every_window = [v for a, v in greedy_cuts(records, len(records), 10**9, window_ms) if a == "final"]
    assert finals == every_window


def test_an_oversize_record_goes_alone_and_the_limit_is_inclusive() -> None:
    chunks = [(0, [5, 5, 90, 5, 5, 5, 5])]
    records = [(0, s) for s in chunks[0][1]]
    got = dispatcher_cuts(chunks, 10, 10, 0, True)
    assert got == greedy_cuts(records, 10, 10, 0) == [("batch", 2), ("batch", 1), ("batch", 2), ("batch", 2)]


def test_a_window_cut_found_by_binary_search_in_a_long_lane() -> None:
    # 1000 records of window 0, then 1000 of window 1: the first batch stops exactly at the boundary.
    chunks = [(500, [1] * 700), (900, [1] * 300), (1_000, [1] * 1000)]
    assert dispatcher_cuts(chunks, 5000, 10**9, 1_000, True) == [
        ("batch", 1000),
        ("final", 0),
        ("batch", 1000),
    ]
