"""``LocalLog``: MemoryStream's API and semantics, durable in Arrow IPC segment files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import streamcore as sc
from streamcore import durable
from streamcore.sources import locallog

SRC = Path(sc.__file__).resolve().parent.parent  # where this process found streamcore


def rows(n: int, start: int = 0, keys: int = 7) -> list[dict[str, object]]:
    return [{"key": f"user-{i % keys}", "n": i, "text": f"event {i}"} for i in range(start, start + n)]


def stored(stream: sc.MemoryStream) -> dict[int, pa.Table]:
    """Every shard's records, as one table per shard."""
    out = {}
    for shard in stream.shard_ids:
        shard_log = stream.shard_log(shard)
        if len(shard_log):
            out[shard] = pa.Table.from_batches([shard_log.read(shard_log.trim_seq, len(shard_log))])
    return out


def consume(stream: sc.MemoryStream, clock: sc.VirtualClock, **options: object) -> list[tuple]:
    seen: list[tuple] = []
    with sc.App(clock=clock) as app:

        @app.consumer(stream, **options)  # type: ignore[arg-type]
        def handle(batch: sc.Batch) -> None:
            seen.append((batch.shard, batch.first_seq, batch.last_seq, batch.records.to_pylist()))

        app.run(until_idle=True)
    return sorted(seen, key=lambda b: (b[0], b[1]))


def test_behaves_like_a_memory_stream(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    memory = sc.MemoryStream(shards=3, name="clicks", clock=clock)
    local = sc.LocalLog(tmp_path / "clicks", shards=3, clock=clock, segment_bytes=4096)
    puts = [
        rows(50),
        pa.table({"key": ["a", "b", "c"], "n": [1, 2, 3], "text": ["x", "y", "z"]}),
        rows(10, 100),
    ]
    for data in puts:
        assert local.put(data).equals(memory.put(data))
        clock.advance(1.5)
    assert local.shard_ids == memory.shard_ids
    assert len(local) == len(memory) == 63
    assert local.name == "clicks"
    for shard, table in stored(memory).items():
        assert stored(local)[shard].equals(table)
    assert consume(local, clock, batch_size=8) == consume(memory, clock, batch_size=8)
    local.close()
    with pytest.raises(sc.InvalidRecordsError, match="closed"):
        local.put(rows(1))
    assert len(local) == 63  # still readable after close


def test_bytes_payloads(tmp_path: Path) -> None:
    with sc.LocalLog(tmp_path / "log", shards=2) as log:
        log.put([b"raw-1", "raw-2"], keys=["k1", "k2"])
    with sc.LocalLog(tmp_path / "log") as log:
        data = sorted(v for table in stored(log).values() for v in table.column("data").to_pylist())
        assert data == [b"raw-1", b"raw-2"]


def test_reopen_restores_records_seqs_and_config(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    with sc.LocalLog(tmp_path / "log", shards=4, clock=clock, segment_bytes=2048) as log:
        for i in range(20):
            log.put(rows(30, i * 30))
            clock.advance(1)
        before = stored(log)
        next_seqs = [log.shard_log(s).next_seq for s in log.shard_ids]
        assert sum(len(log.shard_log(s).segments) for s in log.shard_ids) > 8  # rolled by size
    reopened = sc.LocalLog(tmp_path / "log", clock=clock)  # shards=None: as stored
    assert reopened.shard_ids == [0, 1, 2, 3]
    assert reopened.name == "log"
    assert [reopened.shard_log(s).next_seq for s in reopened.shard_ids] == next_seqs
    after = stored(reopened)
    assert after.keys() == before.keys()
    for shard in before:
        assert after[shard].equals(before[shard])
    placed = reopened.put(rows(8, 1000))
    for shard, seq in zip(placed.column("shard").to_pylist(), placed.column("seq").to_pylist(), strict=True):
        assert seq >= next_seqs[shard]
    reopened.close()
    with sc.LocalLog(tmp_path / "log", shards=4, name="log") as again:
        assert len(again) == 20 * 30 + 8


def test_records_read_back_are_memory_mapped(tmp_path: Path) -> None:
    big = [{"key": f"k{i}", "n": i, "text": "x" * 1000} for i in range(1000)]
    with sc.LocalLog(tmp_path / "log", segment_bytes=1) as log:
        log.put(big[:500])
        log.put(big[500:])  # rolls: the first segment is sealed and read back mapped
        assert [s.mapped for s in log.shard_log(0).segments] == [True, False]
    before = pa.total_allocated_bytes()
    reopened = sc.LocalLog(tmp_path / "log")
    # Only the hashes and sizes (12 bytes a record) are allocated, not the 1 MB of payload.
    assert pa.total_allocated_bytes() - before < 100_000
    assert reopened.shard_log(0).read(495, 10).column("n").to_pylist() == list(range(495, 505))
    reopened.close()


def test_files_are_arrow_ipc_streams_named_by_first_seq(tmp_path: Path) -> None:
    with sc.LocalLog(tmp_path / "log", shards=2, segment_bytes=1) as log:
        log.put(rows(6))
        log.put(rows(6, 6))
    meta = json.loads((tmp_path / "log" / locallog.META_NAME).read_text())
    assert meta["name"] == "log" and len(meta["shards"]) == 2
    assert meta["shards"][1]["hash_start"] == 2**63
    folder = tmp_path / "log" / "shard-000000"
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "00000000000000000000.arrows"
    firsts = [int(name.split(".")[0]) for name in names]
    total = 0
    for name, first in zip(names, firsts, strict=True):
        with pa.memory_map(str(folder / name)) as source:
            table = pa.ipc.open_stream(source).read_all()
        assert table.column_names == ["seq", "key", "arrival", "n", "text"]
        assert table.column("seq").to_pylist()[0] == first
        total += table.num_rows
    assert total == log.shard_log(0).next_seq > 0


def test_the_schema_fixed_by_the_first_put_holds_after_reopen(tmp_path: Path) -> None:
    with sc.LocalLog(tmp_path / "log") as log:
        log.put(pa.table({"key": ["a"], "d": pa.array(["x"]).dictionary_encode(), "n": [1]}))
        log.put(pa.table({"key": ["a", "a"], "d": pa.array(["y", "z"]).dictionary_encode(), "n": [2, 3]}))
    with sc.LocalLog(tmp_path / "log") as log:
        with pytest.raises(sc.InvalidRecordsError, match="missing columns"):
            log.put([{"key": "a", "n": 4}])
        # Same columns in another order are conformed, as MemoryStream does.
        log.put(pa.table({"n": [4], "key": ["a"], "d": pa.array(["x"]).dictionary_encode()}))
        assert len(log.shard_log(0).segments) == 2
    with sc.LocalLog(tmp_path / "log") as log:
        records = log.shard_log(0).read(0, 4)
        assert records.column("d").to_pylist() == ["x", "y", "z", "x"]
        assert records.column("n").to_pylist() == [1, 2, 3, 4]


def test_shard_count_or_name_mismatch_is_a_config_error(tmp_path: Path) -> None:
    sc.LocalLog(tmp_path / "log", shards=4, name="orders").close()
    with pytest.raises(sc.ConfigError, match=r"shards=2 is invalid: expected 4") as info:
        sc.LocalLog(tmp_path / "log", shards=2)
    assert isinstance(info.value, ValueError)
    with pytest.raises(sc.ConfigError, match=r"name='clicks' is invalid: expected 'orders'"):
        sc.LocalLog(tmp_path / "log", name="clicks")
    # The failed opens released the directory.
    with sc.LocalLog(tmp_path / "log", shards=4) as log:
        assert log.name == "orders" and len(log.shard_ids) == 4


@pytest.mark.parametrize(
    ("option", "value"),
    [("fsync", "sometimes"), ("segment_bytes", 0), ("shards", 0), ("name", "")],
)
def test_bad_options_are_config_errors(tmp_path: Path, option: str, value: object) -> None:
    with pytest.raises(sc.ConfigError, match=option):
        sc.LocalLog(tmp_path / "log", **{option: value})  # type: ignore[arg-type]


def test_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = sc.LocalLog(tmp_path / "log")
    with pytest.raises(durable.LockedError, match=rf"this process \({os.getpid()}\)") as info:
        sc.LocalLog(tmp_path / "log")
    assert info.value.pid == os.getpid()
    first.close()
    sc.LocalLog(tmp_path / "log").close()


def test_another_process_holding_the_log_is_named(tmp_path: Path) -> None:
    path = tmp_path / "log"
    sc.LocalLog(path).close()
    script = (
        "import sys, streamcore as sc; log = sc.LocalLog(sys.argv[1]); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        with pytest.raises(durable.LockedError, match=f"process {holder.pid}"):
            sc.LocalLog(path)
    finally:
        holder.kill()
        holder.communicate()
    sc.LocalLog(path).close()  # a killed holder released the lock


def test_a_directory_that_is_not_a_log_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(durable.CorruptFileError, match=r"not empty and holds no streamcore log"):
        sc.LocalLog(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(durable.StorageError, match=r"cannot create the log directory .*file/log"):
        sc.LocalLog(tmp_path / "file" / "log")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(durable.StorageError, match="not writable"):
            sc.LocalLog(folder)
    finally:
        folder.chmod(0o700)


def test_corrupt_description_and_corrupt_segment_name_the_file(tmp_path: Path) -> None:
    with sc.LocalLog(tmp_path / "log") as log:
        log.put(rows(3))
    meta = tmp_path / "log" / locallog.META_NAME
    good = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(durable.CorruptFileError, match=str(meta)):
        sc.LocalLog(tmp_path / "log")
    meta.write_text(good)
    segment = tmp_path / "log" / "shard-000000" / locallog.SEGMENT.format(0)
    data = segment.read_bytes()
    segment.write_bytes(b"PK\x03\x04 this is a zip file, not a segment")
    with pytest.raises(durable.CorruptFileError, match=rf"{segment}.*not an Arrow IPC stream"):
        sc.LocalLog(tmp_path / "log")
    # A foreign Arrow stream without the system columns.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("x", pa.int64())])) as writer:
        writer.write_batch(pa.record_batch({"x": [1]}))
    segment.write_bytes(sink.getvalue().to_pybytes())
    with pytest.raises(durable.CorruptFileError, match="not a streamcore segment"):
        sc.LocalLog(tmp_path / "log")
    segment.write_bytes(data)
    sc.LocalLog(tmp_path / "log").close()


def test_gap_between_segments_is_an_error(tmp_path: Path) -> None:
    with sc.LocalLog(tmp_path / "log", segment_bytes=1) as log:
        for i in range(3):
            log.put(rows(2, i * 2))
    middle = tmp_path / "log" / "shard-000000" / locallog.SEGMENT.format(2)
    middle.unlink()
    with pytest.raises(durable.CorruptFileError, match=r"starts at seq 4 .* seqs 2\.\.3 .* missing"):
        sc.LocalLog(tmp_path / "log")


def test_unknown_files_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with sc.LocalLog(tmp_path / "log") as log:
        log.put(rows(3))
    strays = [tmp_path / "log" / "shard-000000" / "notes.txt", tmp_path / "log" / "README"]
    for stray in strays:
        stray.write_text("hello")
    with caplog.at_level(logging.WARNING, logger="streamcore"):
        reopened = sc.LocalLog(tmp_path / "log")
    assert len(reopened) == 3
    for stray in strays:
        assert any(str(stray) in r.message and "skipped" in r.message for r in caplog.records)
        assert stray.exists()
    reopened.close()


def test_retention_deletes_whole_segments_and_keeps_seqs_across_reopen(tmp_path: Path) -> None:
    # Retention runs on each put, as MemoryStream's; on disk it deletes whole segments,
    # so a reopened log starts at its oldest segment until the next put expires again.
    clock = sc.VirtualClock()
    path = tmp_path / "log"
    with sc.LocalLog(path, retention=10, clock=clock, segment_bytes=1) as log:
        for i in range(5):
            log.put(rows(4, i * 4))
            clock.advance(3)
        # Puts at t=0,3,6,9,12: at t=12 the one from t=0 expired (older than 10 s).
        shard_log = log.shard_log(0)
        assert shard_log.trim_seq == 4
        assert [s.first_seq for s in shard_log.segments] == [4, 8, 12, 16]
        assert not (path / "shard-000000" / locallog.SEGMENT.format(0)).exists()
        clock.advance(100)
        log.put(rows(1, 99))  # everything before it expires; only this put's segment stays
        assert [s.first_seq for s in shard_log.segments] == [20]
        assert shard_log.trim_seq == 20
    reopened = sc.LocalLog(path, retention=10, clock=clock)
    assert reopened.shard_log(0).trim_seq == 20 and reopened.shard_log(0).next_seq == 21
    clock.advance(100)
    reopened.put(rows(1, 100))  # seq 21: a new segment (a reopened log never appends to old ones)
    assert [s.first_seq for s in reopened.shard_log(0).segments] == [21]
    clock.advance(100)
    reopened.put(rows(1, 101))  # seq 22 joins segment 21; seq 21 expires, but not the segment
    assert reopened.shard_log(0).trim_seq == 22
    reopened.close()
    again = sc.LocalLog(path, retention=10, clock=clock)
    assert again.shard_log(0).trim_seq == 21 and again.shard_log(0).next_seq == 23
    again.put(rows(1, 102))
    assert again.shard_log(0).trim_seq == 22
    again.close()


def test_everything_expired_keeps_next_seq_in_an_empty_segment(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    path = tmp_path / "log"
    log = sc.LocalLog(path, retention=5, clock=clock)
    log.put(rows(3))
    clock.advance(10)
    log._expire_locked(int(clock.now() * 1000))  # what the next put does first
    assert len(log) == 0
    names = sorted(p.name for p in (path / "shard-000000").iterdir())
    assert names == [locallog.SEGMENT.format(3)]
    log.close()
    reopened = sc.LocalLog(path, clock=clock)
    assert reopened.shard_log(0).next_seq == 3
    assert reopened.put(rows(1)).column("seq").to_pylist() == [3]
    reopened.close()


@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_fsync_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setattr(locallog, "FSYNC_INTERVAL", 0.05)
    synced: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    log = sc.LocalLog(tmp_path / "log", fsync=mode)
    monkeypatch.setattr(os, "fsync", counting)
    log.put(rows(5))
    after_put = len(synced)
    if mode == "interval":
        import time

        deadline = time.monotonic() + 5
        while len(synced) == after_put and time.monotonic() < deadline:
            time.sleep(0.01)
    log.close()
    if mode == "always":
        assert after_put >= 2  # the segment and its new directory entry
    elif mode == "interval":
        assert after_put == 0 and len(synced) >= 1
    else:
        assert synced == []
    reopened = sc.LocalLog(tmp_path / "log")
    assert len(reopened) == 5
    reopened.close()


def test_app_consumes_a_reopened_log_and_resumes_from_its_checkpoints(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    log_path, cp_path = tmp_path / "log", tmp_path / "checkpoints"
    with sc.LocalLog(log_path, shards=2, clock=clock) as log:
        log.put(rows(40))
    seen: list[int] = []

    def run() -> dict[int, int | None]:
        with sc.LocalLog(log_path, clock=clock) as log, sc.App(checkpoints=cp_path, clock=clock) as app:

            @app.consumer(log, batch_size=10, name="counter")
            def handle(batch: sc.Batch) -> None:
                seen.extend(batch.records.column("n").to_pylist())

            app.run(until_idle=True)
            return app.checkpoints()["counter"]

    run()
    assert sorted(seen) == list(range(40))
    with sc.LocalLog(log_path, clock=clock) as log:
        log.put(rows(5, 40))
    checkpoints = run()
    assert sorted(seen) == list(range(45))  # the second run got only the 5 new records
    assert sum(seq + 1 for seq in checkpoints.values() if seq is not None) == 45
