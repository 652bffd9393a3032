"""Crashes and failing disks: torn tails, failed writes, processes killed with SIGKILL.

The slow tests kill real subprocesses (``tests/crash_worker.py``) at random
moments and check, after every kill, what a restart can see:

- a consumer on a LocalLog with DirectoryCheckpoints processes every record at
  least once, keeps per-key order among first deliveries, redelivers a bounded
  number of records, and its checkpoint directory always loads;
- a producer's log never exposes part of a put's batch on a shard and never
  loses a put that ``put`` acknowledged.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

import streamcore as sc
from streamcore import durable
from streamcore.sources import locallog

WORKER = Path(__file__).with_name("crash_worker.py")
SRC = Path(sc.__file__).resolve().parent.parent  # where this process found streamcore


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def segment_batches(path: Path) -> list[tuple[int, int, int]]:
    """``(first_seq, rows, end_offset)`` of every record batch in a segment file."""
    scan = locallog.read_segment(path)
    return [(b.column(0)[0].as_py(), b.num_rows, end) for b, end in zip(scan.batches, scan.ends, strict=True)]


def all_records(stream: sc.LocalLog, shard: int) -> pa.RecordBatch | None:
    shard_log = stream.shard_log(shard)
    if not len(shard_log):
        return None
    return shard_log.read(shard_log.trim_seq, len(shard_log))


# -- torn tails ----------------------------------------------------------------------


def test_torn_tail_at_random_offsets_exposes_only_complete_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = tmp_path / "original"
    clock = sc.VirtualClock()
    with sc.LocalLog(original, shards=1, clock=clock) as stream:
        for i in range(12):
            rows = [{"key": f"k{j % 5}", "i": i, "pad": "x" * (j * 7)} for j in range(1 + i * 3)]
            stream.put(rows)
    segment = original / "shard-000000" / locallog.SEGMENT.format(0)
    batches = segment_batches(segment)
    clean = {0, locallog.read_segment(segment).header_end, *(end for _, _, end in batches)}
    size = segment.stat().st_size
    assert batches[-1][2] == size
    rng = random.Random(7)
    cuts = sorted({0, 1, 7, size - 1, *(end for _, _, end in batches), *rng.sample(range(size), 40)})
    for cut in cuts:
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(original, copy)
        os.truncate(copy / "shard-000000" / locallog.SEGMENT.format(0), cut)
        complete = [b for b in batches if b[2] <= cut]
        expected_rows = sum(rows for _, rows, _ in complete)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="streamcore"):
            stream = sc.LocalLog(copy, clock=clock)
        torn = cut not in clean
        assert any("torn tail" in r.message for r in caplog.records) == torn, cut
        shard_log = stream.shard_log(0)
        assert shard_log.next_seq == expected_rows, cut
        records = all_records(stream, 0)
        if expected_rows:
            assert records is not None
            assert records.column("seq").to_pylist() == list(range(expected_rows))
            assert records.column("i").to_pylist() == [
                i for i, (_, rows, _) in enumerate(complete) for _ in range(rows)
            ]
        # The log goes on from there: a put after recovery, then a clean reopen.
        placed = stream.put([{"key": "after", "i": 99, "pad": ""}])
        assert placed.column("seq").to_pylist() == [expected_rows]
        stream.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="streamcore"):
            again = sc.LocalLog(copy, clock=clock)
        assert not caplog.records
        assert again.shard_log(0).next_seq == expected_rows + 1
        last = all_records(again, 0)
        assert last is not None and last.column("i").to_pylist()[-1] == 99
        again.close()


def test_torn_tail_in_an_earlier_segment_with_a_gap_is_an_error(tmp_path: Path) -> None:
    with sc.LocalLog(tmp_path / "log", segment_bytes=1) as stream:
        for i in range(3):
            stream.put([{"key": "k", "i": i}])  # one segment per put
    first = tmp_path / "log" / "shard-000000" / locallog.SEGMENT.format(0)
    os.truncate(first, first.stat().st_size - 3)
    with pytest.raises(durable.CorruptFileError, match=str(first)):
        sc.LocalLog(tmp_path / "log")


# -- failing writes ------------------------------------------------------------------


@pytest.mark.parametrize("fail", ["writev", "fsync"])
@pytest.mark.parametrize("fail_on", [1, 2, 3])
def test_failing_writer_acknowledges_nothing_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str, fail_on: int
) -> None:
    clock = sc.VirtualClock()
    stream = sc.LocalLog(tmp_path / "log", shards=3, clock=clock)
    keys = [f"user-{j}" for j in range(30)]  # touches all three shards
    first = stream.put([{"key": k, "n": 1} for k in keys])
    before = {s: stream.shard_log(s).next_seq for s in stream.shard_ids}

    real = getattr(os, fail)
    calls = 0

    def failing(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == fail_on:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(os, fail, failing)
    with pytest.raises(durable.StorageError, match="No space left on device") as info:
        stream.put([{"key": k, "n": 2} for k in keys])
    assert isinstance(info.value, OSError) and isinstance(info.value, sc.StreamcoreError)
    monkeypatch.setattr(os, fail, real)
    # Nothing of the failed put is visible...
    assert {s: stream.shard_log(s).next_seq for s in stream.shard_ids} == before
    # ...the log goes on...
    third = stream.put([{"key": k, "n": 3} for k in keys])
    assert third.num_rows == first.num_rows == 30
    assert sum(stream.shard_log(s).next_seq for s in stream.shard_ids) == sum(before.values()) + 30
    stream.close()
    # ...and nothing of it comes back after a reopen.
    reopened = sc.LocalLog(tmp_path / "log", clock=clock)
    ns = []
    for shard in reopened.shard_ids:
        records = all_records(reopened, shard)
        assert records is not None
        assert records.column("seq").to_pylist() == list(range(len(records)))
        ns.extend(records.column("n").to_pylist())
    assert Counter(ns) == {1: 30, 3: 30}
    reopened.close()


def test_a_failing_write_is_a_storage_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = sc.LocalLog(tmp_path / "log")
    stream.put([{"key": "a"}])

    def failing(*args: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "writev", failing)
    with pytest.raises(durable.StorageError, match=r"shard-000000.*Input/output error"):
        stream.put([{"key": "b"}])
    monkeypatch.undo()
    stream.close()


# -- killing real processes ------------------------------------------------------------


def _spawn(*args: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=_env(),
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _read_lines(path: Path) -> list[tuple[str, int, int]]:
    """``(key, seq, shard)`` per line the consumer wrote."""
    out: list[tuple[str, int, int]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():  # a line cut by a kill is skipped
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def _expected(stream: sc.LocalLog) -> set[tuple[str, int, int]]:
    expected: set[tuple[str, int, int]] = set()
    for shard in stream.all_shard_ids:
        records = all_records(stream, shard)
        if records is not None:
            keys, seqs = records.column("key").to_pylist(), records.column("seq").to_pylist()
            expected.update((k, s, shard) for k, s in zip(keys, seqs, strict=True))
    return expected


def _kill_consumer(tmp_path: Path, rng: random.Random, kills_wanted: int) -> tuple[int, int]:
    """Start the consumer, kill it mid-run ``kills_wanted`` times, then run it to the end.

    After every kill the checkpoint directory loads and no checkpoint went back.
    Returns (kills mid-run, kills during start-up).
    """
    log_path, cp_path, out_path = tmp_path / "log", tmp_path / "checkpoints", tmp_path / "out.txt"
    kills = 0  # kills while batches ran
    early_kills = 0  # kills during start-up (imports, opening the log and the checkpoints)
    runs = 0
    checkpoints_seen: dict[int, int] = {}
    deadline = time.monotonic() + 120  # a safety net: about 35 s on an idle machine
    while kills < kills_wanted and time.monotonic() < deadline:
        runs += 1
        before = _size(out_path)
        proc = _spawn("consume", str(log_path), str(cp_path), str(out_path))
        try:
            if runs % 5 == 0:
                time.sleep(rng.uniform(0.05, 0.8))
            else:  # wait for the first batch of this run, then kill at a random moment
                started = time.monotonic()
                while _size(out_path) == before and proc.poll() is None:
                    assert time.monotonic() - started < 60, "the consumer makes no progress"
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is not None:
                assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
                break  # finished before the kill
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if _size(out_path) > before:
                kills += 1
            else:
                early_kills += 1
        finally:
            if proc.stderr:
                proc.stderr.close()
        # The checkpoint directory always loads, and checkpoints never go back.
        found = durable.read_directory(cp_path) if cp_path.exists() else {}
        for consumer, entry in found.items():
            assert isinstance(entry, durable.Generation), (consumer, entry)
            for shard, progress in entry.progress.items():
                assert progress.checkpoint >= checkpoints_seen.get(shard, -1)
                checkpoints_seen[shard] = progress.checkpoint
    assert kills >= kills_wanted - 2, f"only {kills} kills landed mid-run in {runs} runs"
    final = _spawn("consume", str(log_path), str(cp_path), str(out_path))
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    return kills, early_kills


def _check_delivery(
    seen: list[tuple[str, int, int]], expected: set[tuple[str, int, int]], depth: dict[int, int]
) -> int:
    """Every record at least once, nothing invented, per-key order of first deliveries
    (by reshard generation, then seq); returns the number of duplicates."""
    assert set(seen) == expected
    first_seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
    done: set[tuple[str, int, int]] = set()
    for key, seq, shard in seen:
        if (key, seq, shard) not in done:
            done.add((key, seq, shard))
            first_seen[key].append((depth[shard], seq))
    for key, order in first_seen.items():
        assert order == sorted(order), key
    return len(seen) - len(expected)


@pytest.mark.slow
def test_consumer_killed_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    n = 250_000
    keys = [f"k{rng.randrange(5000)}" for _ in range(n)]
    with sc.LocalLog(tmp_path / "log", shards=4) as stream:
        for start in range(0, n, 20_000):
            stream.put(pa.table({"key": keys[start : start + 20_000]}))
        expected = _expected(stream)
    kills, early_kills = _kill_consumer(tmp_path, rng, 22)
    duplicates = _check_delivery(_read_lines(tmp_path / "out.txt"), expected, dict.fromkeys(range(4), 0))
    # Per kill at most the batches in flight (4 shards x 2 lanes x 100) plus those
    # done but not yet durably checkpointed: a few batches per lane.
    bound = kills * 4 * 2 * 100 * 4
    print(
        f"\nconsumer crash test: {kills} kills mid-run and {early_kills} during start-up, "
        f"{duplicates} duplicates (bound {bound})"
    )
    assert duplicates <= bound


@pytest.mark.slow
def test_consumer_killed_across_reshards_keeps_key_order(tmp_path: Path) -> None:
    """A split and a merge in the log: kills land while parents finish and children start."""
    rng = random.Random(20261127)
    puts = [[f"k{rng.randrange(3000)}" for _ in range(15_000)] for _ in range(9)]
    with sc.LocalLog(tmp_path / "log", shards=4) as stream:
        for i, keys in enumerate(puts):
            if i == 3:
                low, high = stream.split_shard(0)
            if i == 6:
                merged = stream.merge_shards(high, 1)
            stream.put(pa.table({"key": keys}))
        expected = _expected(stream)
    depth = {0: 0, 1: 0, 2: 0, 3: 0, low: 1, high: 1, merged: 2}
    kills, early_kills = _kill_consumer(tmp_path, rng, 12)
    duplicates = _check_delivery(_read_lines(tmp_path / "out.txt"), expected, depth)
    bound = kills * 7 * 2 * 100 * 4
    print(
        f"\nreshard crash test: {kills} kills mid-run and {early_kills} during start-up, "
        f"{duplicates} duplicates (bound {bound})"
    )
    assert duplicates <= bound


@pytest.mark.slow
def test_producer_killed_mid_put_never_loses_an_acknowledged_put(tmp_path: Path) -> None:
    rng = random.Random(99)
    log_path = tmp_path / "log"
    # The producer puts the same keys every time: each put's share of each shard is fixed.
    probe = sc.MemoryStream(shards=4)
    placed = probe.put([{"key": f"key-{j}"} for j in range(64)])
    share = Counter(placed.column("shard").to_pylist())
    acknowledged: dict[int, dict[int, int]] = {}  # put -> {shard: last seq}
    kills = 0  # kills while puts ran
    early_kills = 0  # kills during start-up
    runs = 0
    partial_puts = 0
    deadline = time.monotonic() + 120  # a safety net: about 30 s on an idle machine
    while kills < 22 and time.monotonic() < deadline:
        runs += 1
        proc = _spawn("produce", str(log_path), str(runs * 1_000_000), "100000", stdout=subprocess.PIPE)
        lines: list[bytes] = []
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda out=proc.stdout, into=lines: into.extend(out))
        reader.start()
        if runs % 5 == 0:
            time.sleep(rng.uniform(0.05, 0.8))
        else:  # wait for the first acknowledged put, then kill at a random moment
            started = time.monotonic()
            while not lines and proc.poll() is None:
                assert time.monotonic() - started < 60, "the producer makes no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        proc.stdout.close()
        err = b""
        if proc.stderr:
            err = proc.stderr.read()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, err.decode()
        if lines:
            kills += 1
        else:
            early_kills += 1
        for line in lines:
            if not line.endswith(b"\n"):
                continue  # cut by the kill: not known to be acknowledged
            first, *pairs = line.decode().split()
            acknowledged[int(first)] = {int(p.split(":")[0]): int(p.split(":")[1]) for p in pairs}
        # Reopen (the kill released the lock) and check every shard.
        stream = sc.LocalLog(log_path)
        stored: dict[int, set[int]] = defaultdict(set)  # put -> shards holding it
        for shard in stream.shard_ids:
            records = all_records(stream, shard)
            if records is None:
                continue
            puts = records.column("put").to_pylist()
            rows = records.column("row").to_pylist()
            seqs = records.column("seq").to_pylist()
            assert seqs == list(range(len(seqs)))
            groups = Counter(puts)
            for put_id, count in groups.items():
                assert count == share[shard], (shard, put_id, count)  # never part of a batch
                stored[put_id].add(shard)
            i = 0
            while i < len(puts):  # each put's records on a shard are contiguous, in row order
                j = i + share[shard]
                assert puts[i:j] == [puts[i]] * share[shard]
                assert rows[i:j] == sorted(rows[i:j])
                i = j
            for put_id, last in acknowledged.items():
                if shard in last:
                    assert last[shard] < len(seqs) and puts[last[shard]] == put_id
        for put_id, last in acknowledged.items():
            assert set(last) <= stored[put_id], put_id  # never lost once acknowledged
        # Unacknowledged puts the kill cut between shards (durable on some only).
        partial_puts += sum(1 for shards in stored.values() if len(shards) < len(share))
        stream.close()
    assert kills >= 20 and acknowledged
    print(
        f"\nproducer crash test: {kills} kills mid-put and {early_kills} during start-up, "
        f"{len(acknowledged)} acknowledged "
        f"puts, {partial_puts} unacknowledged puts found on only some of their shards"
    )
