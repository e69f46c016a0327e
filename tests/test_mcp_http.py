"""``dsagent mcp --http``: bearer auth, 64 concurrent tool calls, and a LangChain agent using its tools."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from dsagent.settings import Settings
from dsagent.system.ports import free_port

from answers import is_french_for_i_love_programming

SERVER_START = 600  # see test_mcp.py: the first test to use ``server`` may start it
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class HttpServer:
    def __init__(self, url: str, token: str, token_file: Path, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.token, self.token_file, self.proc, self.log = url, token, token_file, proc, log

    def client(self):
        """An MCP SDK client carrying the bearer token."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"},
                                  timeout=httpx2.Timeout(30.0, read=300.0))
        return Client(streamable_http_client(self.url, http_client=http))


def start_http(home: Path, *args: str, timeout: float = 60) -> tuple[subprocess.Popen, str, Path]:
    port = free_port("127.0.0.1")
    log = home / f"mcp-http-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DSAGENT_HOME": str(home)}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dsagent.cli", "mcp", "--http", "--port", str(port), *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            httpx.get(url, timeout=1)
            return proc, url, log
        except httpx.HTTPError:
            time.sleep(0.3)
    stop_http(proc)
    raise AssertionError(f"dsagent mcp --http did not listen within {timeout} s:\n{log.read_text()}")


def stop_http(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def http_server(settings) -> Iterator[HttpServer]:
    proc, url, log = start_http(settings.home)
    try:
        yield HttpServer(url, settings.mcp_token(), settings.mcp_token_file, proc, log)
    finally:
        stop_http(proc)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()


@pytest.mark.timeout(60)
def test_start_prints_the_url_and_the_token_file(http_server):
    err = http_server.log.read_text()
    assert http_server.url in err and str(http_server.token_file) in err
    assert "WARNING" not in err  # 127.0.0.1: nothing to warn about


@pytest.mark.timeout(60)
def test_requests_without_a_valid_token_get_401(http_server):
    assert httpx.post(http_server.url, json=INITIALIZE, headers=HEADERS, timeout=10).status_code == 401
    bad = {**HEADERS, "Authorization": "Bearer not-the-token"}
    assert httpx.post(http_server.url, json=INITIALIZE, headers=bad, timeout=10).status_code == 401
    good = {**HEADERS, "Authorization": f"Bearer {http_server.token}"}
    assert httpx.post(http_server.url, json=INITIALIZE, headers=good, timeout=10).status_code == 200


@pytest.mark.timeout(SERVER_START + 120)
async def test_tool_call_with_the_token(server, http_server):
    with anyio.fail_after(90):
        async with http_server.client() as client:
            out = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 32})
            assert not out.is_error, out.content
            assert "Paris" in out.content[0].text


@pytest.mark.timeout(SERVER_START + 300)
async def test_64_concurrent_tool_calls_are_all_answered(server, http_server):
    n = 64
    results: dict[int, object] = {}

    async def one(client, i: int) -> None:
        args = {"text": f"I have {i} apples.", "to": "French", "max_tokens": 24}
        results[i] = await client.call_tool("translate", args)

    async with http_server.client() as client:
        await client.call_tool("deployment_status", {})  # connected before the clock starts
        t0 = time.monotonic()
        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, client, i)
        took = time.monotonic() - t0
    print(f"\n64 concurrent translate calls over streamable HTTP: {took:.1f} s")
    assert sorted(results) == list(range(n))
    errors = [r for r in results.values() if r.is_error]
    assert not errors, errors[0].content
    assert all(r.content[0].text.strip() for r in results.values())


def _status(url: str, token: str) -> int:
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    return httpx.post(url, json=INITIALIZE, headers=headers, timeout=10).status_code


@pytest.mark.timeout(90)
def test_without_flags_http_uses_its_own_token_not_the_engine_key(tmp_path):
    """Who may call tools may not call the engine: the default token is <home>/mcp_token, and the
    deployment's API key is refused."""
    home = tmp_path / "home"
    engine_key = Settings.load(home).api_key()
    proc, url, log = start_http(home)
    try:
        token_file = home / "mcp_token"
        assert (token_file.stat().st_mode & 0o777) == 0o600
        assert str(token_file) in log.read_text() and str(home / "api_key") not in log.read_text()
        token = token_file.read_text().strip()
        assert token != engine_key
        assert _status(url, token) == 200
        assert _status(url, engine_key) == 401
    finally:
        stop_http(proc)


@pytest.mark.timeout(90)
def test_share_engine_key_is_an_explicit_choice(tmp_path, cli):
    home = tmp_path / "home"
    engine_key = Settings.load(home).api_key()
    own = Settings.load(home).mcp_token()
    proc, url, log = start_http(home, "--share-engine-key")
    try:
        assert str(home / "api_key") in log.read_text()
        assert _status(url, engine_key) == 200
        assert _status(url, own) == 401
    finally:
        stop_http(proc)
    out = cli("mcp", "--http", "--share-engine-key", "--own-token", env={"DSAGENT_HOME": str(home)})
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


class _ToolCallingFake:
    """A chat model that calls ``translate`` once, then answers with what the tool returned.

    SmolLM2-135M picks tools poorly, so the agent's decision is scripted; the tool itself is
    loaded through ``langchain.mcp.MCPAdapter`` and really runs against the model server.
    """

    @staticmethod
    def build():
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        from langchain_core.messages import AIMessage

        class Fake(GenericFakeChatModel):
            def bind_tools(self, tools, **kwargs):
                return self

        call = {"name": "translate", "args": {"text": "I love programming.", "to": "French", "max_tokens": 48},
                "id": "call_1", "type": "tool_call"}
        return Fake(messages=iter([AIMessage(content="", tool_calls=[call]), AIMessage(content="Done.")]))


@pytest.mark.timeout(SERVER_START + 180)
async def test_langchain_agent_calls_a_tool_through_mcp_adapter(server, http_server):
    import warnings

    from langchain.agents import create_agent
    from langchain_core.messages import ToolMessage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastmcp.client.transports import StreamableHttpTransport
        from langchain.mcp import MCPAdapter

    transport = StreamableHttpTransport(http_server.url, headers={"Authorization": f"Bearer {http_server.token}"})
    with anyio.fail_after(150):
        async with MCPAdapter(transport) as adapter:
            tools = await adapter.list_tools()
            assert {"translate", "suggest_names", "ask", "deployment_status"} <= {t.name for t in tools}
            agent = create_agent(_ToolCallingFake.build(), tools)
            result = await agent.ainvoke({"messages": [{"role": "user", "content": "Translate 'I love programming.'"}]})
    replies = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert len(replies) == 1 and replies[0].status != "error", replies
    answer = replies[0].text if isinstance(replies[0].text, str) else replies[0].text()
    assert is_french_for_i_love_programming(answer), answer
    assert result["messages"][-1].content == "Done."
