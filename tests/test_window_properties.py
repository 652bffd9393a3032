"""Property tests of tumbling windows (SEMANTICS 0.4, 2.9) against the model.

Hypothesis draws a stream (1-3 shards, keys, record sizes), a schedule of puts
interleaved with clock advances (each record's arrival is the clock at its
put), consumer options (parallelization, batch size, ``max_batch_bytes``,
window size, ``max_state_bytes``), a failure schedule (invocations that fail
before they succeed, closing ones included) and crash points (the App stopped
between two steps of the schedule or inside an invocation, with or without
drain, then a new App on the same ``sc.MemoryCheckpoints``). The native core
runs it on a ``sc.VirtualClock`` through the public API, either *live* (the
App runs through every clock advance, so windows close on the clock while
lanes are idle) or after the last put (the App reads a stream already written).

The handler appends the seqs it sees to ``state["seen"]`` (``reference.
append_seen``) and records every invocation with a copy of the state it was
given. Every example checks

* invariants read off the observations alone: no record lost, per-key order,
  every batch within its records' arrival window, every record in exactly one
  committed window state (what a closing invocation is given) of its arrival
  window, one closing invocation per (shard, lane, window) that received
  records, records seen again only as at-least-once allows (a retry, or a
  redelivery of what a stop without drain abandoned), checkpoints and lane
  positions that never go back and end at each shard's last seq;
* that per (shard, lane) the sequence of invocations (window, records, closing,
  early, state given, attempt, success) equals ``reference.window_invocations``,
  and so do their clock times when back-off cannot move the clock. Across a
  restart, the sequence with retries and redeliveries folded into one entry
  equals the model's.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference import (
    DEFAULT_MAX_BATCH_BYTES,
    ReferenceStream,
    RefRecord,
    WindowInvocation,
    append_seen,
    expected_window_invocations,
    final_checkpoints,
    lane_of,
    state_nbytes,
    window_end,
    window_invocations,
    window_of,
)

import streamcore as sc

# STREAMCORE_TEST_EXAMPLES=1000 for a longer soak
EXAMPLES = int(os.environ.get("STREAMCORE_TEST_EXAMPLES", "100"))
SETTINGS = settings(
    max_examples=max(1, EXAMPLES * 2 // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))

START = 1_700_000_000.0  # a multiple of every window size drawn, except 3
NAME = "windowed"
ROW_SCHEMA = pa.schema([("key", pa.string()), ("i", pa.int64()), ("pad", pa.string())])
NO_BACKOFF = (0.0, 1.0, 0.0)  # retries at once: failures cost no clock time
DEFAULT_BACKOFF = (0.5, 1.5, 60.0)

# shard, lane, window, seqs, closing, early, state
Signature = tuple[int, int, int, tuple[int, ...], bool, bool, str]


def signature(
    lane: tuple[int, int], window: int, seqs: tuple[int, ...], is_final: bool, early: bool, state: Any
) -> Signature:
    """What identifies one logical invocation: a retry or a redelivery repeats it."""
    return (*lane, window, seqs, is_final, early, json.dumps(state, sort_keys=True))


def model_signature(lane: tuple[int, int], m: WindowInvocation) -> Signature:
    return signature(lane, m.window, m.seqs, m.is_final, m.terminated_early, m.state)


# --------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class Crash:
    """Stop the App and start a new one on the same checkpoint store.

    ``after_step``: between two steps of the schedule (live runs only).
    ``at_invocation``: inside the n-th handler invocation (1-based, over all lanes),
    which calls ``app.stop(drain=drain)``; without drain the invocation is abandoned.
    """

    after_step: int | None = None
    at_invocation: int | None = None
    drain: bool = True


@dataclass
class Scenario:
    n_shards: int
    parallelization: int
    batch_size: int
    max_batch_bytes: int | None
    window: float
    max_state_bytes: int | None
    live: bool
    backoff: tuple[float, float, float]
    steps: list[tuple[str, Any]]  # ("put", rows) or ("advance", seconds)
    failures: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (shard, lane, k) -> count
    crashes: tuple[Crash, ...] = ()
    # Seconds after START at which row i arrives, stamped by a clock of the stream's own
    # (each row put alone); None: the App's clock stamps arrivals.
    arrivals: tuple[float, ...] | None = None

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "batch_size": self.batch_size,
            "parallelization": self.parallelization,
            "tumbling_window": self.window,
            "retry_backoff": self.backoff,
        }
        if self.max_batch_bytes is not None:
            opts["max_batch_bytes"] = self.max_batch_bytes
        if self.max_state_bytes is not None:
            opts["max_state_bytes"] = self.max_state_bytes
        return opts

    def model_options(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "max_batch_bytes": self.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES,
            "max_state_bytes": self.max_state_bytes,
        }

    def __repr__(self) -> str:  # keep hypothesis' falsifying example readable
        steps = [
            ("put", [(r["key"], r["i"], len(r["pad"])) for r in arg]) if kind == "put" else (kind, arg)
            for kind, arg in self.steps
        ]
        return (
            f"Scenario(n_shards={self.n_shards}, pf={self.parallelization}, batch_size={self.batch_size}, "
            f"max_batch_bytes={self.max_batch_bytes}, window={self.window}, "
            f"max_state_bytes={self.max_state_bytes}, live={self.live}, backoff={self.backoff},\n"
            f"  steps (put: [(key, i, pad)])={steps},\n"
            f"  failures={self.failures}, crashes={self.crashes}, arrivals={self.arrivals})"
        )


def puts_of(scenario: Scenario, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The puts one put step makes: one, or one per row when rows have arrivals of their own."""
    return [rows] if scenario.arrivals is None else [[row] for row in rows]


def arrival_ms(scenario: Scenario, rows: list[dict[str, Any]], now: float) -> int:
    """The arrival a put stamps: the App's clock, or the row's own arrival."""
    if scenario.arrivals is None:
        return int(now * 1000)
    return int((START + scenario.arrivals[rows[0]["i"]]) * 1000)


def replay_puts(scenario: Scenario) -> tuple[ReferenceStream, dict[tuple[int, int], float]]:
    """The model's view of the schedule: the stream (arrival = the clock at the put) and
    when each record (by (shard, seq)) can first be read."""
    model = ReferenceStream(scenario.n_shards)
    put_at: dict[tuple[int, int], float] = {}
    now = START
    for kind, arg in scenario.steps:
        if kind == "advance":
            now += arg
            continue
        for rows in puts_of(scenario, arg):
            for placed in model.put(rows, arrival_ms=arrival_ms(scenario, rows, now)):
                put_at[placed] = now
    if not scenario.live:  # the App starts after the last step: everything is there
        put_at = dict.fromkeys(put_at, now)
    return model, put_at


def expected(
    scenario: Scenario, *, with_failures: bool = True
) -> dict[tuple[int, int], list[WindowInvocation]]:
    model, put_at = replay_puts(scenario)
    failures: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
    if with_failures:
        for (shard, lane, k), count in scenario.failures.items():
            failures[(shard, lane)][k] = count
    return expected_window_invocations(
        model.records,
        scenario.parallelization,
        scenario.window,
        read_at=put_at,
        failures=failures,
        **scenario.model_options(),
    )


@st.composite
def scenarios(
    draw: Any,
    *,
    live: bool | None = None,
    min_lanes: int = 1,
    small_bytes: bool = False,
    short_windows: bool = False,
    small_state: bool = False,
    failures: bool = False,
    fail_closings: bool = False,
    crash: bool = False,
    max_rows: int = 30,
) -> Scenario:
    n_shards = draw(st.integers(1, 3))
    pf = draw(st.integers(min_lanes, 3))
    batch_size = draw(st.one_of(st.integers(1, 6), st.just(100)))
    if small_bytes:
        max_bytes: int | None = draw(st.integers(40, 160))
    else:
        max_bytes = draw(st.one_of(st.none(), st.none(), st.integers(40, 300)))
    # short windows and small steps: many records near window boundaries
    window = draw(st.sampled_from([1.0, 2.0] if short_windows else [1.0, 2.0, 3.0, 5.0, 10.0]))
    advances = [0.25, 0.5, 0.75] if short_windows else [0.25, 0.5, 1.0, 1.75, 2.5, 4.0, 7.0, 12.0]
    if small_state:
        max_state: int | None = draw(st.integers(10, 24))  # {"seen":[0]} is 12 bytes
    elif crash:
        # A restart forgets a pending early closing: test_restart_keeps_a_pending_early_closing
        max_state = None
    else:
        max_state = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(10, 60)))
    is_live = draw(st.booleans()) if live is None else live

    n_keys = draw(st.sampled_from([1, 2, 3] if short_windows else [1, 2, 3, 6]))
    steps: list[tuple[str, Any]] = []
    i = 0
    for _ in range(draw(st.integers(1, 16 if short_windows else 10))):
        if i < max_rows and draw(st.booleans()):
            rows = []
            for _ in range(min(draw(st.integers(1, 6)), max_rows - i)):
                key = f"k{draw(st.integers(0, n_keys - 1))}"
                rows.append({"key": key, "i": i, "pad": "x" * draw(st.sampled_from([0, 0, 3, 20, 60]))})
                i += 1
            steps.append(("put", rows))
        else:  # multiples of 0.25 s: clock times stay exact
            steps.append(("advance", draw(st.sampled_from(advances))))
    if i == 0:
        steps.append(("put", [{"key": "k0", "i": 0, "pad": ""}]))

    backoff = DEFAULT_BACKOFF
    if failures and (is_live or draw(st.booleans())):
        # Live puts may land while a retry waits out its back-off, which changes the
        # batches after it: the model does not predict that, so live retries are at once.
        backoff = NO_BACKOFF
    scenario = Scenario(n_shards, pf, batch_size, max_bytes, window, max_state, is_live, backoff, steps)

    if failures:
        counts = st.sampled_from([0, 0, 0, 1, 2]) if not fail_closings else st.sampled_from([0, 0, 1])
        for (shard, lane), invocations in sorted(expected(scenario).items()):
            closing_failed = False
            for k, inv in enumerate(invocations):
                n = draw(counts)
                if fail_closings and inv.is_final and not closing_failed:
                    n = max(n, draw(st.integers(1, 3)))
                    closing_failed = True
                if n:
                    scenario.failures[(shard, lane, k)] = n
    if crash:
        total = sum(len(v) for v in expected(scenario).values())
        drawn: list[Crash] = []
        for _ in range(draw(st.integers(1, 2))):
            if is_live and draw(st.booleans()):
                drawn.append(Crash(after_step=draw(st.integers(0, len(steps) - 1))))
            else:
                at = draw(st.integers(1, total))
                if all(c.at_invocation != at for c in drawn):
                    drawn.append(Crash(at_invocation=at, drain=draw(st.booleans())))
        scenario.crashes = tuple(drawn)
    return scenario


# --------------------------------------------------------------------------
# running the implementation


@dataclass(frozen=True)
class Seen:
    """One handler invocation as it happened."""

    gen: int  # which App (0 before the first restart)
    shard: int
    lane: int
    window: int
    seqs: tuple[int, ...]
    keys: tuple[str, ...]
    arrivals_ms: tuple[int, ...]
    is_final: bool
    early: bool
    attempt: int
    state: Any  # a copy of the state it was given
    time: float
    raised: bool
    crash: Crash | None  # it stopped its App

    @property
    def signature(self) -> Signature:
        return signature(
            (self.shard, self.lane), self.window, self.seqs, self.is_final, self.early, self.state
        )


@dataclass(frozen=True)
class Saved:
    """One write to the checkpoint store."""

    gen: int
    shard: int
    checkpoint: int
    lanes: tuple[int, ...]
    windows: dict[int, Any]


class RecordingCheckpoints(sc.MemoryCheckpoints):
    """A shared in-memory store that also keeps every write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = 0
        self.saved: list[Saved] = []

    def save(self, consumer: str, progress: dict[int, Any]) -> None:
        for shard, p in progress.items():
            windows = {lane: copy.deepcopy(v) for lane, v in p.states.items()}
            self.saved.append(Saved(self.gen, shard, p.checkpoint, tuple(p.lanes), windows))
        super().save(consumer, progress)


class SettableClock(sc.Clock):
    """Stamps arrivals only: ``now`` is whatever the test set."""

    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError("only stamps arrivals")

    def random(self) -> float:
        return 0.0


class Observer:
    """The handler: records each invocation, fails the scheduled ones, stops the App at crash points."""

    def __init__(
        self, clock: sc.VirtualClock, scenario: Scenario, failures: dict[Signature, int], window_ms: int
    ) -> None:
        self.clock = clock
        self.scenario = scenario
        self.failures = failures
        self.window_ms = window_ms
        self.lock = threading.Lock()
        self.events: list[Seen] = []
        self.attempts: Counter[Signature] = Counter()
        self.problems: list[str] = []
        self.app: sc.App | None = None  # the App running now
        self.gen = 0  # its generation
        self.invocations = 0
        self.crashes = {c.at_invocation: c for c in scenario.crashes if c.at_invocation is not None}
        self.stopped = False  # the running App was told to stop
        self.stopper: threading.Thread | None = None

    def handler(self, gen: int) -> Callable[[sc.Batch], None]:
        """The handler of the App of generation ``gen``."""
        return lambda batch: self.handle(batch, gen)

    def handle(self, batch: sc.Batch, gen: int) -> None:
        records = batch.records
        seqs = tuple(records.column("seq").to_pylist())
        keys = tuple(records.column("key").to_pylist())
        arrivals = tuple(round(a.timestamp() * 1000) for a in records.column("arrival").to_pylist())
        assert batch.window is not None
        start_ms = round(batch.window.start.timestamp() * 1000)
        window = start_ms // self.window_ms
        problem = None
        if (
            start_ms % self.window_ms
            or round(batch.window.end.timestamp() * 1000) != start_ms + self.window_ms
        ):
            problem = f"window {batch.window} is not aligned to {self.window_ms} ms"
        elif seqs and (batch.first_seq, batch.last_seq, len(batch)) != (seqs[0], seqs[-1], len(seqs)):
            problem = f"batch bounds {batch.first_seq}..{batch.last_seq} for {seqs}"
        elif batch.terminated_early and not batch.is_final:
            problem = f"terminated_early on a data invocation {seqs}"
        given = copy.deepcopy(batch.state)
        with self.lock:
            self.invocations += 1
            crash = self.crashes.get(self.invocations)
            if crash is not None and (gen != self.gen or self.stopped):
                # One stop per App (a second one could turn a stop without drain into one
                # with drain, which then waits for the handler blocked in it), and never
                # from a late invocation of an App already stopped.
                crash = None
            app = self.app
            if crash is not None:
                self.stopped = True
                if crash.drain:
                    # stop(drain=True) waits for this very invocation: ask from another thread
                    assert app is not None
                    self.stopper = threading.Thread(target=app.stop, kwargs={"drain": True})
                    self.stopper.start()
            sig = signature(
                (batch.shard, batch.lane), window, seqs, batch.is_final, batch.terminated_early, given
            )
            self.attempts[sig] += 1
            fail = self.attempts[sig] <= self.failures.get(sig, 0)
            if problem is not None:
                self.problems.append(problem)
            self.events.append(
                Seen(
                    gen, batch.shard, batch.lane, window, seqs, keys, arrivals, batch.is_final,
                    batch.terminated_early, batch.attempt, given, self.clock.now(), fail, crash,
                )
            )  # fmt: skip
        if not batch.is_final:
            # mutate first, then maybe raise: a failed invocation must commit none of it
            batch.state["seen"] = batch.state.get("seen", []) + list(seqs)
        if crash is not None and not crash.drain:
            assert app is not None
            app.stop(drain=False)  # returns once the App abandoned what was in flight, this included
        if fail:
            raise RuntimeError(f"scheduled failure of {sig[:4]}")

    def settle(self) -> bool:
        """After a run returned: whether the App was stopped at a crash point."""
        with self.lock:
            stopper, self.stopper = self.stopper, None
            stopped, self.stopped = self.stopped, False
        if stopper is not None:
            stopper.join()
        return stopped


@dataclass
class Run:
    scenario: Scenario
    model: ReferenceStream
    put_at: dict[tuple[int, int], float]
    events: list[Seen]
    saved: list[Saved]
    problems: list[str]
    checkpoints: dict[int, int | None]
    apps: int

    def lane_events(self) -> dict[tuple[int, int], list[Seen]]:
        out: dict[tuple[int, int], list[Seen]] = defaultdict(list)
        for e in self.events:
            out[(e.shard, e.lane)].append(e)
        return dict(out)


def failure_signatures(scenario: Scenario) -> dict[Signature, int]:
    """The failure schedule by what the handler can see: failures do not change the
    logical invocations, so the k-th one of a lane is the model's k-th without failures."""
    plain = expected(scenario, with_failures=False)
    out = {}
    for (shard, lane, k), count in scenario.failures.items():
        out[model_signature((shard, lane), plain[(shard, lane)][k])] = count
    return out


def run_scenario(scenario: Scenario) -> Run:
    """Run the schedule on the real App."""
    clock = sc.VirtualClock(start=START)
    stream_clock = None if scenario.arrivals is None else SettableClock(START)
    window_ms = round(scenario.window * 1000)
    observer = Observer(clock, scenario, failure_signatures(scenario), window_ms)
    store = RecordingCheckpoints()
    model = ReferenceStream(scenario.n_shards)
    put_at: dict[tuple[int, int], float] = {}
    apps: list[sc.App] = []

    with sc.MemoryStream(shards=scenario.n_shards, clock=stream_clock or clock) as stream:

        def new_app() -> sc.App:
            store.gen = len(apps)
            app = sc.App(store, clock=clock)
            app.consumer(stream, name=NAME, **scenario.options())(observer.handler(len(apps)))
            with observer.lock:
                observer.app, observer.gen = app, len(apps)
            apps.append(app)
            return app

        def restart() -> None:
            apps[-1].close()
            new_app()

        def run_until(target: float | None) -> None:
            """Run the App until the clock reaches ``target`` (None: until idle), through crashes."""
            while True:
                if target is None:
                    apps[-1].run(until_idle=True)
                else:
                    apps[-1].run(timeout=max(0.0, target - clock.now()))
                if observer.settle():
                    restart()
                    continue
                assert target is None or clock.now() == target
                return

        new_app()
        for index, (kind, arg) in enumerate(scenario.steps):
            if kind == "put":
                for rows in puts_of(scenario, arg):
                    arrival = arrival_ms(scenario, rows, clock.now())
                    if stream_clock is not None:
                        stream_clock.at = arrival / 1000
                    placed = stream.put(pa.Table.from_pylist(rows, schema=ROW_SCHEMA))
                    assigned = model.put(rows, arrival_ms=arrival)
                    got = list(zip(placed["shard"].to_pylist(), placed["seq"].to_pylist(), strict=True))
                    assert got == assigned
                    for shard_seq in assigned:
                        put_at[shard_seq] = clock.now()
            elif scenario.live:
                run_until(clock.now() + arg)
            else:
                clock.advance(arg)
            if any(c.after_step == index for c in scenario.crashes):
                restart()
        if not scenario.live:
            put_at = dict.fromkeys(put_at, clock.now())
        run_until(None)
        checkpoints = apps[-1].checkpoints()[NAME]
        apps[-1].close()
    return Run(
        scenario, model, put_at, observer.events, store.saved, observer.problems, checkpoints, len(apps)
    )


# --------------------------------------------------------------------------
# checks


def fold(entries: list[Any], sig: Any) -> list[list[Any]]:
    """Consecutive entries with one signature: a logical invocation with its retries/redeliveries."""
    groups: list[list[Any]] = []
    for e in entries:
        if groups and sig(groups[-1][0]) == sig(e):
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


def check_invariants(run: Run, *, arrival_windows: bool = True) -> None:
    """What must hold whatever the model says, read off the observations.

    ``arrival_windows``: records belong to the window of their arrival time and a lane
    closes each window once (off when arrival times go backwards: see
    test_a_record_arriving_before_the_open_window_gets_its_own_window).
    """
    sc_ = run.scenario
    assert not run.problems, run.problems
    window_ms = round(sc_.window * 1000)
    limit = sc_.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES
    by_seq = run.model.by_shard_seq()
    abandons = sum(c.at_invocation is not None and not c.drain for c in sc_.crashes)

    for e in run.events:
        if e.is_final:
            assert not e.seqs, f"closing invocation with records: {e}"
            continue
        assert e.seqs and list(e.seqs) == sorted(set(e.seqs)), f"batch not in seq order: {e}"
        assert len(e.seqs) <= sc_.batch_size
        recs = [by_seq[(e.shard, s)] for s in e.seqs]
        assert len(recs) == 1 or sum(r.nbytes for r in recs) <= limit, f"batch over {limit} bytes: {e}"
        for r, key, arrival in zip(recs, e.keys, e.arrivals_ms, strict=True):
            assert (r.key, r.arrival_ms) == (key, arrival)
            assert lane_of(r.hash, sc_.parallelization) == e.lane
        if arrival_windows:
            assert {window_of(r.arrival_ms, window_ms) for r in recs} == {e.window}, (
                f"batch {e.shard}/{e.seqs} (arrivals {e.arrivals_ms}) in window {e.window}"
            )

    # no record lost; records seen again only as at-least-once allows
    delivered: dict[tuple[int, int], list[Seen]] = defaultdict(list)
    for e in run.events:
        if not e.raised:
            for s in e.seqs:
                delivered[(e.shard, s)].append(e)
    assert set(delivered) == set(by_seq), f"lost: {sorted(set(by_seq) - set(delivered))}"
    for key, deliveries in delivered.items():
        # only what a stop without drain abandoned comes again: the same batch, in a later App
        assert len(deliveries) <= 1 + abandons, f"{key} delivered {len(deliveries)} times"
        for first, again in itertools.pairwise(deliveries):
            assert again.gen > first.gen and again.signature == first.signature, (first, again)

    # per-key order: each key's records are first delivered in seq order
    order: dict[tuple[int, str], list[int]] = defaultdict(list)
    for e in run.events:
        if not e.raised:
            for s, key in zip(e.seqs, e.keys, strict=True):
                if delivered[(e.shard, s)][0] is e:
                    order[(e.shard, key)].append(s)
    for key, seqs in order.items():
        assert seqs == sorted(seqs), f"key {key} out of order: {seqs}"

    # every record in exactly one committed window state: what the closing invocations of
    # its lane are given (a closing invocation repeats only as a retry or redelivery)
    closing_states: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    closings: Counter[tuple[int, int, int]] = Counter()
    for (shard, lane), events in run.lane_events().items():
        for group in fold(events, lambda e: e.signature):
            head = group[0]
            if head.is_final:
                assert any(not e.raised for e in group), f"closing invocation never succeeded: {head}"
                closing_states[(shard, lane, head.window)].extend(head.state.get("seen", []))
                closings[(shard, lane, head.window)] += not head.early
    in_states = Counter((shard, s) for (shard, _, _), seqs in closing_states.items() for s in seqs)
    assert in_states == Counter(by_seq.keys()), "records not in exactly one committed window state"
    if arrival_windows:
        expected_states: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for (shard, seq), r in sorted(by_seq.items()):
            expected_states[
                (shard, lane_of(r.hash, sc_.parallelization), window_of(r.arrival_ms, window_ms))
            ].append(seq)
        assert dict(closing_states) == dict(expected_states)
        assert set(closings.values()) == {1} and set(closings) == set(expected_states)

    # checkpoints and lane positions never go back, and end at each shard's last seq
    last: dict[int, Saved] = {}
    for s in run.saved:
        before = last.get(s.shard)
        if before is not None:
            assert s.checkpoint >= before.checkpoint, (
                f"checkpoint of shard {s.shard} went back: {before} -> {s}"
            )
            assert all(a >= b for a, b in zip(s.lanes, before.lanes, strict=True)), f"{before} -> {s}"
        last[s.shard] = s
    want = final_checkpoints(run.model.records)
    assert run.checkpoints == want
    for shard, seq in want.items():
        if seq is not None:
            assert last[shard].checkpoint == seq and not last[shard].windows, last[shard]


def comparable_times(scenario: Scenario) -> bool:
    """Whether the model's clock times hold: back-off (jittered) moves the clock."""
    return not scenario.failures or scenario.backoff == NO_BACKOFF


def observed(e: Seen, times: bool) -> tuple[Any, ...]:
    return (
        e.window,
        e.seqs,
        e.is_final,
        e.early,
        e.state,
        e.attempt,
        not e.raised,
        e.time if times else None,
    )


def predicted(m: WindowInvocation, times: bool) -> tuple[Any, ...]:
    return (
        m.window,
        m.seqs,
        m.is_final,
        m.terminated_early,
        m.state,
        m.attempt,
        m.ok,
        m.time if times else None,
    )


def check_against_model(run: Run) -> None:
    """Per (shard, lane), the invocations equal ``window_invocations``'s."""
    sc_ = run.scenario
    model = expected(sc_)
    assert replay_puts(sc_)[1] == run.put_at, "the model reads records at other times than the run"
    times = comparable_times(sc_)
    got = run.lane_events()
    assert set(got) == set(model), f"lanes {sorted(got)} != {sorted(model)}"
    for lane_key, inv in model.items():
        events = got[lane_key]
        if not sc_.crashes:
            assert [observed(e, times) for e in events] == [predicted(m, times) for m in inv], lane_key
            continue
        # Across a restart attempts start again at 1 and an abandoned invocation comes
        # again: compare the logical invocations, each with its retries and redeliveries.
        want = fold(inv, functools.partial(model_signature, lane_key))
        have = fold(events, lambda e: e.signature)
        assert [g[0].signature for g in have] == [model_signature(lane_key, g[0]) for g in want], lane_key
        for w, h in zip(want, have, strict=True):
            failed = [e for e in h if e.raised]
            assert len(failed) == sum(not m.ok for m in w), (lane_key, h)
            abandons = sum(c.at_invocation is not None and not c.drain for c in sc_.crashes)
            assert 1 <= sum(not e.raised for e in h) <= 1 + abandons, (lane_key, h)
            if times:
                assert {e.time for e in h} == {w[0].time}, (lane_key, h)
            gens = [e.gen for e in h]
            assert gens == sorted(gens), (lane_key, h)
            # attempts count from 1 in each App
            for gen in set(gens):
                attempts = [e.attempt for e in h if e.gen == gen]
                assert attempts == list(range(1, len(attempts) + 1)), (lane_key, h)
        for e in events:
            if e.crash is not None and not e.crash.drain:
                group = next(h for h in have if e in h)
                assert any(x.gen > e.gen for x in group), f"abandoned {e} was not delivered again"


def check(run: Run) -> None:
    check_invariants(run)
    check_against_model(run)


# --------------------------------------------------------------------------
# the model on hand-computed examples


def rel(t: float | None) -> float:
    assert t is not None
    return t - START


def lane_records(arrivals: list[float], nbytes: int = 40) -> list[RefRecord]:
    return [
        RefRecord(0, i, "k", 0, nbytes, 0, i, (), int((START + t) * 1000)) for i, t in enumerate(arrivals)
    ]


def test_model_cuts_at_windows_and_closes_on_reads_and_on_the_clock() -> None:
    # windows of 10 s; all records there when the consumer starts at START + 25
    records = lane_records([0, 1, 2, 11, 12, 24])
    w0 = int(START) // 10
    got = [
        (m.window - w0, m.seqs, m.is_final, m.state.get("seen"), rel(m.time))
        for m in window_invocations(records, 10, batch_size=2, read_at=START + 25)
    ]
    assert got == [
        (0, (0, 1), False, None, 25),
        (0, (2,), False, [0, 1], 25),
        (0, (), True, [0, 1, 2], 25),  # record 3 is of window 1
        (1, (3, 4), False, None, 25),
        (1, (), True, [3, 4], 25),
        (2, (5,), False, None, 25),
        (2, (), True, [5], 30),  # idle: when the window's end passes
    ]


def test_model_live_puts_close_idle_windows_at_their_end() -> None:
    records = lane_records([0, 0, 3, 14])
    read_at = {0: START, 1: START, 2: START + 3, 3: START + 14}
    got = [(m.seqs, m.is_final, rel(m.time)) for m in window_invocations(records, 5, read_at=read_at)]
    assert got == [((0, 1), False, 0), ((2,), False, 3), ((), True, 5), ((3,), False, 14), ((), True, 15)]


def test_model_byte_limit_early_termination_and_failures() -> None:
    records = lane_records([0, 0, 0, 0, 0], nbytes=30)
    got = window_invocations(
        records, 60, batch_size=10, max_batch_bytes=70, max_state_bytes=14, failures={1: 2}
    )
    assert [(m.seqs, m.is_final, m.terminated_early, m.state, m.attempt, m.ok) for m in got] == [
        ((0, 1), False, False, {}, 1, True),
        ((2, 3), False, False, {"seen": [0, 1]}, 1, False),  # fails twice, given the same state
        ((2, 3), False, False, {"seen": [0, 1]}, 2, False),
        ((2, 3), False, False, {"seen": [0, 1]}, 3, True),
        ((), True, True, {"seen": [0, 1, 2, 3]}, 1, True),  # 18 bytes > 14: closed early
        ((4,), False, False, {}, 1, True),  # the same window goes on with fresh state
        ((), True, False, {"seen": [4]}, 1, True),
    ]
    assert state_nbytes({"seen": [0, 1, 2, 3]}) == 18
    assert append_seen({"seen": [1]}, [2]) == {"seen": [1, 2]}
    assert window_end(3, 2000) == 8.0


# --------------------------------------------------------------------------
# the implementation against the model


def closed_on_the_clock(run: Run) -> bool:
    """Whether some window closed at its end while its lane was idle (rather than on a read)."""
    window_ms = round(run.scenario.window * 1000)
    for events in run.lane_events().values():
        for before, e in itertools.pairwise(events):
            if e.is_final and e.time == window_end(e.window, window_ms) and e.time > before.time:
                return True
    return False


def cut_at_a_window(run: Run) -> bool:
    """Whether some batch ended at a window boundary with the next record already readable."""
    for events in run.lane_events().values():
        data = [e for e in events if not e.is_final and not e.raised]
        for a, b in itertools.pairwise(data):
            if a.window != b.window and run.put_at[(b.shard, b.seqs[0])] <= a.time:
                return True
    return False


@SETTINGS
@given(scenario=scenarios())
def test_window_invocations_match_the_model(scenario: Scenario) -> None:
    run = run_scenario(scenario)
    check(run)
    event("live" if scenario.live else "stream written first")
    event(f"a window closed on the clock: {closed_on_the_clock(run)}")


@FEW
@given(scenario=scenarios(live=False, min_lanes=2, small_bytes=True, short_windows=True))
def test_byte_cuts_and_window_cuts_across_lanes(scenario: Scenario) -> None:
    run = run_scenario(scenario)
    check(run)
    event(f"a batch cut at a window boundary: {cut_at_a_window(run)}")


@FEW
@given(scenario=scenarios(small_state=True))
def test_state_over_the_limit_closes_the_window_early(scenario: Scenario) -> None:
    run = run_scenario(scenario)
    check(run)
    event(f"early closings: {min(3, sum(e.early for e in run.events))}")


@SETTINGS
@given(scenario=scenarios(failures=True))
def test_failed_invocations_commit_no_state(scenario: Scenario) -> None:
    check(run_scenario(scenario))


@FEW
@given(scenario=scenarios(failures=True, fail_closings=True))
def test_a_failed_closing_invocation_blocks_its_lane_until_it_succeeds(scenario: Scenario) -> None:
    run = run_scenario(scenario)
    check(run)
    assert any(e.is_final and e.raised for e in run.events)


@SETTINGS
@given(scenario=scenarios(crash=True))
def test_restart_resumes_the_open_window_from_the_checkpoint_store(scenario: Scenario) -> None:
    run = run_scenario(scenario)
    check(run)
    event(f"apps: {run.apps}")


@FEW
@given(scenario=scenarios(crash=True, failures=True, live=True))
def test_restart_with_failures_on_a_live_stream(scenario: Scenario) -> None:
    check(run_scenario(scenario))


@pytest.mark.slow
@settings(SETTINGS, max_examples=EXAMPLES * 5)
@given(scenario=scenarios(failures=True, crash=True, max_rows=80))
def test_soak_windows_with_failures_and_restarts(scenario: Scenario) -> None:
    check(run_scenario(scenario))


# --------------------------------------------------------------------------
# arrival times that go backwards
#
# A VirtualClock never goes back, but a source stamps arrivals with its own clock when
# it has one (API.md "Clocks"), and any ``sc.Clock`` will do: a settable one makes
# arrivals go back and forth while the App's virtual clock stays put.


@st.composite
def backwards(draw: Any) -> Scenario:
    scenario: Scenario = draw(scenarios(live=False))
    n = sum(len(arg) for kind, arg in scenario.steps if kind == "put")
    offsets = st.sampled_from([-21.0, -9.5, -3.0, -0.5, 0.0, 2.0, 4.0, 11.0, 26.5])
    scenario.arrivals = tuple(draw(st.lists(offsets, min_size=n, max_size=n)))
    return scenario


@FEW
@given(scenario=backwards())
def test_arrival_times_that_go_backwards_lose_nothing(scenario: Scenario) -> None:
    check_invariants(run_scenario(scenario), arrival_windows=False)


def test_a_record_arriving_before_the_open_window_gets_its_own_window() -> None:
    rows = [{"key": "k", "i": i, "pad": ""} for i in range(4)]
    scenario = Scenario(
        1, 1, 10, None, 10.0, None, False, DEFAULT_BACKOFF, [("put", rows)], arrivals=(25.0, 27.0, 3.0, 14.0)
    )
    run = run_scenario(scenario)
    w = int(START) // 10
    got = [(e.window - w, e.seqs, e.is_final) for e in run.events]
    # the model: windows 2 ([0, 1]), 0 ([2]) and 1 ([3]) each get their records and a closing
    want = [(m.window - w, m.seqs, m.is_final) for m in expected(run.scenario)[(0, 0)]]
    assert want == [
        (2, (0, 1), False),
        (2, (), True),
        (0, (2,), False),
        (0, (), True),
        (1, (3,), False),
        (1, (), True),
    ]
    assert got == want


# --------------------------------------------------------------------------
# restart while an early closing is pending


def test_restart_keeps_a_pending_early_closing() -> None:
    rows = [{"key": "k", "i": i, "pad": ""} for i in range(4)]
    scenario = Scenario(
        1, 1, 1, None, 10.0, 15, False, DEFAULT_BACKOFF, [("put", rows)],
        crashes=(Crash(at_invocation=3, drain=True),),  # {"seen":[0,1,2]}: 16 bytes > 15
    )  # fmt: skip
    run = run_scenario(scenario)
    got = [(e.gen, e.seqs, e.is_final, e.early, e.state) for e in run.events]
    assert got[:3] == [(0, (0,), False, False, {}), (0, (1,), False, False, {"seen": [0]}),
                       (0, (2,), False, False, {"seen": [0, 1]})]  # fmt: skip
    assert got[3] == (1, (), True, True, {"seen": [0, 1, 2]})
    check(run)
