"""The MCP server: the deployment's recipes and status as MCP tools and resources.

``dsagent mcp`` makes the local model usable from any MCP host (Claude Desktop, Cursor,
VS Code, a LangGraph agent)::

    tools      translate(text, to)         the translation, as text
               suggest_names(description, n)  {"names": [...]} (structured content)
               ask(question)               the answer, as text
               deployment_status()         state, URL, KV-cache use, requests (structured)
               list_models()               the router's models and their states, the deployments
    resources  dsagent://deployment/status       the same status, JSON
               dsagent://deployment/model-card   what is served and how to call it, Markdown

=============  ==========================================================================
lifecycle      attach to the running deployment (found when a tool is first called); with
               ``start=True`` (``--up``) start one in the background: the MCP handshake
               never waits for it, tools wait at most ``wait`` seconds and then answer
               "model is starting, try again in N s"; on exit only a deployment this
               server started is stopped, its whole process group (``dsagent.stop``)
transports     stdio (default); streamable HTTP at ``/mcp`` with a bearer token of its own
               (``<home>/mcp_token``, mode 0600), or the deployment's API key when asked
               to share it (``--share-engine-key``)
errors         every failure reaches the agent as an MCP tool error whose message says
               what to do (no deployment, still starting, request too long for the
               context, server not answering); the server itself keeps running
=============  ==========================================================================

In code (``dsagent mcp`` does this)::

    server = build_server(Backend(Settings.load()))       # in memory: mcp.Client(server)
    serve(Backend(Settings.load()), http=True, port=8765)
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, Field

from ..errors import InstallError
from .auth import StaticToken, bind_warning, http_token
from .backend import Backend
from .launcher import say
from .messages import model_card

try:
    from mcp.server import MCPServer
    from mcp.server.auth.settings import AuthSettings
except ImportError as _exc:  # pragma: no cover - base installs carry mcp
    raise InstallError("the MCP SDK (mcp>=2,<3) is not installed", "pip install 'mcp>=2,<3'", package="mcp") from _exc

__all__ = ["DEFAULT_HTTP_PORT", "Names", "build_server", "serve"]

DEFAULT_HTTP_PORT = 8765
INSTRUCTIONS = ("Tools backed by a DeepSeek model served locally with vLLM. If a tool says the model is starting, "
                "wait the seconds it names and call it again.")


class Names(BaseModel):
    """Names suggested for a description."""

    names: list[str] = Field(description="distinct names, best first")


def build_server(backend: Backend, *, token: str | None = None, url: str = "http://127.0.0.1") -> MCPServer:
    """The MCP server over ``backend``; ``token`` makes its HTTP transport require that bearer token."""
    from .. import __version__

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[Backend]:
        async with backend.running():
            yield backend

    auth: dict[str, Any] = {}
    if token is not None:
        auth = {"token_verifier": StaticToken(token), "auth": AuthSettings(issuer_url=url, resource_server_url=None)}
    server: MCPServer = MCPServer("dsagent", version=__version__, lifespan=lifespan, log_level="WARNING",
                                  instructions=INSTRUCTIONS, **auth)
    _add_tools(server, backend)
    _add_resources(server, backend)
    return server


def _add_tools(server: MCPServer, backend: Backend) -> None:
    """The recipes and the status, as typed one-line tools."""

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
    async def list_models() -> dict[str, Any]:
        """List the models this machine serves (the router's, with their states, and the deployments)."""
        return await backend.models()

    @server.tool()
    async def deployment_status() -> dict[str, Any]:
        """Report whether the local model is ready, where it listens and how busy it is."""
        return await backend.report()


def _add_resources(server: MCPServer, backend: Backend) -> None:
    """The status and the model card, as resources."""

    @server.resource("dsagent://deployment/status", name="deployment-status", mime_type="application/json")
    async def status_resource() -> str:
        """The deployment's live status (state, URL, KV-cache use, running requests) as JSON."""
        return json.dumps(await backend.report(), indent=2)

    @server.resource("dsagent://deployment/model-card", name="model-card", mime_type="text/markdown")
    async def model_card_resource() -> str:
        """What model is served, its context length and how to call it, as Markdown."""
        return model_card(backend.settings, await backend.current())


def serve(backend: Backend, *, http: bool = False, host: str = "127.0.0.1", port: int = DEFAULT_HTTP_PORT,
          share_engine_key: bool = False) -> None:
    """Run the MCP server until its client leaves (stdio) or it is interrupted (HTTP)."""
    if not http:
        say(f"dsagent MCP server on stdio (DSAGENT_HOME {backend.settings.home})")
        anyio.run(_serve_stdio, build_server(backend))
        return
    token, token_file = http_token(backend.settings, share_engine_key=share_engine_key)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown}:{port}/mcp"
    if (warning := bind_warning(host, port)) is not None:
        say(warning)
    server = build_server(backend, token=token, url=url.removesuffix("/mcp"))
    say(f"dsagent MCP server (streamable HTTP) on {url}\n  bearer token in {token_file}\n"
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
