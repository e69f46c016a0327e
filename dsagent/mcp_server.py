"""The MCP server: the deployment's recipes and status as MCP tools and resources.

``dsagent mcp`` makes the local model usable from any MCP host (Claude Desktop, Cursor,
VS Code, a LangGraph agent)::

    tools      translate(text, to)         the translation, as text
               suggest_names(description, n)  {"names": [...]} (structured content)
               ask(question)               the answer, as text
               deployment_status()         state, URL, KV-cache use, requests (structured)
    resources  dsagent://deployment/status       the same status, JSON
               dsagent://deployment/model-card   what is served and how to call it, Markdown

=============  ==========================================================================
lifecycle      attach to the running deployment (found when a tool is first called); with
               ``start=True`` (``--up``) start one in the background: the MCP handshake
               never waits for it, tools wait at most ``wait`` seconds and then answer
               "model is starting, try again in N s"; on exit only a deployment this
               server started is stopped, its whole process group (``dsagent.stop``)
transports     stdio (default); streamable HTTP at ``/mcp`` with a bearer token (the
               deployment's API key, or ``--own-token``: ``<home>/mcp_token``, mode 0600)
errors         every failure reaches the agent as an MCP tool error whose message says
               what to do (no deployment, still starting, request too long for the
               context, server not answering); the server itself keeps running
=============  ==========================================================================

>>> server = build_server(Backend(Settings.load()))               # doctest: +SKIP
>>> serve(server, http=True, port=8765)                            # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, Field

from .errors import DsagentError, InstallError, NoDeploymentError
from .records import Deployment, list_all
from .settings import Settings

try:
    from mcp.server import MCPServer
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError as _exc:  # pragma: no cover - base installs carry mcp
    raise InstallError("the MCP SDK (mcp>=2,<3) is not installed", "pip install 'mcp>=2,<3'") from _exc

__all__ = ["Backend", "Names", "bind_warning", "build_server", "http_token", "model_card", "serve"]

log = logging.getLogger("dsagent.mcp")

RUNNING = ("starting", "loading", "profiling", "ready", "unhealthy")
SETTLED = ("ready", "failed", "stopped", "crashed")
STARTING = "model is starting ({phase}, {elapsed:.0f} s so far), try again in {retry} s"
NO_DEPLOYMENT_FIX = "or restart this MCP server with --up so that it starts one"
TOO_LONG = (
    "request too long for the context: {detail}\n  fix: shorten the text, lower max_tokens, or serve the "
    "model with a larger --max-model-len (now {limit} tokens)"
)
UNHEALTHY = (
    "the model server at {url} is unhealthy (its /health check fails)\n  fix: read `dsagent logs {name}`; "
    "then `dsagent stop {name}` and `dsagent up`"
)
NOT_ANSWERING = (
    "the model server at {url} is not answering ({detail})\n  fix: check it with `dsagent status`; "
    "restart it with `dsagent up`"
)
DEFAULT_HTTP_PORT = 8765


class Names(BaseModel):
    """Names suggested for a description."""

    names: list[str] = Field(description="distinct names, best first")


# --- the deployment behind the tools ------------------------------------------------------


def _find(settings: Settings, name: str | None) -> tuple[Deployment | None, str]:
    """The newest running deployment (by name when given) and its live state."""
    from .status import live_state

    deps = [d for d in list_all(settings) if name is None or d.name == name]
    states = {d.name: live_state(d) for d in deps}
    running = [d for d in deps if states[d.name] in RUNNING]
    if not running:
        return None, ""
    dep = max(running, key=lambda d: d.started_at or 0.0)
    return dep, states[dep.name]


def _deployment_name(model: str | None) -> str | None:
    if not model:
        return None
    from .catalog import resolve

    try:
        return resolve(model).name
    except DsagentError:
        return model


class Backend:
    """What the tools call: finds (or starts) the deployment, holds its chat model, stops what it started.

    ``wait`` bounds how long one tool call waits for a starting model; ``expected_start`` is
    the guess of a cold start's length used for "try again in N s" until a measured one is known.
    """

    def __init__(self, settings: Settings, *, model: str | None = None, start: bool = False,
                 options: Any = None, wait: float = 30.0, start_timeout: float = 900.0,
                 expected_start: float | None = None) -> None:
        self.settings, self.model, self.start, self.options = settings, model, start, options
        self.name = _deployment_name(model)
        self.wait, self.start_timeout = wait, start_timeout
        self.expected_start = expected_start or self._measured_start() or 60.0
        self.started: Deployment | None = None  # a deployment this server launched (and will stop)
        self.start_error: BaseException | None = None
        self._starting_since: float | None = None
        self._llm: Any = None
        self._dep: Deployment | None = None
        self._launching = False
        self._lock, self._llm_lock = anyio.Lock(), anyio.Lock()

    def _measured_start(self) -> float | None:
        times = [d.measured.get("seconds_to_ready") for d in list_all(self.settings)
                 if self.name is None or d.name == self.name]
        times = [float(t) for t in times if t]
        return max(times) if times else None

    # lifecycle -----------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Backend]:
        """Run the background start (``start=True``) for the server's lifetime; stop what it started."""
        async with anyio.create_task_group() as tg:
            if self.start:
                self._starting_since, self._launching = time.time(), True
                tg.start_soon(self._start)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.close()

    async def _start(self) -> None:
        from .serve import wait
        from .status import live_state

        try:
            dep = await anyio.to_thread.run_sync(self._launch)
            deadline = time.time() + self.start_timeout
            while (state := await anyio.to_thread.run_sync(live_state, dep)) not in SETTLED:
                if time.time() > deadline:
                    break
                await anyio.sleep(1.0)
            # wait() records the outcome: ready with its measured start time, or failed with the log tail
            await anyio.to_thread.run_sync(lambda: wait(dep, self.settings, timeout=5.0 if state == "ready" else 0.0))
            _say(f"dsagent: {dep.name} is ready at {dep.base_url}")
        except Exception as exc:  # reported to every tool call that needs the model
            self.start_error = exc
            _say(f"dsagent: starting the model failed: {exc}")

    def _launch(self) -> Deployment:
        """``up(..., wait_ready=False)``; remembers the record when this call launched it."""
        from .serve import ServeOptions
        from .up import detect_device, up

        t0 = time.time()
        try:
            dep = up(self.model, options=self.options or ServeOptions(port=0, device=detect_device()),
                     settings=self.settings, wait_ready=False, on_step=lambda m: _say(f"dsagent: {m}"))
            self.name = dep.name
            if (dep.started_at or 0.0) >= t0:
                self.started = dep
            return dep
        finally:
            self._launching = False

    async def close(self) -> None:
        """Stop the deployment this server started (its whole process group); leave others alone."""
        if self.started is None:
            return
        from .stop import stop

        name = self.started.name
        _say(f"dsagent: stopping {name}, which this MCP server started")
        t0 = time.time()
        try:
            # a stdio host allows about 4 s (2 after closing stdin, 2 after SIGTERM) before SIGKILL:
            # TERM, then KILL after 3 s, so the whole group is gone before this process can be killed
            (res,) = await anyio.to_thread.run_sync(lambda: stop(self.settings, name, grace=3.0))
            _say(f"dsagent: {name} stopped in {time.time() - t0:.1f} s ({len(res.ended)} process(es), none left)")
        except DsagentError as exc:
            _say(f"dsagent: {exc}")
        self.started = None

    # what the tools need --------------------------------------------------------------------

    def _starting(self, dep: Deployment | None, phase: str) -> ToolError:
        since = (dep.started_at if dep and dep.started_at else None) or self._starting_since or time.time()
        elapsed = time.time() - since
        retry = max(5, int(self.expected_start - elapsed + 0.5))
        return ToolError(STARTING.format(phase=phase, elapsed=elapsed, retry=retry))

    def _missing(self) -> ToolError:
        from .up import attach

        try:  # attach words the reason: nothing deployed, or the deployment failed (with its log)
            attach(self.settings, self.name, wait_timeout=0.0)
        except NoDeploymentError as exc:
            return ToolError(f"{exc.problem}\n  fix: {exc.remedy}, {NO_DEPLOYMENT_FIX}")
        except DsagentError as exc:
            return ToolError(str(exc))
        return ToolError(f"no running deployment in {self.settings.home}\n  fix: dsagent up, {NO_DEPLOYMENT_FIX}")

    def _preparing(self) -> bool:
        return self.start and self._launching

    async def deployment(self) -> Deployment:
        """The ready deployment, waiting at most ``wait`` seconds; a ``ToolError`` saying why otherwise."""
        deadline = time.time() + self.wait
        while True:
            if self._dep is not None:
                return self._dep
            if self.start_error is not None:
                raise ToolError(str(self.start_error))
            async with self._lock:  # one probe at a time; concurrent callers share its answer
                if self._dep is not None:
                    return self._dep
                dep, state = await anyio.to_thread.run_sync(_find, self.settings, self.name)
                if state == "ready" and dep is not None:
                    self._dep = dep
                    return dep
            if state == "unhealthy" and dep is not None:
                raise ToolError(UNHEALTHY.format(url=dep.base_url, name=dep.name))
            if dep is None and not self._preparing():
                raise await anyio.to_thread.run_sync(self._missing)
            if time.time() >= deadline:
                raise self._starting(dep, state or "preparing")
            await anyio.sleep(min(1.0, max(0.05, deadline - time.time())))

    async def chat_model(self) -> Any:
        """The deployment's LangChain chat model (greedy unless the model has its own sampling)."""
        dep = await self.deployment()
        async with self._llm_lock:
            if self._llm is None:
                from .chat import local_deepseek

                llm = await anyio.to_thread.run_sync(
                    lambda: local_deepseek(dep.name, settings=self.settings, wait_timeout=5.0))
                self._llm = llm if llm.temperature is not None else llm.model_copy(update={"temperature": 0.0})
            return self._llm

    def forget(self) -> None:
        """Look the deployment up again on the next call (it stopped answering)."""
        self._dep = self._llm = None

    async def call(self, recipe: str, *args: Any, max_tokens: int, **kwargs: Any) -> Any:
        """Run a recipe (its async form when it has one) on the deployment; errors become ``ToolError``."""
        from . import recipes

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
            error = self._translate(exc)
            if error is None:
                log.exception("dsagent: %s failed", recipe)
                error = ToolError(f"{recipe} failed: {type(exc).__name__}: {exc}\n"
                                  "  fix: read the MCP server's log (its stderr)")
            raise error from exc

    def _translate(self, exc: Exception) -> ToolError | None:
        """The foreign errors an agent can act on, worded once, here."""
        import openai

        dep = self._dep
        if isinstance(exc, DsagentError):
            return ToolError(str(exc))
        if isinstance(exc, openai.BadRequestError) and _too_long(str(exc)):
            return ToolError(TOO_LONG.format(detail=_detail(exc), limit=dep.max_model_len if dep else "?"))
        if isinstance(exc, (openai.APIConnectionError, openai.InternalServerError)):
            self.forget()
            return ToolError(NOT_ANSWERING.format(url=dep.base_url if dep else "?", detail=_detail(exc)))
        if isinstance(exc, openai.APIStatusError):
            return ToolError(f"the model server refused the request ({exc.status_code}): {_detail(exc)}")
        return None

    async def report(self) -> dict[str, Any]:
        """The status of the deployment the tools use, without waiting for it."""
        from .status import status

        dep, state = await anyio.to_thread.run_sync(_find, self.settings, self.name)
        if dep is not None:
            out = await anyio.to_thread.run_sync(status, dep)
        elif self.start_error is not None:
            out = {"state": "failed", "reason": str(self.start_error)}
        elif self._preparing():
            out = {"state": "preparing", "reason": "fetching the model and launching vLLM"}
        else:
            out = {"state": "none", "reason": str(await anyio.to_thread.run_sync(self._missing))}
        out["started_by_this_mcp_server"] = self.started is not None and (dep is None or dep.name == self.started.name)
        return out


def _too_long(text: str) -> bool:
    text = text.lower()
    return any(k in text for k in ("maximum context length", "context length", "max_model_len", "too long",
                                   "maximum model length", "input tokens"))


def _detail(exc: Exception) -> str:
    """The server's own words: the ``message`` of an OpenAI-style error body, else the first line."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if msg:
            return str(msg)
    return (str(exc).splitlines() or [""])[0][:500]


def model_card(settings: Settings, dep: Deployment | None) -> str:
    """What is served and how to call it, as Markdown."""
    if dep is None:
        return f"# No model is deployed\n\nNothing runs in `{settings.home}`. Start one with `dsagent up`.\n"
    config: dict[str, Any] = {}
    try:
        config = json.loads((Path(dep.model_path) / "config.json").read_text())
    except (OSError, ValueError):
        pass
    description = ""
    try:
        from .catalog import resolve

        description = resolve(dep.name).description
    except DsagentError:
        pass
    rows = [("served name", dep.name), ("model", dep.model), ("weights", dep.model_path),
            ("architecture", ", ".join(config.get("architectures", [])) or "?"),
            ("layers / hidden size", f"{config.get('num_hidden_layers', '?')} / {config.get('hidden_size', '?')}"),
            ("context length", str(dep.max_model_len or config.get("max_position_embeddings", "?"))),
            ("reasoning model", "yes (R1: answers carry their thinking separately)" if dep.reasoning else "no"),
            ("device", f"{dep.device}, tp {dep.tp}, pp {dep.pp}, dtype {dep.dtype}"),
            ("vLLM", dep.vllm_version or "?"), ("base URL", dep.base_url), ("API key file", dep.api_key_file)]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# {dep.name}\n\n{description}\n\n| | |\n|---|---|\n{table}\n\n"
            "Use the tools `ask`, `translate` and `suggest_names`; `deployment_status` tells whether the "
            "model is ready. Any OpenAI-compatible client works too: the base URL and key file are above.\n")


# --- the MCP face ---------------------------------------------------------------------------


class _Token:
    """A ``TokenVerifier`` accepting one static bearer token."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token.encode()):
            return AccessToken(token=token, client_id="dsagent-mcp", scopes=[])
        return None


def build_server(backend: Backend, *, token: str | None = None, url: str = "http://127.0.0.1") -> MCPServer:
    """The MCP server over ``backend``; ``token`` makes its HTTP transport require that bearer token."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[Backend]:
        async with backend.running():
            yield backend

    auth: dict[str, Any] = {}
    if token is not None:
        auth = {"token_verifier": _Token(token), "auth": AuthSettings(issuer_url=url, resource_server_url=None)}
    from . import __version__

    server: MCPServer = MCPServer(
        "dsagent", version=__version__, lifespan=lifespan, log_level="WARNING",
        instructions="Tools backed by a DeepSeek model served locally with vLLM. If a tool says the model is "
                     "starting, wait the seconds it names and call it again.",
        **auth,
    )

    @server.tool()
    async def translate(
        text: Annotated[str, Field(description="the text to translate")],
        to: Annotated[str, Field(description="the target language, e.g. French")] = "French",
        max_tokens: Annotated[int, Field(ge=1, le=8192, description="longest translation, in tokens")] = 512,
    ) -> str:
        """Translate a text into another language with the local model."""
        return await backend.call("translate", text, to, max_tokens=max_tokens)

    @server.tool()
    async def suggest_names(
        description: Annotated[str, Field(description="what needs names, e.g. 'a nickname for a baby boy'")],
        n: Annotated[int, Field(ge=1, le=20, description="how many names")] = 3,
    ) -> Names:
        """Suggest distinct names for something with the local model."""
        return Names(names=await backend.call("suggest_names", description, n, max_tokens=256))

    @server.tool()
    async def ask(
        question: Annotated[str, Field(description="the question or instruction")],
        max_tokens: Annotated[int, Field(ge=1, le=8192, description="longest answer, in tokens")] = 512,
    ) -> str:
        """Answer a question with the local model."""
        return await backend.call("ask", question, max_tokens=max_tokens)

    @server.tool()
    async def deployment_status() -> dict[str, Any]:
        """Report whether the local model is ready, where it listens and how busy it is."""
        return await backend.report()

    @server.resource("dsagent://deployment/status", name="deployment-status", mime_type="application/json")
    async def status_resource() -> str:
        """The deployment's live status (state, URL, KV-cache use, running requests) as JSON."""
        return json.dumps(await backend.report(), indent=2)

    @server.resource("dsagent://deployment/model-card", name="model-card", mime_type="text/markdown")
    async def model_card_resource() -> str:
        """What model is served, its context length and how to call it, as Markdown."""
        dep, _ = await anyio.to_thread.run_sync(_find, backend.settings, backend.name)
        return model_card(backend.settings, dep)

    return server


def http_token(settings: Settings, *, own: bool = False) -> tuple[str, Path]:
    """The bearer token HTTP clients must send, and the file (mode 0600) that holds it."""
    if not own:
        return settings.api_key(), settings.api_key_file
    path = settings.home / "mcp_token"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("dsm-" + secrets.token_urlsafe(24) + "\n")
        os.replace(tmp, path)
    return path.read_text().strip(), path


def bind_warning(host: str, port: int) -> str | None:
    """The loud warning for an HTTP bind address other machines can reach; ``None`` for loopback.

    >>> bind_warning("127.0.0.1", 8765) is None
    True
    >>> "WARNING" in bind_warning("0.0.0.0", 8765)
    True
    """
    import ipaddress

    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    bar = "!" * 78
    return (f"{bar}\nWARNING: the MCP server listens on {host}:{port}, not on 127.0.0.1: anyone who can reach this "
            f"machine\nand holds the token can use the model. Use --host 127.0.0.1 unless you mean it.\n{bar}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def serve(backend: Backend, *, http: bool = False, host: str = "127.0.0.1", port: int = DEFAULT_HTTP_PORT,
          own_token: bool = False) -> None:
    """Run the MCP server until its client leaves (stdio) or it is interrupted (HTTP)."""
    if not http:
        _say(f"dsagent MCP server on stdio (DSAGENT_HOME {backend.settings.home})")
        anyio.run(_serve_stdio, build_server(backend))
        return
    token, token_file = http_token(backend.settings, own=own_token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown}:{port}/mcp"
    if (warning := bind_warning(host, port)) is not None:
        _say(warning)
    server = build_server(backend, token=token, url=url.removesuffix("/mcp"))
    _say(f"dsagent MCP server (streamable HTTP) on {url}\n  bearer token in {token_file}\n"
         f"  send: Authorization: Bearer $(cat {token_file})")
    import uvicorn

    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()


async def _serve_stdio(server: MCPServer) -> None:
    """stdio until the client closes stdin; SIGTERM/SIGHUP end it too, cleanup included (once)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:
            serving = anyio.CancelScope()

            async def watch() -> None:
                async for _ in signals:  # later signals are absorbed while the lifespan cleans up
                    serving.cancel()

            tg.start_soon(watch)
            with serving:
                await server.run_stdio_async()
            tg.cancel_scope.cancel()
