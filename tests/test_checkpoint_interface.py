"""The ``CheckpointStore`` interface as consumers use it: one ``save_shard`` per batch."""

from __future__ import annotations

from typing import Any

import streamcore as sc
from streamcore.checkpoints import CheckpointStore, ShardProgress


class DictStore(CheckpointStore):
    """A user's store: only ``load`` and ``save``."""

    def __init__(self) -> None:
        self.data: dict[str, dict[int, ShardProgress]] = {}
        self.saves = 0

    def load(self, consumer: str) -> dict[int, ShardProgress]:
        return dict(self.data.get(consumer, {}))

    def save(self, consumer: str, progress: dict[int, ShardProgress]) -> None:
        self.saves += 1
        self.data.setdefault(consumer, {}).update(progress)


class CountingMemory(sc.MemoryCheckpoints):
    """A MemoryCheckpoints whose ``save`` is overridden: it must see every save."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def save(self, consumer: str, progress: dict[int, Any]) -> None:
        self.seen.extend((shard, p.checkpoint) for shard, p in progress.items())
        super().save(consumer, progress)


def consume(stream: sc.MemoryStream, store: CheckpointStore, seen: list[int], **options: Any) -> None:
    with sc.App(checkpoints=store) as app:

        @app.consumer(stream, name="c", batch_size=2, **options)
        def handle(batch: sc.Batch) -> None:
            seen.extend(batch.records["n"].to_pylist())

        app.run(until_idle=True)


def test_a_store_with_only_load_and_save_gets_every_batch_and_resumes_a_new_app() -> None:
    stream = sc.MemoryStream(shards=1)
    stream.put([{"key": "k", "n": i} for i in range(5)])
    store = DictStore()
    seen: list[int] = []
    consume(stream, store, seen)
    assert seen == [0, 1, 2, 3, 4]
    assert store.saves == 3  # batches of 2, 2 and 1
    assert store.load("c")[0].checkpoint == 4
    stream.put([{"key": "k", "n": 5}])
    consume(stream, store, seen)
    assert seen == [0, 1, 2, 3, 4, 5]  # resumed after seq 4


def test_an_overridden_save_of_memory_checkpoints_sees_every_save() -> None:
    stream = sc.MemoryStream(shards=1)
    stream.put([{"key": "k", "n": i} for i in range(4)])
    store = CountingMemory()
    consume(stream, store, [])
    assert store.seen == [(0, 1), (0, 3)]
    assert store.load("c")[0].checkpoint == 3


def test_open_windows_are_saved_as_window_and_state_pairs() -> None:
    clock = sc.VirtualClock(start=120.0)
    stream = sc.MemoryStream(shards=1, clock=clock)
    stream.put([{"key": "k", "n": i} for i in range(3)])
    store = sc.MemoryCheckpoints()
    saved_then: list[ShardProgress] = []
    with sc.App(clock=clock, checkpoints=store) as app:

        @app.consumer(stream, name="c", batch_size=2, tumbling_window=60)
        def handle(batch: sc.Batch) -> None:
            assert batch.state is not None
            if batch.first_seq == 2:  # the second batch: the first one's checkpoint is saved
                saved_then.append(store.load("c")[0])
            batch.state["n"] = batch.state.get("n", 0) + len(batch)

        app.run(until_idle=True)
    (progress,) = saved_then
    assert progress.checkpoint == 1
    assert progress.states == {0: (2, {"n": 2})}  # window 2: [120 s, 180 s)
    restored = ShardProgress(progress.checkpoint, progress.lanes, progress.windows)
    assert restored.states == {0: [2, {"n": 2}]}  # decoded from the saved bytes
    final = store.load("c")[0]  # the window closed when the clock reached its end
    assert final.checkpoint == 2 and final.states == {}
