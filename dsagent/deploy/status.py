"""status and ps: what a deployment is doing now, read from its processes, /health and /metrics.

``live_state`` is the one reading of a deployment's ``State``; ``find`` the one lookup of the
deployment a command or a client means (by name, else the newest running one); ``report`` the
JSON of ``dsagent status --json``; ``orphans`` what ``dsagent ps`` lists as left behind.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import httpx

from ..errors import NoDeploymentError
from ..settings import Settings
from ..system.procs import MARK, ProcInfo, leader_alive, processes_of, same_process, vllm_processes
from .ready import log_tail, parse_capacity, start_state
from .records import Deployment, list_all, load
from .rollcall import load_reports
from .state import State

__all__ = ["find", "live_state", "orphans", "parse_metrics", "report", "status", "supervisor_alive"]

LOST = 20.0
"""Seconds without a report after which a running head calls a node ``lost`` (reports come every 5 s)."""

_METRIC = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+\-]+|NaN)\s*$", re.MULTILINE)


def parse_metrics(text: str) -> dict[str, float]:
    """Sum vLLM's Prometheus gauges over engines (``vllm:`` prefix dropped).

    >>> parse_metrics('vllm:num_requests_running{engine="0"} 2.0\\nvllm:kv_cache_usage_perc{engine="0"} 0.25')
    {'num_requests_running': 2.0, 'kv_cache_usage_perc': 0.25}
    """
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        key = name.removeprefix("vllm:")
        if value != "NaN":
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _get(url: str, timeout: float = 2.0) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None


def supervisor_alive(dep: Deployment) -> bool:
    """True while the deployment's supervisor (``up --restart``, ``up --foreground``) runs."""
    return same_process(dep.supervisor_pid, dep.supervisor_started)


def live_state(dep: Deployment) -> State:
    """The deployment's state now, from its API server, ``/health``, its log, its processes and
    its supervisor (which is bringing it back when the API server is gone)."""
    supervised = supervisor_alive(dep)
    if supervised and dep.state == State.RESTARTING:
        return State.RESTARTING
    if leader_alive(dep):
        r = _get(f"{dep.head_url or dep.root_url}/health")  # a joined node is ready when the whole is
        if r is not None and r.status_code == 200:
            return State.READY
        if dep.state in (State.READY, State.UNHEALTHY):
            return State.UNHEALTHY
        return start_state(log_tail(dep.log_file, 400))
    if supervised:
        return State.RESTARTING
    if processes_of(dep):
        return State.CRASHED
    return State.FAILED if dep.state == State.FAILED else State.STOPPED


def find(settings: Settings, name: str | None = None) -> tuple[Deployment | None, State, list[tuple[Deployment, State]]]:
    """The newest running deployment (named ``name`` when given) and its state, and every
    deployment of that name (or all) with its state, for the caller to say why none runs."""
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
    procs = processes_of(dep) if state != State.STOPPED else []
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
    if dep.nodes_total > 1:
        out.update(node_rank=dep.node_rank, master=dep.master, head_url=dep.head_url, nodes=_nodes(dep, state, settings))
    if state == State.READY:
        r = _get(f"{dep.root_url}/metrics")
        if r is not None and r.status_code == 200:
            m = parse_metrics(r.text)
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


def status(name: str | None = None, *, settings: Settings | None = None) -> dict[str, Any]:
    """``report`` of deployment ``name``, else of the newest running (or newest) deployment."""
    settings = settings or Settings.load()
    dep = load(settings, name) if name else find(settings)[0]
    if dep is None and name is None:
        dep = max(list_all(settings), key=lambda d: d.started_at or 0.0, default=None)
    if dep is None:
        which = f" named {name!r}" if name else ""
        raise NoDeploymentError(f"no deployment{which} in {settings.home}",
                                "list them with `dsagent ps`; start one with `dsagent up`", name=name)
    return report(dep, settings=settings)


def orphans(settings: Settings) -> list[ProcInfo]:
    """vLLM processes nobody runs any more: engines re-parented to init, or those of a
    dsagent deployment whose API server is gone. A stranger's live server is not an orphan.

    Processes left by a deployment of this home (found by its mark or its process group, since
    an engine's title change wipes its environment) carry that deployment's mark in
    ``deployment``, so ``ps`` can say which ``dsagent stop NAME`` reaps them."""
    deps = list_all(settings)
    owners = {d.env.get(MARK, d.name): d for d in deps}
    by_pid = {p.pid: d for d in deps for p in processes_of(d)}
    out = []
    for p in vllm_processes():
        dep = by_pid.get(p.pid) or owners.get(p.deployment or "")
        if dep is not None:
            if not leader_alive(dep):
                out.append(replace(p, deployment=dep.env.get(MARK, dep.name)))
        elif p.cmdline.startswith("VLLM::") and p.ppid == 1:
            out.append(p)
    return out
