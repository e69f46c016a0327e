"""Foreign processes that keep every signal sent to them, so a test can prove none was sent.

A stranger blocks every signal it can (all but SIGKILL and SIGSTOP) before it says it is ready:
a SIGTERM or SIGINT sent to it, or to its group, then stays pending, and the kernel lists it in
``/proc/PID/status`` (``ShdPnd``/``SigPnd``) the moment ``kill`` returns; a SIGKILL ends it. So
``untouched`` right after the command under test has returned is the proof, with no sleep that
hopes a signal would have landed by then.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BLOCKING = "import signal, time; signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals()); time.sleep(600)"


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def wait_blocking(pid: int, timeout: float = 30.0) -> None:
    """Wait until ``pid`` has blocked its signals (its ``SigBlk`` mask is set)."""
    deadline = time.monotonic() + timeout
    while int(_status(pid).get("SigBlk", "0"), 16) == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} did not block its signals within {timeout:.0f} s: {_status(pid)}")
        time.sleep(0.01)


def start(session: bool = True) -> subprocess.Popen:
    """A stranger (by default the leader of a process group and session of its own), ready."""
    proc = subprocess.Popen([sys.executable, "-c", BLOCKING], start_new_session=session)
    wait_blocking(proc.pid)
    return proc


def pending(pid: int) -> set[int]:
    """The signal numbers pending for ``pid`` (process-wide and its main thread's)."""
    st = _status(pid)
    mask = int(st.get("ShdPnd", "0"), 16) | int(st.get("SigPnd", "0"), 16)
    return {n + 1 for n in range(64) if mask >> n & 1}


def untouched(pid: int) -> bool:
    """Alive (not a zombie) and no signal pending: nothing was sent to it since it blocked them."""
    st = _status(pid)
    return bool(st) and st.get("State", "")[:1] not in ("Z", "X") and not pending(pid)
