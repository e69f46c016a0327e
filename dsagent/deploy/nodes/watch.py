"""The watchers of a multi-node deployment: one beside each node's engine, in its own session,
carrying the deployment's mark (so ``dsagent stop`` ends it too).

On a joined node (``python -m dsagent.deploy.nodes.watch NAME``), every second:

- is this node's engine alive? If not, it tells the head (the roll call, with the log's
  reason and tail), ends whatever is left of the engine and records ``failed``;
- is the head alive? Its ``/health`` once it has answered, before that its master port. When
  the head has been gone for ``GRACE`` seconds, it ends this node's engine and records
  ``stopped`` with the reason;
- every ``BEAT`` seconds it tells the head its state, KV tokens and GPUs.

On the head (``... NAME --head``) it holds the roll call (``rollcall``): when a node reports
its engine gone, the head ends its own engine (the other nodes follow, as for any loss of the
head) and records ``failed`` naming that node; it exits when the head's engine does.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlsplit

from ...errors import UnreadableRecordError
from ...settings import Settings
from ...system.ports import reachable
from ...system.procs import engine_env, spawn
from ..record.identity import MARK, end, leader_alive, mark_for, started_at
from ..record.logs import failure_reason, log_tail, parse_capacity
from ..record.names import files
from ..record.phase import healthy
from ..record.reports import NodeReport
from ..record.state import State
from ..record.store import Deployment, load, update
from .rollcall import RollCall, send_report

__all__ = ["BEAT", "GRACE", "head_alive", "start_watcher", "watch", "watch_head"]

GRACE = 10.0
"""Seconds the head may be unreachable before this node stops (polls are 1 s apart)."""
BEAT = 5.0
"""Seconds between a node's reports to the head."""


def start_watcher(dep: Deployment, settings: Settings, *, head: bool = False) -> Deployment:
    """Start the watcher of ``dep`` on this node (the head's with ``head``); record its pid."""
    env = engine_env(os.environ, DSAGENT_HOME=str(settings.home), **{MARK: mark_for(settings.home, dep.name)})
    proc = spawn([sys.executable, "-m", "dsagent.deploy.nodes.watch", dep.name] + (["--head"] if head else []), env,
                 files(settings, dep.name).watch_log)
    return update(settings, dep.name, watcher_pid=proc.pid, watcher_started=started_at(proc.pid))


def head_alive(dep: Deployment, seen_health: bool) -> tuple[bool, bool]:
    """``(alive, health answered)``: ``/health`` of the head's API server; before it has ever
    answered (the head still starts), the master port."""
    if healthy(dep.head_url):
        return True, True
    if seen_health:
        return False, True
    host, _, port = dep.master.rpartition(":")
    return reachable(host, int(port) + (1 if dep.dp > 1 else 0)), False


def _end(dep: Deployment, settings: Settings, state: State, reason: str) -> None:
    end(dep, grace=8.0, spare=[os.getpid()])
    update(settings, dep.name, state=state, reason=reason, pid=None, pgid=None, leader_started=None, members=[],
           watcher_pid=None, watcher_started=None)
    print(f"dsagent watch: {dep.name}: {reason}", file=sys.stderr, flush=True)


def _mine(settings: Settings, name: str, started: float) -> Deployment | None:
    """This watcher's deployment, or ``None`` once someone else owns it (stopped, relaunched)."""
    while True:
        try:
            dep = load(settings, name)
        except UnreadableRecordError:
            return None
        if dep is not None and dep.watcher_pid is None and time.monotonic() - started < 10:
            time.sleep(0.1)  # the launcher records this watcher's pid right after starting it
            continue
        return dep if dep is not None and dep.watcher_pid == os.getpid() else None


def _report(dep: Deployment, state: str, reason: str = "", tail: str = "") -> None:
    """Tell the head (the token comes from this node's 0600 record, never from a command line); a
    failure is tried three times, as the roll call may be busy (503) for a moment."""
    if not dep.token:
        return
    cap = parse_capacity(log_tail(dep.log_file, 2000))
    report = NodeReport(
        rank=dep.node_rank, ip=dep.env.get("VLLM_HOST_IP", ""), state=state, reason=reason, log_tail=tail,
        kv_tokens=int(cap["kv_cache_tokens"]) if "kv_cache_tokens" in cap else None,
        kv_cache_gib=cap.get("kv_cache_gib"), gpus=dep.gpus)
    for attempt in range(3 if state == "failed" else 1):
        if attempt:
            time.sleep(1.0)
        if send_report(dep.master, dep.token, report):
            return


def watch(name: str, settings: Settings, *, grace: float = GRACE, interval: float = 1.0) -> State:
    """Watch joined deployment ``name`` of ``settings`` until it ends; return how it ended."""
    seen_health, last_ok, last_beat = False, time.monotonic(), 0.0
    started = time.monotonic()
    while True:
        dep = _mine(settings, name, started)
        if dep is None:
            return State.STOPPED
        if not leader_alive(dep):
            tail = log_tail(dep.log_file, 30)
            reason = f"this node's engine exited: {failure_reason(tail)}"
            _report(dep, "failed", reason, tail)
            _end(dep, settings, State.FAILED, reason)
            return State.FAILED
        alive, seen_health = head_alive(dep, seen_health)
        if alive:
            last_ok = time.monotonic()
        elif time.monotonic() - last_ok > grace:
            head = urlsplit(dep.head_url).netloc or dep.master
            _end(dep, settings, State.STOPPED, f"the head {head} has been gone for {grace:.0f} s; this node stopped")
            return State.STOPPED
        if time.monotonic() - last_beat >= BEAT:
            _report(dep, "ready" if alive and seen_health else "joining")
            last_beat = time.monotonic()
        time.sleep(interval)


def watch_head(name: str, settings: Settings, *, interval: float = 1.0) -> State:
    """Hold the roll call of head deployment ``name`` until its engine ends or a node fails."""
    started = time.monotonic()
    dep = _mine(settings, name, started)
    if dep is None:
        return State.STOPPED
    with RollCall(settings, name, dep.token, dep.master, dep.nodes_total) as roll:
        while True:
            dep = _mine(settings, name, started)
            if dep is None or not leader_alive(dep):
                return State.STOPPED
            if roll.failures:
                node = roll.failures[0]
                _end(dep, settings, State.FAILED, f"node {node.rank} ({node.ip}) failed: {node.reason}")
                return State.FAILED
            time.sleep(interval)


def main() -> int:
    settings = Settings.load()
    (watch_head if "--head" in sys.argv[2:] else watch)(sys.argv[1], settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
