"""The README's Python examples run as written (in order, in one namespace, in a scratch directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the durable example writes data/ and state/
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
            app = namespace.get("app")
            if app is not None and "until_idle" not in block:
                app.run(until_idle=True, timeout=60)  # type: ignore[attr-defined]
    finally:
        os.chdir(cwd)
        app = namespace.get("app")
        if app is not None:
            app.close()  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "{'handle': {" in out  # the tour printed its checkpoints
