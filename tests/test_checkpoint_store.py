"""``DirectoryCheckpoints``: durable, atomic, two generations, single writer (SEMANTICS 0.9)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import streamcore as sc
from streamcore import durable
from streamcore.checkpoints import ShardProgress
from streamcore.cli import main as cli_main

SRC = Path(sc.__file__).resolve().parent.parent  # where this process found streamcore


def progress(checkpoint: int, lanes: int = 1, windows: bytes | None = None) -> ShardProgress:
    return ShardProgress(checkpoint, [checkpoint + i for i in range(lanes)], windows)


def saved(path: Path, consumer: str, **kwargs: float) -> dict[int, ShardProgress]:
    with sc.DirectoryCheckpoints(path, **kwargs) as store:
        return store.load(consumer)


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    store = sc.DirectoryCheckpoints(tmp_path / "cp")
    assert store.load("orders") == {}
    store.save("orders", {0: progress(10, lanes=3, windows=b"\x00state"), 1: progress(-1)})
    store.save("orders", {1: progress(7)})
    store.save("clicks", {5: progress(99)})
    assert store.load("orders") == {0: progress(10, lanes=3, windows=b"\x00state"), 1: progress(7)}
    assert store.flush(timeout=10)
    store.close()
    assert saved(tmp_path / "cp", "orders") == {
        0: progress(10, lanes=3, windows=b"\x00state"),
        1: progress(7),
    }
    assert saved(tmp_path / "cp", "clicks") == {5: progress(99)}
    names = sorted(p.name for p in (tmp_path / "cp").iterdir())
    assert names == [
        "clicks.arrow",
        "clicks.lock",
        "orders.arrow",
        "orders.lock",
        "orders.prev.arrow",
    ] or names == ["clicks.arrow", "clicks.lock", "orders.arrow", "orders.lock"]


def test_files_are_arrow_ipc_with_a_checksum(tmp_path: Path) -> None:
    with sc.DirectoryCheckpoints(tmp_path) as store:
        store.save("c", {0: progress(3, lanes=2), 1: progress(8, windows=b"w")})
    with pa.memory_map(str(tmp_path / "c.arrow")) as source:
        reader = pa.ipc.open_file(source)
        table = reader.read_all()
        meta = reader.schema.metadata
    assert table.column_names == ["shard", "checkpoint", "lanes", "windows"]
    assert table.column("lanes").to_pylist() == [[3, 4], [8]]
    assert meta[b"consumer"] == b"c" and meta[b"format"] == b"streamcore.checkpoints/1"
    assert (
        meta[b"checksum"]
        == durable.checksum({0: progress(3, lanes=2), 1: progress(8, windows=b"w")}).encode()
    )


def test_two_generations_are_kept(tmp_path: Path) -> None:
    for checkpoint in (1, 2, 3):
        with sc.DirectoryCheckpoints(tmp_path) as store:
            store.load("c")
            store.save("c", {0: progress(checkpoint)})
    newest = durable.read_generation(tmp_path / "c.arrow")
    prev = durable.read_generation(tmp_path / "c.prev.arrow")
    assert newest.progress == {0: progress(3)} and prev.progress == {0: progress(2)}
    assert newest.generation == prev.generation + 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_newest_generation_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    for checkpoint in (5, 9):
        with sc.DirectoryCheckpoints(tmp_path) as store:
            store.save("c", {0: progress(checkpoint), 1: progress(checkpoint * 10)})
    newest = tmp_path / "c.arrow"
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        # A byte inside the data buffers: the file still parses, the checksum catches it.
        table = pa.ipc.open_file(pa.py_buffer(bytes(data))).read_all()
        offset = bytes(data).find((90).to_bytes(8, "little"))
        assert offset > 0 and table.num_rows == 2
        data[offset] ^= 0x01
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x00" * 64)
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="streamcore"):
        store = sc.DirectoryCheckpoints(tmp_path)
        loaded = store.load("c")
    assert loaded == {0: progress(5), 1: progress(50)}  # the previous generation, never ahead
    messages = [r.message for r in caplog.records]
    assert any(str(newest) in m and "previous generation" in m for m in messages), messages
    # The next write replaces the bad file without making it the fallback.
    store.save("c", {0: progress(11)})
    store.close()
    assert durable.read_generation(tmp_path / "c.prev.arrow").progress == {
        0: progress(5),
        1: progress(50),
    }
    assert saved(tmp_path, "c") == {0: progress(11), 1: progress(50)}


def test_both_generations_unreadable_is_an_error_naming_both(tmp_path: Path) -> None:
    for checkpoint in (5, 9):
        with sc.DirectoryCheckpoints(tmp_path) as store:
            store.save("c", {0: progress(checkpoint)})
    (tmp_path / "c.arrow").write_bytes(b"junk")
    (tmp_path / "c.prev.arrow").write_bytes(b"")
    store = sc.DirectoryCheckpoints(tmp_path)
    with pytest.raises(durable.CorruptFileError) as info:
        store.load("c")
    message = str(info.value)
    assert str(tmp_path / "c.arrow") in message and str(tmp_path / "c.prev.arrow") in message
    assert isinstance(info.value, sc.StreamcoreError)
    assert info.value.paths == [tmp_path / "c.arrow", tmp_path / "c.prev.arrow"]
    store.close()
    # An App refuses to start the consumer rather than start it from scratch.
    stream = sc.MemoryStream()
    app = sc.App(checkpoints=tmp_path)
    with pytest.raises(durable.CorruptFileError):
        app.consumer(stream, name="c")(lambda batch: None)
    app.close()


def test_corrupt_newest_without_previous_is_an_error(tmp_path: Path) -> None:
    with sc.DirectoryCheckpoints(tmp_path) as store:
        store.save("c", {0: progress(1)})
    (tmp_path / "c.arrow").write_bytes(b"junk")
    with pytest.raises(durable.CorruptFileError, match="no previous generation"):
        saved(tmp_path, "c")


def test_missing_newest_uses_the_previous_generation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for checkpoint in (5, 9):
        with sc.DirectoryCheckpoints(tmp_path) as store:
            store.save("c", {0: progress(checkpoint)})
    (tmp_path / "c.arrow").unlink()
    with caplog.at_level(logging.WARNING, logger="streamcore"):
        assert saved(tmp_path, "c") == {0: progress(5)}
    assert any("is missing" in r.message for r in caplog.records)


def test_leftover_temp_files_are_ignored_and_removed(tmp_path: Path) -> None:
    with sc.DirectoryCheckpoints(tmp_path) as store:
        store.save("c", {0: progress(5)})
    (tmp_path / "c.arrow.tmp").write_bytes(b"half a write")
    assert saved(tmp_path, "c") == {0: progress(5)}
    assert not (tmp_path / "c.arrow.tmp").exists()


def test_consumer_names_are_escaped_into_file_names(tmp_path: Path) -> None:
    names = ["orders.v2", "a/b", "x.prev", "x", "ünï cödé", "..", "%41"]
    with sc.DirectoryCheckpoints(tmp_path) as store:
        for i, name in enumerate(names):
            store.save(name, {0: progress(i)})
    for i, name in enumerate(names):
        assert saved(tmp_path, name) == {0: progress(i)}
    assert set(durable.read_directory(tmp_path)) == set(names)
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())


def test_same_consumer_from_two_stores_in_one_process_is_refused(tmp_path: Path) -> None:
    first = sc.DirectoryCheckpoints(tmp_path)
    first.load("c")
    first.load("c")  # the same store object may load again
    second = sc.DirectoryCheckpoints(tmp_path)
    with pytest.raises(durable.LockedError, match=rf"consumer 'c'.*{os.getpid()}") as info:
        second.load("c")
    assert info.value.pid == os.getpid()
    second.load("other")  # other consumers are free
    first.close()
    assert second.load("c") == {}
    second.close()


def test_two_apps_with_the_same_consumer_and_directory(tmp_path: Path) -> None:
    stream = sc.MemoryStream()
    first = sc.App(checkpoints=str(tmp_path))
    first.consumer(stream, name="c")(lambda batch: None)
    second = sc.App(checkpoints=tmp_path)
    with pytest.raises(durable.LockedError, match="consumer 'c'"):
        second.consumer(stream, name="c")(lambda batch: None)
    second.close()
    first.close()


def test_lock_held_by_another_process_names_its_pid_and_dies_with_it(tmp_path: Path) -> None:
    script = (
        "import sys, streamcore as sc; store = sc.DirectoryCheckpoints(sys.argv[1]); "
        "store.load('c'); print('ready', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        store = sc.DirectoryCheckpoints(tmp_path)
        with pytest.raises(durable.LockedError, match=f"process {holder.pid}") as info:
            store.load("c")
        assert info.value.pid == holder.pid
        assert info.value.path == tmp_path / "c.lock"
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the flock
        holder.communicate()
    assert store.load("c") == {}
    store.close()


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(durable.StorageError, match=r"cannot create the checkpoint directory"):
        sc.DirectoryCheckpoints(tmp_path / "file" / "cp")
    with pytest.raises(durable.StorageError, match=r"cannot create the checkpoint directory"):
        sc.App(checkpoints=tmp_path / "file" / "cp")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(durable.StorageError, match="is not writable"):
            sc.DirectoryCheckpoints(tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_failing_writes_are_logged_raised_by_flush_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = sc.DirectoryCheckpoints(tmp_path)
    monkeypatch.setattr(durable, "RETRY_AFTER_ERROR", 0.01)
    real = os.fsync
    failing = threading.Event()
    failing.set()

    def fsync(fd: int) -> None:
        if failing.is_set():
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with caplog.at_level(logging.WARNING, logger="streamcore"):
        store.save("c", {0: progress(1)})
        with pytest.raises(durable.StorageError, match=r"c\.arrow.*No space left"):
            store.flush(timeout=10)
        store.save("c", {0: progress(2)})  # saving goes on: the checkpoint only lags
        assert isinstance(store.error, OSError)
        failing.clear()  # the disk recovers; the writer retries with the latest progress
        store.save("c", {0: progress(3)})
        for _ in range(1000):
            if store.error is None:
                break
            threading.Event().wait(0.01)
        assert store.flush(timeout=10)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left" in errors[0].message  # once, not per retry
    assert any("written again" in r.message for r in caplog.records)
    store.close()
    assert saved(tmp_path, "c") == {0: progress(3)}


def test_group_commit_coalesces_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = 0
    real = durable.atomic_write

    def counting(*args: object, **kwargs: object) -> None:
        nonlocal writes
        writes += 1
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(durable, "atomic_write", counting)
    store = sc.DirectoryCheckpoints(tmp_path, checkpoint_interval=0.2)
    for seq in range(1000):
        store.save("c", {seq % 4: progress(seq)})
    assert store.flush(timeout=10)
    store.close()
    assert 1 <= writes <= 5
    assert saved(tmp_path, "c") == {s: progress(996 + s) for s in range(4)}


def test_checkpoint_interval_is_validated(tmp_path: Path) -> None:
    with pytest.raises(sc.ConfigError, match="checkpoint_interval"):
        sc.DirectoryCheckpoints(tmp_path, checkpoint_interval=-1)


def test_app_with_a_directory_resumes_after_a_restart(tmp_path: Path) -> None:
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, clock=clock)
    stream.put([{"key": f"k{i}", "n": i} for i in range(50)])
    seen: list[int] = []

    def run() -> None:
        with sc.App(checkpoints=tmp_path / "state", clock=clock) as app:

            @app.consumer(stream, batch_size=7, parallelization=2)
            def handle(batch: sc.Batch) -> None:
                seen.extend(batch.records.column("n").to_pylist())

            app.run(until_idle=True)

    run()
    stream.put([{"key": f"k{i}", "n": i} for i in range(50, 60)])
    run()
    assert sorted(seen) == list(range(60))  # the second App skipped what the first did
    loaded = saved(tmp_path / "state", "handle")
    assert {s: p.checkpoint for s, p in loaded.items()} == {
        s: stream.shard_log(s).next_seq - 1 for s in stream.shard_ids
    }
    assert all(len(p.lanes) == 2 for p in loaded.values())


@pytest.mark.parametrize("value", [42, b"dir", object()])
def test_app_rejects_other_checkpoint_values(value: object) -> None:
    with pytest.raises(sc.ConfigError, match="checkpoints="):
        sc.App(checkpoints=value)  # type: ignore[arg-type]


# -- the command line ------------------------------------------------------------------


def test_cli_checkpoints_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sc.DirectoryCheckpoints(tmp_path) as store:
        store.save("orders", {0: progress(41, lanes=2), 3: progress(-1)})
        store.save("clicks", {1: progress(7, windows=b"abc")})
    assert cli_main(["checkpoints", "show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in ("orders", "clicks", "41", "41, 42", "none", "3 B", "orders.arrow"):
        assert text in out, text
    (tmp_path / "clicks.arrow").write_bytes(b"junk")
    assert cli_main(["checkpoints", "show", str(tmp_path)]) == 1
    assert "unreadable" in capsys.readouterr().out


def test_cli_log_info_with_lag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = sc.VirtualClock()
    with sc.LocalLog(tmp_path / "log", shards=2, clock=clock) as log:
        log.put([{"key": f"k{i}", "n": i} for i in range(30)])
        with sc.App(checkpoints=tmp_path / "cp", clock=clock) as app:

            @app.consumer(log, batch_size=5)
            def reader(batch: sc.Batch) -> None:
                pass

            app.run(until_idle=True)
        log.put([{"key": f"k{i}", "n": i} for i in range(30, 40)])
        next_seqs = [log.shard_log(s).next_seq for s in log.shard_ids]
    assert cli_main(["log", "info", str(tmp_path / "log"), "--checkpoints", str(tmp_path / "cp")]) == 0
    out = capsys.readouterr().out
    assert "lag reader" in out
    lines = [line for line in out.splitlines() if line.startswith("│")]
    assert len(lines) == 2
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in lines]
    assert [int(c[3]) for c in cells] == next_seqs
    assert sum(int(c[6]) for c in cells) == 10  # the records put after the run
    assert cli_main(["log", "info", str(tmp_path)]) == 1
    assert "not a streamcore log" in capsys.readouterr().out


def test_open_window_state_survives_a_restart(tmp_path: Path) -> None:
    clock = sc.VirtualClock(start=1_700_000_000.0)  # windows of 60 s start 20 s before
    log = sc.LocalLog(tmp_path / "log", clock=clock)
    for i in range(6):
        log.put([{"key": "k", "v": i}])
        clock.advance(1)
    finals: list[tuple[int, int]] = []

    def run(**kwargs: Any) -> None:
        with sc.App(checkpoints=tmp_path / "cp", clock=clock) as app:

            @app.consumer(log, batch_size=2, tumbling_window=60, name="sums")
            def handle(batch: sc.Batch) -> None:
                if batch.is_final:
                    finals.append((batch.state.get("sum", 0), batch.state.get("n", 0)))
                    return
                values = batch.records.column("v").to_pylist()
                batch.state["sum"] = batch.state.get("sum", 0) + sum(values)
                batch.state["n"] = batch.state.get("n", 0) + len(values)

            app.run(**kwargs)

    run(timeout=5)  # the window stays open: its state is saved with the checkpoint
    assert finals == []
    stored = saved(tmp_path / "cp", "sums")[0]
    assert stored.checkpoint == 5 and stored.windows
    for i in range(6, 9):
        log.put([{"key": "k", "v": i}])
    run(until_idle=True)  # a new App: restores the open window's state, then closes it
    assert finals == [(sum(range(9)), 9)]
    log.close()
