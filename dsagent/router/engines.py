"""The router's hands: start, stop, sleep and wake a catalogue model's vLLM server (the executor).

Every start is ``deploy.up`` (so each model is an ordinary deployment: ``dsagent status``,
``logs`` and ``stop`` know it), on loopback, on a free port, with the share of the GPUs the
packing plan gave it. Sleep and wake are vLLM's own endpoints (``POST /sleep?level=N``,
``POST /wake_up``), which dsagent's key guard keeps behind the deployment key. ``need`` and
``capacity`` read the estimate and the machine once, before anything loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import httpx

from ..deploy.launch.options import ServeOptions
from ..deploy.record.phase import Progress
from ..deploy.stop import stop
from ..deploy.up import cpu_plan, up
from ..errors import RouterError
from ..settings import Settings
from ..system import gpus as machine
from .catalogue import Entry
from .packing import Capacity, LoadPlan, Need, need_of

__all__ = ["Engines", "Started", "VllmEngines", "capacity_here"]

GIB = 1 << 30


@dataclass(frozen=True)
class Started:
    """A model's server once ready: where to send its requests, and what it measured."""

    url: str
    """The server's root, e.g. ``http://127.0.0.1:41234``."""
    measured: dict[str, Any]
    estimate: dict[str, Any]


class Engines(Protocol):
    """What the router asks of the machine (a fake stands in only for GPU-only sleep endpoints)."""

    def need(self, entry: Entry) -> Need: ...
    def start(self, entry: Entry, plan: LoadPlan, on_progress: Callable[[Progress], None]) -> Started: ...
    def stop(self, name: str) -> None: ...
    def sleep(self, name: str, url: str, level: int) -> None: ...
    def wake(self, name: str, url: str) -> None: ...


def capacity_here(settings: Settings, memory_gib: float | None = None) -> Capacity:
    """What this machine lends the router: each visible GPU's free memory now, and host RAM
    (``memory_gib``, else 80% of what is available now)."""
    gpus = machine.visible_gpus(settings=settings)
    host = memory_gib if memory_gib is not None else machine.ram_available() * 0.8 / GIB
    return Capacity(gpus=tuple(round(g.free_gib, 2) for g in gpus), host=round(host, 2))


class VllmEngines:
    """The real hands: ``deploy.up`` / ``deploy.stop`` and vLLM's sleep endpoints."""

    def __init__(self, settings: Settings, *, start_timeout: float = 900.0) -> None:
        self.settings, self.start_timeout = settings, start_timeout
        self._ram_at_start = machine.ram_available()
        self._cards = machine.visible_gpus(settings=settings)

    def _options(self, entry: Entry) -> ServeOptions:
        return replace(entry.options, host="127.0.0.1", port=0, sleep_mode=entry.can_sleep)

    def _cpu_plan(self, entry: Entry) -> Any:
        """The CPU plan ``up`` would make, against the RAM free when the router started (so a
        second model's plan does not shrink because the first one loaded)."""
        from ..plan.estimate import with_config

        return cpu_plan(with_config(entry.model), entry.options, self._ram_at_start)

    def need(self, entry: Entry) -> Need:
        """The model's need from the estimate (no download: catalog configs, or the folder's)."""
        from ..plan.estimate import estimate, with_config

        o = entry.options
        if o.device == "cpu":
            return need_of(asdict(self._cpu_plan(entry)), device="cpu")
        if not self._cards:
            raise RouterError(f"model {entry.name} is catalogued for a GPU and none is visible here",
                              'set device = "cpu" for it, or run the router where its GPUs are', model=entry.name)
        spec = with_config(entry.model)
        plan = estimate(spec, gpu_memory_gib=min(g.total_gib for g in self._cards), gpus=len(self._cards), tp=o.tp,
                        pp=o.pp, max_model_len=o.max_model_len or min(spec.context_limit or 8192, 8192))
        return need_of(plan.to_dict(), device="gpu", gpus=o.tp * o.pp)

    def start(self, entry: Entry, plan: LoadPlan, on_progress: Callable[[Progress], None]) -> Started:
        opts = self._options(entry)
        if opts.device != "cpu":
            opts = replace(opts, gpus=plan.gpus or opts.gpus, gpu_memory_utilization=plan.gpu_memory_utilization,
                           max_model_len=opts.max_model_len or 8192)
        else:
            opts = replace(opts, kv_cache_gib=self._cpu_plan(entry).kv_cache_gib)
        dep = up(entry.model, options=opts, name=entry.name, settings=self.settings, timeout=self.start_timeout,
                 on_progress=on_progress)
        return Started(url=dep.root_url, measured=dict(dep.measured or {}),
                       estimate=dict(dep.estimate or {}))

    def stop(self, name: str) -> None:
        from ..errors import NoDeploymentError

        try:
            stop(name, settings=self.settings)
        except NoDeploymentError:
            pass

    def _post(self, url: str, path: str) -> None:
        try:
            r = httpx.post(f"{url}{path}", headers={"Authorization": f"Bearer {self.settings.api_key()}"},
                           timeout=120.0)
        except httpx.HTTPError as exc:
            raise RouterError(f"{url}{path.split('?')[0]} did not answer: {type(exc).__name__}: {exc}",
                              "see the model's log: dsagent logs NAME") from None
        if r.status_code != 200:
            raise RouterError(f"{url}{path.split('?')[0]} answered {r.status_code}: {r.text[:200]}",
                              "is the model launched with sleep mode (sleep = true, on a GPU)?")

    def sleep(self, name: str, url: str, level: int) -> None:
        self._post(url, f"/sleep?level={level}")

    def wake(self, name: str, url: str) -> None:
        self._post(url, "/wake_up")
