"""Turning what users pass to ``put`` into one Arrow table plus its key column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from streamcore.errors import InvalidRecordsError

SYSTEM_COLUMNS = ("seq", "key", "arrival")


def to_table(data: Any, *, payload_column: str) -> pa.Table:
    """Accept a Table, RecordBatch, Arrow PyCapsule exporter, list of dicts or list of bytes/str."""
    return _without_views(_to_table(data, payload_column))


def _without_views(table: pa.Table) -> pa.Table:
    # Arrow's view layouts lack kernels the shard grouping needs (take); store them as large types.
    for i, field in enumerate(table.schema):
        if pa.types.is_string_view(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.large_utf8()))
        elif pa.types.is_binary_view(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.large_binary()))
    return table


def _to_table(data: Any, payload_column: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    if hasattr(data, "__arrow_c_array__"):
        return pa.Table.from_batches([pa.record_batch(data)])
    if isinstance(data, (list, tuple)):
        return _from_list(data, payload_column)
    msg = (
        f"cannot store {type(data).__name__}: expected a pyarrow Table or RecordBatch, an object "
        "with __arrow_c_stream__, a list of dicts, or a list of bytes/str payloads"
    )
    raise InvalidRecordsError(msg)


def _from_list(items: Sequence[Any], payload_column: str) -> pa.Table:
    if not items:
        return pa.table({})
    first = items[0]
    if isinstance(first, dict):
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidRecordsError(f"row {i} is {type(item).__name__}, expected dict", row=i)
        return pa.Table.from_pylist(list(items))
    if isinstance(first, (bytes, bytearray, memoryview, str)):
        payloads = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                payloads.append(item.encode())
            elif isinstance(item, (bytes, bytearray, memoryview)):
                payloads.append(bytes(item))
            else:
                raise InvalidRecordsError(
                    f"row {i} is {type(item).__name__}, expected bytes or str", row=i
                )
        return pa.table({payload_column: pa.array(payloads, pa.binary())})
    raise InvalidRecordsError(
        f"cannot store a list of {type(first).__name__}: expected dicts or bytes/str payloads", row=0
    )


def key_column(
    table: pa.Table, key: str | None, keys: Sequence[Any] | None, *, what: str = "key"
) -> pa.ChunkedArray:
    """The key of every row: the named column, or the explicit ``keys`` list."""
    if keys is not None:
        if len(keys) != table.num_rows:
            raise InvalidRecordsError(f"{what}s= has {len(keys)} values for {table.num_rows} rows")
        for i, value in enumerate(keys):
            if value is None:
                raise InvalidRecordsError(f"{what} is null at row {i}", row=i)
        try:
            return pa.chunked_array([pa.array(list(keys))])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidRecordsError(f"{what}s= mixes value types: {exc}") from None
    if key is None or key not in table.schema.names:  # schema.names costs a quarter of column_names
        if (table.num_rows and table.column_names == ["data"]) or table.column_names == ["body"]:
            raise InvalidRecordsError(f"bytes payloads need {what}s=[...], one {what} per payload")
        raise InvalidRecordsError(
            f"{what} column {key!r} is missing; columns are {table.column_names}"
        )
    return table.column(key)


def check_reserved(table: pa.Table, key: str | None) -> None:
    """Payload columns must not reuse the names of the system columns."""
    for name in table.schema.names:
        if name in SYSTEM_COLUMNS and not (name == "key" and key == "key"):
            raise InvalidRecordsError(
                f"column {name!r} is reserved for the system columns {list(SYSTEM_COLUMNS)}; "
                "rename it before put()"
            )
