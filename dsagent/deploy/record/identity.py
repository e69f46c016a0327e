"""Which processes are a deployment's own: one rule, used by stop, status, the supervisor and ps.

A deployment is a process tree: the vLLM API server (the *leader*, started as the leader of a new
session, so its pid is the tree's process group id), ``VLLM::EngineCore`` and one
``VLLM::Worker_*`` per rank; beside it a supervisor or a node's watcher in sessions of their own.
Numbers alone prove nothing: the kernel reuses a dead leader's pid, and with it the group id, for
any process of anyone. So the record keeps the leader's pid *and start time*, and the pids and
start times of the processes seen when it became ready; a process is ours only when proven:

- the recorded leader, alive with its recorded start time;
- a recorded member (pid and start time both match);
- a process started after the launch that carries the deployment's mark (``DSAGENT_DEPLOYMENT``
  in its environment: a watcher, an API server);
- a member of the recorded group, started after the launch, while the group's live leader is our
  leader; when the leader is gone, only such a member titled ``VLLM::*`` or running the launch's
  command line (vLLM's engines set their title, which wipes what /proc shows of their environment).

A group whose live leader is someone else's is never ours, whatever its number, and a group is
signalled as a whole only while its leader is proven ours; otherwise each proven process is
signalled alone, after its start time is checked again (``procs.end_processes``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psutil

from ...system.procs import MARK, ProcInfo, alive, all_processes, end_processes

if TYPE_CHECKING:
    from .store import Deployment

__all__ = [
    "MARK", "end", "leader_alive", "mark_for", "members_now", "orphans", "processes_of", "same_process",
    "started_at", "supervisor_alive",
]

SAME_START = 0.5
"""Seconds two readings of one process's start time may differ (psutil rounds to clock ticks)."""


def mark_for(home: os.PathLike[str] | str, name: str) -> str:
    """The environment mark of deployment ``name`` of the dsagent home ``home`` (unique per home)."""
    return f"{name}@{home}"


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), or ``None`` when there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def same_process(pid: int | None, started: float | None, within: float = SAME_START) -> bool:
    """True while ``pid`` runs and is the process that started at ``started`` (not a reuse).
    Without a recorded start time nothing is proven: ``False``."""
    if not pid or started is None or not alive(pid):
        return False
    when = started_at(pid)
    return when is not None and abs(when - started) < within


def _launched(dep: Deployment) -> float:
    """When the current launch began: its leader's start time (the record's clock as a fallback)."""
    return dep.leader_started or (dep.started_at or 0.0) - 2.0


LEGACY_START = 10.0
"""A record written before dsagent kept the leader's start time has only the launch's clock: its
leader is the process of that pid started within this many seconds of it (what the old rule took)."""


def leader_alive(dep: Deployment) -> bool:
    """True while the deployment's own API server runs (pid and start time as recorded)."""
    if dep.leader_started is None and dep.started_at is not None:  # a record of an older dsagent
        return same_process(dep.pid, dep.started_at, within=LEGACY_START)
    return same_process(dep.pid, dep.leader_started)


def supervisor_alive(dep: Deployment) -> bool:
    """True while the deployment's supervisor (``up --restart``, ``up --foreground``) runs."""
    return same_process(dep.supervisor_pid, dep.supervisor_started)


def _ours(p: ProcInfo, dep: Deployment, mark: str, leader_ours: bool, recorded: dict[int, float]) -> bool:
    if p.pid == dep.pid and leader_ours:
        return True
    if p.pid in recorded and abs(recorded[p.pid] - p.started) < SAME_START:
        return True
    if p.started < _launched(dep) - SAME_START:
        return False  # older than the launch: a stranger that has our numbers
    if p.deployment == mark:
        return True
    if not dep.pgid or p.pgid != dep.pgid:
        return False
    if leader_ours:
        return True
    return p.cmdline.startswith("VLLM::") or p.name.startswith("VLLM") or p.cmdline == " ".join(dep.argv)


def processes_of(dep: Deployment, everything: Sequence[ProcInfo] | None = None) -> list[ProcInfo]:
    """The live processes proven to be ``dep``'s (see the module's rule)."""
    procs = list(everything) if everything is not None else all_processes()
    by_pid = {p.pid: p for p in procs}
    leader_ours = leader_alive(dep)
    group_leader = by_pid.get(dep.pgid or 0)
    if group_leader is not None and not (leader_ours and dep.pgid == dep.pid):
        # the group's live leader is not ours: nothing in that group is, whatever its number
        foreign = dep.pgid
    else:
        foreign = None
    recorded = {int(m["pid"]): float(m["started"]) for m in dep.members}
    mark = dep.env.get(MARK) or ""
    out = []
    for p in procs:
        if foreign is not None and p.pgid == foreign and not (p.pid in recorded and abs(recorded[p.pid] - p.started) < SAME_START):
            continue
        if _ours(p, dep, mark, leader_ours, recorded):
            out.append(p)
    return out


def members_now(dep: Deployment) -> list[dict[str, Any]]:
    """The record's ``members``: pid and start time of every process of ``dep`` now (at ready)."""
    return [{"pid": p.pid, "started": p.started} for p in processes_of(dep)]


def end(dep: Deployment, *, grace: float = 15.0, spare: Sequence[int] = ()) -> list[ProcInfo]:
    """End every process of ``dep`` (but ``spare``): TERM, wait ``grace``, KILL, verify.

    The group is signalled as a whole only while its leader is proven ours; ``StopError`` when
    anything survives."""
    ended: list[ProcInfo] = []
    for _ in range(3):  # a tree that was still spawning children may show new members once
        procs = [p for p in processes_of(dep) if p.pid not in spare]
        if not procs:
            break
        ended += end_processes(procs, grace=grace, groups=leader_alive(dep) and dep.pgid == dep.pid)
    return ended


def orphans(deployments: Sequence[Deployment]) -> list[ProcInfo]:
    """Processes of this home's deployments whose API server is gone (what ``dsagent ps`` lists
    and ``dsagent stop --orphans`` ends), each carrying its deployment's mark in ``deployment``.
    A stranger's process, orphaned or not, is never one of them."""
    procs = all_processes()
    out = []
    for dep in deployments:
        if leader_alive(dep):
            continue
        mark = dep.env.get(MARK, dep.name)
        out += [replace(p, deployment=mark) for p in processes_of(dep, procs)]
    return out
