"""Tumbling windows: window bounds and the state carried between invocations.

Windows are aligned to the epoch on arrival time (SEMANTICS 0.4): window
``i`` of size ``W`` seconds covers ``[i * W, (i + 1) * W)``. A window's state
is a dict of JSON values (bytes allowed), carried between the invocations of
one (shard, lane, window), committed only when an invocation succeeds, and
persisted with the checkpoints. A top-level value may also be a live
``sc.Aggregator``: each invocation then works on a native copy of it (cheap:
no serialisation), and it is serialised only when a durable store writes it.
Its ``update`` of a batch folds on a background thread while the framework
commits the invocation and starts the next one (see ``Aggregator.update``).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson

from streamcore import _aggregate
from streamcore._aggregate import aggregators_nbytes as _aggregators_nbytes
from streamcore.aggregate import Aggregator
from streamcore.batch import Window

_BYTES_TAG = "__bytes__"
_AGGREGATOR_TAG = "__aggregator__"


@functools.lru_cache(maxsize=1024)  # every invocation of a window asks for the same one
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
    if isinstance(value, Aggregator):
        return {_AGGREGATOR_TAG: base64.b64encode(value.to_state()).decode()}
    raise TypeError(f"window state holds {type(value).__name__}; expected JSON values or bytes")


def _revive(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    if len(obj) == 1 and _AGGREGATOR_TAG in obj:
        return Aggregator.from_state(base64.b64decode(obj[_AGGREGATOR_TAG]))
    return obj


def encode_state(state: Any) -> bytes:
    """Serialise window state; raises TypeError for values that are not JSON or bytes."""
    return orjson.dumps(state, default=_default)


def decode_state(data: bytes) -> Any:
    return json.loads(data, object_hook=_revive)


def state_nbytes(state: dict[str, Any], limit: int | None = None) -> int:
    """The size ``max_state_bytes`` limits: the JSON size, aggregators by their native bytes.

    With ``limit``, the result only has to say on which side of it the size
    is: a figure that is at most ``limit`` may be an upper bound of the size.
    Raises TypeError for values that are not JSON, bytes or aggregators.
    """
    size = _aggregators_nbytes(state, limit)  # this runs after every window invocation
    if size >= 0:  # every value an aggregator: counted natively
        return size
    aggregators: list[Aggregator] | None = None
    for value in state.values():  # one pass to find them: this runs after every window invocation
        if type(value) is Aggregator or isinstance(value, Aggregator):
            if aggregators is None:
                aggregators = [value]
            else:
                aggregators.append(value)
    if aggregators is None:
        return len(encode_state(state))
    size = 2  # {}
    if len(aggregators) < len(state):
        size = len(encode_state({k: v for k, v in state.items() if not isinstance(v, Aggregator)}))
    if limit is not None:
        # An aggregator folding in the background gives a bound without waiting.
        bound = size
        for agg in aggregators:
            bound += agg._nbytes_bound()
        if bound <= limit:
            return bound
    for agg in aggregators:
        size += agg.nbytes
    return size


# A private copy for one invocation, so a failed one commits nothing: a deep copy, but
# values that cannot change in place are shared and an aggregator is copied natively
# (in constant time); values that share an object still share its copy. Native: this
# runs before every window invocation.
copy_state: Callable[[dict[str, Any]], dict[str, Any]] = _aggregate.copy_window_state
