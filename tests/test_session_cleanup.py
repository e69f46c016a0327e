"""A test session ended by SIGTERM or SIGINT still stops every deployment it started.

The child is a real pytest run of ``tests/leak_probe.py`` under this suite's conftest: it starts a
real process tree in a session of its own (as a vLLM launch does, so the child's death alone would
not end it) and records it in the session's home; the parent ends the run with a signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).parent


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _as_from_a_terminal() -> None:
    """The child handles SIGINT as a run started from a terminal does, also when this suite itself
    was started in the background (a shell's ``&`` starts it with SIGINT ignored, and a child keeps
    what it inherits)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_run_ended_by_a_signal_stops_what_it_started(sig):
    env = {k: v for k, v in os.environ.items() if k != "DSAGENT_HOME"}
    child = subprocess.Popen([sys.executable, "-m", "pytest", str(TESTS / "leak_probe.py"), "-s", "-q", "-p",
                              "no:cacheprovider", "-p", "no:randomly", "--rootdir", str(TESTS.parent)],
                             cwd=TESTS.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=_as_from_a_terminal)
    pid = None
    try:
        for line in child.stdout:
            if line.startswith("PROBE "):
                pid = int(line.split()[1])
                break
        assert pid is not None and not _gone(pid)
        child.send_signal(sig)
        out = child.communicate(timeout=60)[0]
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"the probe's process {pid} outlived the run ended by {sig.name}:\n{out}"
    finally:
        if child.poll() is None:
            child.kill()
        if pid is not None and not _gone(pid):
            psutil.Process(pid).kill()
