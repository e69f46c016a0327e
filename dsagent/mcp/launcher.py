"""``dsagent mcp --up``: start the model in the background, and stop only what was started here.

The MCP handshake never waits for the start; tools ask ``Launcher`` whether a start is still
being prepared (fetch, launch) and what went wrong. On exit the deployment this server launched
is stopped, its whole process group, within a stdio host's kill window.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any

import anyio

from ..deploy.launch.options import ServeOptions
from ..deploy.record.store import Deployment
from ..deploy.stop import stop
from ..deploy.supervise.supervisor import follow
from ..deploy.up import up
from ..errors import DsagentError
from ..settings import Settings
from ..system.gpus import detect_device

__all__ = ["Launcher", "say"]


def say(text: str) -> None:
    """A line on the MCP server's stderr (its log; stdout carries the protocol)."""
    print(text, file=sys.stderr, flush=True)


class Launcher:
    """One background ``up`` of ``model``; ``started`` is the record when this launcher launched it."""

    def __init__(self, settings: Settings, model: str | None, options: ServeOptions | None,
                 start_timeout: float = 900.0) -> None:
        self.settings, self.model, self.options, self.start_timeout = settings, model, options, start_timeout
        self.name: str | None = None
        self.started: Deployment | None = None
        self.error: BaseException | None = None
        self.since: float | None = None
        self.preparing = False

    def begin(self) -> None:
        """Mark the start as under way (before ``run`` is scheduled, so no tool call sees a gap)."""
        self.since, self.preparing = time.time(), True

    async def run(self) -> None:
        """Launch, then follow the start until it settles; a failure is kept for the tools to report."""
        try:
            dep = await anyio.to_thread.run_sync(self._launch)
            self.preparing = False  # only now: the record is written, so a tool that finds none knows why
            # follow() records the outcome: ready with its measured start time, or failed with the log tail
            dep = await anyio.to_thread.run_sync(partial(follow, dep, self.settings, timeout=self.start_timeout),
                                                 abandon_on_cancel=True)
            say(f"dsagent: {dep.name} is ready at {dep.base_url}")
        except Exception as exc:  # reported to every tool call that needs the model
            self.error = exc
            say(f"dsagent: starting the model failed: {exc}")
        finally:
            self.preparing = False  # after ``error`` is set, so a tool sees the failure, not "nothing deployed"

    def _launch(self) -> Deployment:
        """``up(..., wait_ready=False)``; remembers the record when this call launched it."""
        t0 = time.time()
        options: Any = self.options or ServeOptions(port=0, device=detect_device(self.settings))
        dep = up(self.model, options=options, settings=self.settings, wait_ready=False,
                 on_step=lambda m: say(f"dsagent: {m}"))
        self.name = dep.name
        if (dep.started_at or 0.0) >= t0:
            self.started = dep
        return dep

    async def close(self) -> None:
        """Stop the deployment this launcher started (its whole process group); leave others alone."""
        if self.started is None:
            return
        name = self.started.name
        say(f"dsagent: stopping {name}, which this MCP server started")
        t0 = time.time()
        try:
            # a stdio host allows about 4 s (2 after closing stdin, 2 after SIGTERM) before SIGKILL:
            # TERM, then KILL after 3 s, so the whole group is gone before this process can be killed
            (res,) = await anyio.to_thread.run_sync(lambda: stop(name, settings=self.settings, grace=3.0))
            say(f"dsagent: {name} stopped in {time.time() - t0:.1f} s ({len(res.ended)} process(es), none left)")
        except DsagentError as exc:
            say(f"dsagent: {exc}")
        self.started = None
