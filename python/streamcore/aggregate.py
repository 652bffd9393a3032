"""Keyed aggregation of Arrow records: ``Aggregator`` and ``window_start``.

``Aggregator`` folds record batches into per-group ``count``, ``sum``,
``min``, ``max`` and ``mean`` with the native ``_aggregate`` core: no Python
work per row, the GIL released while large inputs are folded. Its results match
pyarrow's ``Table.group_by(by).aggregate(...)``; its partial state can be
merged with another aggregator's or saved as Arrow IPC bytes, which is what a
windowed handler needs to aggregate across batches and invocations.

``window_start`` maps a timestamp or integer column to the start of its
tumbling window, so the window can be part of the group key::

    records = records.append_column("window", window_start(records["ts"], 60))
    agg = Aggregator(by=["window", "user_id"], sum=["value"])
"""

from __future__ import annotations

import datetime as dt
import json
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from streamcore import _aggregate
from streamcore.errors import ConfigError, InvalidRecordsError

__all__ = ["Aggregator", "window_start"]

_AGGREGATES = ("sum", "min", "max", "mean")
_WANT = {
    "sum": _aggregate.WANT_SUM,
    "min": _aggregate.WANT_MIN,
    "max": _aggregate.WANT_MAX,
    "mean": _aggregate.WANT_MEAN,
}
_STATE_KEY = b"streamcore.aggregator"
_INPUT_KEY = b"streamcore.aggregator.input"
_STATE_VERSION = 1
_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

# Key types accepted by conversion: views become their 64-bit-offset layout.
_VIEW_CASTS = {pa.string_view(): pa.large_utf8(), pa.binary_view(): pa.large_binary()}


def _names(option: str, value: object, *, allow_empty: bool) -> list[str]:
    """A list of distinct column names from a name or a sequence of names."""
    if value is None and allow_empty:
        return []
    names = [value] if isinstance(value, str) else value
    allowed = "a list of distinct column names" + ("" if allow_empty else " (at least one)")
    if not isinstance(names, Sequence) or isinstance(names, (bytes, bytearray)):
        raise ConfigError(option, value, allowed)
    out = list(names)
    if not all(isinstance(n, str) for n in out) or len(set(out)) != len(out):
        raise ConfigError(option, value, allowed)
    if not out and not allow_empty:
        raise ConfigError(option, value, allowed)
    return out


def _key_fix(dtype: pa.DataType) -> tuple[pa.DataType, Callable[[pa.Array], pa.Array] | None]:
    """The type a key column is held as, and the conversion that gets it there."""
    if pa.types.is_dictionary(dtype):
        inner, inner_fix = _key_fix(dtype.value_type)

        def decode(arr: pa.Array) -> pa.Array:
            decoded = arr.dictionary_decode()
            return inner_fix(decoded) if inner_fix is not None else decoded

        return inner, decode
    cast = _VIEW_CASTS.get(dtype)
    if cast is not None:
        return cast, lambda arr: arr.cast(cast)
    return dtype, None


class _Plan:
    """Where an input schema's key and value columns are, and how keys are converted."""

    __slots__ = ("any_fix", "fixes", "key_idx", "key_types", "schema", "value_idx", "value_types")

    def __init__(self, schema: pa.Schema, by: list[str], values: list[str]) -> None:
        self.schema = schema
        self.key_idx = [self._index(schema, name) for name in by]
        self.value_idx = [self._index(schema, name) for name in values]
        fixed = [_key_fix(schema.field(i).type) for i in self.key_idx]
        self.key_types = [dtype for dtype, _ in fixed]
        self.fixes = [fix for _, fix in fixed]
        self.any_fix = any(fix is not None for fix in self.fixes)
        self.value_types = [schema.field(i).type for i in self.value_idx]

    @staticmethod
    def _index(schema: pa.Schema, name: str) -> int:
        found = schema.get_all_field_indices(name)
        if len(found) != 1:
            problem = "is missing from" if not found else "appears more than once in"
            msg = f"column {name!r} {problem} the records (columns: {', '.join(schema.names)})"
            raise InvalidRecordsError(msg)
        return int(found[0])


class _Spec:
    """What an Aggregator computes, validated once.

    Shared by every aggregator made with the same arguments (see ``_spec_for``)
    and by their copies, so nothing here changes after ``__init__`` but ``plan``,
    a cache: the last ``_Plan`` made for this spec, which the next aggregator fed
    records of the same schema reuses (a tumbling window makes a new aggregator
    per window).
    """

    __slots__ = ("by", "count", "flags", "layout", "names", "ops", "plan", "values")

    def __init__(
        self, by: Sequence[str] | str, count: bool, given: dict[str, Sequence[str] | str | None]
    ) -> None:
        self.by = _names("by", by, allow_empty=False)
        if not isinstance(count, bool):
            raise ConfigError("count", count, "True or False")
        self.count = count
        self.ops = {op: _names(op, given[op], allow_empty=True) for op in _AGGREGATES}
        # Output names must not collide with each other or with a key column.
        seen = set(self.by)
        for option, name in [("count", "count")] * count + [
            (op, f"{col}_{op}") for op in _AGGREGATES for col in self.ops[op]
        ]:
            if name in seen:
                raise ConfigError(
                    option,
                    given.get(option, count),
                    f"no output column named like another: {name!r}",
                )
            seen.add(name)
        self.values: list[str] = []
        for op in _AGGREGATES:
            self.values += [col for col in self.ops[op] if col not in self.values]
        # The result's column names and, after the keys, its (op, value column) layout.
        self.names: list[str] = [*self.by, *(["count"] if count else [])]
        self.layout: list[tuple[str, int]] = [("count", -1)] if count else []
        for op in _AGGREGATES:
            for col in self.ops[op]:
                self.names.append(f"{col}_{op}")
                self.layout.append((op, self.values.index(col)))
        self.flags = [sum(_WANT[op] for op in _AGGREGATES if col in self.ops[op]) for col in self.values]
        self.plan: _Plan | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"by": list(self.by), "count": self.count, **{op: list(v) for op, v in self.ops.items()}}


# Per thread, the records (Batch.records) the framework handed the handler running on
# it, the binding of the stored batch they are a slice of and the slice's first row
# (see _aggregate.Handed). The consumer sets these around each handler call.
handed = _aggregate.handed


@contextmanager
def handing(
    records: pa.RecordBatch, source: _aggregate.BatchBinding | None = None, offset: int = 0
) -> Iterator[None]:
    """While the block runs on this thread, ``records`` count as handed to a handler
    (``source``: the binding of the batch they were sliced from, at row ``offset``)."""
    handed.records, handed.source, handed.offset = records, source, offset
    try:
        yield
    finally:
        handed.records = handed.source = None
        handed.offset = 0


# Specs by their constructor arguments: a window's new Aggregator skips the validation.
_SPECS: dict[tuple[object, ...], _Spec] = {}
_SPECS_MAX = 256


def _plain(value: object) -> bool:
    """Whether a ``by``/aggregate argument, as keyed, may be cached: None, a str, a tuple of str."""
    if value is None or type(value) is str:
        return True
    return type(value) is tuple and all(type(item) is str for item in value)


def _spec_for(
    by: Sequence[str] | str,
    count: bool,
    sum: Sequence[str] | str | None,
    min: Sequence[str] | str | None,
    max: Sequence[str] | str | None,
    mean: Sequence[str] | str | None,
) -> _Spec:
    """The spec of these constructor arguments: validated the first time, then cached.

    Only plain arguments (strings, lists or tuples of strings, None, a bool
    ``count``) are cached, keyed by their values (lists as tuples), so a
    lookup finds only specs of arguments that validation accepted; ``count``
    must be a bool to be looked up (``1 == True``).
    """
    # Spelled out, without a call per argument: a tumbling window makes a new
    # aggregator per window.
    key = (
        tuple(by) if type(by) is list else by, count,
        tuple(sum) if type(sum) is list else sum,
        tuple(min) if type(min) is list else min,
        tuple(max) if type(max) is list else max,
        tuple(mean) if type(mean) is list else mean,
    )
    cacheable = type(count) is bool
    if cacheable:
        try:
            spec = _SPECS.get(key)
        except TypeError:  # an unhashable argument: not plain
            spec = None
            cacheable = False
        if spec is not None:
            return spec
    spec = _Spec(by, count, {"sum": sum, "min": min, "max": max, "mean": mean})
    if cacheable and all(_plain(value) for i, value in enumerate(key) if i != 1):
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.clear()
        _SPECS[key] = spec
    return spec


class Aggregator(_aggregate.AggregatorCore):
    """Per-group count, sum, min, max and mean over Arrow record batches, natively.

    Parameters
    ----------
    by : list[str] or str
        The group key columns: utf8, large_utf8, binary, large_binary, any
        integer type, or a timestamp, date, time or duration (e.g. a column
        made by ``window_start``). Dictionary keys are decoded and
        string/binary views held as large_utf8/large_binary; the result
        carries the held type. Several columns form a composite key.
    count : bool, default True
        Add a ``count`` column (int64): rows per group, nulls included
        (pyarrow's ``count_all``).
    sum, min, max, mean : list[str] or str, optional
        Columns (any integer type, float32 or float64) to aggregate. The
        result has ``<col>_sum`` (int64 for signed, uint64 for unsigned
        integers, float64 for floats), ``<col>_min`` and ``<col>_max`` (the
        column's type) and ``<col>_mean`` (float64).

    Notes
    -----
    Semantics are pyarrow's hash aggregations: null keys group together; null
    values are skipped and an aggregate over no non-null value is null;
    integer sums wrap around in 64 bits while integer means are computed on a
    float64 sum; a NaN makes the sum and mean NaN, while min and max skip NaN
    unless every value of the group is NaN. Groups come out in order of first
    appearance. Float sums of a merged or restored aggregator are added in a
    different order than a single pass and may differ in the last bits.

    The first records (an empty batch will do) fix the column types; later
    records must have the same types. An aggregator is safe to share between
    threads (calls are serialised). Inputs of 64k rows or more are folded with
    the GIL released; a smaller record batch is folded on a background native
    thread (see ``update``), as a thread that gives the GIL up for
    microseconds of work can wait a whole switch interval to get it back.

    Examples
    --------
    >>> import pyarrow as pa
    >>> agg = Aggregator(by=["user"], sum=["value"])
    >>> agg.update(pa.table({"user": ["a", "b", "a"], "value": [1, 2, 3]}))
    >>> agg.result().to_pylist()
    [{'user': 'a', 'count': 2, 'value_sum': 4}, {'user': 'b', 'count': 1, 'value_sum': 2}]
    """

    # The spec, the plan and the table (_s, _plan, _table) are fields of the native base,
    # which also holds what a windowed handler calls per invocation: update's path for
    # the records handed to it, copy, len, nbytes (see _aggregate.AggregatorCore).
    __slots__ = ()
    _s: _Spec  # (annotations only: the fields are the base's)
    _plan: _Plan | None

    def __init__(
        self,
        by: Sequence[str] | str,
        *,
        count: bool = True,
        sum: Sequence[str] | str | None = None,
        min: Sequence[str] | str | None = None,
        max: Sequence[str] | str | None = None,
        mean: Sequence[str] | str | None = None,
    ) -> None:
        self._s = _spec_for(by, count, sum, min, max, mean)
        self._plan = None
        self._table = None

    # --- spec -------------------------------------------------------------------------

    def _spec(self) -> dict[str, Any]:
        return self._s.as_dict()

    def __repr__(self) -> str:
        spec = self._s
        options = ", ".join(f"{op}={cols!r}" for op, cols in spec.ops.items() if cols)
        return (
            f"Aggregator(by={spec.by!r}, count={spec.count!r}"
            + (f", {options}" if options else "")
            + f") with {len(self)} groups"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (Aggregator.from_state, (self.to_state(),))

    # --- types ------------------------------------------------------------------------

    def _bind(self, key_types: list[pa.DataType], value_types: list[pa.DataType]) -> _aggregate.GroupTable:
        """The group table, created on the first types seen; later types must match."""
        table = self._table
        spec = self._s
        if table is None:
            table = _aggregate.GroupTable(
                spec.by, list(key_types), spec.values, list(value_types), spec.flags
            )
            # Another thread sharing this aggregator may have bound a table while this
            # one was made (the constructor can switch threads): keep that one, whose
            # folds would be lost if it were replaced.
            bound = self._table
            if bound is None:
                self._table = table
                return table
            table = bound
        names = spec.by + spec.values
        for name, held, dtype in zip(names, table.input_types(), [*key_types, *value_types], strict=True):
            if not held.equals(dtype):
                msg = f"column {name!r} has type {dtype}, but this aggregator holds {held} for it"
                raise InvalidRecordsError(msg)
        return table

    def _input_schema(self) -> pa.Schema:
        """Key then value columns with the types held (requires a table)."""
        assert self._table is not None
        names = self._s.by + self._s.values
        return pa.schema([pa.field(n, t) for n, t in zip(names, self._table.input_types(), strict=True)])

    # --- folding ----------------------------------------------------------------------

    def _update_any(self, records: pa.RecordBatch | pa.Table | Any) -> None:
        # update's general path (the native base's update documents it): every input
        # but the handed records the base folds itself.
        if isinstance(records, pa.RecordBatch):
            self._update_batch(records)
            return
        if not isinstance(records, pa.Table):
            if hasattr(records, "__arrow_c_stream__"):
                records = pa.table(records)
            elif hasattr(records, "__arrow_c_array__"):
                self._update_batch(pa.record_batch(records))
                return
            else:
                msg = f"records must be a pyarrow.RecordBatch or Table, got {type(records).__name__}"
                raise TypeError(msg)
        batches = records.to_batches()
        if not batches:
            self._plan_for(records.schema)
        for batch in batches:
            self._update_batch(batch)

    def _plan_for(self, schema: pa.Schema) -> _Plan:
        """The plan for ``schema`` (made, or the spec's last one reused), the table bound."""
        plan = self._plan
        if plan is not None and (schema is plan.schema or schema.equals(plan.schema)):
            return plan
        spec = self._s
        plan = spec.plan
        if plan is None or not schema.equals(plan.schema):
            plan = spec.plan = _Plan(schema, spec.by, spec.values)
        self._bind(plan.key_types, plan.value_types)
        self._plan = plan
        return plan

    def _update_batch(self, batch: pa.RecordBatch) -> None:
        plan = self._plan
        schema = batch.schema
        if plan is None or not (schema is plan.schema or schema.equals(plan.schema)):
            plan = self._plan_for(schema)
        table = self._table
        assert table is not None
        if plan.any_fix:
            column = batch.column
            keys = [
                column(i) if fix is None else fix(column(i))
                for i, fix in zip(plan.key_idx, plan.fixes, strict=True)
            ]
            table.update(keys, [column(i) for i in plan.value_idx])
        else:
            # The records streamcore handed the running handler cannot change: their
            # fold may run on the background thread (see update).
            if batch is handed.records:
                table.update_batch(batch, plan.key_idx, plan.value_idx, True, handed.source, handed.offset)
            else:
                table.update_batch(batch, plan.key_idx, plan.value_idx)

    def merge(self, other: Aggregator) -> None:
        """Fold another aggregator's groups into this one (``other`` is unchanged).

        Raises
        ------
        ValueError
            When ``other`` has a different spec (``by``, ``count`` or the
            aggregates), or holds other column types.
        """
        if not isinstance(other, Aggregator):
            msg = f"other must be an Aggregator, got {type(other).__name__}"
            raise TypeError(msg)
        if other._s is not self._s and other._spec() != self._spec():
            msg = f"cannot merge aggregators with different specs: {other!r} into {self!r}"
            raise ValueError(msg)
        source = other._table
        if source is None:
            return
        types = source.input_types()
        n_keys = len(self._s.by)
        table = self._bind(types[:n_keys], types[n_keys:])
        table.merge_state(source.state_columns())

    def clear(self) -> None:
        """Forget every group (the column types stay fixed)."""
        if self._table is not None:
            self._table.clear()

    # --- output -----------------------------------------------------------------------

    def result(self) -> pa.Table:
        """The aggregates, one row per group in order of first appearance.

        Columns: the ``by`` columns, ``count`` (when asked for), then
        ``<col>_sum``, ``<col>_min``, ``<col>_max`` and ``<col>_mean`` in that
        order, each in the order of its option's list. Before any records
        have fixed the types, the key, sum, min and max columns are of type
        null. The returned table stays valid and unchanged whatever happens to
        the aggregator afterwards: its count, sum, min and max columns and its
        keys' bytes share the aggregator's memory, which the aggregator copies
        before it changes it (so the first update after a result pays that
        copy, and a result keeps those blocks alive after the aggregator).
        """
        table = self._table
        spec = self._s
        if table is not None:
            # One batch imported through the C Data Interface, wrapped as a table.
            # Both steps give the GIL up for a moment (pyarrow imports and validates
            # without it; every Table constructor validates), as did the columns +
            # Table.from_arrays this replaced, at four times the cost.
            return pa.Table.from_batches([table.result_batch(spec.names, spec.layout)])
        arrays: list[pa.Array] = [pa.array([], pa.null()) for _ in spec.by]
        for op, _ in spec.layout:
            dtype = pa.int64() if op == "count" else pa.float64() if op == "mean" else pa.null()
            arrays.append(pa.array([], dtype))
        return pa.Table.from_arrays(arrays, names=spec.names)

    def to_state(self) -> bytes:
        """The partial state as Arrow IPC stream bytes, for ``from_state``.

        One record batch: the key columns, ``count``, and per aggregated
        column its non-null count and partial sums, minima and maxima. The
        spec and the column types travel in the schema metadata.
        """
        metadata = {_STATE_KEY: json.dumps({"version": _STATE_VERSION, **self._spec()}).encode()}
        sink = pa.BufferOutputStream()
        if self._table is None:
            with pa.ipc.new_stream(sink, pa.schema([], metadata=metadata)):
                pass
            return bytes(sink.getvalue().to_pybytes())
        metadata[_INPUT_KEY] = self._input_schema().serialize().to_pybytes()
        schema = self._table.state_schema().with_metadata(metadata)
        columns = self._table.state_columns()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
        return bytes(sink.getvalue().to_pybytes())

    @classmethod
    def from_state(cls, data: bytes | bytearray | memoryview | pa.Buffer) -> Aggregator:
        """An aggregator holding the state that ``to_state`` saved.

        Raises
        ------
        ValueError
            When ``data`` is not the state of an ``Aggregator``.
        """
        try:
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
            table.validate(full=True)
        except (pa.ArrowInvalid, OSError) as exc:
            msg = f"data is not an Aggregator state (Arrow IPC stream): {exc}"
            raise ValueError(msg) from exc
        metadata = table.schema.metadata or {}
        try:
            spec = json.loads(metadata[_STATE_KEY])
            version = spec.pop("version")
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            msg = "data is not an Aggregator state: its schema has no aggregator metadata"
            raise ValueError(msg) from exc
        if version != _STATE_VERSION:
            msg = f"Aggregator state version {version!r} is not supported (expected {_STATE_VERSION})"
            raise ValueError(msg)
        try:
            agg = cls(spec.pop("by"), **spec)
        except (KeyError, TypeError, ConfigError) as exc:
            msg = f"data is not an Aggregator state: its spec is invalid ({exc})"
            raise ValueError(msg) from exc
        if _INPUT_KEY not in metadata:
            if table.num_columns:
                raise ValueError("data is not an Aggregator state: columns without their types")
            return agg
        inputs = pa.ipc.read_schema(pa.py_buffer(metadata[_INPUT_KEY]))
        n_keys = len(agg._s.by)
        state = agg._bind(inputs.types[:n_keys], inputs.types[n_keys:])
        if not table.schema.remove_metadata().equals(state.state_schema()):
            raise ValueError("data is not an Aggregator state: its columns do not fit its spec")
        for batch in table.to_batches():
            state.merge_state(batch.columns)
        return agg


def _units(size: object, unit: str) -> int:
    """``size`` seconds as a whole positive number of ``unit``."""
    per_second = _UNITS_PER_SECOND[unit]
    if isinstance(size, dt.timedelta):
        micros = size // dt.timedelta(microseconds=1)
        step, remainder = divmod(micros * per_second, 1_000_000)
    elif isinstance(size, numbers.Integral) and not isinstance(size, bool):
        step, remainder = int(size) * per_second, 0
    elif isinstance(size, numbers.Real) and not isinstance(size, bool):
        exact = float(size) * per_second
        step = round(exact)
        remainder = 0 if abs(exact - step) <= 1e-9 * max(1.0, abs(exact)) else 1
    else:
        msg = f"size must be a number of seconds or a timedelta, got {type(size).__name__}"
        raise TypeError(msg)
    if remainder or step <= 0:
        msg = f"size={size!r} is invalid: expected a positive whole number of {unit}"
        raise ValueError(msg)
    return int(step)


def _window_start_array(arr: pa.Array, size: object) -> pa.Array:
    dtype = arr.type
    if pa.types.is_timestamp(dtype):
        step = _units(size, dtype.unit)
        return _aggregate.floor_multiple(arr.view(pa.int64()), step).view(dtype)
    if not pa.types.is_integer(dtype):
        msg = f"window_start expects a timestamp or integer column, got {dtype}"
        raise TypeError(msg)
    signed = pa.types.is_signed_integer(dtype)
    limit = 2**63 - 1 if signed else 2**64 - 1
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or not 0 < int(size) <= limit:
        msg = f"size={size!r} is invalid: expected an integer in 1..{limit} (the column's units)"
        raise ValueError(msg)
    wide = pa.int64() if signed else pa.uint64()
    if dtype == wide:
        return _aggregate.floor_multiple(arr, int(size))
    starts = _aggregate.floor_multiple(arr.cast(wide), int(size))
    try:
        return starts.cast(dtype)
    except pa.ArrowInvalid as exc:
        msg = f"a window start with size {size} is below the minimum of {dtype}"
        raise OverflowError(msg) from exc


def window_start(column: pa.Array | pa.ChunkedArray, size: object) -> pa.Array | pa.ChunkedArray:
    """Start of the tumbling window of every value: ``floor(value / size) * size``.

    Windows are aligned to the epoch (SEMANTICS 2.9), also before 1970.

    Parameters
    ----------
    column : pyarrow.Array or pyarrow.ChunkedArray
        A timestamp column (any unit, any time zone) or an integer column.
    size : float, int or datetime.timedelta
        For timestamps the window length in seconds (or a timedelta); it
        must be a whole number of the column's unit. For integers a positive
        integer in the column's own units.

    Returns
    -------
    pyarrow.Array or pyarrow.ChunkedArray
        Same type (unit and time zone kept), same chunking, nulls kept.

    Raises
    ------
    TypeError
        For a column of another type.
    ValueError
        For a size that is not positive or not a whole number of units.
    OverflowError
        When a window start is below the smallest value of the type.
    """
    if isinstance(column, pa.ChunkedArray):
        chunks = [_window_start_array(chunk, size) for chunk in column.chunks]
        if not chunks:
            _window_start_array(pa.array([], column.type), size)  # validates the arguments
        return pa.chunked_array(chunks, type=column.type)
    if isinstance(column, pa.Array):
        return _window_start_array(column, size)
    msg = f"column must be a pyarrow.Array or ChunkedArray, got {type(column).__name__}"
    raise TypeError(msg)
