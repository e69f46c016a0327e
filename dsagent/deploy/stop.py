"""stop: end a deployment's whole process tree and prove nothing of it is left."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NoDeploymentError, StopError
from ..settings import Settings
from ..system.procs import ProcInfo, end_processes, process_info, processes_of
from .records import Deployment, list_all, load, save
from .state import State
from .status import orphans, supervisor_alive

__all__ = ["StopResult", "stop", "stop_orphans"]


@dataclass(frozen=True)
class StopResult:
    """One stopped deployment and the processes that were ended (none is left)."""

    name: str
    ended: tuple[ProcInfo, ...]


def _end_supervisor(dep: Deployment, settings: Settings, grace: float) -> Deployment:
    """End the deployment's supervisor first, so nothing relaunches (also during a backoff);
    then read the record again: the supervisor may have relaunched just before."""
    if dep.supervisor_pid and supervisor_alive(dep) and (info := process_info(dep.supervisor_pid)):
        end_processes([info], grace=grace, groups=False)  # its group may be a shell's or a unit's
        dep = load(settings, dep.name) or dep
    dep.supervisor_pid = dep.supervisor_started = None
    return dep


def _stop_one(dep: Deployment, settings: Settings, grace: float) -> StopResult:
    dep = _end_supervisor(dep, settings, grace)
    ended = end_processes(processes_of(dep), grace=grace)
    left = processes_of(dep)
    if left:
        raise StopError(
            f"{len(left)} process(es) of {dep.name} remain after stop: " + "; ".join(p.describe() for p in left),
            f"run `dsagent stop {dep.name}` again, or kill -9 {' '.join(str(p.pid) for p in left)}",
            pids=[p.pid for p in left],
        )
    if dep.state != State.FAILED:
        dep.state = State.STOPPED
    dep.pid = dep.pgid = None  # nothing left: a later process reusing these numbers is not ours
    save(settings, dep)
    return StopResult(dep.name, tuple(ended))


def stop(name: str | None = None, *, settings: Settings | None = None, grace: float = 15.0) -> list[StopResult]:
    """Stop deployment ``name`` (or every deployment when ``None``): TERM, wait, KILL, verify."""
    settings = settings or Settings.load()
    if name is None:
        return [_stop_one(d, settings, grace) for d in list_all(settings)]
    dep = load(settings, name)
    if dep is None:
        known = ", ".join(d.name for d in list_all(settings)) or "none"
        raise NoDeploymentError(
            f"no deployment named {name!r} (known: {known})",
            "see them with `dsagent ps`; start one with `dsagent up`",
            name=name,
        )
    return [_stop_one(dep, settings, grace)]


def stop_orphans(*, settings: Settings | None = None, grace: float = 10.0) -> list[ProcInfo]:
    """End vLLM processes that no live deployment owns (what `dsagent ps` lists as orphans)."""
    return end_processes(orphans(settings or Settings.load()), grace=grace)
