"""status and ps: what a deployment is doing now, read from its processes, /health and /metrics.

``find`` is the one lookup of the
deployment a command or a client means (by name, else the newest running one); ``report`` the
JSON of ``dsagent status --json``; ``orphans`` what ``dsagent ps`` lists as left behind.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import NoDeploymentError, UnreadableRecordError
from ..settings import Settings
from ..system.procs import ProcInfo
from .record.identity import leader_alive, processes_of, supervisor_alive
from .record.identity import orphans as identity_orphans
from .record.logs import log_tail, parse_capacity
from .record.names import check_name
from .record.phase import live_state, metrics
from .record.reports import load_reports
from .record.state import State
from .record.store import Deployment, list_all, load, scan

__all__ = ["find", "orphans", "report", "reports", "status", "unreadable"]

LOST = 20.0
"""Seconds without a report after which a running head calls a node ``lost`` (reports come every 5 s)."""


def find(settings: Settings, name: str | None = None) -> tuple[Deployment | None, State, list[tuple[Deployment, State]]]:
    """The newest running deployment (named ``name`` when given) and its state, and every
    deployment of that name (or all) with its state, for the caller to say why none runs."""
    if name is not None:
        check_name(name)
    deps = [(d, live_state(d)) for d in list_all(settings) if name is None or d.name == name]
    running = [(d, s) for d, s in deps if s.running]
    if not running:
        return None, State.STOPPED, deps
    dep, state = max(running, key=lambda ds: ds[0].started_at or 0.0)
    return dep, state, deps


def report(dep: Deployment, *, settings: Settings | None = None) -> dict[str, Any]:
    """The record plus the live view: state, processes, KV usage and requests from /metrics;
    on the head of a multi-node deployment (with ``settings``) what each node last reported."""
    state = live_state(dep)
    procs = processes_of(dep) if state not in (State.STOPPED, State.STALE) else []
    out: dict[str, Any] = {
        "name": dep.name,
        "state": str(state),
        "model": dep.model,
        "served_model_name": dep.name,
        "base_url": dep.base_url,
        "api_key_file": dep.api_key_file,
        "pid": dep.pid if leader_alive(dep) else None,
        "processes": [{"pid": p.pid, "name": p.name} for p in procs],
        "model_path": dep.model_path,
        "log_file": dep.log_file,
        "device": dep.device,
        "tp": dep.tp,
        "pp": dep.pp,
        "dtype": dep.dtype,
        "max_model_len": dep.max_model_len,
        "vllm_version": dep.vllm_version,
        "started_at": dep.started_at,
        "reason": dep.reason if state in (State.FAILED, State.CRASHED, State.UNHEALTHY, State.RESTARTING) else "",
        "restart": _restart(dep, state),
        "estimate": dep.estimate,
        "measured": dep.measured,
        "kv_cache_usage": None,
        "requests_running": None,
        "requests_waiting": None,
    }
    if state == State.CRASHED:
        out["reason"] = "the API server is gone but its engine processes remain; run: dsagent stop " + dep.name
    if state == State.STALE:
        out["reason"] = (f"the record says {dep.state} but nothing of it runs any more; `dsagent stop {dep.name}` "
                         "removes the record")
    if dep.nodes_total > 1:
        out.update(node_rank=dep.node_rank, master=dep.master, head_url=dep.head_url, nodes=_nodes(dep, state, settings))
    if state == State.READY:
        if (m := metrics(dep)) is not None:
            out["kv_cache_usage"] = m.get("kv_cache_usage_perc", m.get("gpu_cache_usage_perc"))
            out["requests_running"] = m.get("num_requests_running")
            out["requests_waiting"] = m.get("num_requests_waiting")
    return out


def _restart(dep: Deployment, state: State) -> dict[str, Any] | None:
    """The supervisor's view: policy, restarts, last failure, uptime (``None`` when unsupervised)."""
    if not dep.restart:
        return None
    last = dep.failures[-1] if dep.failures else None
    return {"mode": dep.restart.get("mode"), "supervisor_pid": dep.supervisor_pid if supervisor_alive(dep) else None,
            "restarts": dep.restarts, "failures": len(dep.failures),
            "last_failure": {"at": last["at"], "reason": last["reason"]} if last else None,
            "uptime_s": round(time.time() - dep.ready_at, 1) if state == State.READY and dep.ready_at else None}


def _nodes(dep: Deployment, state: State, settings: Settings | None) -> list[dict[str, Any]]:
    """Every node of a multi-node deployment as the head sees it: rank 0 is this one; the others
    as their last report to the head's roll call says (``lost`` when none came for ``LOST`` s
    while the head runs), else ready when the whole is (vLLM serves only once every rank has joined)."""
    reports = load_reports(settings, dep.name) if settings is not None and dep.node_rank == 0 else {}
    out = []
    for node in dep.nodes:
        rank = node["rank"]
        row: dict[str, Any] = {"rank": rank, "ip": node.get("ip", ""), "state": str(state)}
        if rank == 0:
            cap = parse_capacity(log_tail(dep.log_file, 2000)) if state == State.READY else {}
            row.update(kv_tokens=cap.get("kv_cache_tokens"), kv_cache_gib=cap.get("kv_cache_gib"), gpus=dep.gpus)
        elif (r := reports.get(rank)) is not None:
            stale = state.running and r.state != "failed" and time.time() - r.at > LOST
            row.update(ip=r.ip or row["ip"], state="lost" if stale else r.state if state.running or r.state == "failed"
                       else str(state), kv_tokens=r.kv_tokens, kv_cache_gib=r.kv_cache_gib, gpus=r.gpus, reason=r.reason, log_tail=r.log_tail)
        else:
            row["state"] = "ready" if state == State.READY else ("joining" if state.running else str(state))
        out.append(row)
    return out


def unreadable(err: UnreadableRecordError) -> dict[str, Any]:
    """The row ``status`` shows for a record that cannot be parsed: its file and what to do."""
    return {"name": err.name, "state": "unreadable", "record": err.path, "reason": err.problem, "fix": err.remedy}


def reports(settings: Settings) -> list[dict[str, Any]]:
    """``report`` of every deployment of the home, and an ``unreadable`` row for each broken record."""
    deps, broken = scan(settings)
    return [report(d, settings=settings) for d in deps] + [unreadable(err) for err in broken]


def status(name: str | None = None, *, settings: Settings | None = None) -> dict[str, Any]:
    """``report`` of deployment ``name``, else of the newest running (or newest) deployment."""
    settings = settings or Settings.load()
    dep = load(settings, check_name(name)) if name else find(settings)[0]
    if dep is None and name is None:
        dep = max(list_all(settings), key=lambda d: d.started_at or 0.0, default=None)
    if dep is None:
        which = f" named {name!r}" if name else ""
        raise NoDeploymentError(f"no deployment{which} in {settings.home}",
                                "list them with `dsagent ps`; start one with `dsagent up`", name=name)
    return report(dep, settings=settings)


def orphans(settings: Settings) -> list[ProcInfo]:
    """Processes of this home's deployments whose API server is gone (``identity.orphans``)."""
    return identity_orphans(list_all(settings))
