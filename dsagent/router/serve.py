"""Run the router (the executor), find it, and stop it.

``run`` serves the catalogue on one address until SIGTERM/SIGINT, then stops every model it
started. Its record is ``<home>/router.json`` (mode 0600, replaced atomically): pid, start time,
address and each model's view, rewritten on every change, so ``dsagent status`` shows the
models without asking the router. ``start`` runs it as a detached process (marked with
dsagent's environment mark, its output in ``<home>/logs/router.log``) and waits for it to answer;
``stop`` signals it only when the record's pid is proven the router's (pid, start time, mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..deploy.record.identity import mark_for, same_process, started_at
from ..errors import InvalidOptionError, PortInUseError, StartupError, StopError
from ..files import write_private
from ..settings import Settings
from ..system import procs
from ..system.ports import free_port, is_loopback, port_is_free
from .catalogue import Entry, catalogue_file, load
from .engines import Engines, VllmEngines, capacity_here
from .manager import Router
from .packing import Capacity

__all__ = ["ROUTER_MARK", "RouterInfo", "find", "run", "serving", "start", "stop"]

ROUTER_MARK = "dsagent-router"
"""The deployment-name half of the router's environment mark (``mark_for(home, ROUTER_MARK)``)."""
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class RouterInfo:
    """The router's record: where it runs and what its models were at the last change."""

    pid: int
    started_at: float
    host: str
    port: int
    models: dict[str, dict[str, Any]]
    updated: float

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def _record(settings: Settings) -> Path:
    return settings.home / "router.json"


def find(settings: Settings) -> RouterInfo | None:
    """The running router of this home (its record, proven by pid and start time), else ``None``."""
    try:
        data = json.loads(_record(settings).read_text())
        info = RouterInfo(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return info if same_process(info.pid, info.started_at) else None


def serving(settings: Settings, model: str) -> tuple[RouterInfo, Entry] | None:
    """This home's running router and its catalogue entry for ``model``, when it serves ``model``."""
    info = find(settings)
    if info is None or model not in info.models:
        return None
    entry = next((e for e in load(settings) if e.name == model), None)
    return (info, entry) if entry is not None else None


def _write(settings: Settings, router: Router, host: str, port: int, born: float) -> None:
    info = {"pid": os.getpid(), "started_at": born, "host": host, "port": port, "models": router.views(),
            "updated": time.time()}
    write_private(_record(settings), json.dumps(info, indent=2) + "\n")


async def serve_async(settings: Settings, entries: Sequence[Entry], *, host: str, port: int, wait: float,
                      capacity: Capacity, engines: Engines, reap_every: float = 1.0) -> None:
    """Serve until signalled; every model started here is stopped on the way out (in the app's
    lifespan, which uvicorn ends before it re-raises the signal that stopped it)."""
    import uvicorn

    from .app import build_app

    born = started_at(os.getpid()) or time.time()
    router: Router = Router(entries, engines, capacity, on_change=lambda: _write(settings, router, host, port, born))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        async def reaper() -> None:
            while True:
                await asyncio.sleep(reap_every)
                await router.reap()

        _write(settings, router, host, port, born)
        await router.start_always_on()
        reaping = asyncio.create_task(reaper())
        try:
            yield
        finally:
            reaping.cancel()
            await router.close()
            with contextlib.suppress(FileNotFoundError):
                _record(settings).unlink()

    app = build_app(router, settings.api_key(), wait=wait, lifespan=lifespan)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=5))
    await server.serve()


def run(settings: Settings | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, wait: float = 60.0,
        memory_gib: float | None = None, engines: Engines | None = None) -> None:
    """Serve ``<home>/router.toml`` on ``host:port`` in this process until SIGTERM or Ctrl-C."""
    settings = settings or Settings.load()
    entries = load(settings)
    if not entries:
        raise InvalidOptionError(f"the catalogue {catalogue_file(settings)} lists no model",
                                 "add one: dsagent models add chat deepseek-r1-distill-qwen-7b", option="router.toml")
    if find(settings) is not None:
        raise InvalidOptionError("a router of this home already runs", "stop it first: dsagent router stop",
                                 option="router")
    if not is_loopback(host):
        print(f"WARNING: the router listens on {host}:{port}, not on loopback: anyone who can reach this machine "
              "and holds the key can use every catalogued model (and make it load). Use --host 127.0.0.1 unless "
              "you mean it.", file=sys.stderr, flush=True)
    if port == 0:
        port = free_port(host)
    elif not port_is_free(host, port):
        raise PortInUseError(f"{host}:{port} is taken", "pass --port with a free port (or --port auto)", port=port)
    asyncio.run(serve_async(settings, entries, host=host, port=port, wait=wait,
                            capacity=capacity_here(settings, memory_gib), engines=engines or VllmEngines(settings)))


def start(settings: Settings, argv: Sequence[str], *, timeout: float = 60.0) -> RouterInfo:
    """``dsagent router serve ARGV`` as a detached, marked process; its record once it answers."""
    if find(settings) is not None:
        raise InvalidOptionError("a router of this home already runs", "stop it first: dsagent router stop",
                                 option="router")
    env = {**os.environ, procs.MARK: mark_for(settings.home, ROUTER_MARK), "DSAGENT_HOME": str(settings.home)}
    log = settings.logs_dir / "router.log"
    proc = procs.spawn([sys.executable, "-m", "dsagent.cli", "router", "serve", *argv], env, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = find(settings)
        if info is not None and info.pid == proc.pid:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{info.host}:{info.port}/health", timeout=2.0).status_code == 200:
                    return info
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    if proc.poll() is None:
        proc.terminate()
    raise StartupError("the router did not start", f"read {log}:\n" + "\n".join(tail))


def _ours(info: RouterInfo, settings: Settings) -> bool:
    """Proven the router: the recorded pid with the recorded start time, and dsagent's router
    (the mark in its environment, or ``dsagent ... router serve`` on its command line)."""
    if not same_process(info.pid, info.started_at):
        return False
    p = procs.process_info(info.pid)
    if p is None:
        return False
    marked = p.deployment == mark_for(settings.home, ROUTER_MARK)
    return marked or ("dsagent" in p.cmdline and "router serve" in p.cmdline)


def stop(settings: Settings, *, timeout: float = 300.0) -> RouterInfo | None:
    """Stop the router (which stops its models, each bounded by ``procs.KILL_BOUND`` after its grace);
    ``None`` when none runs."""
    info = find(settings)
    if info is None:
        return None
    if not _ours(info, settings):
        raise StopError(f"pid {info.pid} in {_record(settings)} is not this home's router: not signalled",
                        f"remove {_record(settings)} if no router runs", pids=(info.pid,))
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and same_process(info.pid, info.started_at):
        time.sleep(0.2)
    if same_process(info.pid, info.started_at):
        raise StopError(f"the router (pid {info.pid}) did not end within {timeout:.0f} s",
                        f"look at {settings.logs_dir / 'router.log'}; `kill {info.pid}` ends it", pids=(info.pid,))
    return info
