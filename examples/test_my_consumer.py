"""Test your own consumer with ``streamcore.testing``.

A stream consumer meets retries, redeliveries, duplicate deliveries, time-outs
and crashes in production. ``check_consumer`` injects them on purpose, on a
virtual clock, and compares the consumer's effects with those of a clean run:
a consumer that double-counts a redelivered batch, or loses a record when it
fails halfway through one, is caught with a shrunk counterexample.

Run it with pytest (the repository's default ``testpaths`` do not include
``examples/``):

    python -m pytest examples/test_my_consumer.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

import streamcore as sc
from streamcore.testing import (
    ConsumerCheckError,
    DeliveryLog,
    assert_checkpoints_monotonic,
    assert_key_order,
    assert_no_loss,
    check_consumer,
    consumer_options,
    fault_point,
    records,
)

Consumer = tuple[Callable[[sc.Batch], Any], Callable[[], Any]]


# -- the consumer under test ----------------------------------------------------------------
#
# Each record moves money on an account (the record's key). The consumer keeps
# every account's balance in a "database" (a dict here). check_consumer calls
# the factory once per run, so that each run starts from an empty database.


def balances_consumer() -> Consumer:
    """Correct: applies each record once, whatever is delivered again.

    It stores, with each balance, the seq of the last record applied to it.
    A key lives on one shard and its records reach the handler in seq order
    (streamcore keeps per-key order, across lanes and retries), so a record
    whose seq is not above the stored one was applied already: skip it.
    """
    ledger: dict[Any, tuple[int, int]] = {}  # account -> (balance, seq of the last record applied)

    def handle(batch: sc.Batch) -> None:
        seqs, keys, values = (batch.records.column(c).to_pylist() for c in ("seq", "key", "value"))
        for seq, account, amount in zip(seqs, keys, values, strict=True):
            balance, applied = ledger.get(account, (0, -1))
            if seq <= applied:
                continue
            fault_point()  # a failure may strike between two writes
            ledger[account] = (balance + amount, seq)  # one write: balance and seq together

    return handle, lambda: {account: balance for account, (balance, _) in ledger.items()}


def naive_balances_consumer() -> Consumer:
    """Broken: adds every delivered record, so a redelivered batch is counted twice."""
    ledger: dict[Any, int] = {}

    def handle(batch: sc.Batch) -> None:
        for account, amount in zip(
            batch.records["key"].to_pylist(), batch.records["value"].to_pylist(), strict=True
        ):
            fault_point()
            ledger[account] = ledger.get(account, 0) + amount

    return handle, lambda: ledger


def expected_balances(placed: pa.Table) -> dict[Any, int]:
    """What a correct consumer leaves: the sum of each account's amounts."""
    out: dict[Any, int] = {}
    for account, amount in zip(placed["key"].to_pylist(), placed["value"].to_pylist(), strict=True):
        out[account] = out.get(account, 0) + amount
    return out


# -- the tests ------------------------------------------------------------------------------------


def test_balances_survive_retries_duplicates_and_crashes() -> None:
    check_consumer(
        balances_consumer,
        records(max_rows=50, key_cardinality=(1, 5)),  # tables with 'key' and 'value' (int64) columns
        options=consumer_options(parallelization=(1, 3), batch_size=(1, 10)),
        shards=2,
        expected=expected_balances,  # optional: the clean run must also match an oracle
        max_examples=25,
    )


def test_the_naive_consumer_is_caught() -> None:
    with pytest.raises(ConsumerCheckError) as info:
        check_consumer(naive_balances_consumer, records(max_rows=20, key_cardinality=(1, 3)), max_examples=50)
    # The message shows the shrunk counterexample: which fault struck which batch,
    # and the first differing effect, e.g. "effect 'a': expected 5, got 10".
    print(info.value)
    assert info.value.reason == "effects"


def test_invariants_on_a_hand_made_run() -> None:
    # The invariant checkers work on any delivery log, not only inside check_consumer.
    clock = sc.VirtualClock()
    stream = sc.MemoryStream(shards=2, clock=clock)
    placed = stream.put(pa.table({"key": ["a", "b", "a", "c", "a", "b"], "value": [5, 1, -2, 7, 3, 4]}))
    app = sc.App(clock=clock)
    handle, read_balances = balances_consumer()
    log = DeliveryLog(handle)  # records every batch, then calls the handler
    samples = []

    def observed(batch: sc.Batch) -> None:
        samples.append(app.checkpoints())
        log(batch)

    app.consumer(stream, name="balances", batch_size=2, parallelization=2)(observed)
    app.run(until_idle=True)
    samples.append(app.checkpoints())

    assert_no_loss(log, placed)  # every record reached the handler
    assert_key_order(log)  # each account's records came in order
    assert_checkpoints_monotonic(samples)  # progress never went back
    assert read_balances() == {"a": 6, "b": 5, "c": 7}


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
