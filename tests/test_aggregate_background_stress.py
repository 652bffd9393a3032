"""Stress and race reproductions for background folds (review of 2b66ff2).

Two kinds of test:

- soundness stress (plain tests): tables that share blocks copy-on-write, updated,
  copied, merged and dropped from several threads at once, each aggregator used
  by one thread at a time, must give what the same steps give with
  ``background_folds(False)``; ``nbytes(bound=True)`` must never be below the size.
- race reproductions: each runs a small script in a subprocess, so that a hang
  or a crash fails the test instead of the run. Each found a bug in the first
  version (a lost wakeup, a reader clearing a newer fold's batch, fork waiting
  forever or not at all, the garbage collector freeing a batch being folded, a
  user's buffer refilled under a fold, a whole batch held by an idle table).

Folds go to the background thread only for the records the framework hands a
handler, so ``fold`` marks its records that way (``aggregate.handing``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pyarrow as pa
import pytest
from test_aggregate_background import background_on, fold, rows  # noqa: F401 (an autouse fixture)

from streamcore import _aggregate
from streamcore.aggregate import Aggregator

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")


def spec() -> Aggregator:
    return Aggregator(by=["user", "n"], sum=["value"], min=["value"], max=["value"], mean=["value"])


def make_batch(rng: random.Random, rows: int, keys: int) -> pa.RecordBatch:
    users = [
        None if rng.random() < 0.05 else f"user-{rng.randrange(keys)}" * rng.randrange(1, 4)
        for _ in range(rows)
    ]
    ns = [None if rng.random() < 0.05 else rng.randrange(5) for _ in range(rows)]
    values = [None if rng.random() < 0.1 else rng.randrange(-1000, 1000) for _ in range(rows)]
    return pa.record_batch(
        {
            "user": pa.array(users, pa.utf8()),
            "n": pa.array(ns, pa.int32()),
            "value": pa.array(values, pa.int64()),
        }
    )


# --- soundness: copy-on-write families across threads -----------------------------------


def family_plan(seed: int, steps: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    ops = ["update"] * 5 + ["copy", "stale_update", "merge", "drop", "len", "nbytes"]
    return [(rng.choice(ops), rng.randrange(1 << 30)) for _ in range(steps)]


def run_family(root: Aggregator, plan: list[tuple[str, int]], pool: list[pa.RecordBatch]) -> list[Any]:
    """Steps on a family of aggregators grown from a copy of ``root`` (shared blocks).

    Every aggregator here is used by this thread only; ``root`` is only copied.
    The old table after a copy stays alive and is updated again (a stale table
    that must copy what it uses while the new one folds beyond it).
    """
    agg = root.copy()
    stale: list[Aggregator] = []
    seen: list[Any] = []
    for op, r in plan:
        records = pool[r % len(pool)]
        if op == "update":
            fold(agg, records)
        elif op == "copy":
            stale.append(agg)
            agg = agg.copy()
        elif op == "stale_update" and stale:
            fold(stale[r % len(stale)], records)
        elif op == "merge" and stale:
            agg.merge(stale[r % len(stale)])
        elif op == "drop" and stale:
            stale.pop(r % len(stale))
        elif op == "len":
            seen.append(len(agg))
        elif op == "nbytes":
            seen.append(agg.nbytes)
    return [rows(agg), seen, [rows(s) for s in stale]]


def run_families(threads: int, steps: int, seed: int, background: bool) -> list[Any]:
    rng = random.Random(seed)
    pool = [make_batch(rng, rng.choice([1, 7, 100, 700, 3000]), rng.choice([5, 50, 2000])) for _ in range(12)]
    root = spec()
    fold(root, pool[0])
    plans = [family_plan(seed * 100 + t, steps) for t in range(threads)]
    _aggregate.background_folds(background)
    out: list[Any] = [None] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            out[t] = run_family(root, plans[t], pool)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not any(w.is_alive() for w in workers), "a worker hangs"
    assert not errors, errors
    return [rows(root), out]


@pytest.mark.parametrize("seed", [1, 2])
def test_shared_block_families_across_threads_match_inline(seed: int) -> None:
    expected = run_families(4, 40, seed, background=False)
    assert run_families(4, 40, seed, background=True) == expected


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 40))
def test_shared_block_families_across_threads_match_inline_soak(seed: int) -> None:
    expected = run_families(6, 150, seed, background=False)
    assert run_families(6, 150, seed, background=True) == expected


def test_size_bound_is_never_below_the_size_for_every_key_kind() -> None:
    rng = random.Random(7)
    for by in (["user"], ["n"], ["user", "n"]):
        agg = Aggregator(by=by, sum=["value"], mean=["value"], min=["value"])
        for _ in range(60):
            records = make_batch(rng, rng.choice([1, 30, 500, 4000]), rng.choice([3, 300, 5000]))
            if rng.random() < 0.3:
                records = records.slice(rng.randrange(len(records)))
            if rng.random() < 0.3:
                agg = agg.copy()  # the bound of a table that shares its blocks
            fold(agg, records)
            bound = agg._nbytes_bound()
            assert agg.nbytes <= bound


# --- bug reproductions ---------------------------------------------------------------------


def run_script(body: str, timeout: float) -> tuple[str, str]:
    """Run ``body`` in a fresh interpreter; ("timeout" | return code, output)."""
    prelude = textwrap.dedent(
        """
        import os, sys, threading, time, signal, gc
        import pyarrow as pa
        from streamcore import _aggregate
        from streamcore.aggregate import Aggregator, handing
        _aggregate.background_folds(True)
        def fold(agg, records):
            with handing(records):
                agg.update(records)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        done = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(body)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timeout", out
    return str(done.returncode), done.stdout + done.stderr


def test_two_threads_reading_one_aggregator_are_both_woken() -> None:
    # len() syncs without the table's lock. The background thread is kept busy by
    # another aggregator's fold, so `agg`'s fold stays queued: one reader takes it
    # back and runs it, the other sees _BG_RUNNING and waits on _bg_done. The busy
    # fold's broadcast comes first; the taken-back fold ends with a plain store:
    # the second reader sleeps until some other fold of the process ends.
    status, out = run_script(
        """
        N = 60000
        big = pa.record_batch({"user": pa.array([f"user-{i:08d}" for i in range(N)]),
                               "value": pa.array([1.0] * N)})
        for i in range(20):
            busy = Aggregator(by=["user"], sum=["value"])
            agg = Aggregator(by=["user"], sum=["value"])
            fold(busy, big)
            time.sleep(0.0003)
            fold(agg, big)
            go = threading.Barrier(3)
            def reader():
                go.wait()
                len(agg)
            ts = [threading.Thread(target=reader) for _ in range(2)]
            for t in ts:
                t.start()
            go.wait()
            for t in ts:
                t.join(2)
            if any(t.is_alive() for t in ts):
                print("HANG at iteration", i, _aggregate.background_stats(), flush=True)
                os._exit(1)
            len(busy)
        print("ok")
        """,
        timeout=30,
    )
    assert status == "0", out


@pytest.mark.slow
def test_readers_beside_an_updater_never_lose_its_folds() -> None:
    # Readers call len() while the owner updates. A reader waiting in _sync for the
    # thread's fold and the owner's next update() waiting in its own _sync are woken
    # together; when the owner gets the GIL first it posts its next fold, then the
    # reader sets _bg_batch = None and bg_state = NONE: the batch may be freed while
    # the fold reads it (a short value_sum), the owner's next call no longer waits
    # (a short count, MemoryError from a torn n_groups/arena_len), nor does
    # __dealloc__; other interleavings hang (the lost wakeup above). Racy: a few
    # attempts, any failure counts.
    body = """
        import pyarrow.compute as pc
        N = 20000
        keys = pa.array([f"user-{i % 5000:08d}" for i in range(N)])
        agg = Aggregator(by=["user"], sum=["value"])
        stop = False
        def reader():
            while not stop:
                len(agg)
        ts = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
        for t in ts:
            t.start()
        bad = []
        done = 0
        for i in range(300):
            fold(agg, pa.record_batch({"user": keys, "value": pa.array([1.0] * N)}))
            done += 1
            time.sleep(0.0003)
            fold(agg, pa.record_batch({"user": keys, "value": pa.array([1.0] * N)}))
            done += 1
            try:
                total = pc.sum(agg.result()["count"]).as_py()
            except MemoryError:
                total = "MemoryError"
            if total != N * done:
                bad.append((i, total, N * done))
        stop = True
        for t in ts:
            t.join(10)
        time.sleep(0.2)
        final = pc.sum(agg.result()["value_sum"]).as_py()
        print("bad", len(bad), bad[:3], "final", final, "expected", N * done, flush=True)
        assert not bad and final == N * done
        """
    outcomes = [run_script(body, timeout=20) for _ in range(4)]
    assert all(status == "0" for status, _ in outcomes), outcomes


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_after_a_fold_was_taken_back() -> None:
    # update() queues, len() takes the fold back (its queue slot becomes NULL), fork():
    # _bg_before_fork sees head != tail and waits on _bg_done; the thread then skips
    # the NULL slot and goes to sleep without a broadcast: fork() never returns, and
    # the forking thread holds the GIL.
    status, out = run_script(
        """
        b = pa.record_batch({"user": pa.array([f"u{i % 50}" for i in range(300)]),
                             "value": pa.array([float(i) for i in range(300)])})
        agg = Aggregator(by=["user"], sum=["value"])
        for i in range(50):
            fold(agg, b)
            len(agg)
            time.sleep(0.0005)
            fold(agg, b)
            len(agg)
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        print("ok")
        """,
        timeout=6,
    )
    assert status == "0", out


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_another_thread_runs_a_taken_back_fold() -> None:
    # A worker's len() takes its fold back and runs it without the GIL; the main
    # thread forks meanwhile: fork waits for that fold (the first version did not,
    # and a table of the child stayed half folded). The child starts without a
    # background thread and must fold with a new one. It leaves `agg` alone: the
    # worker may hold agg's lock at the fork, as with any lock a thread holds.
    # (Children that hang are killed by SIGALRM.)
    status, out = run_script(
        """
        b = pa.record_batch({"user": pa.array([f"u{i % 50}" for i in range(3000)]),
                             "value": pa.array([float(i) for i in range(3000)])})
        agg = Aggregator(by=["user"], sum=["value"])
        stop = False
        def worker():
            while not stop:
                fold(agg, b)
                len(agg)
        threading.Thread(target=worker, daemon=True).start()
        hung = 0
        for i in range(150):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(2)
                fresh = Aggregator(by=["user"], sum=["value"])
                fold(fresh, b)
                os._exit(0 if len(fresh) == 50 else 3)
            _, st = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(st) != 0:
                hung += 1
                print("child", i, "failed:", os.waitstatus_to_exitcode(st), flush=True)
        stop = True
        print("children hung:", hung, flush=True)
        assert hung == 0
        """,
        timeout=40,
    )
    assert status == "0", out


def test_gc_cycle_with_a_fold_queued() -> None:
    # Window state in a reference cycle: a full collection merges generation 0
    # before generation 1, so a table made after its aggregator was promoted is
    # tp_clear'ed first, which drops _bg_batch while the fold runs. Here the batch's
    # memory is unmapped the moment it is freed: the background fold segfaults
    # (with background_folds(False) the same script passes).
    status, out = run_script(
        """
        import ctypes, mmap
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        c = ctypes
        libc.mmap.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

        class Mapping:
            def __init__(self, size):
                self.size = size
                self.addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            def __del__(self):
                libc.munmap(self.addr, self.size)

        N = 65000
        keys = pa.array([f"{i:0100d}" for i in range(N)])   # long keys: a fold of some ms
        def batch():
            m = Mapping(8 * N)
            ctypes.memset(m.addr, 1, 8 * N)
            values = pa.Array.from_buffers(pa.int64(), N, [None, pa.foreign_buffer(m.addr, 8 * N, base=m)])
            return pa.RecordBatch.from_arrays([keys, values], ["k", "v"])

        gc.freeze()                   # full collections see only what the loop makes
        for i in range(20):
            agg = Aggregator(by="k", sum="v")
            gc.collect(0)             # the aggregator moves to generation 1
            fold(agg, batch())        # its table is made in generation 0; the fold is queued
            time.sleep(0.0003)        # ... and running on the background thread
            state = {"agg": agg}
            state["self"] = state     # window state in a reference cycle
            del agg, state
            gc.collect()              # generation 0 comes first: tp_clear(table) frees the batch
        print("ok")
        """,
        timeout=30,
    )
    assert status == "0", out


def test_buffers_reused_after_update_returns() -> None:
    # An ingestion loop that refills one numpy buffer per batch (pa.array of a numpy
    # array is zero-copy): a user's records must fold in the call.
    np = pytest.importorskip("numpy")
    users = pa.array([f"u{i % 10}" for i in range(1000)])

    def run(background: bool) -> list[float]:
        _aggregate.background_folds(background)
        agg = Aggregator(by=["user"], sum=["value"])
        buf = np.zeros(1000)
        for i in range(50):
            buf[:] = i
            agg.update(pa.record_batch({"user": users, "value": pa.array(buf)}))
        sums: list[float] = agg.result()["value_sum"].to_pylist()
        return sums

    assert run(True) == run(False)


def test_an_idle_aggregator_does_not_hold_its_last_batch() -> None:
    # A user's records fold in the call: nothing keeps them. (The framework's records
    # are kept by a table until its next call; the stream holds them anyway.)
    payload = pa.array([b"x" * 1000] * 1000)
    base = pa.total_allocated_bytes()
    aggs = []
    for _ in range(20):
        records = pa.record_batch(
            {
                "user": pa.array(["a", "b"] * 500),
                "value": pa.array([1.0] * 1000),
                "payload": payload.take(pa.array(range(1000))),
            }
        )
        agg = Aggregator(by="user", sum="value")
        agg.update(records)
        aggs.append(agg)
        del records
    held = pa.total_allocated_bytes() - base
    assert held < 1_000_000, (
        f"{held} bytes of Arrow memory held by {len(aggs)} aggregators of {sum(a.nbytes for a in aggs)} bytes"
    )
