"""The ``streamcore`` command line: ``python -m streamcore <command> [options]``.

Each command owns its options: the arguments after the command name go to its
module's ``main(argv)`` unchanged, so ``python -m streamcore demo --help``
shows the demo's own help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, str] = {
    "demo": "consume a generated clickstream through a sharded in-memory stream",
    "bench": "run the benchmark suite against its baselines and targets",
    "checkpoints": "inspect a checkpoint directory: 'checkpoints show DIR'",
    "log": "inspect a LocalLog directory: 'log info PATH [--checkpoints DIR]'",
}


def _demo(argv: list[str]) -> int:
    from streamcore import demo

    return demo.main(argv)


def _bench(argv: list[str]) -> int:
    import importlib

    _find_benches()
    # Imported by name: the subpackage is mapped from benches/, outside mypy's view.
    runner = importlib.import_module("streamcore.benches.runner")
    return int(runner.main(argv))


def _find_benches() -> None:
    """Make ``streamcore.benches`` importable from a source checkout too.

    An installed streamcore carries the subpackage (``setup.py`` maps it from
    ``benches/``). A checkout used with ``build_ext --inplace`` and
    ``PYTHONPATH=python`` does not, so mount the checkout's ``benches/``
    folder as that subpackage.
    """
    import importlib.util
    from pathlib import Path

    import streamcore

    if importlib.util.find_spec("streamcore.benches") is not None:
        return
    folder = Path(streamcore.__file__).resolve().parent.parent.parent / "benches"
    init = folder / "__init__.py"
    if not init.is_file():
        return  # the import that follows reports the missing package
    spec = importlib.util.spec_from_file_location(
        "streamcore.benches", init, submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["streamcore.benches"] = module
    spec.loader.exec_module(module)


RUNNERS: dict[str, Callable[[list[str]], int]] = {"demo": _demo, "bench": _bench}


def _checkpoints(argv: list[str]) -> int:
    from streamcore import durable_cli

    return durable_cli.checkpoints_main(argv)


def _log(argv: list[str]) -> int:
    from streamcore import durable_cli

    return durable_cli.log_main(argv)


RUNNERS["checkpoints"] = _checkpoints
RUNNERS["log"] = _log


def _parser() -> argparse.ArgumentParser:
    from streamcore import __version__

    parser = argparse.ArgumentParser(
        prog="python -m streamcore",
        description="streamcore: fast batch consumers for streams and queues.",
        epilog="Run 'python -m streamcore <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"streamcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, summary in COMMANDS.items():
        # No help of its own: --help after the command reaches the command's parser.
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything up to the command is ours; everything after it is the command's.
    at = next((i for i, arg in enumerate(argv) if arg in COMMANDS), len(argv))
    args = _parser().parse_args(argv[: at + 1])
    return RUNNERS[args.command](argv[at + 1 :])
