"""Guards on the source tree: stubs match the native modules, names are exported, time is the clock's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import streamcore as sc

ROOT = Path(__file__).resolve().parent.parent
NATIVE = sorted(p.stem for p in (ROOT / "streamcore").glob("_*.pyx"))
PACKAGE = Path(sc.__file__).parent


def test_every_native_module_has_a_stub() -> None:
    assert NATIVE, "no native modules found"
    for name in NATIVE:
        assert (ROOT / "python" / "streamcore" / f"{name}.pyi").exists(), name


def test_stubs_match_the_built_modules() -> None:
    pytest.importorskip("mypy")
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy.stubtest", *(f"streamcore.{n}" for n in NATIVE),
            "--allowlist", str(ROOT / "tests" / "stubtest_allowlist.txt"),
            "--mypy-config-file", str(ROOT / "pyproject.toml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",  # not the repo root: its streamcore/ folder holds only Cython sources
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_names_are_exported() -> None:
    for name in sc.__all__:
        assert hasattr(sc, name), name
    public = {n for n in dir(sc) if not n.startswith("_") and isinstance(getattr(sc, n), type)}
    assert public <= set(sc.__all__), public - set(sc.__all__)


def test_time_is_only_read_through_the_clock() -> None:
    # SEMANTICS 0.7: no code path calls time.sleep or time.time directly.
    pattern = re.compile(r"\btime\.(time|sleep|monotonic)\(")
    offenders = []
    for path in (ROOT / "python" / "streamcore").rglob("*.py"):
        if path.name in {"clock.py", "demo.py", "cli.py"}:
            continue
        if pattern.search(path.read_text()):
            offenders.append(path.name)
    assert offenders == []


def test_no_python_package_marker_in_the_cython_tree() -> None:
    # An __init__.py there would shadow the installed package whenever the repo root is on sys.path.
    assert not (ROOT / "streamcore" / "__init__.py").exists()
    assert (ROOT / "streamcore" / "__init__.pxd").exists()
