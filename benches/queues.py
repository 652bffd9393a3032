"""Queues end to end: send, consume with a no-op handler at ``batch_size=100``, delete.

MemoryQueue: ``MESSAGES`` messages of ``BODY_BYTES`` bytes are sent in sends of
``SEND_ROWS`` (an Arrow table with a ``body`` column each) to a ``MemoryQueue``
on a ``VirtualClock``, then an App consumes them all with a no-op handler and
``batch_size=100`` (``app.run(until_idle=True)``). Timed: the sends plus the
run, best of ``REPEAT``. The same run with the bodies sent as Python ``bytes``
lists is a figure.

Baseline: a straightforward Python queue with the same surface: a ``deque`` of
visible messages (dicts with ``message_id`` from ``uuid4``, ``body``,
``receive_count``, ``sent``), a dict of in-flight messages with their
visibility deadlines (expired ones go back on each receive), receive of up to
100, a call of the no-op handler with the list of messages, delete by id.
It is single-threaded, with no scheduler around it; it gets the bodies as the
Python ``bytes`` they are. The same baseline with counter-based ids instead of
``uuid4`` is a figure.

LocalQueue: ``LOCAL_MESSAGES`` messages sent in sends of 100 to a
``LocalQueue`` (``fsync="always"``, the default), consumed as above; baseline:
raw ``sqlite3`` in WAL mode with the same ``synchronous`` setting inserting the
same bodies with ``executemany`` in transactions of 100, then deleting them by
id in transactions of 100. ``fsync="never"`` is measured too, as figures.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

import streamcore as sc
from streamcore.benches.common import best_seconds, result, target

MESSAGES = 1_000_000
QUICK_MESSAGES = 100_000
SEND_ROWS = 10_000
BODY_BYTES = 100
BATCH_SIZE = 100
REPEAT = 3
LOCAL_MESSAGES = 30_000
QUICK_LOCAL_MESSAGES = 3_000
LOCAL_SEND = 100
TARGET_RATE = 1_000_000.0
TARGET_RATIO = 5.0
TARGET_LOCAL_RATIO = 0.5
SYNCHRONOUS = {"always": "FULL", "never": "NORMAL"}


def noop(batch: object) -> None:
    """The handler: does nothing, so all that is timed is the queue and the consumer."""


def make_bodies(n: int) -> list[bytes]:
    """``n`` distinct bodies of ``BODY_BYTES`` bytes."""
    return [f"{i:012d}".encode().ljust(BODY_BYTES, b".") for i in range(n)]


# -- streamcore ----------------------------------------------------------------


def memory_run(sends: list[Any]) -> tuple[float, dict[str, int]]:
    """Wall seconds to send ``sends`` and consume them all; and the consumer's counts."""
    clock = sc.VirtualClock()
    queue = sc.MemoryQueue(clock=clock)
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="noop", batch_size=BATCH_SIZE)(noop)
        started = time.perf_counter()
        for data in sends:
            queue.send(data)
        app.run(until_idle=True)
        seconds = time.perf_counter() - started
        metrics = app.metrics()
    return seconds, {"messages": int(metrics["records_done"]), "batches": int(metrics["invocations"])}


def local_run(folder: Path, bodies: list[bytes], fsync: str) -> tuple[float, dict[str, int]]:
    clock = sc.VirtualClock()
    path = folder / f"queue-{uuid.uuid4().hex}.db"
    queue = sc.LocalQueue(path, clock=clock, fsync=fsync)
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="noop", batch_size=BATCH_SIZE)(noop)
        started = time.perf_counter()
        for i in range(0, len(bodies), LOCAL_SEND):
            queue.send(bodies[i : i + LOCAL_SEND])
        app.run(until_idle=True)
        seconds = time.perf_counter() - started
        metrics = app.metrics()
    queue.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return seconds, {"messages": int(metrics["records_done"]), "batches": int(metrics["invocations"])}


# -- baselines -------------------------------------------------------------------


class PythonQueue:
    """The straightforward way: a deque of visible messages and a dict of those in flight."""

    def __init__(
        self, clock: sc.Clock, visibility_timeout: float = 30.0, ids: Callable[[], str] | None = None
    ) -> None:
        self.clock = clock
        self.visibility_timeout = visibility_timeout
        self.new_id = ids or (lambda: str(uuid.uuid4()))
        self.visible: deque[dict[str, Any]] = deque()
        self.in_flight: dict[str, tuple[dict[str, Any], float]] = {}

    def send(self, bodies: list[bytes]) -> list[str]:
        now = self.clock.now()
        out = []
        for body in bodies:
            message = {"message_id": self.new_id(), "body": body, "receive_count": 0, "sent": now}
            self.visible.append(message)
            out.append(message["message_id"])
        return out

    def receive(self, max_messages: int) -> list[dict[str, Any]]:
        now = self.clock.now()
        expired = [mid for mid, (_, deadline) in self.in_flight.items() if deadline <= now]
        for mid in expired:
            self.visible.append(self.in_flight.pop(mid)[0])
        batch = []
        deadline = now + self.visibility_timeout
        while self.visible and len(batch) < max_messages:
            message = self.visible.popleft()
            message["receive_count"] += 1
            self.in_flight[message["message_id"]] = (message, deadline)
            batch.append(message)
        return batch

    def delete(self, message_ids: list[str]) -> None:
        for mid in message_ids:
            self.in_flight.pop(mid, None)


def python_run(
    sends: list[list[bytes]], ids: Callable[[], str] | None = None
) -> tuple[float, dict[str, int]]:
    clock = sc.VirtualClock()
    queue = PythonQueue(clock, ids=ids)
    started = time.perf_counter()
    for bodies in sends:
        queue.send(bodies)
    messages = batches = 0
    while True:
        batch = queue.receive(BATCH_SIZE)
        if not batch:
            break
        noop(batch)
        queue.delete([m["message_id"] for m in batch])
        messages += len(batch)
        batches += 1
    seconds = time.perf_counter() - started
    return seconds, {"messages": messages, "batches": batches}


def sqlite_run(folder: Path, bodies: list[bytes], synchronous: str) -> float:
    """Raw sqlite3: insert the bodies in transactions of 100, then delete them by id likewise."""
    path = folder / f"raw-{uuid.uuid4().hex}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        started = time.perf_counter()
        for i in range(0, len(bodies), LOCAL_SEND):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO messages (id, body) VALUES (?, ?)",
                [(i + k, body) for k, body in enumerate(bodies[i : i + LOCAL_SEND])],
            )
            db.execute("COMMIT")
        for i in range(0, len(bodies), LOCAL_SEND):
            db.execute("BEGIN")
            db.executemany("DELETE FROM messages WHERE id = ?", [(i + k,) for k in range(LOCAL_SEND)])
            db.execute("COMMIT")
        seconds = time.perf_counter() - started
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return seconds


def best(fn: Callable[[], tuple[float, dict[str, int]]], repeat: int) -> tuple[float, dict[str, int]]:
    runs = [fn() for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


# -- the workload ----------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    n = QUICK_MESSAGES if quick else MESSAGES
    local_n = QUICK_LOCAL_MESSAGES if quick else LOCAL_MESSAGES
    repeat = 2 if quick else REPEAT
    bodies = make_bodies(n)
    lists = [bodies[i : i + SEND_ROWS] for i in range(0, n, SEND_ROWS)]
    tables = [pa.table({"body": pa.array(chunk, pa.binary())}) for chunk in lists]

    memory_s, checksum = best(lambda: memory_run(tables), repeat)
    memory_list_s, _ = best(lambda: memory_run(lists), repeat)
    python_s, baseline_checksum = best(lambda: python_run(lists), repeat)
    counter = itertools.count()
    python_counter_s, _ = best(lambda: python_run(lists, ids=lambda: f"m-{next(counter):012x}"), repeat)

    folder = Path(tempfile.mkdtemp(prefix="streamcore-bench-queues-"))
    try:
        local_bodies = bodies[:local_n]
        local: dict[str, float] = {}
        raw: dict[str, float] = {}
        for fsync, synchronous in SYNCHRONOUS.items():
            seconds, local_checksum = best(lambda fsync=fsync: local_run(folder, local_bodies, fsync), repeat)
            if local_checksum["messages"] != local_n:
                raise AssertionError(f"LocalQueue consumed {local_checksum} of {local_n} messages")
            local[fsync] = seconds
            raw[fsync] = best_seconds(lambda s=synchronous: sqlite_run(folder, local_bodies, s), repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    rate = n / memory_s
    baseline_rate = n / python_s
    local_ratio = raw["always"] / local["always"]
    return result(
        "queues",
        description=(
            f"MemoryQueue: send {n:,} x {BODY_BYTES} B (Arrow tables of {SEND_ROWS:,}) + consume "
            f"with a no-op handler, batch_size={BATCH_SIZE}, VirtualClock; LocalQueue: {local_n:,} "
            f"messages, sends of {LOCAL_SEND}, fsync='always'"
        ),
        unit="msg/s",
        throughput=rate,
        baseline=baseline_rate,
        baseline_description=(
            "Python queue: deque + dict of in-flight messages, uuid4 ids, receive 100 / handler / delete, "
            "single-threaded"
        ),
        targets=[
            target(f"end-to-end msg/s @{BATCH_SIZE}", rate, ">=", TARGET_RATE, "msg/s"),
            target("vs Python deque+dict", rate / baseline_rate, ">=", TARGET_RATIO, "x"),
            target("LocalQueue vs raw sqlite3", local_ratio, ">=", TARGET_LOCAL_RATIO, "x"),
        ],
        figures={
            "messages": n,
            "memory_seconds": memory_s,
            "memory_us_per_batch": memory_s / (n / BATCH_SIZE) * 1e6,
            "memory_bytes_input_msgs_per_s": n / memory_list_s,
            "python_seconds": python_s,
            "python_counter_ids_msgs_per_s": n / python_counter_s,
            "ratio_vs_counter_ids": (n / memory_s) / (n / python_counter_s),
            "local_messages": local_n,
            "local_msgs_per_s": local_n / local["always"],
            "raw_sqlite_msgs_per_s": local_n / raw["always"],
            "local_ratio": local_ratio,
            "local_nosync_msgs_per_s": local_n / local["never"],
            "raw_sqlite_nosync_msgs_per_s": local_n / raw["never"],
            "local_nosync_ratio": raw["never"] / local["never"],
            "cpu_count": os.cpu_count() or 0,
        },
        params={
            "messages": n,
            "body_bytes": BODY_BYTES,
            "send_rows": SEND_ROWS,
            "batch_size": BATCH_SIZE,
            "local_messages": local_n,
            "local_send": LOCAL_SEND,
            "repeat": repeat,
            "quick": quick,
        },
        checksum=checksum,
        baseline_checksum=baseline_checksum,
    )
