"""Tumbling windows: window bounds and the state carried between invocations.

Windows are aligned to the epoch on arrival time (SEMANTICS 0.4): window
``i`` of size ``W`` seconds covers ``[i * W, (i + 1) * W)``. A window's state
is a dict of JSON values (bytes allowed, e.g. ``Aggregator.to_state()``),
carried between the invocations of one (shard, lane, window), committed only
when an invocation succeeds, and persisted with the checkpoints.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import datetime, timezone
from typing import Any

import orjson

from streamcore.batch import Window

_BYTES_TAG = "__bytes__"


def window_bounds(index: int, size_ms: int) -> Window:
    """The ``Window`` of index ``index`` for windows of ``size_ms`` milliseconds."""
    start = index * size_ms / 1000
    return Window(
        datetime.fromtimestamp(start, tz=timezone.utc),
        datetime.fromtimestamp(start + size_ms / 1000, tz=timezone.utc),
    )


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode()}
    raise TypeError(f"window state holds {type(value).__name__}; expected JSON values or bytes")


def _revive(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    return obj


def encode_state(state: Any) -> bytes:
    """Serialise window state; raises TypeError for values that are not JSON or bytes."""
    return orjson.dumps(state, default=_default)


def decode_state(data: bytes) -> Any:
    return json.loads(data, object_hook=_revive)


def copy_state(state: dict[str, Any]) -> dict[str, Any]:
    """A private copy for one invocation, so a failed one commits nothing."""
    return copy.deepcopy(state)
