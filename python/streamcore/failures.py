"""The Python side of the failure policy: partial batch responses and on-failure delivery.

The decisions (retry, split, discard) are native (``_retry``, ``_dispatch``);
this module reads what a handler returned (SEMANTICS 2.8) and turns discarded
records into ``FailedBatch`` documents for the on-failure destination (2.7).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from streamcore.batch import BatchFailures

log = logging.getLogger("streamcore")

CONDITIONS = {1: "RetryAttemptsExhausted", 2: "RecordAgeExceeded"}



def timeout_error(seconds: float) -> str:
    """The error of an invocation that ran past its ``timeout``, worded as Lambda words it."""
    return f"Task timed out after {seconds:.2f} seconds"


class InvalidResponse(Exception):
    """A handler's return value that makes the whole batch fail (SEMANTICS 2.8)."""


def reported_ids(result: Any, *, state_only_ok: bool = False) -> list[Any]:
    """The raw identifiers a handler's return value reports as failed (SEMANTICS 2.8, 3.3).

    Success is an empty list: None, ``""``, ``[]``, ``{}``, an empty
    ``BatchFailures`` or ``{"batchItemFailures": None | []}`` (and, for a
    windowed stream handler, ``{"state": ...}`` alone). Raises
    ``InvalidResponse`` for any other shape; the identifiers themselves are
    the caller's to check.
    """
    if result is None or (isinstance(result, (str, list, dict)) and not result):
        return []
    if isinstance(result, BatchFailures):
        return list(result.ids)
    if not isinstance(result, dict):
        raise InvalidResponse(
            f"handler returned {type(result).__name__}; expected None, sc.BatchFailures "
            "or {'batchItemFailures': [...]}"
        )
    if "batchItemFailures" not in result:
        if state_only_ok and set(result) <= {"state"}:
            return []
        raise InvalidResponse(f"response has no batchItemFailures: keys {sorted(map(str, result))}")
    items = result["batchItemFailures"]
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidResponse(f"batchItemFailures is {type(items).__name__}, expected a list")
    ids = []
    for item in items:
        if not isinstance(item, dict) or "itemIdentifier" not in item:
            raise InvalidResponse(f"batch item failure {item!r} has no itemIdentifier")
        ids.append(item["itemIdentifier"])
    return ids


def failed_seqs(result: Any, seqs: pa.Array) -> list[int]:
    """The failed seqs a stream handler reported, validated against the batch's ``seqs``.

    Raises ``InvalidResponse`` for a malformed response or an identifier that is
    not a seq of this batch.
    """
    ids = reported_ids(result, state_only_ok=True)
    if not ids:
        return []
    out = []
    for item_id in ids:
        seq = _as_seq(item_id)
        if seq is None:
            raise InvalidResponse(f"itemIdentifier {item_id!r} is not a sequence number")
        out.append(seq)
    present = pc.is_in(pa.array(out, pa.uint64()), value_set=seqs)
    if not pc.all(present).as_py():
        missing = [s for s, ok in zip(out, present.to_pylist(), strict=True) if not ok]
        raise InvalidResponse(f"itemIdentifier {missing[0]} is not in the batch")
    return out


def _as_seq(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _iso(epoch_ms: int, *, whole_seconds: bool = False) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    if whole_seconds:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class FailedBatch:
    """Records discarded by the failure policy, as an on-failure destination receives them.

    Attributes
    ----------
    consumer, source : str
        Consumer and stream names.
    shard, first_seq, last_seq, size : int
        Where the discarded records were and how many.
    condition : str
        ``"RetryAttemptsExhausted"`` or ``"RecordAgeExceeded"``.
    attempts : int
        Invocations of exactly these records (AWS ``approximateInvokeCount``).
    error : str or None
        The last error, or None after a partial batch response or an age discard.
    function_error : bool
        True when the last failure was an exception or a timeout (``"Unhandled"``).
    first_arrival, last_arrival : datetime
        Arrival of the first and last record (aware UTC).
    timestamp : datetime
        When they were discarded, on the App's clock.
    records : pyarrow.RecordBatch
        The discarded records themselves.
    """

    consumer: str
    source: str
    shard: int
    first_seq: int
    last_seq: int
    size: int
    condition: str
    attempts: int
    error: str | None
    function_error: bool
    first_arrival: datetime
    last_arrival: datetime
    timestamp: datetime
    records: pa.RecordBatch

    def to_aws(self) -> dict[str, Any]:
        """The AWS on-failure destination document (SEMANTICS 2.7), metadata only."""
        doc: dict[str, Any] = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"arn:aws:lambda:local:000000000000:function:{self.consumer}",
                "condition": self.condition,
                "approximateInvokeCount": self.attempts,
            },
        }
        if self.condition != "RecordAgeExceeded":
            doc["responseContext"] = {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled" if self.function_error else None,
            }
        doc["version"] = "1.0"
        doc["timestamp"] = _iso(int(self.timestamp.timestamp() * 1000))
        doc["KinesisBatchInfo"] = {
            "shardId": shard_name(self.shard),
            "startSequenceNumber": str(self.first_seq),
            "endSequenceNumber": str(self.last_seq),
            "approximateArrivalOfFirstRecord": _iso(int(self.first_arrival.timestamp() * 1000)),
            "approximateArrivalOfLastRecord": _iso(int(self.last_arrival.timestamp() * 1000)),
            "batchSize": self.size,
            "streamArn": f"arn:aws:kinesis:local:000000000000:stream/{self.source}",
        }
        return doc


def shard_name(shard: int) -> str:
    """Kinesis-style shard id: ``shardId-000000000001``."""
    return f"shardId-{shard:012d}"


def deliver(destination: Any, failed: FailedBatch) -> None:
    """Hand ``failed`` to an on-failure destination; raises if the destination does.

    A callable receives the ``FailedBatch``; a stream receives the JSON document
    as a record's ``data`` keyed by the shard id; a queue as a message body.
    """
    if destination is None:
        log.warning(
            "discarded %d records of %s shard %d (seq %d..%d): %s, no on_failure destination",
            failed.size, failed.source, failed.shard, failed.first_seq, failed.last_seq,
            failed.condition,
        )
        return
    if hasattr(destination, "put"):
        destination.put([orjson.dumps(failed.to_aws())], keys=[shard_name(failed.shard)])
    elif hasattr(destination, "send"):
        doc = failed.to_aws()
        if getattr(destination, "fifo", False):
            destination.send(
                [orjson.dumps(doc)],
                group_id=shard_name(failed.shard),
                dedup_id=doc["requestContext"]["requestId"],
            )
        else:
            destination.send([orjson.dumps(doc)])
    else:
        destination(failed)
