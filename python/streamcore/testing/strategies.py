"""Hypothesis strategies for streams, consumer options and failure schedules.

Three strategies feed :func:`streamcore.testing.check_consumer`, and can be used
on their own in any ``@given`` test:

- :func:`records`: pyarrow Tables of records with a ``key`` column, a chosen key
  cardinality, sizes and payload types;
- :func:`consumer_options`: dicts of ``App.consumer`` options;
- :func:`failure_schedules`: :class:`FailureSchedule` objects, the faults the
  harness injects into a run (failures before, midway or after the handler's
  side effects, partial batch failures, time-outs, duplicate deliveries and
  process crashes).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

__all__ = [
    "FAULT_KINDS",
    "FailureSchedule",
    "Fault",
    "consumer_options",
    "failure_schedules",
    "records",
]

# Simplest first: hypothesis shrinks a drawn kind towards the start of this tuple.
FAULT_KINDS: tuple[str, ...] = (
    "fail_before",
    "fail_after",
    "fail_midway",
    "partial",
    "duplicate",
    "timeout_before",
    "timeout_after",
    "crash_before",
    "crash_after",
    "crash_midway",
)
"""Every kind of fault a :class:`Fault` can inject.

``fail_before``
    The invocation fails before the handler runs (no side effects).
``fail_after``
    The handler runs to completion, then the invocation fails anyway (its side
    effects happened, the batch is delivered again).
``fail_midway``
    The invocation fails at the handler's ``at``-th call of
    :func:`streamcore.testing.fault_point` (0-based): the side effects before
    that point happened, the ones after did not. A handler that never reaches
    that point fails after it returns, as ``fail_after``.
``partial``
    The handler runs on the first ``at % len(batch)`` records only; the rest
    fail: reported as ``sc.BatchFailures`` with ``report_failures=True``, as a
    raised error otherwise.
``duplicate``
    The batch is delivered twice in a row (each time with the window state as
    it was before the invocation); the invocation then succeeds or fails as
    the second delivery does.
``timeout_before`` / ``timeout_after``
    The invocation runs past the consumer's ``timeout`` without / after
    running the handler, so it counts as failed and is retried.
``crash_before`` / ``crash_after`` / ``crash_midway``
    The process "crashes" before, after, or at the ``at``-th fault point of the
    handler: the App stops at once without draining (``app.stop(drain=False)``)
    and a fresh App resumes from the shared checkpoint store.
"""

_FAILING_KINDS = frozenset(
    {"fail_before", "fail_after", "fail_midway", "partial", "timeout_before", "timeout_after"}
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject: which invocation it strikes and how.

    Attributes
    ----------
    kind : str
        One of :data:`FAULT_KINDS`.
    row : int
        Index (0-based) of a row of the input table: the fault strikes an
        invocation whose batch contains that record.
    delivery : int
        The fault strikes the first invocation containing ``row`` at or after
        that record's ``delivery``-th delivery (1 = its first). Each fault
        strikes at most once.
    at : int
        ``partial``: records processed before the failing tail (modulo the
        batch length); ``fail_midway`` / ``crash_midway``: the index of the
        :func:`~streamcore.testing.fault_point` call that fails. Ignored by the
        other kinds.
    closing : bool
        Strike the closing invocation (``batch.is_final``) of the tumbling window
        that ``row`` fell in, instead of a batch holding ``row`` (``delivery``
        then counts that window's closing invocations).
    """

    kind: str
    row: int
    delivery: int = 1
    at: int = 0
    closing: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind={self.kind!r} is invalid: expected one of {', '.join(FAULT_KINDS)}")
        if self.row < 0 or self.delivery < 1 or self.at < 0:
            raise ValueError(f"{self!r} is invalid: expected row >= 0, delivery >= 1 and at >= 0")

    @property
    def fails_invocation(self) -> bool:
        """True when the library sees the struck invocation fail (it consumes a retry)."""
        return self.kind in _FAILING_KINDS

    def describe(self) -> str:
        """A short English description, e.g. ``"fail_after on the 1st delivery of row 4"``."""
        what = self.kind
        if self.kind in ("fail_midway", "crash_midway"):
            what += f" at fault point {self.at}"
        elif self.kind == "partial":
            what += f" after {self.at} records (mod batch length)"
        target = (
            f"closing invocation of row {self.row}'s window"
            if self.closing
            else f"delivery of row {self.row}"
        )
        return f"{what} on the {_ordinal(self.delivery)} {target}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True, slots=True)
class FailureSchedule:
    """The faults of one adversarial run, in the order they are matched.

    An empty schedule is a clean run. ``str(schedule)`` lists the faults one a
    line.
    """

    faults: tuple[Fault, ...] = ()

    def __len__(self) -> int:
        return len(self.faults)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __str__(self) -> str:
        if not self.faults:
            return "no faults"
        return "\n".join(f"{i}. {fault.describe()}" for i, fault in enumerate(self.faults, 1))

    @property
    def has_timeouts(self) -> bool:
        """True if a fault needs the consumer's ``timeout`` option."""
        return any(f.kind.startswith("timeout") for f in self.faults)


def failure_schedules(
    rows: int,
    *,
    kinds: Sequence[str] = FAULT_KINDS,
    min_faults: int = 0,
    max_faults: int = 4,
    max_delivery: int = 3,
    closing: bool = False,
) -> SearchStrategy[FailureSchedule]:
    """Failure schedules for a run over a table of ``rows`` records.

    Parameters
    ----------
    rows : int
        Number of rows of the input table; faults target rows ``0..rows-1``.
    kinds : sequence of str
        The fault kinds to draw from (a subset of :data:`FAULT_KINDS`).
    min_faults, max_faults : int
        Fewest and most faults in one schedule (``max_faults=0`` gives only
        clean runs). A table without rows always gets the empty schedule.
    max_delivery : int
        Largest ``Fault.delivery`` drawn: a fault may strike a record's first,
        second, ... delivery, so later faults hit redeliveries.
    closing : bool
        Also draw faults on the closing invocations of tumbling windows.

    Returns
    -------
    SearchStrategy[FailureSchedule]
        Schedules of 0..``max_faults`` faults; they shrink towards fewer,
        simpler faults on earlier rows.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(failure_schedules(10, kinds=["fail_after", "crash_before"]))
    ... def test_schedule(schedule):
    ...     assert all(0 <= f.row < 10 for f in schedule.faults)
    >>> test_schedule()
    """
    return _schedules(rows, tuple(kinds), min_faults, max_faults, max_delivery, closing)


@functools.lru_cache(maxsize=256)  # check_consumer asks for one per example: building one costs
def _schedules(
    rows: int, kinds: tuple[str, ...], min_faults: int, max_faults: int, max_delivery: int, closing: bool
) -> SearchStrategy[FailureSchedule]:
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds={list(kinds)!r} is invalid: expected a non-empty subset of {FAULT_KINDS}")
    if rows < 0 or not 0 <= min_faults <= max_faults or max_delivery < 1:
        raise ValueError(
            f"rows={rows}, min_faults={min_faults}, max_faults={max_faults}, max_delivery={max_delivery} "
            "is invalid: expected rows >= 0, 0 <= min_faults <= max_faults, max_delivery >= 1"
        )
    if rows == 0 or max_faults == 0:
        return st.just(FailureSchedule())
    ordered = [k for k in FAULT_KINDS if k in kinds]
    fault = st.builds(
        Fault,
        kind=st.sampled_from(ordered),
        row=st.integers(0, rows - 1),
        delivery=st.integers(1, max_delivery),
        # small offsets strike inside small batches; any offset works for partial (mod the length)
        at=st.integers(0, min(rows - 1, 7)) | st.integers(0, rows - 1),
        closing=st.booleans() if closing else st.just(False),
    )
    return st.lists(fault, min_size=min_faults, max_size=max_faults).map(
        lambda faults: FailureSchedule(tuple(faults))
    )


# -- records ---------------------------------------------------------------------------

_KEY_TYPES = {"str": pa.string(), "int": pa.int64(), "bytes": pa.binary()}
_PAYLOADS = ("typed", "bytes", "none")


def _key_values(key_type: str) -> SearchStrategy[Any]:
    if key_type == "str":
        return st.text(max_size=8)
    if key_type == "int":
        return st.integers(-(2**63), 2**63 - 1)
    return st.binary(max_size=8)


def _int_range(
    name: str, value: int | tuple[int, int] | SearchStrategy[int], low: int
) -> SearchStrategy[int]:
    if isinstance(value, SearchStrategy):
        return value
    if isinstance(value, tuple):
        lo, hi = value
    else:
        lo = hi = value
    if not low <= lo <= hi:
        raise ValueError(
            f"{name}={value!r} is invalid: expected an int or (min, max) with {low} <= min <= max"
        )
    return st.integers(lo, hi)


def records(
    *,
    min_rows: int = 0,
    max_rows: int = 200,
    key_cardinality: int | tuple[int, int] | SearchStrategy[int] = (1, 16),
    key_type: str = "str",
    payload: str = "typed",
) -> SearchStrategy[pa.Table]:
    """pyarrow Tables of stream records, ready for ``stream.put(table, key="key")``.

    Parameters
    ----------
    min_rows, max_rows : int
        Bounds of the number of rows.
    key_cardinality : int, (int, int) or SearchStrategy[int]
        How many distinct keys a table draws its rows' keys from: a fixed
        number, a ``(min, max)`` range, or a strategy. Few keys give long
        per-key sequences (ordering matters); many give spread over shards.
    key_type : {"str", "int", "bytes"}
        Type of the ``key`` column (utf8, int64 or binary). Keys are arbitrary
        values of that type: empty strings, non-ASCII text, extreme integers.
    payload : {"typed", "bytes", "none"}
        ``"typed"``: columns ``value`` (int64 in -1000..1000, never null),
        ``score`` (float64, finite or null) and ``tag`` (utf8 or null).
        ``"bytes"``: one ``data`` (binary) column of opaque messages, as on
        Kinesis (0 to 300 bytes). ``"none"``: the ``key`` column only. Keys
        are drawn (and shrunk) row by row; the payload columns come from one
        drawn seed, which keeps large tables cheap to generate and shrink.

    Returns
    -------
    SearchStrategy[pyarrow.Table]
        Tables that always have a non-null ``key`` column first. They shrink
        towards fewer rows, fewer keys and smaller values.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(records(max_rows=20, key_cardinality=3))
    ... def test_table(table):
    ...     assert table.column_names == ["key", "value", "score", "tag"]
    ...     assert len(set(table.column("key").to_pylist())) <= 3
    >>> test_table()
    """
    if key_type not in _KEY_TYPES:
        raise ValueError(f"key_type={key_type!r} is invalid: expected one of {sorted(_KEY_TYPES)}")
    if payload not in _PAYLOADS:
        raise ValueError(f"payload={payload!r} is invalid: expected one of {list(_PAYLOADS)}")
    if not 0 <= min_rows <= max_rows:
        raise ValueError(
            f"min_rows={min_rows}, max_rows={max_rows} is invalid: expected 0 <= min_rows <= max_rows"
        )
    cardinality = _int_range("key_cardinality", key_cardinality, 1)
    key_values = _key_values(key_type)

    @st.composite
    def tables(draw: st.DrawFn) -> pa.Table:
        n_keys = draw(cardinality)
        pool = draw(st.lists(key_values, min_size=n_keys, max_size=n_keys, unique=True))
        # The length is drawn first and uniformly: hypothesis's own list lengths favour a few
        # elements, and ordering bugs need long per-key runs spread over lanes and shards.
        n_rows = draw(st.integers(min_rows, max_rows))
        which = draw(st.lists(st.integers(0, n_keys - 1), min_size=n_rows, max_size=n_rows))
        columns: dict[str, pa.Array] = {"key": pa.array([pool[i] for i in which], _KEY_TYPES[key_type])}
        if payload != "none":
            # Payloads rarely decide whether a consumer is correct: they come from one drawn
            # seed, which keeps large tables cheap to generate and to shrink (keys are drawn
            # row by row).
            rng = random.Random(draw(st.integers(0, 2**32 - 1)))
        if payload == "typed":
            columns["value"] = pa.array([rng.randint(-1000, 1000) for _ in which], pa.int64())
            columns["score"] = pa.array([_score(rng) for _ in which], pa.float64())
            columns["tag"] = pa.array([_tag(rng) for _ in which], pa.string())
        elif payload == "bytes":
            columns["data"] = pa.array([rng.randbytes(rng.choice(_SIZES)) for _ in which], pa.binary())
        return pa.table(columns)

    return tables()


_SIZES = (0, 1, 8, 16, 64, 300)
_TEXT = "abcxyz é日🙂"


def _score(rng: random.Random) -> float | None:
    return None if rng.random() < 0.2 else rng.uniform(-1e6, 1e6)


def _tag(rng: random.Random) -> str | None:
    if rng.random() < 0.2:
        return None
    return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 12)))


# -- consumer options -------------------------------------------------------------------

OptionSpec = Any
"""How one option is given to :func:`consumer_options`: a fixed value, a
``(min, max)`` tuple (a range of ints or floats), a list (one of these values)
or a hypothesis strategy."""


def _option(name: str, spec: OptionSpec) -> SearchStrategy[Any]:
    if isinstance(spec, SearchStrategy):
        return spec
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{name}=[] is invalid: expected at least one value")
        return st.sampled_from(spec)
    if isinstance(spec, tuple) and name != "retry_backoff":
        if len(spec) != 2:
            raise ValueError(f"{name}={spec!r} is invalid: expected a (min, max) tuple")
        lo, hi = spec
        if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool):
            return st.integers(lo, hi)
        return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)
    return st.just(spec)


def consumer_options(
    *,
    batch_size: OptionSpec = (1, 20),
    batch_window: OptionSpec = [0.0, 0.5],  # noqa: B006 -- never mutated; a list means "one of"
    parallelization: OptionSpec = (1, 3),
    bisect_on_error: OptionSpec = st.booleans(),  # noqa: B008 -- strategies are immutable
    max_retries: OptionSpec = -1,
    report_failures: OptionSpec = st.booleans(),  # noqa: B008
    tumbling_window: OptionSpec = None,
    timeout: OptionSpec = None,
    **more: OptionSpec,
) -> SearchStrategy[dict[str, Any]]:
    """Dicts of ``App.consumer`` options, e.g. ``{"batch_size": 7, "parallelization": 2, ...}``.

    Each option is a fixed value, a ``(min, max)`` tuple (ints or floats), a
    list of values to choose from, or a hypothesis strategy. Options not
    named here (``max_batch_bytes``, ``retry_backoff``, ``max_state_bytes``,
    ...) go through ``**more`` the same way.

    Parameters
    ----------
    batch_size : spec
        Default: 1..20, small so that a table spans many batches.
    batch_window : spec
        Default: 0 or 0.5 seconds.
    parallelization : spec
        Default: 1..3 lanes per shard.
    bisect_on_error, report_failures : spec
        Default: either.
    max_retries : spec
        Default -1 (retry until success), so every injected failure is retried
        and the effects of an adversarial run must converge to the clean ones.
        With a finite value the harness never injects a failure into an
        attempt that would exhaust the retries.
    tumbling_window : spec
        Default None (no windows); e.g. ``60`` for one-minute windows.
    timeout : spec
        Default None; the harness sets one when a schedule injects time-outs.
    **more : spec
        Any other ``App.consumer`` option.

    Returns
    -------
    SearchStrategy[dict]
        Option dicts to pass as ``app.consumer(stream, **options)``.
    """
    specs: dict[str, OptionSpec] = {
        "batch_size": batch_size,
        "batch_window": batch_window,
        "parallelization": parallelization,
        "bisect_on_error": bisect_on_error,
        "max_retries": max_retries,
        "report_failures": report_failures,
        "tumbling_window": tumbling_window,
        "timeout": timeout,
        **more,
    }
    return st.fixed_dictionaries({name: _option(name, spec) for name, spec in specs.items()})
