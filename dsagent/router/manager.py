"""The router's memory: each catalogue model's state, and the one way it changes.

::

    stopped --request--> loading --ready--> ready --ttl / evicted--> sleeping --request--> ready
       ^                    |                 |                          |
       +------ failed <-----+                 +--ttl / evicted (stop)----+--> stopped

A request ``acquire``s its model: a ready model is counted busy at once; any other waits for the
model's one load task (N concurrent first requests share one load), at most ``wait`` seconds,
then gets ``Busy`` with the phase it is in. Loads (and wakes) run one at a time under the
placement lock, so two loads never both count the same free memory; before each, the packing
plan (``packing.plan_load``) says what fits and what idle model to sleep or stop for it.
The engines' calls block (``deploy.up`` waits for ready), so they run in worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..deploy.record.phase import Progress
from ..errors import DsagentError
from .catalogue import Entry
from .engines import Engines
from .packing import Capacity, LoadPlan, Need, Resident, plan_load

__all__ = ["Busy", "Failed", "Router", "Slot", "Unknown"]


class Unknown(LookupError):
    """A model the catalogue does not have (HTTP 404)."""


class Busy(Exception):
    """The model is not ready within the wait (HTTP 503 with ``Retry-After``)."""

    def __init__(self, name: str, state: str, phase: str, retry_after: int) -> None:
        super().__init__(f"model {name} is {state}" + (f" ({phase})" if phase else "") +
                         f"; retry in {retry_after} s")
        self.name, self.state, self.phase, self.retry_after = name, state, phase, retry_after


class Failed(Exception):
    """The model's load failed or cannot fit (HTTP 503, with the reason and its fix)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name, self.reason = name, reason


@dataclass
class Slot:
    """One catalogue model as the router holds it now."""

    entry: Entry
    state: str = "stopped"
    phase: str = ""
    url: str = ""
    gpus: tuple[int, ...] = ()
    need: Need | None = None
    last_used: float = 0.0
    busy: int = 0
    error: str = ""
    loads: int = 0
    wakes: int = 0
    load_seconds: list[float] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    plan: LoadPlan | None = None
    touched: bool = False
    since: float = 0.0
    """When the current load or wake began (monotonic)."""
    """A load was tried: the router may have launched it, and stops it at the end."""

    @property
    def name(self) -> str:
        return self.entry.name

    def view(self) -> dict[str, Any]:
        """What ``/v1/models``, ``router.json`` and ``dsagent status`` show of it."""
        need = self.need
        return {"state": self.state, "phase": self.phase, "last_used": self.last_used or None, "busy": self.busy,
                "loads": self.loads, "wakes": self.wakes, "load_seconds": self.load_seconds[-5:],
                "url": self.url or None, "gpus": list(self.gpus), "error": self.error or None,
                "need_gib": (need.per_gpu if need.gpus else need.host) if need else None,
                "kv_cache_tokens": {"planned": self.estimate.get("kv_cache_tokens"),
                                    "measured": self.measured.get("kv_cache_tokens")},
                "ttl": self.entry.ttl, "always_on": self.entry.always_on, "sleep": self.entry.can_sleep}


class Router:
    """The catalogue's models, their states, and the rules that change them."""

    def __init__(self, entries: Sequence[Entry], engines: Engines, capacity: Capacity, *,
                 on_change: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time) -> None:
        self.slots = {e.name: Slot(e) for e in entries}
        self.engines, self.capacity, self.on_change, self.clock = engines, capacity, on_change, clock
        self._placing = asyncio.Lock()
        self._closing = False

    # --- requests ---------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        try:
            return self.slots[name]
        except KeyError:
            raise Unknown(name) from None

    async def acquire(self, name: str, wait: float) -> Slot:
        """The ready ``name``, counted busy (``release`` it after); loads or wakes it if needed."""
        slot = self.slot(name)
        deadline = time.monotonic() + wait
        while slot.state != "ready":
            if self._closing:
                raise Busy(name, "stopping", "the router is shutting down", 5)
            if slot.task is None or slot.task.done():
                slot.task = asyncio.create_task(self._bring_up(slot))
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(slot.task), max(left, 0.0))
            except TimeoutError:
                raise Busy(name, slot.state, slot.phase, self._retry_after(slot)) from None
            if slot.state == "failed":
                raise Failed(name, slot.error)
        slot.busy += 1
        slot.last_used = self.clock()
        return slot

    def release(self, slot: Slot) -> None:
        slot.busy = max(0, slot.busy - 1)
        slot.last_used = self.clock()

    def lost(self, slot: Slot) -> None:
        """The model's server no longer answers (stopped from outside, crashed): load it again next time."""
        if slot.state == "ready":
            slot.state, slot.url, slot.phase = "stopped", "", "its server stopped answering"
            self.on_change()

    @staticmethod
    def _retry_after(slot: Slot) -> int:
        """Seconds until the load should be done: its typical length (30 s until one is measured)
        less what has passed, at least 1, at most 60 (the OpenAI SDKs honour up to 60)."""
        typical = sorted(slot.load_seconds)[len(slot.load_seconds) // 2] if slot.load_seconds else 30.0
        return max(1, min(60, round(typical - (time.monotonic() - slot.since if slot.since else 0.0))))

    # --- loads ------------------------------------------------------------------------------

    def _residents(self) -> list[Resident]:
        return [Resident(s.name, s.need or Need(), s.gpus, s.state, s.last_used, s.busy, s.entry.always_on,
                         s.entry.can_sleep)
                for s in self.slots.values() if s.state in ("ready", "sleeping", "loading", "waking")]

    async def _bring_up(self, slot: Slot) -> None:
        async with self._placing:
            if slot.state == "ready" or self._closing:
                return
            slot.touched, slot.since = True, time.monotonic()
            try:
                await self._make_room(slot)
                if slot.state == "sleeping":
                    await self._wake(slot)
                else:
                    await self._load(slot)
            except (DsagentError, Failed, OSError) as exc:
                slot.state, slot.error, slot.phase = "failed", _reason(exc), ""
            finally:
                self.on_change()

    async def _make_room(self, slot: Slot) -> None:
        """Plan ``slot``'s load (or wake) and put away what the plan says must make room."""
        if slot.need is None:
            slot.need = await asyncio.to_thread(self.engines.need, slot.entry)
        plan = plan_load(slot.name, slot.need, self._residents(), self.capacity,
                         pinned=slot.gpus or slot.entry.options.gpus)
        if not plan.fits:
            raise Failed(slot.name, f"it does not fit beside the models in use: {plan.reason}; "
                         "retry when one is idle, or give the router more memory (--memory-gib) or fewer "
                         "always-on models")
        victims = [(self.slots[n], action) for n, action in plan.evict]
        for victim, action in victims:  # no await before this: nobody acquires them in between
            victim.state, victim.phase = ("sleeping" if action == "sleep" else "stopping"), f"evicted for {slot.name}"
        for victim, action in victims:
            try:
                await self._put_away(victim, action)
            except (DsagentError, OSError):
                victim.state, victim.phase = "ready", ""  # it still runs as it did
                raise
        slot.plan = plan

    async def _wake(self, slot: Slot) -> None:
        slot.state, slot.phase = "waking", "waking from sleep"
        self.on_change()
        t0 = time.monotonic()
        await asyncio.to_thread(self.engines.wake, slot.name, slot.url)
        slot.load_seconds.append(round(time.monotonic() - t0, 2))
        slot.state, slot.phase, slot.wakes, slot.error = "ready", "", slot.wakes + 1, ""
        slot.last_used = self.clock()

    async def _load(self, slot: Slot) -> None:
        plan = slot.plan
        assert plan is not None
        slot.state, slot.phase, slot.error, slot.gpus = "loading", "starting", "", plan.gpus
        self.on_change()
        t0 = time.monotonic()
        started = await asyncio.to_thread(self.engines.start, slot.entry, plan, self._progress(slot))
        if self._closing:
            await asyncio.to_thread(self.engines.stop, slot.name)
            slot.state = "stopped"
            return
        slot.load_seconds.append(round(time.monotonic() - t0, 2))
        slot.url, slot.measured, slot.estimate = started.url, started.measured, started.estimate
        slot.state, slot.phase, slot.loads = "ready", "", slot.loads + 1
        slot.last_used = self.clock()

    def _progress(self, slot: Slot) -> Callable[[Progress], None]:
        def seen(p: Progress) -> None:
            if self._closing:
                raise Failed(slot.name, "the router is shutting down")
            slot.phase = str(p.phase) + (f": {p.detail}" if p.detail else "")
        return seen

    async def _put_away(self, slot: Slot, action: str) -> None:
        """Sleep (level 1) or stop ``slot``, whose state the caller already set."""
        if action == "sleep":
            await asyncio.to_thread(self.engines.sleep, slot.name, slot.url, 1)
            slot.state, slot.phase = "sleeping", ""
        else:
            await asyncio.to_thread(self.engines.stop, slot.name)
            slot.state, slot.phase, slot.url, slot.gpus = "stopped", "", "", ()
        self.on_change()

    # --- idle policy and the end ------------------------------------------------------------

    async def reap(self) -> list[tuple[str, str]]:
        """Put to sleep (or stop) each ready model idle past its ``ttl``; what was done."""
        done = []
        now = self.clock()
        for slot in list(self.slots.values()):
            e = slot.entry
            if slot.state != "ready" or slot.busy or e.always_on or not e.ttl or now - slot.last_used < e.ttl:
                continue
            async with self._placing:
                if slot.state != "ready" or slot.busy or self.clock() - slot.last_used < e.ttl:
                    continue
                action = "sleep" if e.can_sleep else "stop"
                slot.state, slot.phase = ("sleeping" if action == "sleep" else "stopping"), f"idle for {e.ttl:g} s"
                try:
                    await self._put_away(slot, action)
                except (DsagentError, OSError) as exc:
                    slot.state, slot.error = "failed", _reason(exc)
                done.append((slot.name, action))
        return done

    async def start_always_on(self) -> None:
        for slot in self.slots.values():
            if slot.entry.always_on and (slot.task is None or slot.task.done()):
                slot.task = asyncio.create_task(self._bring_up(slot))

    async def close(self) -> None:
        """Stop every model this router started (the loads in progress end first)."""
        self._closing = True
        tasks = [s.task for s in self.slots.values() if s.task is not None and not s.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for slot in self.slots.values():
            if slot.touched:
                await asyncio.to_thread(self.engines.stop, slot.name)
                slot.state, slot.url, slot.phase = "stopped", "", ""
        self.on_change()

    def views(self) -> dict[str, dict[str, Any]]:
        return {name: slot.view() for name, slot in self.slots.items()}


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
