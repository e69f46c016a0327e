"""stop: end a deployment's whole process tree and prove nothing of it is left.

Only processes proven to be the deployment's are signalled (``record.identity``): a process or
group that merely has a recorded number is someone else's. A stale record (nothing of it alive)
is removed; an unreadable one is reported, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidOptionError, NoDeploymentError, StopError
from ..settings import Settings
from ..system.procs import ProcInfo, end_processes, process_info
from .record.identity import end, processes_of, supervisor_alive
from .record.names import check_name
from .record.phase import live_state
from .record.state import State
from .record.store import Deployment, delete, list_all, load, scan, update
from .status import orphans

__all__ = ["StopResult", "stop", "stop_orphans"]


@dataclass(frozen=True)
class StopResult:
    """One deployment ``stop`` dealt with: the processes it ended (none is left), whether its
    stale record was removed, or (``problem``) why it could not be stopped (an unreadable record)."""

    name: str
    ended: tuple[ProcInfo, ...] = ()
    removed: bool = False
    problem: str = ""


def _end_supervisor(dep: Deployment, settings: Settings, grace: float) -> Deployment:
    """End the deployment's supervisor first, so nothing relaunches (also during a backoff);
    then read the record again: the supervisor may have relaunched just before."""
    if supervisor_alive(dep) and dep.supervisor_pid and (info := process_info(dep.supervisor_pid)):
        end_processes([info], grace=grace, groups=False)  # its group may be a shell's or a unit's
        dep = load(settings, dep.name) or dep
    return dep


def _stopped(dep: Deployment) -> None:
    if dep.state != State.FAILED:
        dep.state = State.STOPPED
    # nothing of it is left: a later process reusing these numbers is not ours
    dep.pid = dep.pgid = dep.leader_started = dep.supervisor_pid = dep.supervisor_started = None
    dep.watcher_pid = dep.watcher_started = None
    dep.members = []


def _stop_one(dep: Deployment, settings: Settings, grace: float) -> StopResult:
    if live_state(dep) == State.STALE:
        delete(settings, dep.name)
        return StopResult(dep.name, removed=True)
    dep = _end_supervisor(dep, settings, grace)
    ended = end(dep, grace=grace)
    left = processes_of(dep)
    if left:
        raise StopError(
            f"{len(left)} process(es) of {dep.name} remain after stop: " + "; ".join(p.describe() for p in left),
            f"run `dsagent stop {dep.name}` again, or kill -9 {' '.join(str(p.pid) for p in left)}",
            pids=[p.pid for p in left],
        )
    update(settings, dep.name, _stopped)
    return StopResult(dep.name, tuple(ended))


def stop(name: str | None = None, *, all: bool = False, settings: Settings | None = None,  # noqa: A002
         grace: float = 15.0) -> list[StopResult]:
    """Stop deployment ``name``, or (``all=True``) every deployment: TERM, wait, KILL, verify.

    With ``all``, every readable deployment is stopped and each unreadable record comes back as
    a ``StopResult`` whose ``problem`` says which file and what to do."""
    if (name is None) == (not all):
        raise InvalidOptionError("stop needs a deployment name, or all=True for every deployment (not both)",
                                 "name one: dsagent stop NAME; or stop them all: dsagent stop --all", option="name")
    settings = settings or Settings.load()
    if all:
        deps, unreadable = scan(settings)
        return [_stop_one(d, settings, grace) for d in deps] + [
            StopResult(err.name, problem=err.problem) for err in unreadable]
    dep = load(settings, check_name(name or ""))
    if dep is None:
        known = ", ".join(d.name for d in list_all(settings)) or "none"
        raise NoDeploymentError(
            f"no deployment named {name!r} (known: {known})",
            "see them with `dsagent ps`; start one with `dsagent up`",
            name=name,
        )
    return [_stop_one(dep, settings, grace)]


def stop_orphans(*, settings: Settings | None = None, grace: float = 10.0) -> list[ProcInfo]:
    """End the processes of this home's deployments whose API server is gone (``dsagent ps``'s
    orphans); a stranger's process is never one of them."""
    return end_processes(orphans(settings or Settings.load()), grace=grace, groups=False)

