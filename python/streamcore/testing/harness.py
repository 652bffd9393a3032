"""``check_consumer``: prove a consumer correct under retries, duplicates and crashes.

The harness runs a consumer twice per hypothesis example, each time on a fresh
``MemoryStream`` holding the same records, on a ``VirtualClock`` (so back-off,
time-outs and windows cost no real time):

1. a *clean* run with no injected faults, the reference;
2. an *adversarial* run that follows a :class:`~streamcore.testing.FailureSchedule`:
   invocations fail before, midway through or after the handler's side
   effects, partially fail, time out, are delivered twice, or crash the
   process (the App stops without draining and a fresh App resumes from the
   shared checkpoint store).

With ``max_retries=-1`` every injected failure is retried until it succeeds,
so a correct (idempotent, order-respecting) consumer ends with the same
effects as the clean run. The check fails, with hypothesis's shrunk
counterexample, when they differ, when the run never finishes, or when the
library's own invariants break (a record never delivered, a key's records
delivered out of order, a checkpoint moving back).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import hypothesis
import pyarrow as pa
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure
from hypothesis.strategies import SearchStrategy

from streamcore.app import App
from streamcore.batch import Batch, BatchFailures
from streamcore.checkpoints import MemoryCheckpoints
from streamcore.clock import VirtualClock
from streamcore.failures import FailedBatch, deliver
from streamcore.sources.memory import MemoryStream
from streamcore.testing.invariants import (
    DeliveryLog,
    InvariantViolation,
    assert_checkpoints_monotonic,
    assert_key_order,
    assert_no_loss,
)
from streamcore.testing.strategies import (
    FAULT_KINDS,
    FailureSchedule,
    Fault,
    consumer_options,
    failure_schedules,
)

__all__ = ["ConsumerCheckError", "InjectedFault", "check_consumer", "fault_point"]

START = 1_700_000_000.0
"""Virtual epoch seconds at which every harness run starts (records arrive from then on)."""

DEFAULT_TIMEOUT = 30.0
"""The consumer ``timeout`` the harness sets when a schedule injects time-outs and the options have none."""

RUN_LIMIT = 30 * 86_400.0
"""Virtual seconds one App run may take before the harness calls it stuck."""

STUCK_AFTER = 25
"""Failures in a row of the handler itself on one lane after which the harness calls the run stuck."""

_SHOW = 8  # differences / records listed in a message
_TRACE = 40  # deliveries listed in a message

Handler = Callable[[Batch], Any]
ConsumerFactory = Callable[[], tuple[Handler, Callable[[], Any]]]


class InjectedFault(Exception):
    """The failure the harness injects into an invocation.

    Handlers should let it propagate (like any error of a downstream call):
    a handler that catches and swallows it is still failed by the harness.

    Attributes
    ----------
    fault : Fault or None
        The scheduled fault, or None when the harness aborts a stuck run.
    """

    def __init__(self, fault: Fault | None, message: str) -> None:
        self.fault = fault
        super().__init__(message)


class ConsumerCheckError(AssertionError):
    """``check_consumer`` found a counterexample.

    The message says what went wrong (the first differing effect, expected vs
    got), the faults that struck, the options, the records and the deliveries.

    Attributes
    ----------
    reason : str
        ``"effects"`` (differ from the clean run), ``"expected"`` (the clean run
        differs from ``expected``), ``"stuck"`` (the run never finished),
        ``"no_loss"``, ``"key_order"``, ``"checkpoints_monotonic"`` or
        ``"progress"`` (the library's own invariants: a library bug).
    schedule : FailureSchedule
        The schedule of the failing run (empty for the clean run).
    fired : list of str
        The faults that struck, in order, with the invocation each one hit.
    differences : list of tuple
        ``(effect, expected, got)`` for every differing effect (``"effects"``
        and ``"expected"`` only); a missing effect shows as ``MISSING``.
    options : dict
        The consumer options of the run.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        schedule: FailureSchedule,
        fired: Sequence[str] = (),
        differences: Sequence[tuple[Any, Any, Any]] = (),
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.schedule = schedule
        self.fired = list(fired)
        self.differences = list(differences)
        self.options = dict(options or {})
        super().__init__(message)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""Stands for an absent effect in ``ConsumerCheckError.differences``."""


# -- fault points ------------------------------------------------------------------------

_local = threading.local()


class _Points:
    """The fault points of one handler call."""

    __slots__ = ("count", "fault", "fire_at", "fired")

    def __init__(self, fire_at: int | None, fault: Fault | None) -> None:
        self.count = 0
        self.fire_at = fire_at
        self.fault = fault
        self.fired = False


def fault_point(label: str | None = None) -> None:
    """Mark a place in a handler where a failure may strike, between two side effects.

    Outside ``check_consumer`` this does nothing (and costs one attribute
    look-up). Under the harness, ``fail_midway`` and ``crash_midway`` faults
    raise :class:`InjectedFault` at the handler's ``at``-th call (0-based), so
    the side effects before that call happened and the ones after it did not:
    exactly what a process that dies, or a downstream that errors, halfway
    through a batch leaves behind.

    Parameters
    ----------
    label : str, optional
        Shown in the failure message (e.g. ``"before the write of order 17"``).

    Examples
    --------
    >>> def handle(batch):
    ...     for seq, value in zip(batch.records["seq"].to_pylist(), batch.records["value"].to_pylist()):
    ...         fault_point()          # the write below may fail
    ...         db[(batch.shard, seq)] = value
    """
    points: _Points | None = getattr(_local, "points", None)
    if points is None:
        return
    index = points.count
    points.count += 1
    if points.fire_at is not None and not points.fired and index >= points.fire_at:
        points.fired = True
        kind = points.fault.kind if points.fault is not None else "fault"
        where = f" ({label})" if label else ""
        raise InjectedFault(points.fault, f"injected {kind} at fault point {index}{where}")


# -- the injecting handler wrapper -----------------------------------------------------


class _Injector:
    """The handler the harness registers: records deliveries, injects faults, watches for stuck runs."""

    def __init__(
        self,
        handler: Handler,
        schedule: FailureSchedule,
        row_of: dict[tuple[int, int], int],
        options: Mapping[str, Any],
        clock: VirtualClock,
        invocation_budget: int,
    ) -> None:
        self.handler = handler
        self.schedule = schedule
        self.pending: list[Fault] = list(schedule.faults)
        self.row_of = row_of
        self.clock = clock
        self.report_failures = bool(options.get("report_failures", False))
        self.max_retries = int(options.get("max_retries", -1))
        self.timeout = float(options.get("timeout") or DEFAULT_TIMEOUT)
        self.log = DeliveryLog()
        self.fired: list[str] = []
        self.samples: list[dict[str, dict[int, int | None]]] = []
        self.discarded: set[tuple[int, int]] = set()
        self.deliveries: Counter[int] = Counter()
        self.row_window: dict[int, tuple[int, int, Any]] = {}
        self.closings: Counter[tuple[int, int, Any]] = Counter()
        self.failures_in_a_row: Counter[tuple[int, int]] = Counter()
        self.invocations = 0
        self.budget = invocation_budget
        self.generation = 0
        self.app: App | None = None
        self.crash_pending = False
        self.aborted: str | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._active = 0

    # -- run control ---------------------------------------------------------

    def begin(self, app: App, generation: int) -> None:
        with self._lock:
            self.app = app
            self.generation = generation
            self.crash_pending = False

    def _stop_app(self) -> None:
        app = self.app
        if app is not None:
            app.stop(drain=False)

    def _abort(self, reason: str) -> None:
        with self._lock:
            first = self.aborted is None
            if first:
                self.aborted = reason
        if first:
            self._stop_app()

    def _crash(self) -> None:
        with self._lock:
            self.crash_pending = True
        self._stop_app()

    def settle(self) -> None:
        """Wake handlers still sleeping on the clock (timed-out invocations) and wait for them."""
        for _ in range(1000):
            wake = self.clock.next_wakeup()
            if wake is None:
                break
            self.clock.advance_to(wake)
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=10.0)

    def on_failure(self, destination: Any) -> Callable[[FailedBatch], None]:
        def record(failed: FailedBatch) -> None:
            deliver(destination, failed)
            seqs = failed.records.column("seq").to_pylist()
            with self._lock:
                self.discarded.update((failed.shard, seq) for seq in seqs)

        return record

    # -- one invocation ------------------------------------------------------

    def __call__(self, batch: Batch) -> Any:
        with self._idle:
            self._active += 1
        try:
            return self._invoke(batch)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _invoke(self, batch: Batch) -> Any:
        seqs = batch.records.column("seq").to_pylist() if "seq" in batch.records.schema.names else []
        window = batch.window.start if batch.window is not None else None
        lane_window = (batch.shard, batch.lane, window)
        with self._lock:
            if self.aborted is not None:
                raise InjectedFault(None, f"run aborted: {self.aborted}")
            self.invocations += 1
            over_budget = self.invocations > self.budget
            rows = [self.row_of[(batch.shard, s)] for s in seqs if (batch.shard, s) in self.row_of]
            for row in rows:
                self.deliveries[row] += 1
                if window is not None:
                    self.row_window[row] = lane_window
            if batch.is_final:
                self.closings[lane_window] += 1
            fault = None if over_budget else self._pick(batch, rows, lane_window)
            delivery = self.log.record(
                batch, generation=self.generation, note=fault.describe() if fault is not None else None
            )
            if fault is not None:
                self.fired.append(
                    f"{fault.describe()} -> {dataclasses.replace(delivery, note=None).describe()}"
                )
            app = self.app
        if over_budget:
            self._abort(
                f"{self.budget} invocations without finishing (last: {delivery.describe()}); "
                "the consumer does not converge"
            )
            raise InjectedFault(None, "run aborted: invocation budget exhausted")
        if app is not None:
            self.samples.append(app.checkpoints())
        if fault is None:
            return self._call(batch)
        return self._inject(fault, batch, seqs)

    def _pick(self, batch: Batch, rows: list[int], lane_window: tuple[int, int, Any]) -> Fault | None:
        """The first pending fault that strikes this invocation, if any (under the lock)."""
        present = set(rows)
        for i, fault in enumerate(self.pending):
            if fault.closing:
                if (
                    not batch.is_final
                    or self.row_window.get(fault.row) != lane_window
                    or self.closings[lane_window] < fault.delivery
                ):
                    continue
            elif fault.row not in present or self.deliveries[fault.row] < fault.delivery:
                continue
            if fault.fails_invocation and 0 <= self.max_retries < batch.attempt:
                continue  # this failure would exhaust the retries: keep it for a later attempt
            del self.pending[i]
            return fault
        return None

    def _inject(self, fault: Fault, batch: Batch, seqs: list[int]) -> Any:
        kind = fault.kind
        if kind == "fail_before":
            raise InjectedFault(fault, "injected fail_before: the handler did not run")
        if kind == "fail_after":
            self._call(batch)
            raise InjectedFault(fault, "injected fail_after: the handler ran, the invocation failed")
        if kind == "fail_midway":
            self._call(batch, fire_at=fault.at, fault=fault)
            raise InjectedFault(
                fault, f"injected fail_midway: the handler ran without reaching fault point {fault.at}"
            )
        if kind == "partial":
            return self._partial(fault, batch, seqs)
        if kind == "duplicate":
            first = _sub_batch(batch, batch.records, copy.deepcopy(batch.state))
            with contextlib.suppress(Exception):  # the first delivery's outcome is lost
                self._call(first)
            return self._call(batch)
        if kind == "timeout_before":
            self.clock.sleep(self.timeout + 1.0)
            return None
        if kind == "timeout_after":
            result = self._call(batch)
            self.clock.sleep(self.timeout + 1.0)
            return result
        # crashes: the App stops at once without draining; a fresh App resumes later
        try:
            if kind == "crash_after":
                self._call(batch)
            elif kind == "crash_midway":
                self._call(batch, fire_at=fault.at, fault=fault)
        except Exception:  # the process dies either way
            pass
        finally:
            self._crash()
        raise InjectedFault(fault, f"injected {kind}: the process crashed")

    def _partial(self, fault: Fault, batch: Batch, seqs: list[int]) -> Any:
        n = len(seqs)
        if n == 0:
            raise InjectedFault(fault, "injected partial on a batch without records: it failed")
        done = fault.at % n
        result = None
        if done:
            result = self._call(_sub_batch(batch, batch.records.slice(0, done), batch.state))
        tail = seqs[done:]
        if not self.report_failures:
            raise InjectedFault(fault, f"injected partial: {done} of {n} records processed, then a failure")
        return _with_failures(result, tail)

    def _call(self, batch: Batch, *, fire_at: int | None = None, fault: Fault | None = None) -> Any:
        """Run the user's handler, with fault points armed; track its own failures."""
        points = _Points(fire_at, fault)
        previous = getattr(_local, "points", None)
        _local.points = points
        try:
            result = self.handler(batch)
        except BaseException as exc:
            if not points.fired and not isinstance(exc, InjectedFault):
                self._handler_failed(batch, exc)
            raise
        finally:
            _local.points = previous
        if points.fired:  # the handler swallowed the injected fault: the invocation fails anyway
            raise InjectedFault(
                fault, f"injected {fault.kind if fault else 'fault'} (swallowed by the handler)"
            )
        with self._lock:
            self.failures_in_a_row[(batch.shard, batch.lane)] = 0
        return result

    def _handler_failed(self, batch: Batch, exc: BaseException) -> None:
        lane = (batch.shard, batch.lane)
        with self._lock:
            self.failures_in_a_row[lane] += 1
            count = self.failures_in_a_row[lane]
        if count >= STUCK_AFTER:
            what = f"seqs {batch.first_seq}..{batch.last_seq}" if len(batch) else "its closing invocation"
            self._abort(
                f"the handler itself raised {count} times in a row on shard {batch.shard} lane {batch.lane} "
                f"({what}, attempt {batch.attempt}); last error: {type(exc).__name__}: {exc}"
            )


def _sub_batch(batch: Batch, records: pa.RecordBatch, state: dict[str, Any] | None) -> Batch:
    seqs = records.column("seq")
    first = seqs[0].as_py() if len(seqs) else batch.first_seq
    last = seqs[-1].as_py() if len(seqs) else batch.last_seq
    return Batch(
        records,
        source=batch.source,
        shard=batch.shard,
        lane=batch.lane,
        first_seq=first,
        last_seq=last,
        attempt=batch.attempt,
        window=batch.window,
        state=state,
        is_final=batch.is_final,
        terminated_early=batch.terminated_early,
    )


def _with_failures(result: Any, tail: list[int]) -> Any:
    """The handler's response on the head of a batch, plus the failed tail."""
    if result is None or (isinstance(result, (str, list)) and not result):
        return BatchFailures(tail)
    if isinstance(result, BatchFailures):
        ids = list(result.ids)
        return BatchFailures(ids + [s for s in tail if s not in ids])
    if isinstance(result, dict):
        merged = dict(result)
        items = merged.get("batchItemFailures") or []
        if isinstance(items, list):
            merged["batchItemFailures"] = [*items, *({"itemIdentifier": s} for s in tail)]
            return merged
    return result  # an invalid response: the library fails the whole batch anyway


# -- one run -----------------------------------------------------------------------------


@dataclass
class _Run:
    """What one run (clean or adversarial) left behind."""

    effects: Any
    injector: _Injector
    placed: pa.Table  # the input rows with their shard and seq
    final: dict[int, int | None]
    generations: int
    aborted: str | None = None


def _snapshot(effects: Any) -> Any:
    try:
        return copy.deepcopy(effects)
    except Exception:
        return effects


def _put(stream: MemoryStream, clock: VirtualClock, table: pa.Table, key: str, spacing: float) -> pa.Table:
    if table.num_rows == 0:
        return pa.table({"shard": pa.array([], pa.int64()), "seq": pa.array([], pa.uint64())})
    if spacing <= 0:
        return stream.put(table, key=key)
    placed = []
    for i in range(table.num_rows):
        placed.append(stream.put(table.slice(i, 1), key=key))
        clock.advance(spacing)
    return pa.concat_tables(placed)


@dataclass
class _Setup:
    """What every run of one ``check_consumer`` call shares."""

    make_consumer: ConsumerFactory
    key: str
    name: str
    spacing: float
    concurrency: int

    def run(
        self, table: pa.Table, options: Mapping[str, Any], shards: int, schedule: FailureSchedule
    ) -> _Run:
        clock = VirtualClock(start=START, seed=0)
        stream = MemoryStream(shards=shards, clock=clock)
        placed = _put(stream, clock, table, self.key, self.spacing)
        row_of = {
            (shard, seq): i
            for i, (shard, seq) in enumerate(
                zip(placed.column("shard").to_pylist(), placed.column("seq").to_pylist(), strict=True)
            )
        }
        handler, read_effects = self.make_consumer()
        budget = 1000 + 40 * table.num_rows * (1 + len(schedule))
        injector = _Injector(handler, schedule, row_of, options, clock, budget)
        opts = dict(options)
        opts["on_failure"] = injector.on_failure(options.get("on_failure"))
        store = MemoryCheckpoints()
        apps: list[App] = []
        generation = 0
        try:
            while True:
                app = App(checkpoints=store, clock=clock, concurrency=self.concurrency)
                apps.append(app)
                injector.begin(app, generation)
                app.consumer(stream, name=self.name, **opts)(injector)
                started = clock.now()
                app.run(until_idle=True, timeout=RUN_LIMIT)
                injector.samples.append(app.checkpoints())
                if injector.aborted is not None:
                    break
                if injector.crash_pending:
                    generation += 1
                    continue
                if clock.now() - started >= RUN_LIMIT:
                    injector.aborted = f"the run did not finish within {RUN_LIMIT:g} virtual seconds"
                break
            final = apps[-1].checkpoints()[self.name]
            injector.settle()
            effects = _snapshot(read_effects())
        finally:
            for app in apps:
                app.close()
            stream.close()
        return _Run(effects, injector, placed, final, generation, injector.aborted)


# -- comparing and reporting -------------------------------------------------------------


def _differences(expected: Any, got: Any) -> list[tuple[Any, Any, Any]]:
    """``(where, expected, got)`` for each difference; empty when equal."""
    if expected == got:
        return []
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        out = [(k, v, got.get(k, MISSING)) for k, v in expected.items() if k not in got or got[k] != v]
        out += [(k, MISSING, v) for k, v in got.items() if k not in expected]
        return out
    if isinstance(expected, Set) and isinstance(got, Set):
        out = [(item, item, MISSING) for item in expected if item not in got]
        return out + [(item, MISSING, item) for item in got if item not in expected]
    if (
        isinstance(expected, Sequence)
        and isinstance(got, Sequence)
        and not isinstance(expected, (str, bytes))
        and not isinstance(got, (str, bytes))
    ):
        out = [(f"[{i}]", a, b) for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b]
        out += [(f"[{i}]", expected[i], MISSING) for i in range(len(got), len(expected))]
        out += [(f"[{i}]", MISSING, got[i]) for i in range(len(expected), len(got))]
        return out
    return [("effects", expected, got)]


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_differences(diffs: Sequence[tuple[Any, Any, Any]]) -> str:
    missing = sum(1 for _, e, g in diffs if g is MISSING)
    extra = sum(1 for _, e, g in diffs if e is MISSING)
    changed = len(diffs) - missing - extra
    counts = ", ".join(
        f"{n} {what}"
        for n, what in ((missing, "missing"), (extra, "unexpected"), (changed, "different"))
        if n
    )
    lines = [f"{counts} effect(s)"]
    for i, (where, exp, got) in enumerate(diffs[:_SHOW]):
        lead = "first difference" if i == 0 else "also"
        lines.append(f"  {lead}: effect {_short(where, 80)}: expected {_short(exp)}, got {_short(got)}")
    if len(diffs) > _SHOW:
        lines.append(f"  ... and {len(diffs) - _SHOW} more")
    return "\n".join(lines)


def _context(run: _Run, table: pa.Table, options: Mapping[str, Any], shards: int, key: str) -> str:
    injector = run.injector
    lines = []
    schedule = injector.schedule
    if schedule:
        lines.append("failure schedule:")
        lines += [f"  {line}" for line in str(schedule).splitlines()]
        lines.append("faults that struck, in order:" if injector.fired else "no fault struck")
        lines += [f"  {line}" for line in injector.fired]
    else:
        lines.append("failure schedule: none (the clean run)")
    if run.generations:
        lines.append(f"restarts after crashes: {run.generations}")
    shown = {k: v for k, v in options.items() if k != "on_failure" or v is not None}
    lines.append(f"options: {shown}")
    keys = table.column(key).to_pylist() if key in table.column_names else []
    lines.append(f"records: {table.num_rows} rows, {len(set(map(repr, keys)))} keys, shards={shards}")
    if 0 < table.num_rows <= 40:
        placed = zip(
            run.placed.column("shard").to_pylist(), run.placed.column("seq").to_pylist(), strict=True
        )
        cells = [f"{i}:{k!r}->s{s}/{q}" for i, (k, (s, q)) in enumerate(zip(keys, placed, strict=True))]
        lines.append("  row:key->shard/seq  " + " ".join(cells))
    deliveries = injector.log.deliveries
    head = "deliveries:" if len(deliveries) <= _TRACE else f"deliveries (last {_TRACE} of {len(deliveries)}):"
    lines.append(head)
    lines += [f"  {d.describe()}" for d in deliveries[-_TRACE:]]
    return "\n".join(lines)


def _fail(
    reason: str,
    headline: str,
    run: _Run,
    table: pa.Table,
    options: Mapping[str, Any],
    shards: int,
    key: str,
    differences: Sequence[tuple[Any, Any, Any]] = (),
) -> ConsumerCheckError:
    message = f"{headline}\n{_context(run, table, options, shards, key)}"
    return ConsumerCheckError(
        reason,
        message,
        schedule=run.injector.schedule,
        fired=run.injector.fired,
        differences=differences,
        options=options,
    )


def _verify_run(
    run: _Run, which: str, table: pa.Table, options: Mapping[str, Any], shards: int, key: str
) -> None:
    """The checks every run must pass, clean or adversarial."""
    injector = run.injector
    if run.aborted is not None:
        raise _fail(
            "stuck", f"the {which} run never finished: {run.aborted}", run, table, options, shards, key
        )
    library = "(an invariant streamcore itself must keep: a library bug, not your consumer's)"
    try:
        assert_no_loss(injector.log, run.placed, discarded=injector.discarded)
        assert_key_order(injector.log)
        assert_checkpoints_monotonic(injector.samples)
    except InvariantViolation as exc:
        raise _fail(
            exc.invariant, f"{which} run: {exc} {library}", run, table, options, shards, key
        ) from None
    last: dict[int, int] = {}
    for shard, seq in zip(
        run.placed.column("shard").to_pylist(), run.placed.column("seq").to_pylist(), strict=True
    ):
        last[shard] = max(seq, last.get(shard, -1))
    behind = {s: (run.final.get(s), q) for s, q in last.items() if run.final.get(s) != q}
    if behind:
        shard, (got, want) = next(iter(behind.items()))
        raise _fail(
            "progress",
            f"{which} run ended with shard {shard}'s checkpoint at {got}, but its last record is seq {want} "
            f"{library}",
            run,
            table,
            options,
            shards,
            key,
        )


# -- the public entry point -------------------------------------------------------------------


def _as_strategy(value: Any, kind: type) -> SearchStrategy[Any]:
    if isinstance(value, SearchStrategy):
        return value
    if not isinstance(value, kind):
        raise TypeError(f"expected a {kind.__name__} or a hypothesis strategy, got {type(value).__name__}")
    return st.just(value)


def _find_check_error(exc: BaseException) -> ConsumerCheckError | None:
    if isinstance(exc, ConsumerCheckError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _find_check_error(inner)
        if found is not None:
            return found
    return None


def check_consumer(
    make_consumer: ConsumerFactory,
    records: pa.Table | SearchStrategy[pa.Table],
    *,
    options: Mapping[str, Any] | SearchStrategy[dict[str, Any]] | None = None,
    shards: int | SearchStrategy[int] = 1,
    kinds: Sequence[str] = FAULT_KINDS,
    max_faults: int = 4,
    max_examples: int = 25,
    expected: Callable[[pa.Table], Any] | None = None,
    spacing: float = 0.0,
    concurrency: int = 1,
    key: str = "key",
    name: str = "consumer",
    settings: hypothesis.settings | None = None,
    seed: int | None = None,
) -> None:
    """Check that a consumer's effects survive retries, duplicates and crashes.

    For each hypothesis example the harness draws records, options and a
    failure schedule, runs the consumer once cleanly (the reference) and once
    with the faults injected, and compares what ``read_effects()`` returns.
    Everything runs on a ``VirtualClock``: back-off, time-outs and windows
    take no real time.

    Parameters
    ----------
    make_consumer : callable
        Called once per run; returns a fresh ``(handler, read_effects)`` pair.
        ``handler(batch)`` does the consumer's side effects (writes to a dict
        standing for a database, say) and returns what a handler returns;
        ``read_effects()`` returns a comparable summary of the effects (a
        dict, a list, a set...). The pair survives the simulated crashes of
        its run, as a database would.
    records : pyarrow.Table or SearchStrategy[pyarrow.Table]
        The input, put into a ``MemoryStream`` keyed by ``key``; e.g.
        :func:`~streamcore.testing.records`.
    options : dict or SearchStrategy[dict], optional
        ``App.consumer`` options: fixed, or drawn (e.g.
        :func:`~streamcore.testing.consumer_options`). Default:
        ``consumer_options()``.
    shards : int or SearchStrategy[int]
        Shards of the stream (default 1).
    kinds : sequence of str
        The fault kinds to inject (default: all of ``FAULT_KINDS``).
    max_faults : int
        Most faults per adversarial run.
    max_examples : int
        Hypothesis examples to try (each is two or more runs).
    expected : callable, optional
        An oracle: ``expected(placed)`` returns the effects a correct consumer
        leaves, given the input rows with their ``shard`` and ``seq`` columns
        appended. Then the clean run is checked against it too.
    spacing : float
        Virtual seconds between the puts of consecutive rows (0: all at once).
        Give tumbling-window consumers a spacing so that records span windows.
    concurrency : int
        The App's ``concurrency``. The default 1 runs one invocation at a time
        (lanes and shards still interleave), which keeps runs deterministic
        so that hypothesis can shrink a counterexample.
    key : str
        Name of the key column of ``records``.
    name : str
        The consumer's name (its checkpoints are kept under it).
    settings : hypothesis.settings, optional
        Replaces the harness's settings (``max_examples``, no deadline, no
        ``explain`` phase, health checks about slow data generation off).
    seed : int, optional
        Fixes hypothesis's random seed.

    Raises
    ------
    ConsumerCheckError
        With hypothesis's shrunk counterexample: the effects of an adversarial
        run differ from the clean run's (the message shows the first differing
        effect, expected vs got, the faults that struck and the deliveries),
        a run never finishes (the handler keeps failing by itself), or a
        library invariant breaks (a record never delivered, a key's records
        delivered out of order, a checkpoint moving back).

    Notes
    -----
    A consumer passes when its effects are idempotent under redelivery (a
    batch, or its head, may be delivered again after its side effects
    happened) and depend only on per-key order, which the library keeps, not
    on any order across keys, lanes or shards. Place
    :func:`~streamcore.testing.fault_point` calls between side effects to let
    the harness fail a handler halfway through a batch. Do not call
    ``check_consumer`` inside a ``@given`` test: it runs hypothesis itself.

    Examples
    --------
    >>> from streamcore.testing import check_consumer, records
    >>> def make_consumer():
    ...     db = {}
    ...     def handle(batch):
    ...         rows = batch.records.select(["seq", "value"]).to_pylist()
    ...         for row in rows:
    ...             db[(batch.shard, row["seq"])] = row["value"]   # idempotent upsert
    ...     return handle, lambda: db
    >>> check_consumer(make_consumer, records(max_rows=30), max_examples=5)
    """
    records_st = _as_strategy(records, pa.Table)
    options_st = consumer_options() if options is None else _as_strategy(options, Mapping)
    shards_st = _as_strategy(shards, int)
    setup = _Setup(make_consumer, key, name, spacing, concurrency)
    references: list[tuple[pa.Table, str, int, _Run]] = []

    def reference_run(table: pa.Table, opts: Mapping[str, Any], n_shards: int) -> _Run:
        signature = repr(sorted(opts.items()))
        for t, sig, n, run in references:
            if sig == signature and n == n_shards and t.equals(table):
                return run
        run = setup.run(table, opts, n_shards, FailureSchedule())
        references.insert(0, (table, signature, n_shards, run))
        del references[8:]
        return run

    def check(data: st.DataObject) -> None:
        table = data.draw(records_st, label="records")
        opts = dict(data.draw(options_st, label="options"))
        n_shards = data.draw(shards_st, label="shards")
        windowed = bool(opts.get("tumbling_window"))
        schedule = data.draw(
            failure_schedules(
                table.num_rows, kinds=kinds, min_faults=1, max_faults=max_faults, closing=windowed
            ),
            label="schedule",
        )
        if schedule.has_timeouts and opts.get("timeout") is None:
            opts["timeout"] = DEFAULT_TIMEOUT
        clean = reference_run(table, opts, n_shards)
        _verify_run(clean, "clean", table, opts, n_shards, key)
        if expected is not None:
            placed = table.append_column("shard", clean.placed.column("shard")).append_column(
                "seq", clean.placed.column("seq")
            )
            diffs = _differences(_snapshot(expected(placed)), clean.effects)
            if diffs:
                raise _fail(
                    "expected",
                    "the clean run's effects differ from expected(): " + _describe_differences(diffs),
                    clean,
                    table,
                    opts,
                    n_shards,
                    key,
                    diffs,
                )
        if not schedule:
            return
        run = setup.run(table, opts, n_shards, schedule)
        if run.injector.discarded != clean.injector.discarded:
            hypothesis.reject()  # the injected faults exhausted max_retries / max_record_age
        _verify_run(run, "adversarial", table, opts, n_shards, key)
        diffs = _differences(clean.effects, run.effects)
        if diffs:
            raise _fail(
                "effects",
                "the effects of a run with injected faults differ from the clean run's: "
                + _describe_differences(diffs),
                run,
                table,
                opts,
                n_shards,
                key,
                diffs,
            )

    # Keep hypothesis's example database apart for each consumer factory.
    label = f"{getattr(make_consumer, '__module__', '')}.{getattr(make_consumer, '__qualname__', '')}"
    check._hypothesis_internal_add_digest = label.encode()  # type: ignore[attr-defined]
    test = given(data=st.data())(check)
    test = (
        settings
        if settings is not None
        else hypothesis.settings(
            max_examples=max_examples,
            deadline=None,
            # "explain" traces every line of every replay: slow with threads, rarely helpful here
            phases=[p for p in hypothesis.Phase if p is not hypothesis.Phase.explain],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
                HealthCheck.large_base_example,
            ],
        )
    )(test)
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    try:
        test()
    except FlakyFailure as exc:
        found = _find_check_error(exc)
        if found is None:
            raise
        note = (
            "\nThis counterexample did not fail on every replay: the consumer's effects depend on the "
            "interleaving of lanes or shards, or on something else outside the schedule."
        )
        found.args = (f"{found.args[0]}{note}", *found.args[1:])
        raise found from exc
