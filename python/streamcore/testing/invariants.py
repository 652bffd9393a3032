"""Invariant checkers that work on any delivery log, and a handler wrapper that keeps one.

A *delivery* is one handler invocation: the records one batch carried to the
handler. :class:`DeliveryLog` wraps a handler and records every delivery; the
checkers accept a ``DeliveryLog``, a list of :class:`Delivery`, or plain
tuples, so they can be pointed at logs from anywhere (another framework, a
production trace).

Each checker raises :class:`InvariantViolation` (an ``AssertionError``, so
pytest shows it as a failed assertion) whose message names the offending
records.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from streamcore.batch import Batch
from streamcore.failures import FailedBatch

__all__ = [
    "Delivery",
    "DeliveryLog",
    "InvariantViolation",
    "assert_checkpoints_monotonic",
    "assert_key_order",
    "assert_no_loss",
]

_SHOW = 10  # offending records listed in a message


class InvariantViolation(AssertionError):
    """An invariant of stream processing does not hold.

    Attributes
    ----------
    invariant : str
        ``"no_loss"``, ``"key_order"`` or ``"checkpoints_monotonic"``.
    details : list
        The offending items (missing records, out-of-order pairs, regressions).
    """

    def __init__(self, invariant: str, message: str, details: Sequence[Any] = ()) -> None:
        self.invariant = invariant
        self.details = list(details)
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One handler invocation as a :class:`DeliveryLog` saw it.

    Attributes
    ----------
    index : int
        Position in the log (0-based), i.e. the order of delivery.
    shard, lane : int
        Where the batch came from.
    seqs : tuple of int
        The records' sequence numbers, in batch order.
    keys : tuple
        The records' keys, parallel to ``seqs`` (None when the batch has no
        ``key`` column).
    attempt : int
        ``batch.attempt``.
    is_final : bool
        A closing invocation of a tumbling window (no records).
    window_start : datetime or None
        Start of the batch's tumbling window, if any.
    generation : int
        Which App run delivered it: ``check_consumer`` starts a new generation
        after each simulated crash.
    note : str or None
        Free text, e.g. the fault the harness injected into this invocation.
    """

    index: int
    shard: int
    lane: int
    seqs: tuple[int, ...]
    keys: tuple[Any, ...]
    attempt: int = 1
    is_final: bool = False
    window_start: datetime | None = None
    generation: int = 0
    note: str | None = None

    def records(self) -> list[tuple[int, int, Any]]:
        """``(shard, seq, key)`` of each record of the batch."""
        return [(self.shard, seq, key) for seq, key in zip(self.seqs, self.keys, strict=True)]

    def describe(self) -> str:
        """E.g. ``"#3: shard 0 lane 1 seqs 4..9 (6 records) attempt 2"``."""
        if self.is_final:
            what = "closing invocation"
        elif not self.seqs:
            what = "no records"
        else:
            what = f"seqs {self.seqs[0]}..{self.seqs[-1]} ({len(self.seqs)} records)"
        text = f"#{self.index}: shard {self.shard} lane {self.lane} {what} attempt {self.attempt}"
        if self.window_start is not None:
            text += f" window {self.window_start.isoformat()}"
        if self.generation:
            text += f" (after restart {self.generation})"
        if self.note:
            text += f" [{self.note}]"
        return text


class DeliveryLog:
    """Wraps a handler and records every batch it receives.

    Parameters
    ----------
    handler : callable, optional
        The handler to call after recording; its return value is passed on.
        Without one the log is a handler that only records.

    Examples
    --------
    >>> import streamcore as sc
    >>> clock = sc.VirtualClock()
    >>> stream = sc.MemoryStream(shards=2, clock=clock)
    >>> placed = stream.put([{"key": k} for k in "abcab"])
    >>> app = sc.App(clock=clock)
    >>> log = DeliveryLog()
    >>> _ = app.consumer(stream, name="c", batch_size=2)(log)
    >>> app.run(until_idle=True)
    >>> assert_no_loss(log, placed)
    >>> assert_key_order(log)
    >>> len(log.records())
    5

    Thread-safe: handlers of several lanes may record at once.
    """

    def __init__(self, handler: Callable[[Batch], Any] | None = None) -> None:
        self.handler = handler
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []

    def __call__(self, batch: Batch) -> Any:
        self.record(batch)
        return None if self.handler is None else self.handler(batch)

    def record(self, batch: Batch, *, generation: int = 0, note: str | None = None) -> Delivery:
        """Append ``batch`` to the log and return its :class:`Delivery`."""
        records = batch.records
        seqs = tuple(records.column("seq").to_pylist()) if "seq" in records.schema.names else ()
        if "key" in records.schema.names:
            keys = tuple(records.column("key").to_pylist())
        else:
            keys = (None,) * len(seqs)
        window = batch.window.start if batch.window is not None else None
        with self._lock:
            delivery = Delivery(
                index=len(self._deliveries),
                shard=batch.shard,
                lane=batch.lane,
                seqs=seqs,
                keys=keys,
                attempt=batch.attempt,
                is_final=batch.is_final,
                window_start=window,
                generation=generation,
                note=note,
            )
            self._deliveries.append(delivery)
        return delivery

    @property
    def deliveries(self) -> list[Delivery]:
        """A copy of the deliveries so far, in order."""
        with self._lock:
            return list(self._deliveries)

    def records(self) -> list[tuple[int, int, Any]]:
        """``(shard, seq, key)`` of every record delivered, in delivery order, redeliveries included."""
        return [r for d in self.deliveries for r in d.records()]

    def clear(self) -> None:
        """Forget every delivery."""
        with self._lock:
            self._deliveries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._deliveries)

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self.deliveries)

    def __repr__(self) -> str:
        return f"DeliveryLog({len(self)} deliveries)"


# -- input normalisation --------------------------------------------------------------

Deliveries = DeliveryLog | Iterable[Delivery] | Iterable[tuple[Any, ...]]
"""What the checkers accept as a delivery log: a ``DeliveryLog``, ``Delivery``
objects, or tuples ``(shard, seq)`` / ``(shard, seq, key)`` in delivery order."""


def _record_tuples(items: Any) -> list[tuple[int, int, Any]]:
    """``(shard, seq, key)`` of every record, in order; key None when unknown."""
    if isinstance(items, DeliveryLog):
        return items.records()
    if isinstance(items, (pa.Table, pa.RecordBatch)):
        names = items.schema.names
        if "shard" not in names or "seq" not in names:
            raise TypeError(f"a table of records needs 'shard' and 'seq' columns; got {names}")
        shards = items.column("shard").to_pylist()
        seqs = items.column("seq").to_pylist()
        keys = items.column("key").to_pylist() if "key" in names else [None] * len(seqs)
        return list(zip(shards, seqs, keys, strict=True))
    out: list[tuple[int, int, Any]] = []
    for item in items:
        if isinstance(item, Delivery):
            out.extend(item.records())
        elif isinstance(item, FailedBatch):
            records = item.records
            keys = records.column("key").to_pylist() if "key" in records.schema.names else None
            for i, seq in enumerate(records.column("seq").to_pylist()):
                out.append((item.shard, seq, None if keys is None else keys[i]))
        elif isinstance(item, tuple) and len(item) in (2, 3):
            shard, seq = item[0], item[1]
            out.append((int(shard), int(seq), item[2] if len(item) == 3 else None))
        else:
            raise TypeError(
                f"expected Delivery, FailedBatch or (shard, seq[, key]) tuples, got {type(item).__name__}: "
                f"{item!r}"
            )
    return out


def _where(shard: int, seq: int, key: Any) -> str:
    return f"shard {shard} seq {seq}" + ("" if key is None else f" (key {key!r})")


# -- checkers -------------------------------------------------------------------------


def assert_no_loss(delivered: Deliveries, expected: Any, *, discarded: Iterable[Any] = ()) -> None:
    """Every expected record reached the handler at least once, or an on-failure destination.

    Parameters
    ----------
    delivered : DeliveryLog, iterable of Delivery, or iterable of tuples
        What reached the handler: ``(shard, seq)`` or ``(shard, seq, key)``
        tuples, in any order; duplicates are fine.
    expected : pyarrow.Table or iterable of tuples
        The records that must arrive: e.g. the table ``stream.put`` returned
        (columns ``shard``, ``seq``), or ``(shard, seq[, key])`` tuples.
    discarded : iterable of FailedBatch or tuples, optional
        Records the failure policy sent to ``on_failure``: they count as
        accounted for.

    Raises
    ------
    InvariantViolation
        Listing how many records are missing and the first ones (by shard and
        seq); ``details`` holds every missing ``(shard, seq, key)``.
    """
    seen = {(shard, seq) for shard, seq, _ in _record_tuples(delivered)}
    seen.update((shard, seq) for shard, seq, _ in _record_tuples(discarded))
    wanted = _record_tuples(expected)
    missing = sorted({(s, q): k for s, q, k in wanted if (s, q) not in seen}.items(), key=lambda i: i[0])
    if not missing:
        return
    listed = ", ".join(_where(s, q, k) for (s, q), k in missing[:_SHOW])
    more = f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else ""
    raise InvariantViolation(
        "no_loss",
        f"{len(missing)} of {len(wanted)} records never reached the handler nor on_failure: {listed}{more}",
        [(s, q, k) for (s, q), k in missing],
    )


def assert_key_order(deliveries: Deliveries) -> None:
    """Per key, records first reached the handler in sequence order, across redeliveries.

    The first delivery of each record is what counts: a redelivery of an
    earlier batch (after a failure or a crash) may repeat old records, but a
    record may never be delivered for the first time before an earlier record
    of the same key on the same shard.

    Parameters
    ----------
    deliveries : DeliveryLog, iterable of Delivery, or iterable of tuples
        In delivery order: ``(shard, seq, key)`` tuples, or ``Delivery``
        objects (whose records are taken in batch order).

    Raises
    ------
    InvariantViolation
        Naming the key, its shard, and the two seqs in the wrong order;
        ``details`` holds ``(shard, key, earlier_seq, later_seq)`` for each.
    """
    first_seen: set[tuple[int, int]] = set()
    last_first: dict[tuple[int, Any], int] = {}
    bad: list[tuple[int, Any, int, int]] = []
    for shard, seq, key in _record_tuples(deliveries):
        if (shard, seq) in first_seen:
            continue
        first_seen.add((shard, seq))
        previous = last_first.get((shard, key))
        if previous is not None and seq < previous:
            bad.append((shard, key, seq, previous))
        else:
            last_first[(shard, key)] = seq
    if not bad:
        return
    shard, key, seq, previous = bad[0]
    more = f" ({len(bad) - 1} more such records)" if len(bad) > 1 else ""
    raise InvariantViolation(
        "key_order",
        f"records of key {key!r} on shard {shard} reached the handler out of order: seq {seq} was "
        f"first delivered after seq {previous}{more}",
        bad,
    )


CheckpointSamples = Sequence[Mapping[Any, Any]] | Sequence[tuple[Any, ...]]
"""Checkpoint samples in time order: ``app.checkpoints()`` dicts
(``{consumer: {shard: seq | None}}``), flat ``{shard: seq | None}`` dicts, or
tuples ``(shard, seq)`` / ``(consumer, shard, seq)``."""


def _checkpoint_points(samples: Any) -> Iterator[tuple[int, Any, int, int | None]]:
    """``(sample index, consumer, shard, seq)`` for every value in the samples."""
    for i, sample in enumerate(samples):
        if isinstance(sample, Mapping):
            for outer, value in sample.items():
                if isinstance(value, Mapping):
                    for shard, seq in value.items():
                        yield i, outer, shard, seq
                else:
                    yield i, None, outer, value
        elif isinstance(sample, tuple) and len(sample) == 2:
            yield i, None, sample[0], sample[1]
        elif isinstance(sample, tuple) and len(sample) == 3:
            yield i, sample[0], sample[1], sample[2]
        else:
            raise TypeError(
                f"checkpoint sample {i} is {type(sample).__name__}: expected app.checkpoints() dicts, "
                "{shard: seq} dicts or (shard, seq) / (consumer, shard, seq) tuples"
            )


def assert_checkpoints_monotonic(samples: CheckpointSamples) -> None:
    """Each shard's checkpoint never moves back, across samples taken in time order.

    A checkpoint may stay, move forward, or appear (None -> seq); it may not
    decrease nor disappear (seq -> None). Samples taken across a restart (a new
    App on the same checkpoint store) must also hold: a restart resumes at or
    after the last checkpoint.

    Parameters
    ----------
    samples : sequence
        In time order: ``app.checkpoints()`` results, ``{shard: seq}`` dicts,
        or ``(shard, seq)`` / ``(consumer, shard, seq)`` tuples. A shard missing
        from a sample says nothing about it.

    Raises
    ------
    InvariantViolation
        Naming the consumer, the shard, both values and the sample indexes;
        ``details`` holds ``(consumer, shard, before, after, sample)`` for each
        regression.
    """
    last: dict[tuple[Any, Any], tuple[int, int]] = {}  # -> (seq, sample index)
    bad: list[tuple[Any, Any, int, int | None, int]] = []
    for i, consumer, shard, seq in _checkpoint_points(samples):
        previous = last.get((consumer, shard))
        if seq is None:
            if previous is not None:
                bad.append((consumer, shard, previous[0], None, i))
            continue
        if previous is not None and seq < previous[0]:
            bad.append((consumer, shard, previous[0], seq, i))
            continue
        last[(consumer, shard)] = (int(seq), i)
    if not bad:
        return
    consumer, shard, before, after, i = bad[0]
    who = f"consumer {consumer!r} shard {shard}" if consumer is not None else f"shard {shard}"
    raise InvariantViolation(
        "checkpoints_monotonic",
        f"checkpoint of {who} went back from {before} to {after} at sample {i}"
        + (f" ({len(bad) - 1} more regressions)" if len(bad) > 1 else ""),
        bad,
    )
