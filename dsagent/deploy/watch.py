"""The watcher of a joined node: it ends this node's engine when the head is gone.

A headless vLLM node keeps running (and holding its GPUs) for minutes after the head stops or
crashes. ``python -m dsagent.deploy.watch NAME`` runs beside a joined node's engine, in its own
session, carrying the deployment's mark (so ``dsagent stop`` ends it too). Every second it asks:

- is this node's engine alive? If not, it ends whatever is left of it and records ``failed``;
- is the head alive? Its ``/health`` once it has answered, before that its master port. When
  the head has been gone for ``GRACE`` seconds, it ends this node's engine and records
  ``stopped`` with the reason.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlsplit

from ..settings import Settings
from ..system.ports import reachable
from ..system.procs import end_processes, leader_alive, processes_of
from .ready import failure_reason, log_tail
from .records import Deployment, load, save
from .state import State

__all__ = ["GRACE", "head_alive", "watch"]

GRACE = 10.0
"""Seconds the head may be unreachable before this node stops (polls are 1 s apart)."""


def head_alive(dep: Deployment, seen_health: bool) -> tuple[bool, bool]:
    """``(alive, health answered)``: ``/health`` of the head's API server; before it has ever
    answered (the head still starts), the master port."""
    import httpx

    try:
        if httpx.get(f"{dep.head_url}/health", timeout=2.0).status_code == 200:
            return True, True
    except httpx.HTTPError:
        pass
    if seen_health:
        return False, True
    host, _, port = dep.master.rpartition(":")
    return reachable(host, int(port) + (1 if dep.dp > 1 else 0)), False


def _end(dep: Deployment, settings: Settings, state: State, reason: str) -> None:
    mine = os.getpid()
    end_processes([p for p in processes_of(dep) if p.pid != mine], grace=8.0)
    dep.state, dep.reason, dep.pid, dep.pgid, dep.watcher_pid = state, reason, None, None, None
    save(settings, dep)
    print(f"dsagent watch: {dep.name}: {reason}", file=sys.stderr, flush=True)


def watch(name: str, settings: Settings, *, grace: float = GRACE, interval: float = 1.0) -> State:
    """Watch deployment ``name`` of ``settings`` until it ends; return how it ended."""
    seen_health, last_ok = False, time.monotonic()
    started = time.monotonic()
    while True:
        dep = load(settings, name)
        if dep is not None and dep.watcher_pid is None and time.monotonic() - started < 10:
            time.sleep(0.1)  # the launcher records this watcher's pid right after starting it
            continue
        if dep is None or dep.watcher_pid != os.getpid():
            return State.STOPPED  # stopped or relaunched: someone else owns it now
        if not leader_alive(dep):
            _end(dep, settings, State.FAILED, f"this node's engine exited: {failure_reason(log_tail(dep.log_file, 30))}")
            return State.FAILED
        alive, seen_health = head_alive(dep, seen_health)
        if alive:
            last_ok = time.monotonic()
        elif time.monotonic() - last_ok > grace:
            head = urlsplit(dep.head_url).netloc or dep.master
            _end(dep, settings, State.STOPPED, f"the head {head} has been gone for {grace:.0f} s; this node stopped")
            return State.STOPPED
        time.sleep(interval)


def main() -> int:
    watch(sys.argv[1], Settings.load())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
