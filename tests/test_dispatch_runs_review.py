"""Review of the one-lane runs of ``ShardDispatcher``: what test_dispatch_runs does not reach."""

from __future__ import annotations

import subprocess
import sys


def test_a_constructor_failing_after_allocation_does_not_crash() -> None:
    # __init__ allocates the lanes before it unpacks ``backoff``: a bad tuple raised
    # there, and __dealloc__ then freed (and, with runs, decref'd) uninitialised lanes.
    code = (
        "from streamcore._dispatch import ShardDispatcher\n"
        "for n in (1, 3, 8):\n"
        "    for i in range(50):\n"
        "        try:\n"
        "            ShardDispatcher(n, 10, 100, 0.0, 0, backoff=(1.0, 2.0))\n"
        "        except ValueError:\n"
        "            pass\n"
        "        else:\n"
        "            raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        result.returncode,
        result.stderr[-2000:],
    )
