"""The supervisor of a deployment started with ``dsagent up --restart on-failure|always``.

``python -m dsagent.deploy.supervise.supervisor NAME`` runs beside the deployment, detached, its pid in
the record (``supervisor_pid``); ``dsagent up --foreground`` runs the same loop in its own
process (what a systemd unit's ``ExecStart`` runs). Every ``interval`` seconds it observes the
API server (alive?), ``/health``, ``/metrics`` (requests running, generated tokens) and, when
the server is idle, a 1-token canary completion; ``restart.Monitor`` says whether that is a
failure. On a failure it records why (with the log tail), ends every process of the deployment
(the orphan-safe ``end_processes``), waits until no ended process holds GPU memory (NVML; on a
CPU the processes being gone is enough), then relaunches the same argv after the backoff that
``restart.decide`` gives, or gives up (state ``failed``). ``dsagent stop`` ends the supervisor
first, so nothing restarts, also during a backoff.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable

import httpx

from ...errors import DeploymentFailedError, StopError, UnreadableRecordError
from ...settings import Settings
from ...system import gpus
from ...system.procs import engine_env, spawn
from ..launch.spawn import ready_fields, relaunch, wait
from ..record.identity import end, leader_alive, started_at, supervisor_alive
from ..record.logs import failure_reason, log_tail
from ..record.names import files
from ..record.phase import Progress, healthy, live_state, metrics, wait_for
from ..record.state import State
from ..record.store import Deployment, load, update
from .policy import Decision, Failure, Monitor, Observation, RestartPolicy, decide

__all__ = ["adopt", "follow", "run_foreground", "start_supervisor", "supervise", "wait_gpu_free"]

Say = Callable[[str], None]
GPU_FREE_TIMEOUT = 120.0
"""Seconds to wait for the GPU memory of ended processes to be released before giving up."""
_CLEAN = re.compile(r"Application shutdown complete|Shutting down")


def _say(message: str) -> None:
    print(f"dsagent supervise: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def start_supervisor(dep: Deployment, settings: Settings) -> Deployment:
    """Start the detached supervisor of ``dep`` (its policy already in ``dep.restart``); record it."""
    env = engine_env(os.environ, DSAGENT_HOME=str(settings.home))
    proc = spawn([sys.executable, "-m", "dsagent.deploy.supervise.supervisor", dep.name], env,
                 files(settings, dep.name).supervise_log)
    return update(settings, dep.name, supervisor_pid=proc.pid, supervisor_started=started_at(proc.pid))


def adopt(dep: Deployment, settings: Settings) -> Deployment:
    """Make this process ``dep``'s supervisor (``up --foreground``)."""
    return update(settings, dep.name, supervisor_pid=os.getpid(), supervisor_started=started_at(os.getpid()))


def wait_gpu_free(pids: set[int], *, timeout: float = GPU_FREE_TIMEOUT, interval: float = 0.5,
                  holders: Callable[[], dict[int, float] | None] = gpus.memory_holders,
                  on_unknown: Callable[[str], None] = lambda _why: None) -> float:
    """Block until none of ``pids`` holds GPU memory; the seconds it took. Without NVML (a CPU
    machine) there is nothing to wait for. When NVML fails the state is unknown, never free: it
    says so (``on_unknown``, once), backs off (doubling to 8 s) and asks again. ``StopError``
    after ``timeout``: never double-book."""
    t0, pause, told = time.monotonic(), interval, False
    while True:
        try:
            held, unknown = holders(), ""
        except gpus.GpuUnknown as exc:
            held, unknown = None, str(exc)
        left = sorted(pids & set(held or {}))
        if not left and not unknown:
            return time.monotonic() - t0
        if unknown and not told:
            on_unknown(unknown)
            told = True
        if time.monotonic() - t0 > timeout:
            if unknown:
                raise StopError(f"the GPU memory of ended processes {sorted(pids)} is unknown after {timeout:.0f} s "
                                f"({unknown})", "check nvidia-smi and the driver; not relaunching over it",
                                pids=sorted(pids))
            gib = sum((held or {}).get(p, 0.0) for p in left)
            raise StopError(f"GPU memory ({gib:.1f} GiB) is still held by ended processes {left} after "
                            f"{timeout:.0f} s", "check nvidia-smi; the GPU may need a reset before a relaunch",
                            pids=left)
        time.sleep(pause)
        pause = min(pause * 2, 8.0) if unknown else interval


def _canary(client: httpx.Client, dep: Deployment, key: str, deadline: float) -> bool:
    """A 1-token completion answered within ``deadline`` seconds."""
    try:
        r = client.post(f"{dep.base_url}/completions", timeout=deadline, headers={"Authorization": f"Bearer {key}"},
                        json={"model": dep.name, "prompt": "Hello", "max_tokens": 1, "temperature": 0})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def _observe(dep: Deployment, client: httpx.Client, monitor: Monitor, key: str) -> Observation:
    if not leader_alive(dep):
        tail = log_tail(dep.log_file, 40)
        return Observation(alive=False, clean_exit=bool(_CLEAN.search(tail)) and "Traceback" not in tail)
    m = metrics(dep, client, timeout=3.0, key=key) or {}
    tokens = m.get("generation_tokens_total") if m else None
    obs = Observation(True, healthy(dep.root_url, client, timeout=3.0), running=m.get("num_requests_running", 0.0),
                      waiting=m.get("num_requests_waiting", 0.0), tokens=tokens)
    if not monitor.canary_due(obs, time.time()):
        return obs
    ok = _canary(client, dep, key, monitor.policy.canary_deadline)
    after = (metrics(dep, client, timeout=3.0, key=key) or {}).get("generation_tokens_total")
    progressed = after is not None and tokens is not None and after > tokens
    return Observation(True, obs.healthy, running=obs.running, waiting=obs.waiting, tokens=after if ok else tokens,
                       canary_ok=ok, canary_progressed=progressed)


def _ready(dep: Deployment, settings: Settings, say: Say) -> None:
    now = time.time()
    took = round(now - (dep.started_at or now), 1)
    key = "seconds_to_ready" if not dep.restarts else "seconds_to_ready_again"
    dep = update(settings, dep.name, lambda d: setattr(d, "measured", {**d.measured, key: took}), **ready_fields(dep))
    say(f"{dep.name} is ready (pid {dep.pid}, {took:.0f} s after launch, restarts {dep.restarts})")


def _take_down(dep: Deployment, settings: Settings, failure: Failure, say: Say) -> str:
    """Record the failure, end every process of the deployment, wait for its GPU memory."""
    tail = log_tail(dep.log_file, 30)
    reason = failure.reason
    detail = failure_reason(tail)
    if "starting" in reason and re.search(r"(Error|Exception)\b|error: ", detail):  # not a killed one's last line
        reason += f": {detail}"
    failure_row = {"at": time.time(), "reason": reason, "log_tail": tail}
    update(settings, dep.name, lambda d: setattr(d, "failures", [*d.failures, failure_row][-10:]),
           state=State.RESTARTING, reason=reason)
    say(f"{dep.name} failed: {reason}")
    # it failed: a long graceful exit buys nothing; an engine whose API server is gone only lingers
    ended = end(dep, grace=5.0 if leader_alive(dep) else 1.0)
    def unknown(why: str) -> None:
        update(settings, dep.name, reason=f"{reason}; waiting: GPU memory unknown ({why})")
        say(f"{dep.name}: GPU memory unknown ({why}); waiting, not relaunching over it")

    freed = wait_gpu_free({p.pid for p in ended}, on_unknown=unknown)
    say(f"ended {len(ended)} process(es); GPU memory free after {freed:.1f} s")
    return reason


def _mine(settings: Settings, name: str) -> Deployment | None:
    """The record, while this process is still its supervisor (``dsagent stop`` or a new ``up`` takes it)."""
    try:
        dep = load(settings, name)
    except UnreadableRecordError:
        return None
    return dep if dep is not None and dep.supervisor_pid == os.getpid() else None


def _after_failure(dep: Deployment, settings: Settings, policy: RestartPolicy, failure: Failure,
                   failures: list[float], say: Say) -> Deployment | State:
    """Take the deployment down; then relaunch it (its new record) or give up (the final state)."""
    failures.append(time.time())
    try:
        reason = _take_down(dep, settings, failure, say)
        decision = decide(policy, failures, failures[-1], failure)
    except StopError as err:  # something survived or still holds GPU memory: never relaunch over it
        reason, decision = str(err), Decision(False, reason="the old processes could not be cleared")
    if not decision.relaunch:
        final = State.STOPPED if failure.clean and policy.mode != "always" else State.FAILED
        dep = update(settings, dep.name, state=final, reason=f"{decision.reason}; last failure: {reason}", pid=None,
                     pgid=None, leader_started=None, members=[], supervisor_pid=None, supervisor_started=None)
        say(f"{dep.name}: {dep.reason}")
        return final
    update(settings, dep.name, reason=f"{reason}; relaunch {len(failures)} in {decision.delay:.0f} s")
    time.sleep(decision.delay)
    mine = _mine(settings, dep.name)
    if mine is None:
        return State.STOPPED
    dep = relaunch(mine, settings, api_key=settings.api_key())
    say(f"relaunched {dep.name} (pid {dep.pid}, restart {dep.restarts})")
    return dep


def supervise(name: str, settings: Settings, *, say: Say = _say) -> State:
    """Supervise deployment ``name`` until it is stopped or given up; return how it ended."""
    deadline = time.monotonic() + 10.0
    while (dep := _mine(settings, name)) is None:  # the launcher records this pid right after the spawn
        if time.monotonic() > deadline:
            return State.STOPPED
        time.sleep(0.1)
    policy = RestartPolicy.from_dict(dep.restart)
    failures: list[float] = []
    monitor = Monitor(policy, dep.started_at or time.time())
    key = settings.api_key()  # refuses an empty key file
    say(f"supervising {name} (pid {dep.pid}, --restart {policy.mode})")
    with httpx.Client() as client:
        while (dep := _mine(settings, name)) is not None:
            was_ready = monitor.ready
            failure = monitor.check(_observe(dep, client, monitor, key), time.time())
            if monitor.ready and not was_ready:
                _ready(dep, settings, say)
            if failure is None:
                time.sleep(policy.interval)
                continue
            outcome = _after_failure(dep, settings, policy, failure, failures, say)
            if isinstance(outcome, State):
                return outcome
            monitor = Monitor(policy, outcome.started_at or time.time())
    return State.STOPPED


def run_foreground(name: str, settings: Settings) -> State:
    """``supervise`` in this process; SIGTERM (``systemctl stop``, ``dsagent stop``) ends the
    deployment's processes and returns ``stopped``."""
    def term(_sig: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, term)
    try:
        return supervise(name, settings)
    except (SystemExit, KeyboardInterrupt):
        return State.STOPPED
    finally:
        dep = _mine(settings, name)
        if dep is not None:
            end(dep, grace=10.0)

            def stopped(d: Deployment) -> None:
                if d.supervisor_pid == os.getpid():
                    d.state = State.STOPPED if d.state != State.FAILED else d.state
                    d.supervisor_pid = d.supervisor_started = d.pid = d.pgid = d.leader_started = None
                    d.members = []

            update(settings, name, stopped)


def follow(dep: Deployment, settings: Settings, *, timeout: float = 900.0,
           on_progress: Callable[[Progress], None] | None = None) -> Deployment:
    """Wait until ``dep`` is ready: through its supervisor's restarts when it has one (ready once
    the supervisor has recorded it, so a failure right after counts as one of a ready server), else
    ``launch.wait``. ``DeploymentFailedError`` once the supervisor gave up."""
    if not supervisor_alive(dep):
        return wait(dep, settings, timeout=timeout, on_progress=on_progress)
    seen = [dep]

    def read() -> State:
        current = seen[0] = load(settings, dep.name) or seen[0]
        state = live_state(current)
        if not state.running and state != State.READY:
            reasons = "\n".join(f"  - {f['reason']}" for f in current.failures)
            raise DeploymentFailedError(f"deployment {current.name} is {state}: {current.reason}",
                                        f"read {current.log_file}; failures:\n{reasons}", name=current.name,
                                        state=str(state), log_tail=log_tail(current.log_file, 15))
        if state == State.READY and current.state != State.READY:
            return State.PROFILING  # ready once its supervisor has seen it: a failure before that is a failed start
        return state

    wait_for(read, timeout=timeout, started=dep.started_at, on_progress=on_progress, what=dep.name,
             hint=f"wait longer (--timeout), or read the log: {dep.log_file}")
    return seen[0]


def main() -> int:
    state = supervise(sys.argv[1], Settings.load())
    return 0 if state == State.STOPPED else 1


if __name__ == "__main__":
    raise SystemExit(main())
