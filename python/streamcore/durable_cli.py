"""``python -m streamcore checkpoints show DIR`` and ``python -m streamcore log info PATH``.

Both only read: they take no lock, so they work beside a running App, and
they never repair anything (a torn tail is reported, not truncated).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from streamcore.durable import CorruptFileError, Generation, read_directory
from streamcore.sources.locallog import inspect_log


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # a pipe or a log: no wrapping at 80 columns
        console = Console(width=140)
    return console


def _seq(seq: int) -> str:
    return "none" if seq < 0 else str(seq)


def checkpoints_main(argv: Sequence[str]) -> int:
    """``checkpoints show DIR``: every consumer's checkpoint per shard."""
    parser = argparse.ArgumentParser(
        prog="python -m streamcore checkpoints",
        description="Inspect a checkpoint directory (App(checkpoints=DIR)).",
    )
    commands = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    show = commands.add_parser("show", help="print every consumer's checkpoint per shard")
    show.add_argument("directory", metavar="DIR", help="the checkpoint directory")
    args = parser.parse_args(list(argv))
    console = _console()
    try:
        found = read_directory(args.directory)
    except OSError as exc:
        console.print(f"[red]cannot read {args.directory!r}: {exc.strerror or exc}[/red]")
        return 1
    table = Table(title=f"checkpoints in {args.directory}")
    table.add_column("consumer", style="bold")
    table.add_column("shard", justify="right")
    table.add_column("checkpoint seq", justify="right")
    table.add_column("lanes (last done seq of each)")
    table.add_column("window state", justify="right")
    table.add_column("generation", justify="right")
    table.add_column("file")
    status = 0
    for consumer, entry in found.items():
        if isinstance(entry, CorruptFileError):
            table.add_row(consumer, "-", "-", "-", "-", "-", f"[red]{entry}[/red]", end_section=True)
            status = 1
            continue
        assert isinstance(entry, Generation)
        shards = sorted(entry.progress)
        if not shards:
            table.add_row(consumer, "-", "-", "-", "-", str(entry.generation), entry.path.name)
        for i, shard in enumerate(shards):
            p = entry.progress[shard]
            lanes = ", ".join(_seq(seq) for seq in p.lanes)
            table.add_row(
                consumer if i == 0 else "",
                str(shard),
                _seq(p.checkpoint),
                lanes,
                f"{len(p.windows)} B" if p.windows else "",
                str(entry.generation) if i == 0 else "",
                entry.path.name if i == 0 else "",
                end_section=i == len(shards) - 1,
            )
    if not found:
        console.print(f"no checkpoints in {args.directory}")
        return status
    console.print(table)
    return status


def log_main(argv: Sequence[str]) -> int:
    """``log info PATH [--checkpoints DIR]``: a LocalLog's shards, segments and sizes (and lag)."""
    parser = argparse.ArgumentParser(
        prog="python -m streamcore log",
        description="Inspect a LocalLog directory.",
    )
    commands = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    info = commands.add_parser("info", help="print each shard's segments, seqs and bytes")
    info.add_argument("path", metavar="PATH", help="the log directory (sc.LocalLog(PATH))")
    info.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="a checkpoint directory: add each consumer's lag (records not yet done) per shard",
    )
    args = parser.parse_args(list(argv))
    console = _console()
    try:
        meta, shards = inspect_log(args.path)
    except (CorruptFileError, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    consumers: dict[str, Generation] = {}
    status = 0
    if args.checkpoints:
        try:
            found = read_directory(args.checkpoints)
        except OSError as exc:
            console.print(f"[red]cannot read {args.checkpoints!r}: {exc.strerror or exc}[/red]")
            return 1
        for consumer, entry in found.items():
            if isinstance(entry, CorruptFileError):
                console.print(f"[red]{consumer}: {entry}[/red]")
                status = 1
            else:
                consumers[consumer] = entry
    title = f"log {meta.get('name')!r} at {args.path}: {len(shards)} shard(s)"
    table = Table(title=title)
    table.add_column("shard", justify="right", style="bold")
    table.add_column("segments", justify="right")
    table.add_column("first seq", justify="right")
    table.add_column("next seq", justify="right")
    table.add_column("records", justify="right")
    table.add_column("bytes", justify="right")
    for consumer in consumers:
        table.add_column(f"lag {consumer}", justify="right")
    table.add_column("lineage")
    opened = set(meta.get("open", [s.shard for s in shards]))
    parents = {int(d["id"]): d.get("parents", []) for d in meta.get("shards", [])}
    for s in shards:
        row = [
            str(s.shard),
            str(s.segments),
            str(s.first_seq),
            str(s.next_seq) + (" [yellow](torn tail)[/yellow]" if s.torn else ""),
            f"{s.next_seq - s.first_seq:,}",
            f"{s.nbytes:,}",
        ]
        for entry in consumers.values():
            progress = entry.progress.get(s.shard)
            done_through = progress.checkpoint if progress is not None else -1
            row.append(f"{s.next_seq - max(done_through + 1, s.first_seq):,}")
        lineage = ["closed"] if s.shard not in opened else []
        row.append(", ".join(lineage + [f"from {p}" for p in parents.get(s.shard, [])]))
        table.add_row(*row)
    console.print(table)
    return status
