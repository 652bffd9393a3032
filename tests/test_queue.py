"""SQS-style queues on their own (no consumer): ``MemoryQueue`` and ``LocalQueue``, SEMANTICS 3.

Every test runs on both queue kinds (``kind`` fixture) unless it is about one
of them. A hypothesis state machine drives random sends, receives, deletes,
visibility changes and time jumps and checks each receive against a model of
the queue (which messages may be received, which must be redriven, counts).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import streamcore as sc

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
KINDS = ["memory", "local"]

QueueFactory = Callable[..., Any]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, tmp_path: Path) -> QueueFactory:
    """``make(name=..., **options)``: a queue of the parametrized kind on its own file."""
    count = [0]

    def factory(**options: Any) -> Any:
        if kind == "memory":
            return sc.MemoryQueue(**options)
        count[0] += 1
        return sc.LocalQueue(tmp_path / f"q{count[0]}.db", **options)

    return factory


def bodies(batch: pa.RecordBatch) -> list[bytes]:
    return batch.column("body").to_pylist()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# sending and receiving


def test_send_returns_unique_uuid_shaped_ids(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock)
    ids = queue.send([b"a", "b", bytearray(b"c")]) + queue.send(b"d") + queue.send("e")
    assert len(ids) == len(set(ids)) == 5
    assert all(UUID.match(i) for i in ids)
    batch = queue.receive(10)
    assert batch.column("message_id").to_pylist() == ids
    assert bodies(batch) == [b"a", b"b", b"c", b"d", b"e"]
    assert batch.schema.names == ["message_id", "body", "receive_count", "sent"]
    assert batch.schema.field("message_id").type == pa.string()
    assert batch.schema.field("receive_count").type == pa.int64()
    assert batch.schema.field("sent").type == pa.timestamp("ms", tz="UTC")
    assert batch.column("receive_count").to_pylist() == [1] * 5
    assert {s.timestamp() for s in batch.column("sent").to_pylist()} == {clock.now()}


def test_message_ids_differ_between_queues(make: QueueFactory) -> None:
    a, b = make(), make()
    assert a.send(b"x")[0] != b.send(b"x")[0]


def test_structured_payloads(make: QueueFactory) -> None:
    queue = make(clock=sc.VirtualClock())
    queue.send([{"order": 1, "item": "apple"}, {"order": 2, "item": "pear"}])
    queue.send(pa.table({"order": [3], "item": ["fig"]}))
    queue.send(pa.record_batch({"item": ["kiwi"], "order": [4]}))  # columns reordered to the schema
    batch = queue.receive(10)
    assert batch.schema.names == ["message_id", "order", "item", "receive_count", "sent"]
    assert batch.column("order").to_pylist() == [1, 2, 3, 4]
    assert batch.column("item").to_pylist() == ["apple", "pear", "fig", "kiwi"]


def test_arrow_capsule_input(make: QueueFactory) -> None:
    class Capsule:
        def __init__(self, table: pa.Table) -> None:
            self.table = table

        def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
            return self.table.__arrow_c_stream__(requested_schema)

    queue = make(clock=sc.VirtualClock())
    queue.send(Capsule(pa.table({"body": [b"p", b"q"]})))
    assert bodies(queue.receive(10)) == [b"p", b"q"]


def test_schema_is_fixed_by_the_first_send(make: QueueFactory) -> None:
    queue = make()
    queue.send([{"n": 1}])
    with pytest.raises(ValueError, match="schema"):
        queue.send([{"m": "x"}])
    with pytest.raises(ValueError, match="schema"):
        queue.send([b"raw"])
    assert len(queue) == 1


@pytest.mark.parametrize("column", ["message_id", "receive_count", "sent"])
def test_reserved_columns(make: QueueFactory, column: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        make().send([{column: 1, "n": 2}])


@pytest.mark.parametrize(
    "data",
    [[b"a", None], [b"a", 3], 5, [{"a": 1}, b"x"], object()],
    ids=["none", "int", "scalar", "mixed", "obj"],
)
def test_bad_input_is_rejected_and_nothing_stored(make: QueueFactory, data: Any) -> None:
    queue = make()
    with pytest.raises(ValueError):
        queue.send(data)
    assert len(queue) == 0


def test_empty_send(make: QueueFactory) -> None:
    queue = make()
    assert queue.send([]) == []
    assert queue.counts() == {"visible": 0, "in_flight": 0, "delayed": 0}


def test_receive_on_an_empty_queue(make: QueueFactory) -> None:
    batch = make().receive(10)
    assert batch.num_rows == 0
    assert batch.schema.names == ["message_id", "body", "receive_count", "sent"]


def test_visibility_timeout_and_receive_count(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock, visibility_timeout=30)
    queue.send([b"a", b"b"])
    first = queue.receive(1)
    assert bodies(first) == [b"a"]
    assert queue.counts() == {"visible": 1, "in_flight": 1, "delayed": 0}
    assert bodies(queue.receive(10)) == [b"b"]
    assert queue.receive(10).num_rows == 0
    clock.advance(29.999)
    assert queue.receive(10).num_rows == 0
    clock.advance(0.001)
    again = queue.receive(10)
    assert sorted(bodies(again)) == [b"a", b"b"]
    assert again.column("receive_count").to_pylist() == [2, 2]
    assert again.column("message_id").to_pylist()[0] == first.column("message_id")[0].as_py()


def test_receive_with_its_own_visibility_timeout(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock, visibility_timeout=30)
    queue.send(b"a")
    queue.receive(1, visibility_timeout=5)
    clock.advance(5)
    assert bodies(queue.receive(1)) == [b"a"]
    with pytest.raises(ValueError, match="visibility_timeout"):
        queue.receive(1, visibility_timeout=43_201)


def test_delete(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock, visibility_timeout=10)
    ids = queue.send([b"a", b"b", b"c"])
    batch = queue.receive(10)
    assert queue.delete(batch.column("message_id")) == 3  # a string array works too
    assert queue.delete(ids) == 0  # already gone: a no-op
    clock.advance(60)
    assert queue.receive(10).num_rows == 0
    assert len(queue) == 0
    ids = queue.send([b"d", b"e"])
    assert queue.delete(ids[1]) == 1  # a visible message can be deleted too
    assert bodies(queue.receive(10)) == [b"d"]
    with pytest.raises(ValueError, match="not an id of this queue"):
        queue.delete(["not-an-id"])
    other = make()
    with pytest.raises(ValueError, match="not an id of this queue"):
        queue.delete(other.send(b"x"))


def test_change_visibility(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock, visibility_timeout=30)
    ids = queue.send([b"a", b"b"])
    queue.receive(10)
    assert queue.change_visibility(ids[0], 0) == 1
    assert bodies(queue.receive(10)) == [b"a"]
    assert queue.change_visibility([ids[1]], 100) == 1
    clock.advance(99)
    assert bodies(queue.receive(10)) == [b"a"]  # a's own 30 s ran out; b waits 100 s
    clock.advance(1)
    assert bodies(queue.receive(10)) == [b"b"]
    with pytest.raises(ValueError, match="timeout"):
        queue.change_visibility(ids, -1)


def test_delay(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock, delay=10)
    queue.send(b"late")
    queue.send(b"now", delay=0)
    queue.send(b"later", delay=20)
    assert queue.counts() == {"visible": 1, "in_flight": 0, "delayed": 2}
    assert bodies(queue.receive(10)) == [b"now"]
    clock.advance(10)
    assert bodies(queue.receive(10)) == [b"late"]
    clock.advance(10)
    assert bodies(queue.receive(10)) == [b"later"]
    with pytest.raises(ValueError, match="delay"):
        queue.send(b"x", delay=901)


def test_retention_drops_old_messages(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock, retention=60, visibility_timeout=5)
    queue.send(b"old")
    queue.receive(1)  # in flight: retention drops it all the same
    clock.advance(30)
    queue.send(b"young")
    clock.advance(30.001)
    assert queue.counts() == {"visible": 1, "in_flight": 0, "delayed": 0}
    assert bodies(queue.receive(10)) == [b"young"]
    assert len(queue) == 1


def test_redrive_after_max_receive_count(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    dead = make(name="dlq", clock=clock)
    queue = make(clock=clock, visibility_timeout=5, max_receive_count=2, dead_letter=dead)
    queue.send([b"a", b"b"])
    assert queue.receive(10).column("receive_count").to_pylist() == [1, 1]
    clock.advance(5)
    assert queue.receive(10).column("receive_count").to_pylist() == [2, 2]
    clock.advance(5)
    assert queue.receive(10).num_rows == 0  # a third receive would exceed 2: redriven instead
    assert len(queue) == 0
    moved = dead.receive(10)
    assert bodies(moved) == [b"a", b"b"]
    assert moved.column("receive_count").to_pylist() == [1, 1]  # new messages in the DLQ


@pytest.mark.parametrize("fifo", [False, True])
def test_refused_redrive_is_kept_and_retried(make: QueueFactory, fifo: bool) -> None:
    """A dead-letter queue that refuses a redrive loses nothing: it is tried again later."""
    clock = sc.VirtualClock()
    dead = make(name="dlq", clock=clock, fifo=fifo)
    queue = make(clock=clock, fifo=fifo, visibility_timeout=5, max_receive_count=1, dead_letter=dead)
    extra = {"group_ids": ["g", "g"], "dedup_ids": ["1", "2"]} if fifo else {}
    queue.send([b"a", b"b"], **extra)
    assert queue.receive(10).num_rows == 2
    clock.advance(5)
    real_send = dead.send
    refusals = []

    def refuse(*args: Any, **kwargs: Any) -> list[str]:
        refusals.append(1)
        raise OSError("dead-letter queue unavailable")

    dead.send = refuse  # type: ignore[method-assign]
    with pytest.raises(OSError, match="unavailable"):
        queue.receive(10)
    assert len(queue) == 2  # still held by this queue
    assert dead.receive(10).num_rows == 0
    assert queue.receive(10).num_rows == 0  # not yet due again: nothing tried
    assert refusals == [1]
    clock.advance(5)
    dead.send = real_send  # type: ignore[method-assign]
    assert queue.receive(10).num_rows == 0  # the retry hands them over
    assert len(queue) == 0
    assert bodies(dead.receive(10)) == [b"a", b"b"]


def test_refused_redrive_is_retried_by_a_consumer(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    dead = make(name="dlq", clock=clock)
    queue = make(clock=clock, visibility_timeout=5, max_receive_count=1, dead_letter=dead)
    queue.send([b"a", b"b", b"c"])
    real_send = dead.send
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(clock.now())
        if len(calls) < 3:
            raise OSError("dead-letter queue unavailable")
        return real_send(*args, **kwargs)

    dead.send = flaky  # type: ignore[method-assign]
    with sc.App(clock=clock) as app:

        @app.consumer(queue, name="q", batch_size=10)
        def handle(batch: sc.Batch) -> None:
            raise RuntimeError("poison")

        app.run(until_idle=True)
    assert len(calls) == 3 and calls[1] - calls[0] >= 5 and calls[2] - calls[1] >= 5
    assert len(queue) == 0
    assert sorted(bodies(dead.receive(10))) == [b"a", b"b", b"c"]


def test_redrive_keeps_structured_payloads(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    dead = make(name="dlq", clock=clock)
    queue = make(clock=clock, visibility_timeout=1, max_receive_count=1, dead_letter=dead)
    queue.send([{"n": 1, "s": "x"}])
    queue.receive(1)
    clock.advance(1)
    queue.send([{"n": 2, "s": "y"}])
    assert queue.receive(10).column("n").to_pylist() == [2]
    assert dead.receive(10).to_pydict()["n"] == [1]


def test_counts_and_len(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(clock=clock)
    queue.send([b"a", b"b", b"c"])
    queue.send(b"d", delay=5)
    queue.receive(2)
    assert queue.counts() == {"visible": 1, "in_flight": 2, "delayed": 1}
    assert len(queue) == 4
    assert "queue" in repr(queue).lower()


def test_close_and_context_manager(make: QueueFactory) -> None:
    with make() as queue:
        queue.send(b"a")
    with pytest.raises(ValueError, match="closed"):
        queue.send(b"b")


def test_a_queue_without_a_clock_uses_its_apps(make: QueueFactory) -> None:
    clock = sc.VirtualClock(start=1_800_000_000.0)
    queue = make()
    with sc.App(clock=clock) as app:
        app.consumer(queue, name="c")(lambda batch: None)
        assert queue.clock is clock
        queue.send(b"a")
        assert queue.receive(1).column("sent")[0].as_py().timestamp() == 1_800_000_000.0


# --------------------------------------------------------------------------
# FIFO


def test_fifo_needs_a_group_and_a_dedup_id(make: QueueFactory) -> None:
    queue = make(fifo=True)
    with pytest.raises(ValueError, match="message group"):
        queue.send([b"a"], dedup_id="1")
    with pytest.raises(ValueError, match="deduplication"):
        queue.send([b"a"], group_id="g")
    with pytest.raises(ValueError, match="group_id is null at row 1"):
        queue.send([{"group_id": "g", "dedup_id": "1"}, {"group_id": None, "dedup_id": "2"}])
    with pytest.raises(ValueError, match="dedup_id is empty at row 0"):
        queue.send([b"a"], group_id="g", dedup_ids=[""])
    with pytest.raises(ValueError, match="group_ids= has 1 values for 2 messages"):
        queue.send([b"a", b"b"], group_ids=["g"], dedup_ids=["1", "2"])
    with pytest.raises(ValueError, match="column 'grp' is missing"):
        queue.send([{"n": 1}], group_id="grp", dedup_id="n")
    assert len(queue) == 0


def test_standard_queues_take_no_groups(make: QueueFactory) -> None:
    with pytest.raises(ValueError, match="FIFO"):
        make().send([b"a"], group_id="g")


def test_fifo_group_sources(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    # a column named group_id is the group by default and becomes the system column
    queue = make(fifo=True, clock=clock, content_based_dedup=True)
    queue.send([{"group_id": "g1", "n": 1}, {"group_id": "g2", "n": 2}])
    batch = queue.receive(10)
    assert batch.schema.names == ["message_id", "n", "group_id", "receive_count", "sent"]
    assert batch.column("group_id").to_pylist() == ["g1", "g2"]
    # a named column stays in the payload
    queue = make(fifo=True, clock=clock, content_based_dedup=True)
    queue.send([{"customer": "c1", "n": 3}], group_id="customer")
    batch = queue.receive(10)
    assert batch.schema.names == ["message_id", "customer", "n", "group_id", "receive_count", "sent"]
    assert batch.column("group_id").to_pylist() == ["c1"]
    # non-string group columns are cast; dedup ids from a column too
    queue = make(fifo=True, clock=clock)
    queue.send(pa.table({"n": [4, 5], "k": [7, 8]}), group_id="k", dedup_id="n")
    assert queue.receive(10).column("group_id").to_pylist() == ["7", "8"]
    # bytes payloads: group_id / dedup_id are the values themselves
    queue = make(fifo=True, clock=clock)
    ids = queue.send([b"x"], group_id="g5", dedup_id="once")
    assert queue.send([b"y"], group_id="g5", dedup_id="once") == ids
    queue.send([b"z", b"w"], group_ids=["g6", "g7"], dedup_ids=[1, 2])
    batch = queue.receive(10)
    assert sorted(zip(batch.column("group_id").to_pylist(), bodies(batch), strict=True)) == [
        ("g5", b"x"), ("g6", b"z"), ("g7", b"w"),
    ]


def test_fifo_order_and_group_lock(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(fifo=True, clock=clock, visibility_timeout=10)
    queue.send(
        [b"a1", b"b1", b"a2", b"b2", b"a3"],
        group_ids=["a", "b", "a", "b", "a"],
        dedup_ids=["1", "2", "3", "4", "5"],
    )
    in_order = {"a": [b"a1", b"a2", b"a3"], "b": [b"b1", b"b2"]}
    first = queue.receive(2)
    assert first.num_rows == 2
    got = bodies(first)
    groups = first.column("group_id").to_pylist()
    for group in set(groups):  # each group taken gives its oldest messages, in order
        mine = [b for b, g in zip(got, groups, strict=True) if g == group]
        assert mine == in_order[group][: len(mine)]
    rest = queue.receive(10)
    assert not set(rest.column("group_id").to_pylist()) & set(groups)  # a busy group delivers nothing
    assert queue.receive(10).num_rows == 0
    queue.delete(first.column("message_id"))
    queue.delete(rest.column("message_id"))
    remaining = [b for g in in_order.values() for b in g if b not in got + bodies(rest)]
    assert sorted(bodies(queue.receive(10))) == sorted(remaining)


def test_fifo_failed_messages_come_back_first(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(fifo=True, clock=clock, visibility_timeout=10)
    ids = queue.send([b"1", b"2", b"3"], group_id="g", dedup_ids=["1", "2", "3"])
    assert bodies(queue.receive(2)) == [b"1", b"2"]
    queue.delete(ids[0])
    assert queue.receive(10).num_rows == 0  # 2 is still in flight: 3 waits
    clock.advance(10)
    again = queue.receive(10)
    assert bodies(again) == [b"2", b"3"]
    assert again.column("receive_count").to_pylist() == [2, 1]


def test_fifo_dedup_window(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    queue = make(fifo=True, clock=clock)
    first = queue.send([b"a"], group_id="g", dedup_id="d1")
    assert queue.send([b"other"], group_id="g", dedup_id="d1") == first  # stored nothing
    assert len(queue) == 1
    queue.delete(first)  # the id is remembered after the delete too
    clock.advance(299)
    assert queue.send([b"a"], group_id="g", dedup_id="d1") == first
    assert len(queue) == 0
    clock.advance(1)
    fresh = queue.send([b"a"], group_id="g", dedup_id="d1")
    assert fresh != first and len(queue) == 1
    # duplicates within one call: the later ones get the first one's id
    ids = queue.send([b"x", b"y", b"z"], group_id="g", dedup_ids=["u", "v", "u"])
    assert ids[0] == ids[2] != ids[1]
    assert len(queue) == 3


def test_fifo_content_based_dedup(make: QueueFactory) -> None:
    queue = make(fifo=True, content_based_dedup=True, clock=sc.VirtualClock())
    a = queue.send([b"same", b"same", b"different"], group_id="g")
    assert a[0] == a[1] != a[2]
    assert queue.send([b"same"], group_id="h") == [a[0]]
    assert len(queue) == 2


def test_fifo_dead_letter_queue_must_be_fifo(make: QueueFactory) -> None:
    with pytest.raises(ValueError, match="dead_letter"):
        make(fifo=True, dead_letter=make(), max_receive_count=1)
    with pytest.raises(ValueError, match="dead_letter"):
        make(dead_letter=make(fifo=True), max_receive_count=1)


def test_fifo_redrive_keeps_groups(make: QueueFactory) -> None:
    clock = sc.VirtualClock()
    dead = make(fifo=True, clock=clock)
    queue = make(fifo=True, clock=clock, visibility_timeout=1, max_receive_count=1, dead_letter=dead)
    queue.send([b"a", b"b"], group_ids=["g", "h"], dedup_ids=["1", "2"])
    queue.receive(10)
    clock.advance(1)
    assert queue.receive(10).num_rows == 0
    moved = dead.receive(10)
    assert sorted(zip(moved.column("group_id").to_pylist(), bodies(moved), strict=True)) == [
        ("g", b"a"), ("h", b"b"),
    ]


# --------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("visibility_timeout", -1),
        ("visibility_timeout", 43_201),
        ("visibility_timeout", float("nan")),
        ("visibility_timeout", "30"),
        ("delay", -0.5),
        ("delay", 901),
        ("retention", 59),
        ("retention", 1_209_601),
        ("max_receive_count", 0),
        ("max_receive_count", 1001),
        ("max_receive_count", 2.0),
        ("max_receive_count", True),
        ("name", ""),
        ("name", 3),
        ("fifo", "yes"),
        ("content_based_dedup", 1),
    ],
)
def test_options_out_of_range(make: QueueFactory, option: str, value: Any) -> None:
    options: dict[str, Any] = {option: value}
    if option == "max_receive_count":
        options["dead_letter"] = make()
    with pytest.raises(ValueError, match=option) as info:
        make(**options)
    assert isinstance(info.value, sc.ConfigError)
    assert info.value.option == option


def test_max_receive_count_and_dead_letter_go_together(make: QueueFactory) -> None:
    with pytest.raises(sc.ConfigError, match="max_receive_count"):
        make(max_receive_count=3)
    with pytest.raises(sc.ConfigError, match="max_receive_count"):
        make(dead_letter=make())
    with pytest.raises(sc.ConfigError, match="dead_letter"):
        make(dead_letter="dlq", max_receive_count=3)


def test_content_based_dedup_is_for_fifo(make: QueueFactory) -> None:
    with pytest.raises(sc.ConfigError, match="content_based_dedup"):
        make(content_based_dedup=True)


@pytest.mark.parametrize("value", [0, 10_001, 1.5, True])
def test_receive_max_messages_range(make: QueueFactory, value: Any) -> None:
    with pytest.raises(sc.ConfigError, match="max_messages"):
        make().receive(value)


# --------------------------------------------------------------------------
# the native core directly


def test_core_compacts_and_drops_chunks() -> None:
    from streamcore import _queue

    core = _queue.QueueCore(False, 1e9, b"00000000-0000-4000-8000-")
    for _ in range(50):
        core.append(1000, 0.0, 0.0)
    for _ in range(500):
        n, first, _last, indices, counts, rc, *_ = core.receive(100, 0.0, 30.0)
        assert indices is None and counts is None and rc == 1
        assert core.settle(first, n, None, None, 1) == 100
    assert len(core) == 0
    assert core.end == 50_000
    assert core.end - core.base < 4096  # slots are reclaimed in steps of at least 4096
    assert len(core.take_dead_chunks()) == 50


def test_core_ids_roundtrip() -> None:
    from streamcore import _queue

    prefix = b"0123abcd-0000-4000-8000-"
    ids = _queue.id_list(prefix, 2**40, 3)
    assert ids[0] == "0123abcd-0000-4000-8000-010000000000"
    assert _queue.parse_ids(prefix, ids).to_pylist() == [2**40, 2**40 + 1, 2**40 + 2]
    assert _queue.parse_ids(prefix, ["x", None, ids[0].upper()], False).to_pylist() == [-1, -1, -1]
    assert _queue.format_ids(prefix, pa.array([5], pa.int64())).to_pylist() == _queue.id_list(prefix, 5, 1)


# --------------------------------------------------------------------------
# model-based: random operations against a model of the queue

RETENTION = 120.0
MAX_RC = 2


@dataclass
class Msg:
    idx: int
    body: bytes
    group: str | None
    sent_ms: int
    visible_at: float
    rc: int = 0
    gone: bool = False


class QueueMachine(RuleBasedStateMachine):
    """Random operations on a queue, each receive checked against the model's rules."""

    kind = "memory"
    fifo = False

    @initialize()
    def start(self) -> None:
        self.clock = sc.VirtualClock()
        self.tmp = tempfile.mkdtemp()
        options: dict[str, Any] = {
            "clock": self.clock, "fifo": self.fifo, "visibility_timeout": 10, "retention": RETENTION,
        }
        if self.kind == "memory":
            self.dead = sc.MemoryQueue(name="dlq", **options)
            self.queue = sc.MemoryQueue(dead_letter=self.dead, max_receive_count=MAX_RC, **options)
        else:
            self.dead = sc.LocalQueue(Path(self.tmp) / "dlq.db", **options)
            self.queue = sc.LocalQueue(
                Path(self.tmp) / "q.db", dead_letter=self.dead, max_receive_count=MAX_RC, **options
            )
        self.msgs: dict[bytes, Msg] = {}
        self.ids: dict[bytes, str] = {}
        self.dead_bodies: list[bytes] = []
        self.counter = 0

    def teardown(self) -> None:
        if hasattr(self, "queue"):
            self.queue.close()
            self.dead.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the model's view --------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def expired(self, m: Msg) -> bool:
        return m.sent_ms < int(self.now() * 1000) - int(RETENTION * 1000)

    def alive(self) -> list[Msg]:
        return [m for m in self.msgs.values() if not m.gone and not self.expired(m)]

    def visible(self, m: Msg) -> bool:
        return m.visible_at <= self.now()

    # -- rules ---------------------------------------------------------------

    @rule(n=st.integers(1, 6), delay=st.sampled_from([0, 0, 0, 3, 15]), groups=st.data())
    def send(self, n: int, delay: float, groups: st.DataObject) -> None:
        payloads = []
        for _ in range(n):
            payloads.append(b"m%d" % self.counter)
            self.counter += 1
        options: dict[str, Any] = {"delay": delay}
        group_list = None
        if self.fifo:
            group_list = groups.draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
            options["group_ids"] = group_list
            options["dedup_ids"] = [p.decode() for p in payloads]
        ids = self.queue.send(payloads, **options)
        sent_ms = int(self.now() * 1000)
        for k, (payload, message_id) in enumerate(zip(payloads, ids, strict=True)):
            group = group_list[k] if group_list else None
            self.msgs[payload] = Msg(len(self.msgs), payload, group, sent_ms, self.now() + delay)
            self.ids[payload] = message_id

    @rule(max_n=st.integers(1, 8))
    def receive(self, max_n: int) -> None:
        before = {m.body: (m.rc, self.visible(m)) for m in self.alive()}
        heads = self.fifo_heads() if self.fifo else {}
        batch = self.queue.receive(max_n)
        got = bodies(batch)
        assert len(got) == len(set(got))
        for body, rc in zip(got, batch.column("receive_count").to_pylist(), strict=True):
            old_rc, was_visible = before[body]
            assert was_visible, body
            assert old_rc < MAX_RC
            assert rc == old_rc + 1
        assert batch.column("message_id").to_pylist() == [self.ids[b] for b in got]
        moved = self.moved_to_dlq()
        for body in moved:
            assert before[body] == (MAX_RC, True)
        receivable = [b for b, (rc, vis) in before.items() if vis and rc < MAX_RC]
        if self.fifo:
            self.check_fifo(got, moved, heads, max_n)
        else:
            assert len(got) == min(max_n, len(receivable))
        for body in got:
            m = self.msgs[body]
            m.rc += 1
            m.visible_at = self.now() + 10
        for body in moved:
            self.msgs[body].gone = True

    def moved_to_dlq(self) -> list[bytes]:
        batch = self.dead.receive(10_000)
        self.dead.delete(batch.column("message_id"))  # else they come back in the DLQ too
        moved = bodies(batch)
        self.dead_bodies += moved
        return moved

    def fifo_heads(self) -> dict[str, list[Msg]]:
        """Per group that may deliver (nothing in flight, first message visible): its messages in order."""
        out: dict[str, list[Msg]] = {}
        for m in sorted(self.alive(), key=lambda m: m.idx):
            assert m.group is not None
            out.setdefault(m.group, []).append(m)
        return {
            g: ms for g, ms in out.items()
            if self.visible(ms[0]) and not any(x.rc and not self.visible(x) for x in ms)
        }

    def check_fifo(
        self, got: list[bytes], moved: list[bytes], heads: dict[str, list[Msg]], max_n: int
    ) -> None:
        taken = set(got) | set(moved)
        total = 0
        for group, ms in heads.items():
            prefix = []
            for m in ms:
                if not self.visible(m):
                    break
                prefix.append(m)
            receivable = [m for m in prefix if m.rc < MAX_RC]
            total += len(receivable)
            mine = [m for m in ms if m.body in taken]
            # a group gives the start of its visible run, in order, and nothing past a gap
            assert [m.body for m in mine] == [m.body for m in prefix[: len(mine)]], group
            order = [b for b in got if self.msgs[b].group == group]
            assert order == sorted(order, key=lambda b: self.msgs[b].idx)
        for body in taken:
            assert self.msgs[body].group in heads  # only groups that could deliver
        assert len(got) == min(max_n, total)

    @precondition(lambda self: any(m.rc for m in self.alive()))
    @rule(data=st.data())
    def delete_some(self, data: st.DataObject) -> None:
        received = sorted((m for m in self.alive() if m.rc), key=lambda m: m.idx)
        chosen = data.draw(st.lists(st.sampled_from(received), max_size=4, unique_by=lambda m: m.idx))
        deleted = self.queue.delete([self.ids[m.body] for m in chosen])
        assert deleted == len(chosen)
        for m in chosen:
            m.gone = True

    @precondition(lambda self: any(m.rc and not self.visible(m) for m in self.alive()))
    @rule(data=st.data(), timeout=st.sampled_from([0, 2, 20]))
    def change_visibility(self, data: st.DataObject, timeout: float) -> None:
        in_flight = sorted((m for m in self.alive() if m.rc and not self.visible(m)), key=lambda m: m.idx)
        chosen = data.draw(
            st.lists(st.sampled_from(in_flight), min_size=1, max_size=3, unique_by=lambda m: m.idx)
        )
        assert self.queue.change_visibility([self.ids[m.body] for m in chosen], timeout) == len(chosen)
        for m in chosen:
            m.visible_at = self.now() + timeout

    @rule(seconds=st.sampled_from([0.5, 3, 10, 10, 40, 130]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def counts_match(self) -> None:
        if not hasattr(self, "queue"):
            return
        alive = self.alive()
        visible = sum(1 for m in alive if self.visible(m))
        in_flight = sum(1 for m in alive if not self.visible(m) and m.rc)
        delayed = sum(1 for m in alive if not self.visible(m) and not m.rc)
        assert self.queue.counts() == {"visible": visible, "in_flight": in_flight, "delayed": delayed}
        assert len(self.queue) == len(alive)


MACHINE_SETTINGS = settings(
    max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class StandardMemory(QueueMachine):
    kind, fifo = "memory", False


class FifoMemory(QueueMachine):
    kind, fifo = "memory", True


class StandardLocal(QueueMachine):
    kind, fifo = "local", False


class FifoLocal(QueueMachine):
    kind, fifo = "local", True


TestStandardMemory = StandardMemory.TestCase
TestStandardMemory.settings = MACHINE_SETTINGS
TestFifoMemory = FifoMemory.TestCase
TestFifoMemory.settings = MACHINE_SETTINGS
TestStandardLocal = StandardLocal.TestCase
TestStandardLocal.settings = settings(MACHINE_SETTINGS, max_examples=20)
TestFifoLocal = FifoLocal.TestCase
TestFifoLocal.settings = settings(MACHINE_SETTINGS, max_examples=20)
