"""``LocalQueue``: durability, restarts, several processes, and kill -9 fault injection.

The queue semantics themselves are checked on both queue kinds in
``test_queue.py`` (including the model-based state machine); this file is
about what only a durable queue has.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import streamcore as sc
from streamcore.sources.localqueue import QueueStorageError

ROOT = Path(__file__).resolve().parent.parent


def bodies(batch: pa.RecordBatch) -> list[bytes]:
    return batch.column("body").to_pylist()  # type: ignore[no-any-return]


def test_sent_messages_survive_a_reopen(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    path = tmp_path / "q.db"
    with sc.LocalQueue(path, clock=clock) as queue:
        ids = queue.send([b"a", b"b", b"c"])
        assert queue.name == "q"
    with sc.LocalQueue(path, clock=clock) as queue:
        batch = queue.receive(10)
        assert bodies(batch) == [b"a", b"b", b"c"]
        assert batch.column("message_id").to_pylist() == ids  # the id prefix is stored


def test_a_received_message_reappears_after_its_timeout_after_a_restart(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    path = tmp_path / "q.db"
    with sc.LocalQueue(path, clock=clock, visibility_timeout=30) as queue:
        queue.send([b"a", b"b"])
        assert bodies(queue.receive(1)) == [b"a"]
    with sc.LocalQueue(path, clock=clock, visibility_timeout=30) as queue:
        assert bodies(queue.receive(10)) == [b"b"]  # a is still invisible
        clock.advance(29)
        assert queue.receive(10).num_rows == 0
        clock.advance(1)
        again = queue.receive(10)
        assert bodies(again) == [b"a", b"b"]
        assert again.column("receive_count").to_pylist() == [2, 2]


def test_deletes_are_durable(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    path = tmp_path / "q.db"
    with sc.LocalQueue(path, clock=clock, visibility_timeout=1) as queue:
        ids = queue.send([b"a", b"b"])
        queue.receive(10)
        queue.delete(ids[0])
    clock.advance(5)
    with sc.LocalQueue(path, clock=clock) as queue:
        assert bodies(queue.receive(10)) == [b"b"]
        assert queue.delete(ids[0]) == 0


def test_message_indices_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with sc.LocalQueue(path) as queue:
        first = queue.send([b"a"])
        queue.delete(first)
    with sc.LocalQueue(path) as queue:
        second = queue.send([b"b"])
        assert second != first
        assert queue.delete(first) == 0
        assert len(queue) == 1


def test_payload_chunks_go_after_their_last_message(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    path = tmp_path / "q.db"
    with sc.LocalQueue(path, clock=clock) as queue:
        queue.send([b"a", b"b"])
        queue.send([b"c"])
        batch = queue.receive(10)
        queue.delete(batch.column("message_id")[:2])
    # swept in bulk (every few dozen emptied chunks), and at the latest on close
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT first, count FROM chunks").fetchall() == [(2, 1)]


def test_chunks_a_crash_left_behind_are_dropped_on_open(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with sc.LocalQueue(path) as queue:
        queue.send([b"a"])
        queue.send([b"b"])
    with contextlib.closing(sqlite3.connect(path)) as db:  # as if a delete had committed, not its sweep
        db.execute("DELETE FROM messages WHERE idx = 0")
        db.commit()
    with sc.LocalQueue(path) as queue, contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT first FROM chunks").fetchall() == [(1,)]
        assert bodies(queue.receive(10)) == [b"b"]


def test_fifo_dedup_survives_a_reopen(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    path = tmp_path / "q.db"
    with sc.LocalQueue(path, clock=clock, fifo=True) as queue:
        ids = queue.send([b"a"], group_id="g", dedup_id="once")
    with sc.LocalQueue(path, clock=clock, fifo=True) as queue:
        assert queue.send([b"again"], group_id="g", dedup_id="once") == ids
        assert len(queue) == 1
        clock.advance(300)
        assert queue.send([b"again"], group_id="g", dedup_id="once") != ids


def test_the_schema_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with sc.LocalQueue(path) as queue:
        queue.send([{"n": 1}])
    with sc.LocalQueue(path) as queue:
        with pytest.raises(ValueError, match="schema"):
            queue.send([b"raw"])
        assert queue.receive(1).schema.names == ["message_id", "n", "receive_count", "sent"]


def test_reopening_with_another_kind_fails(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sc.LocalQueue(path).close()
    with pytest.raises(sc.ConfigError, match="fifo"):
        sc.LocalQueue(path, fifo=True)


def test_a_file_that_is_not_a_queue(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(QueueStorageError):
        sc.LocalQueue(path)
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)")
        db.execute("INSERT INTO meta VALUES ('format', 'something else')")
        db.commit()
    with pytest.raises(QueueStorageError, match=r"not a streamcore\.localqueue"):
        sc.LocalQueue(other)


def test_fsync_option(tmp_path: Path) -> None:
    with pytest.raises(sc.ConfigError, match="fsync"):
        sc.LocalQueue(tmp_path / "q.db", fsync="sometimes")
    with sc.LocalQueue(tmp_path / "q.db", fsync="never") as queue:
        queue.send([b"a"])
        assert len(queue) == 1


def test_a_consumer_on_a_local_queue(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    dead = sc.LocalQueue(tmp_path / "dlq.db", clock=clock)
    queue = sc.LocalQueue(
        tmp_path / "q.db", clock=clock, visibility_timeout=5, max_receive_count=2, dead_letter=dead
    )
    queue.send([b"%d" % i for i in range(25)])
    seen: list[tuple[bytes, int]] = []
    with sc.App(clock=clock) as app:

        @app.consumer(queue, batch_size=10, report_failures=True)
        def handle(batch: sc.Batch) -> Any:
            rows = batch.records.to_pylist()
            seen.extend((r["body"], r["receive_count"]) for r in rows)
            return sc.BatchFailures([r["message_id"] for r in rows if r["body"] == b"13"])

        app.run(until_idle=True)
        m = {k: v for k, v in app.metrics().items() if "." not in k}
    assert sorted(b for b, rc in seen if rc == 1) == sorted(b"%d" % i for i in range(25))
    assert [rc for b, rc in seen if b == b"13"] == [1, 2]
    assert bodies(dead.receive(10)) == [b"13"]
    assert (m["records_done"], m["messages_deleted"], m["dead_lettered"]) == (24, 24, 1)
    assert len(queue) == 0
    queue.close()
    dead.close()


def test_a_fifo_consumer_on_a_local_queue(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    queue = sc.LocalQueue(tmp_path / "q.db", clock=clock, fifo=True, content_based_dedup=True)
    for g in "ab":
        queue.send([f"{g}{i}".encode() for i in range(5)], group_id=g)
    order: dict[str, list[bytes]] = {}
    with sc.App(clock=clock) as app:

        @app.consumer(queue, batch_size=3)
        def handle(batch: sc.Batch) -> None:
            for row in batch.records.to_pylist():
                order.setdefault(row["group_id"], []).append(row["body"])
            clock.sleep(1)

        app.run(until_idle=True)
    assert order == {g: [f"{g}{i}".encode() for i in range(5)] for g in "ab"}
    queue.close()


# --------------------------------------------------------------------------
# several processes

PRODUCER = """
import sys, time
import streamcore as sc
path, start, count, acked = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
queue = sc.LocalQueue(path, visibility_timeout=1, fsync="never")
with open(acked, "a") as log:
    n = start
    while n < start + count:
        batch = [b"m%d" % i for i in range(n, min(n + 10, start + count))]
        queue.send(batch)
        log.write("".join(b.decode() + "\\n" for b in batch))
        log.flush()
        n += len(batch)
        time.sleep(0.01)
"""

CONSUMER = """
import os, random, sys, time
import streamcore as sc
path, done_log, seen_log = sys.argv[1], sys.argv[2], sys.argv[3]
queue = sc.LocalQueue(path, visibility_timeout=1, fsync="never")
app = sc.App()
seen = open(seen_log, "a")
done = open(done_log, "a")

@app.consumer(queue, batch_size=7)
def handle(batch):
    ids = batch.records.column("message_id").to_pylist()
    seen.write("".join(f"{time.time():.6f} {i}\\n" for i in ids))
    seen.flush()
    time.sleep(random.random() * 0.02)
    if random.random() < 0.1:
        raise RuntimeError("a failure: these come back after the visibility timeout")
    names = batch.records.column("body").to_pylist()
    done.write("".join(f"{i} {b.decode()}\\n" for i, b in zip(ids, names)))
    done.flush()

app.run()
"""


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if process.stderr is not None:
        process.stderr.close()


def spawn(code: str, *args: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(sc.__file__).resolve().parent.parent))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text()
    return [line for line in text.split("\n")[:-1] if line]  # a line cut by a kill has no newline


def wait_empty(queue_path: Path, consumer: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait until every message was handled and deleted."""
    with sc.LocalQueue(queue_path) as queue:
        while len(queue):
            assert time.monotonic() < deadline, f"{len(queue)} messages left"
            assert consumer.poll() is None, consumer.stderr.read() if consumer.stderr else ""
            time.sleep(0.2)


def drain(queue_path: Path, consumer_args: tuple[Any, ...], deadline: float) -> None:
    """Run a consumer until the queue is empty."""
    consumer = spawn(CONSUMER, queue_path, *consumer_args)
    try:
        wait_empty(queue_path, consumer, deadline)
    finally:
        stop(consumer)


def test_a_producer_and_a_consumer_process_at_once(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    sc.LocalQueue(path).close()
    producer = spawn(PRODUCER, path, 0, 300, tmp_path / "acked")
    consumer = spawn(CONSUMER, path, tmp_path / "done", tmp_path / "seen")
    try:
        producer.wait(60)
        assert producer.returncode == 0, producer.stderr.read() if producer.stderr else ""
        wait_empty(path, consumer, time.monotonic() + 60)
    finally:
        stop(producer)
        stop(consumer)
    acked = set(lines(tmp_path / "acked"))
    done = {line.split()[1] for line in lines(tmp_path / "done")}
    assert len(acked) == 300
    assert acked <= done


@pytest.mark.slow
def test_kill_9_producer_and_consumer_at_random_moments(tmp_path: Path) -> None:
    """Nothing sent is lost; a deleted message never comes back."""
    rng = random.Random(20240601)
    path = tmp_path / "q.db"
    acked_log, done_log, seen_log = tmp_path / "acked", tmp_path / "done", tmp_path / "seen"
    sc.LocalQueue(path).close()
    started = time.monotonic()
    next_start = 0
    per_producer = 400
    producer = spawn(PRODUCER, path, next_start, per_producer, acked_log)
    consumer = spawn(CONSUMER, path, done_log, seen_log)
    next_start += per_producer
    gone_since: dict[int, float] = {}  # message index -> when it was first seen deleted
    kills = 0

    def snapshot() -> None:
        # Which messages exist now: one that was gone must never be back.
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            now = time.time()
            row = db.execute("SELECT value FROM meta WHERE key = 'next_idx'").fetchone()
            present = {r[0] for r in db.execute("SELECT idx FROM messages")}
        for idx in present:
            assert idx not in gone_since, f"message {idx} came back after it was deleted"
        for idx in range(int(row[0]) if row else 0):
            if idx not in present:
                gone_since.setdefault(idx, now)

    try:
        while time.monotonic() - started < 25:
            time.sleep(rng.uniform(0.3, 2.0))
            snapshot()
            victim = rng.choice(["producer", "consumer"])
            process = producer if victim == "producer" else consumer
            kills += process.poll() is None
            stop(process)
            if victim == "producer":
                producer = spawn(PRODUCER, path, next_start, per_producer, acked_log)
                next_start += per_producer
            else:
                consumer = spawn(CONSUMER, path, done_log, seen_log)
    finally:
        stop(producer)
        stop(consumer)
    snapshot()
    drain(path, (done_log, seen_log), time.monotonic() + 25)
    snapshot()

    assert kills >= 5
    acked = set(lines(acked_log))
    done_lines = [line.split() for line in lines(done_log)]
    done = {body for _, body in done_lines}
    assert len(acked) >= 400, "the producers acknowledged too little to mean anything"
    assert acked <= done, f"lost: {sorted(acked - done)[:10]}"
    # Deleted (gone) messages were never handed to a handler again after they were gone.
    for line in lines(seen_log):
        stamp, message_id = line.split()
        idx = int(message_id[-12:], 16)
        if idx in gone_since:
            assert float(stamp) <= gone_since[idx] + 0.5, f"message {idx} was delivered after it was deleted"
