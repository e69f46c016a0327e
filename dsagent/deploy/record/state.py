"""The states of a deployment, in one enum (its values are the strings records and JSON carry).

While starting: ``starting -> loading -> profiling -> ready``, or ``failed`` with the reason
from the log tail (its processes are ended). Once up: ``ready``, or ``unhealthy`` while its
``/health`` fails; ``crashed`` when the API server is gone but some of its processes remain
(``dsagent stop`` reaps them); ``stopped`` when nothing of it is left; ``planned`` before launch;
``stale`` when the record says it runs but nothing of it is alive (``dsagent stop`` removes it).
A supervised deployment (``up --restart``) is ``restarting`` between a failure and its relaunch:
its supervisor ends what is left, waits for the GPU memory to be free, and backs off.

>>> State("ready") is State.READY, State.READY == "ready", State.LOADING.running
(True, True, True)
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PHASES", "State"]


class State(StrEnum):
    """What a deployment is doing; ``str(state)`` is its name in records and ``--json``."""

    PLANNED = "planned"
    STARTING = "starting"
    LOADING = "loading"
    PROFILING = "profiling"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    CRASHED = "crashed"
    FAILED = "failed"
    STOPPED = "stopped"
    STALE = "stale"

    @property
    def running(self) -> bool:
        """Its API server runs (starting, serving, or failing its health check), or its supervisor
        is bringing it back (restarting)."""
        return self in _RUNNING

    @property
    def settled(self) -> bool:
        """A start has come to an end: ready, failed, crashed or stopped."""
        return self in _SETTLED

    @property
    def starting(self) -> bool:
        """Up but not yet ready: one of the start phases."""
        return self in (State.STARTING, State.LOADING, State.PROFILING)


_RUNNING = frozenset({State.STARTING, State.LOADING, State.PROFILING, State.READY, State.UNHEALTHY, State.RESTARTING})
_SETTLED = frozenset({State.READY, State.FAILED, State.CRASHED, State.STOPPED, State.STALE})
PHASES = (State.STARTING, State.LOADING, State.PROFILING, State.READY)
