"""The supervisor's policy, pure: when a deployment has failed, and what to do about it.

``RestartPolicy`` holds the knobs (``dsagent up --restart ...`` and its tuning flags);
``Monitor`` turns a stream of ``Observation`` (process alive, ``/health``, ``/metrics``
counters, a canary's outcome) into a ``Failure`` or nothing; ``decide`` turns the failures so far
into ``Decision`` (relaunch after a delay, or give up). No process, socket or clock is touched
here: the executor (``supervise``) observes and acts.

==================  =======  =====================================================================
knob                default  meaning
==================  =======  =====================================================================
mode                no       ``no``: report only; ``on-failure``: relaunch after a failure;
                             ``always``: also after a clean exit of the API server
backoff             2 s      delay before the first relaunch; doubled for each further failure
backoff_max         60 s     the longest delay
max_failures        5        K: give up (state ``failed``) at K failures within ``window``
window              600 s    failures older than this are forgotten
interval            2 s      seconds between observations
health_grace        10 s     ``/health`` failing this long is a failure
stall               30 s     requests running and no new generated token this long is a failure
canary_every        60 s     an idle server is sent a 1-token completion this often (0: never)
canary_deadline     30 s     the canary's deadline; a miss counts only if no token was generated
start_timeout       900 s    a (re)launch not ready within this is a failure
==================  =======  =====================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from ...errors import InvalidOptionError

__all__ = ["MODES", "Decision", "Failure", "Monitor", "Observation", "RestartPolicy", "decide"]

MODES = ("no", "on-failure", "always")


@dataclass(frozen=True)
class RestartPolicy:
    """What the supervisor watches and how it restarts (see the module's table)."""

    mode: str = "no"
    backoff: float = 2.0
    backoff_max: float = 60.0
    max_failures: int = 5
    window: float = 600.0
    interval: float = 2.0
    health_grace: float = 10.0
    stall: float = 30.0
    canary_every: float = 60.0
    canary_deadline: float = 30.0
    start_timeout: float = 900.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidOptionError(f"--restart {self.mode!r} is not one of {', '.join(MODES)}",
                                     "use --restart no, on-failure or always", option="--restart", value=self.mode)
        if self.max_failures < 1 or self.backoff < 0 or self.interval <= 0:
            raise InvalidOptionError(f"restart policy out of range: max_failures {self.max_failures}, backoff "
                                     f"{self.backoff}, interval {self.interval}",
                                     "use max_failures >= 1, backoff >= 0 and interval > 0", option="--restart")

    def delay(self, failures: int) -> float:
        """Seconds before relaunch number ``failures`` (1 for the first): exponential, capped.

        >>> [RestartPolicy(backoff=2, backoff_max=10).delay(n) for n in (1, 2, 3, 4)]
        [2.0, 4.0, 8.0, 10.0]
        """
        return float(min(self.backoff * 2 ** max(0, failures - 1), self.backoff_max))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def up_flags(self) -> list[str]:
        """The ``dsagent up`` flags that give this policy (``--restart`` always; the rest when not default).

        >>> RestartPolicy(mode="on-failure", canary_every=30.0).up_flags()
        ['--restart', 'on-failure', '--canary-every', '30.0']
        """
        d, out = RestartPolicy(), ["--restart", self.mode]
        for name, flag in (("backoff", "--restart-backoff"), ("max_failures", "--restart-max"),
                           ("window", "--restart-window"), ("interval", "--check-interval"), ("stall", "--stall-seconds"),
                           ("canary_every", "--canary-every"), ("canary_deadline", "--canary-deadline")):
            if getattr(self, name) != getattr(d, name):
                out += [flag, str(getattr(self, name))]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RestartPolicy:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Observation:
    """One look at a deployment. ``tokens``: vLLM's generation-token counter (``None`` when
    ``/metrics`` did not answer); ``canary_ok`` is ``None`` when no canary was sent this time,
    ``canary_progressed`` whether tokens were generated while it waited."""

    alive: bool
    healthy: bool = False
    clean_exit: bool = False
    running: float = 0.0
    waiting: float = 0.0
    tokens: float | None = None
    canary_ok: bool | None = None
    canary_progressed: bool = False


@dataclass(frozen=True)
class Failure:
    """Why a deployment is taken down; ``clean``: its API server exited on its own, without error."""

    reason: str
    clean: bool = False


@dataclass(frozen=True)
class Decision:
    """After a failure: relaunch after ``delay`` seconds, or give up (``reason`` says why)."""

    relaunch: bool
    delay: float = 0.0
    reason: str = ""


class Monitor:
    """Follows one launch from its start: a failure, or ``None`` while all is well.

    >>> m = Monitor(RestartPolicy(stall=5), started=0.0)
    >>> m.check(Observation(alive=True, healthy=True, running=1, tokens=10), now=1.0) is None, m.ready
    (True, True)
    >>> m.check(Observation(alive=True, healthy=True, running=1, tokens=10), now=7.0).reason
    'no progress: 1 request(s) running and no token generated for 6 s'
    """

    def __init__(self, policy: RestartPolicy, started: float) -> None:
        self.policy, self.started = policy, started
        self.ready = False
        self.last_healthy = self.last_progress = self.last_canary = started
        self.tokens: float | None = None

    def canary_due(self, obs: Observation, now: float) -> bool:
        """Whether to send a canary now: ready, idle, and ``canary_every`` since the last one."""
        p = self.policy
        return (self.ready and p.canary_every > 0 and obs.healthy and obs.running == 0 and obs.waiting == 0
                and now - self.last_canary >= p.canary_every)

    def check(self, obs: Observation, now: float) -> Failure | None:
        """The failure ``obs`` shows, if any (and the monitor's memory updated)."""
        p = self.policy
        if not obs.alive:
            if obs.clean_exit:
                return Failure("the API server exited cleanly", clean=True)
            return Failure("the API server exited" if self.ready else "vLLM exited while starting")
        if not self.ready:
            if obs.healthy:
                self.ready, self.last_healthy, self.last_progress, self.last_canary = True, now, now, now
                self.tokens = obs.tokens
                return None
            if now - self.started > p.start_timeout:
                return Failure(f"not ready after {now - self.started:.0f} s (--start-timeout {p.start_timeout:.0f})")
            return None
        if obs.healthy:
            self.last_healthy = now
        elif now - self.last_healthy > p.health_grace:
            return Failure(f"/health has failed for {now - self.last_healthy:.0f} s")
        return self._progress(obs, now)

    def _progress(self, obs: Observation, now: float) -> Failure | None:
        p = self.policy
        if obs.canary_ok is not None:
            self.last_canary = now
            if not obs.canary_ok and not obs.canary_progressed:
                return Failure(f"the canary completion got no answer within {p.canary_deadline:.0f} s "
                               "and no token was generated meanwhile")
        if obs.tokens is None:
            return None
        if obs.running == 0 or self.tokens is None or obs.tokens != self.tokens:
            self.last_progress = now
        self.tokens = obs.tokens
        if now - self.last_progress > p.stall:
            return Failure(f"no progress: {obs.running:.0f} request(s) running and no token generated for "
                           f"{now - self.last_progress:.0f} s")
        return None


def decide(policy: RestartPolicy, failures: Sequence[float], now: float, failure: Failure) -> Decision:
    """What to do after ``failure``; ``failures``: the times of every failure so far, this one included.

    >>> p = RestartPolicy(mode="on-failure", max_failures=3, window=60, backoff=1)
    >>> decide(p, [10.0, 20.0], 20.0, Failure("x"))
    Decision(relaunch=True, delay=2.0, reason='')
    >>> decide(p, [10.0, 20.0, 30.0], 30.0, Failure("x")).reason
    'gave up after 3 failures within 60 s'
    >>> decide(p, [10.0, 20.0, 100.0], 100.0, Failure("x")).delay   # the first two are out of the window
    1.0
    """
    if policy.mode == "no":
        return Decision(False, reason="not supervised for restarts (--restart no)")
    if failure.clean and policy.mode != "always":
        return Decision(False, reason="the API server exited cleanly (--restart on-failure)")
    recent = [t for t in failures if now - t <= policy.window]
    if len(recent) >= policy.max_failures:
        return Decision(False, reason=f"gave up after {len(recent)} failures within {policy.window:.0f} s")
    return Decision(True, delay=policy.delay(len(recent)))
