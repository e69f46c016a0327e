"""The one answer to "what phase is this server in", and the one wait built on it.

A deployment's phase comes from its processes (is its own API server alive, is its supervisor
bringing it back), its log (how far the start got) and its HTTP endpoints: ``/health`` (the only
probe of it in dsagent: ``healthy``) and ``/metrics`` (``metrics``); whether a port serves our
model (``/v1/models`` with the key) is ``system.ports.serves_model``. ``live_state`` reads a record's state now; ``wait_for`` polls any such reading
until ready, and ``wait_started`` is that wait for a launch that is starting.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ...errors import NotReadyError, StartupError
from .identity import leader_alive, processes_of, supervisor_alive
from .logs import failure_reason, log_tail, start_state
from .state import State
from .store import Deployment

__all__ = ["Progress", "api_key", "healthy", "live_state", "metrics", "parse_metrics", "wait_for", "wait_started"]

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


def _get(url: str, client: httpx.Client | None, timeout: float, headers: dict[str, str] | None = None,
         ) -> httpx.Response | None:
    try:
        if client is not None:
            return client.get(url, timeout=timeout, headers=headers)
        return httpx.get(url, timeout=timeout, headers=headers)
    except httpx.HTTPError:
        return None


def healthy(root_url: str, client: httpx.Client | None = None, timeout: float = 2.0) -> bool:
    """``/health`` of the server at ``root_url`` answers 200."""
    r = _get(f"{root_url}/health", client, timeout)
    return r is not None and r.status_code == 200


def api_key(dep: Deployment) -> str:
    """The deployment's key (from its key file), ``""`` when the file cannot be read."""
    try:
        return Path(dep.api_key_file).read_text().strip()
    except OSError:
        return ""


def metrics(dep: Deployment, client: httpx.Client | None = None, timeout: float = 2.0,
            key: str | None = None) -> dict[str, float] | None:
    """The deployment's ``/metrics`` gauges (``parse_metrics``), or ``None`` when it does not answer.
    Sends the key (``launch.guard`` keeps ``/metrics`` behind it)."""
    key = api_key(dep) if key is None else key
    r = _get(f"{dep.root_url}/metrics", client, timeout, {"Authorization": f"Bearer {key}"})
    return parse_metrics(r.text) if r is not None and r.status_code == 200 else None


def live_state(dep: Deployment) -> State:
    """The deployment's state now, from its API server, ``/health``, its log, its processes and
    its supervisor (which is bringing it back when the API server is gone). A record that says
    it runs while nothing of it is alive is ``stale``."""
    supervised = supervisor_alive(dep)
    if supervised and dep.state == State.RESTARTING:
        return State.RESTARTING
    if leader_alive(dep):
        if healthy(dep.head_url or dep.root_url):  # a joined node is ready when the whole is
            return State.READY
        if dep.state in (State.READY, State.UNHEALTHY):
            return State.UNHEALTHY
        return start_state(log_tail(dep.log_file, 400))
    if supervised:
        return State.RESTARTING
    if processes_of(dep):
        return State.CRASHED
    if dep.state in (State.FAILED, State.STOPPED, State.PLANNED):
        return dep.state
    return State.STALE


@dataclass(frozen=True)
class Progress:
    """One observation of a starting server, handed to the ``on_progress`` callback."""

    phase: State
    elapsed: float
    detail: str = ""


def wait_for(read: Callable[[], State], *, timeout: float, started: float | None = None, interval: float = 0.5,
             on_progress: Callable[[Progress], None] | None = None, what: str = "the server", hint: str = "") -> float:
    """Call ``read`` every ``interval`` s until it says ``ready``; the seconds since ``started``.

    ``read`` raises to end the wait early (the process died, the supervisor gave up);
    ``NotReadyError`` after ``timeout`` seconds, naming the last phase seen."""
    t0 = started or time.time()
    deadline = time.monotonic() + timeout
    while True:
        phase = read()
        if on_progress:
            on_progress(Progress(phase, time.time() - t0))
        if phase == State.READY:
            return time.time() - t0
        if time.monotonic() >= deadline:
            raise NotReadyError(f"{what} is not ready after {timeout:.0f} s (last phase: {phase})",
                                hint or "wait longer (--timeout), or read its log (dsagent logs NAME)", phase=phase)
        time.sleep(interval)


def wait_started(dep: Deployment, *, timeout: float = 600.0, interval: float = 0.5,
                 on_progress: Callable[[Progress], None] | None = None) -> float:
    """Block until ``dep``'s launch is ready (``/health`` answers); the seconds it took.

    ``StartupError`` (with the log tail) as soon as its API server dies; ``NotReadyError`` after
    ``timeout`` seconds."""
    with httpx.Client() as client:

        def read() -> State:
            phase = start_state(log_tail(dep.log_file, 400))
            if not leader_alive(dep):
                tail = log_tail(dep.log_file, 30)
                raise StartupError(
                    f"vLLM exited while {phase}: {failure_reason(tail)}",
                    f"read the log: {dep.log_file} (tail below); fix the cause and run the command again\n{tail}",
                    log_tail=tail, phase=phase)
            return State.READY if healthy(dep.root_url, client) else phase

        return wait_for(read, timeout=timeout, started=dep.started_at, interval=interval, on_progress=on_progress,
                        what=dep.name, hint=f"wait longer (--timeout), or read the log: {dep.log_file}")
