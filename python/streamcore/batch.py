"""What a handler receives (``Batch``) and what it may return (``BatchFailures``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Window:
    """A tumbling window ``[start, end)`` in aware UTC datetimes."""

    start: datetime
    end: datetime


class Batch:
    """One handler invocation's records and their metadata.

    Attributes
    ----------
    records : pyarrow.RecordBatch
        Streams: ``seq`` (uint64), ``key``, ``arrival`` (timestamp[ms, UTC]) and
        the payload columns. A zero-copy slice of the log whenever the batch's
        records are contiguous.
    source : str
        Name of the stream or queue.
    shard : int
        Shard id (streams).
    lane : int
        Lane within the shard (``parallelization`` > 1 splits a shard by key hash).
    first_seq, last_seq : int
        Seqs of the first and last record.
    attempt : int
        1 on the first invocation of these records, then 2, 3, ... on retries.
    window, state, is_final, terminated_early
        Tumbling windows only (``window`` is None otherwise).
    """

    __slots__ = (
        "attempt",
        "first_seq",
        "is_final",
        "lane",
        "last_seq",
        "records",
        "shard",
        "source",
        "state",
        "terminated_early",
        "window",
    )

    def __init__(
        self,
        records: pa.RecordBatch,
        *,
        source: str,
        shard: int,
        lane: int,
        first_seq: int,
        last_seq: int,
        attempt: int = 1,
        window: Window | None = None,
        state: dict[str, Any] | None = None,
        is_final: bool = False,
        terminated_early: bool = False,
    ) -> None:
        self.records = records
        self.source = source
        self.shard = shard
        self.lane = lane
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.attempt = attempt
        self.window = window
        self.state = state
        self.is_final = is_final
        self.terminated_early = terminated_early

    def __len__(self) -> int:
        return int(self.records.num_rows)

    def __repr__(self) -> str:
        return (
            f"Batch(source={self.source!r}, shard={self.shard}, lane={self.lane}, "
            f"seq={self.first_seq}..{self.last_seq}, records={len(self)}, attempt={self.attempt})"
        )


_new = object.__new__


def make_batch(
    records: pa.RecordBatch,
    source: str,
    shard: int,
    lane: int,
    first_seq: int,
    last_seq: int,
    attempt: int,
    window: Window | None,
    state: dict[str, Any] | None,
    is_final: bool,
    terminated_early: bool,
) -> Batch:
    """``Batch(records, source=..., ...)`` for the framework, which makes one per invocation.

    Calling a class with keyword arguments packs them into a dict and goes
    through ``type.__call__``; this costs less than half as much.
    """
    batch: Batch = _new(Batch)
    batch.records = records
    batch.source = source
    batch.shard = shard
    batch.lane = lane
    batch.first_seq = first_seq
    batch.last_seq = last_seq
    batch.attempt = attempt
    batch.window = window
    batch.state = state
    batch.is_final = is_final
    batch.terminated_early = terminated_early
    return batch


class BatchFailures:
    """A partial batch response: the identifiers of the records that failed.

    Streams identify records by ``seq``, queues by ``message_id``. Honoured only
    when the consumer has ``report_failures=True``.
    """

    __slots__ = ("ids",)

    def __init__(self, ids: Iterable[Any] = ()) -> None:
        self.ids: list[Any] = list(ids)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchFailures) and self.ids == other.ids

    def __repr__(self) -> str:
        return f"BatchFailures({self.ids!r})"
