"""Riding through a supervised restart: a call that meets a refused connection while the
deployment's supervisor brings it back waits (bounded) for it to be ready and is sent again.

``RestartRiding`` is mixed into the local chat classes (``dsagent.clients.chat``); it wraps
``_generate`` / ``_agenerate`` in ``ride_through``. Only connection-level failures are ridden
(refused, reset, timed out), and only while the deployment is supervised and not ready: a
deployment without a supervisor, or one that answers, gets the error at once. Streams are not
ridden (their first chunks may already have reached the caller).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import openai
from pydantic import BaseModel

from ..deploy.record.identity import supervisor_alive
from ..deploy.record.phase import live_state
from ..deploy.record.state import State
from ..deploy.record.store import load
from ..deploy.supervise.supervisor import follow
from ..errors import DsagentError
from ..settings import Settings

__all__ = ["RIDDEN", "RestartRiding", "aride_through", "ride_through", "wait_restarted"]

T = TypeVar("T")
RIDDEN: tuple[type[BaseException], ...] = (openai.APIConnectionError, httpx.TransportError)
"""What a restart looks like from a client (``openai.APITimeoutError`` is one of the first)."""


def wait_restarted(name: str, home: str, timeout: float) -> bool:
    """Whether deployment ``name`` of ``home`` was restarting and is ready again within ``timeout``."""
    settings = Settings.load(home)
    dep = load(settings, name)
    if dep is None or not supervisor_alive(dep) or live_state(dep) == State.READY:
        return False
    try:
        follow(dep, settings, timeout=timeout)
    except DsagentError:
        return False
    return True


def ride_through(call: Callable[[], T], *, name: str | None, home: str | None, timeout: float) -> T:
    """``call()``, sent again after each restart of the deployment it talks to, for ``timeout`` s at most."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except RIDDEN:
            left = deadline - time.monotonic()
            if not name or not home or left <= 0 or not wait_restarted(name, home, left):
                raise


async def aride_through(call: Callable[[], Awaitable[T]], *, name: str | None, home: str | None,
                        timeout: float) -> T:
    """``ride_through`` for a coroutine (the wait runs in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except RIDDEN:
            left = deadline - time.monotonic()
            if not name or not home or left <= 0 or not await asyncio.to_thread(wait_restarted, name, home, left):
                raise


class RestartRiding(BaseModel):
    """Fields and overrides that make a LangChain chat model ride through restarts of its deployment.

    ``deployment`` and ``dsagent_home`` name the deployment (``local_deepseek()`` sets them);
    ``restart_wait`` bounds the wait for it, per call."""

    deployment: str | None = None
    dsagent_home: str | None = None
    restart_wait: float = 600.0

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        parent = super()._generate  # type: ignore[misc]
        return ride_through(lambda: parent(*args, **kwargs), name=self.deployment, home=self.dsagent_home,
                            timeout=self.restart_wait)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
        parent = super()._agenerate  # type: ignore[misc]
        return await aride_through(lambda: parent(*args, **kwargs), name=self.deployment, home=self.dsagent_home,
                                   timeout=self.restart_wait)
