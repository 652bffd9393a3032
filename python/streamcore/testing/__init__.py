"""Test your own consumers: strategies, fault injection and invariant checkers.

``streamcore.testing`` ships with the package (it needs hypothesis, a
dependency of streamcore) so that users can prove their consumers correct
under the failures a stream consumer meets in production: retries,
redeliveries, duplicate deliveries, time-outs and crashes.

- :func:`check_consumer` runs a consumer cleanly and under hypothesis-drawn
  failure schedules on a virtual clock, and fails with a shrunk
  counterexample when the effects differ.
- :func:`records`, :func:`consumer_options`, :func:`failure_schedules`:
  hypothesis strategies for input tables, consumer options and faults.
- :class:`DeliveryLog`, :func:`assert_no_loss`, :func:`assert_key_order`,
  :func:`assert_checkpoints_monotonic`: invariant checkers for any delivery
  log.
- :func:`fault_point`: marks where, inside a handler, a failure may strike.

Examples
--------
>>> import streamcore as sc
>>> from streamcore.testing import check_consumer, records
>>> def make_consumer():
...     totals = {}
...     def handle(batch: sc.Batch) -> None:
...         for row in batch.records.select(["seq", "key", "value"]).to_pylist():
...             totals[(batch.shard, row["seq"])] = (row["key"], row["value"])
...     return handle, lambda: totals
>>> check_consumer(make_consumer, records(max_rows=40), shards=2, max_examples=5)
"""

from streamcore.testing.harness import (
    MISSING,
    ConsumerCheckError,
    InjectedFault,
    check_consumer,
    fault_point,
)
from streamcore.testing.invariants import (
    Delivery,
    DeliveryLog,
    InvariantViolation,
    assert_checkpoints_monotonic,
    assert_key_order,
    assert_no_loss,
)
from streamcore.testing.strategies import (
    FAULT_KINDS,
    FailureSchedule,
    Fault,
    consumer_options,
    failure_schedules,
    records,
)

__all__ = [
    "FAULT_KINDS",
    "MISSING",
    "ConsumerCheckError",
    "Delivery",
    "DeliveryLog",
    "FailureSchedule",
    "Fault",
    "InjectedFault",
    "InvariantViolation",
    "assert_checkpoints_monotonic",
    "assert_key_order",
    "assert_no_loss",
    "check_consumer",
    "consumer_options",
    "failure_schedules",
    "fault_point",
    "records",
]
