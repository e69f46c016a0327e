"""What the MCP tools call: the deployment behind them (found, or started by ``--up``), its
chat model, the recipes run on it, and its status.

``wait`` bounds how long one tool call waits for a starting model; ``expected_start`` is the
guess of a cold start's length used for "try again in N s" until a measured one is known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver.exceptions import ToolError

from ..clients import recipes
from ..deploy.launch.options import ServeOptions
from ..deploy.record.names import name_for
from ..deploy.record.state import State
from ..deploy.record.store import Deployment, list_all
from ..deploy.status import find, report
from ..deploy.up import attach
from ..errors import DsagentError, NoDeploymentError
from ..settings import Settings
from .launcher import Launcher
from .messages import NO_DEPLOYMENT_FIX, STARTING, UNHEALTHY, tool_error

__all__ = ["Backend"]

log = logging.getLogger("dsagent.mcp")


class Backend:
    """The deployment the tools use; with ``start=True`` a ``Launcher`` brings it up in the background."""

    def __init__(self, settings: Settings, *, model: str | None = None, start: bool = False,
                 options: ServeOptions | None = None, wait: float = 30.0, start_timeout: float = 900.0,
                 expected_start: float | None = None) -> None:
        self.settings, self.model, self.start = settings, model, start
        self._name = name_for(model) if model else None  # checked before the server starts
        self.wait = wait
        self.launcher = Launcher(settings, model, options, start_timeout)
        self.expected_start = expected_start or self._measured_start() or 60.0
        self._llm: Any = None
        self._dep: Deployment | None = None
        self._lock, self._llm_lock = anyio.Lock(), anyio.Lock()

    @property
    def name(self) -> str | None:
        """The deployment's name: asked for, or learnt from the launch."""
        return self._name or self.launcher.name

    def _measured_start(self) -> float | None:
        times = [float(t) for d in list_all(self.settings) if self.name is None or d.name == self.name
                 if (t := d.measured.get("seconds_to_ready"))]
        return max(times) if times else None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Backend]:
        """Run the background start (``start=True``) for the server's lifetime; stop what it started."""
        async with anyio.create_task_group() as tg:
            if self.start:
                self.launcher.begin()
                tg.start_soon(self.launcher.run)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.launcher.close()

    def _starting(self, dep: Deployment | None, phase: str) -> ToolError:
        since = (dep.started_at if dep and dep.started_at else None) or self.launcher.since or time.time()
        elapsed = time.time() - since
        retry = max(5, int(self.expected_start - elapsed + 0.5))
        return ToolError(STARTING.format(phase=phase, elapsed=elapsed, retry=retry))

    def _missing(self) -> ToolError:
        try:  # attach words the reason: nothing deployed, or the deployment failed (with its log)
            attach(self.name, settings=self.settings, wait_timeout=0.0)
        except NoDeploymentError as exc:
            return ToolError(f"{exc.problem}\n  fix: {exc.remedy}, {NO_DEPLOYMENT_FIX}")
        except DsagentError as exc:
            return ToolError(str(exc))
        return ToolError(f"no running deployment in {self.settings.home}\n  fix: dsagent up, {NO_DEPLOYMENT_FIX}")

    def _preparing(self) -> bool:
        return self.start and self.launcher.preparing

    async def deployment(self) -> Deployment:
        """The ready deployment, waiting at most ``wait`` seconds; a ``ToolError`` saying why otherwise."""
        deadline = time.time() + self.wait
        while True:
            if self._dep is not None:
                return self._dep
            if self.launcher.error is not None:
                raise ToolError(str(self.launcher.error))
            async with self._lock:  # one probe at a time; concurrent callers share its answer
                if self._dep is not None:
                    return self._dep
                # read before the records: a launch writes its record, then stops preparing, so a
                # look that finds no record while the launch was still preparing must not call it missing
                preparing = self._preparing()
                dep, state, _ = await anyio.to_thread.run_sync(find, self.settings, self.name)
                if state == State.READY and dep is not None:
                    self._dep = dep
                    return dep
            if state == State.UNHEALTHY and dep is not None:
                raise ToolError(UNHEALTHY.format(url=dep.base_url, name=dep.name))
            if dep is None and not preparing:
                if self.launcher.error is not None:  # the launch failed between the two looks
                    raise ToolError(str(self.launcher.error))
                raise await anyio.to_thread.run_sync(self._missing)
            if time.time() >= deadline:
                raise self._starting(dep, str(state) if dep is not None else "preparing")
            await anyio.sleep(min(1.0, max(0.05, deadline - time.time())))

    async def chat_model(self) -> Any:
        """The deployment's LangChain chat model (greedy unless the model has its own sampling); a
        model of the router's catalogue is called through the router, which loads it on demand."""
        from ..router.serve import serving

        routed = self.name is not None and await anyio.to_thread.run_sync(serving, self.settings, self.name)
        dep = None if routed else await self.deployment()
        async with self._llm_lock:
            if self._llm is None:
                from ..clients.chat import local_deepseek  # LangChain loads on the first call, not at start

                name = self.name if routed else dep.name  # type: ignore[union-attr]
                llm = await anyio.to_thread.run_sync(
                    lambda: local_deepseek(name, settings=self.settings, wait_timeout=5.0))
                self._llm = llm if llm.temperature is not None else llm.model_copy(update={"temperature": 0.0})
            return self._llm

    async def models(self) -> dict[str, Any]:
        """Every model this home serves: the router's (with their states) and the deployments."""
        from ..router.serve import find as find_router

        info = await anyio.to_thread.run_sync(find_router, self.settings)
        deps = await anyio.to_thread.run_sync(list_all, self.settings)
        from ..deploy.record.phase import live_state

        return {
            "router": None if info is None else {"base_url": info.base_url, "pid": info.pid},
            "models": [] if info is None else [
                {"name": n, "state": m["state"], "phase": m.get("phase") or None, "last_used": m.get("last_used"),
                 "loads": m.get("loads"), "need_gib": m.get("need_gib")} for n, m in info.models.items()],
            "deployments": [{"name": d.name, "state": str(live_state(d)), "base_url": d.base_url} for d in deps],
        }

    async def call(self, recipe: str, *args: Any, max_tokens: int, **kwargs: Any) -> Any:
        """Run a recipe (its async form when it has one) on the deployment; errors become ``ToolError``."""
        llm = (await self.chat_model()).bind(max_tokens=max_tokens)
        fn: Callable[..., Awaitable[Any]] | None = getattr(recipes, f"a{recipe}", None)
        try:
            if fn is not None:
                return await fn(*args, llm=llm, **kwargs)
            sync = getattr(recipes, recipe)
            return await anyio.to_thread.run_sync(lambda: sync(*args, llm=llm, **kwargs))
        except ToolError:
            raise
        except Exception as exc:
            error, forget = tool_error(exc, self._dep)
            if forget:  # it stopped answering: look the deployment up again on the next call
                self._dep = self._llm = None
            if error is None:
                log.exception("dsagent: %s failed", recipe)
                error = ToolError(f"{recipe} failed: {type(exc).__name__}: {exc}\n"
                                  "  fix: read the MCP server's log (its stderr)")
            raise error from exc

    async def current(self) -> Deployment | None:
        """The running deployment the tools would use, without waiting for it."""
        return (await anyio.to_thread.run_sync(find, self.settings, self.name))[0]

    async def report(self) -> dict[str, Any]:
        """The status of the deployment the tools use, without waiting for it."""
        preparing = self._preparing()  # before the records, as in ``deployment``
        dep = await self.current()
        if dep is not None:
            out = await anyio.to_thread.run_sync(report, dep)
        elif self.launcher.error is not None:
            out = {"state": str(State.FAILED), "reason": str(self.launcher.error)}
        elif preparing:
            out = {"state": "preparing", "reason": "fetching the model and launching vLLM"}
        else:
            out = {"state": "none", "reason": str(await anyio.to_thread.run_sync(self._missing))}
        started = self.launcher.started
        out["started_by_this_mcp_server"] = started is not None and (dep is None or dep.name == started.name)
        return out
