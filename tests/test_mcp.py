"""``dsagent mcp`` over stdio, with the SDK's real client, against the session's real CPU model server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from dsagent.mcp.auth import bind_warning, http_token

from answers import are_names, is_french_for_i_love_programming

# Tests that use ``server`` may be the first to start the session's vLLM server (about a minute on
# an idle machine, several on a busy one): their pytest timeout covers that; anyio.fail_after
# bounds the MCP part alone.
SERVER_START = 600
TOOLS = {"translate", "suggest_names", "ask", "deployment_status", "list_models"}
RESOURCES = {"dsagent://deployment/status", "dsagent://deployment/model-card"}


def stdio_params(home: Path, *args: str) -> StdioServerParameters:
    """``dsagent mcp`` as a child; a stdio child gets a minimal environment, so pass what it needs."""
    env = {"DSAGENT_HOME": str(home), "DSAGENT_DEVICE": "cpu"}
    return StdioServerParameters(command=sys.executable, args=["-m", "dsagent.cli", "mcp", *args], env=env)


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.timeout(SERVER_START + 120)
async def test_stdio_lists_tools_and_resources(server, settings):
    with anyio.fail_after(90):
        async with Client(stdio_params(settings.home)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.description and tool.description.count(".") == 1  # one sentence
                for name, prop in tool.input_schema.get("properties", {}).items():
                    assert prop.get("description"), f"{tool.name}.{name} has no description"
            assert tools["suggest_names"].output_schema["properties"]["names"]["type"] == "array"
            resources = {str(r.uri) for r in (await client.list_resources()).resources}
            assert resources == RESOURCES
            status = json.loads((await client.read_resource("dsagent://deployment/status")).contents[0].text)
            assert status["state"] == "ready" and status["base_url"] == server.base_url
            card = (await client.read_resource("dsagent://deployment/model-card")).contents[0].text
            assert server.name in card and server.base_url in card


@pytest.mark.timeout(SERVER_START + 240)
async def test_stdio_calls_each_tool_against_the_real_model(server, settings):
    with anyio.fail_after(200):
        async with Client(stdio_params(settings.home)) as client:
            out = await client.call_tool("translate", {"text": "I love programming.", "to": "French", "max_tokens": 64})
            assert not out.is_error, text(out)
            assert is_french_for_i_love_programming(text(out)), text(out)

            out = await client.call_tool("suggest_names", {"description": "a nickname for a baby boy", "n": 3})
            assert not out.is_error, text(out)
            names = out.structured_content["names"]
            assert names and are_names(names), names

            out = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 64})
            assert not out.is_error, text(out)
            assert "Paris" in text(out)

            out = await client.call_tool("deployment_status", {})
            assert not out.is_error
            assert out.structured_content["state"] == "ready"
            assert out.structured_content["started_by_this_mcp_server"] is False


@pytest.mark.timeout(SERVER_START + 120)
async def test_request_too_long_for_the_context_is_a_tool_error(server, settings):
    with anyio.fail_after(90):
        async with Client(stdio_params(settings.home)) as client:
            out = await client.call_tool("ask", {"question": "word " * 6000, "max_tokens": 16})
            assert out.is_error
            assert "too long for the context" in text(out) and "--max-model-len" in text(out)
            assert not (await client.call_tool("deployment_status", {})).is_error  # the server lives on


@pytest.mark.timeout(90)
async def test_no_deployment_is_a_tool_error_that_names_the_command(tmp_path):
    with anyio.fail_after(60):
        async with Client(stdio_params(tmp_path / "empty-home")) as client:
            out = await client.call_tool("translate", {"text": "hello"})
            assert out.is_error
            assert "no running deployment" in text(out) and "dsagent up" in text(out) and "--up" in text(out)
            status = (await client.call_tool("deployment_status", {})).structured_content
            assert status["state"] == "none"


@pytest.mark.timeout(SERVER_START + 120)
async def test_up_attaches_to_a_running_deployment_and_leaves_it_running(server, settings):
    """--up when the model already runs: it attaches, and on exit stops nothing it did not start.
    Checked once the MCP server process has exited (whatever it stops on exit is stopped by then)."""
    import psutil

    from dsagent.system.procs import alive
    from dsagent.deploy.record.phase import live_state
    from dsagent.deploy.record.state import State
    from dsagent.deploy.record.store import load

    def mcp_children() -> list[psutil.Process]:
        out = []
        for child in psutil.Process().children():
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if "mcp" in cmd and "--up" in cmd:
                out.append(child)
        return out

    with anyio.fail_after(90):
        async with Client(stdio_params(settings.home, "--up", "--wait", "20")) as client:
            children = mcp_children()
            assert len(children) == 1, children
            out = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 32})
            assert not out.is_error, text(out)
            status = (await client.call_tool("deployment_status", {})).structured_content
            assert status["started_by_this_mcp_server"] is False
    _, left = await anyio.to_thread.run_sync(lambda: psutil.wait_procs(children, timeout=30))
    assert not left, left  # the MCP server has exited
    assert alive(server.pid) and live_state(load(settings, server.name)) == State.READY


def test_config_snippets_have_absolute_paths_and_the_home(cli, settings):
    for client, key in (("claude", "mcpServers"), ("cursor", "mcpServers"), ("vscode", "servers")):
        out = cli("mcp", "config", "--client", client, timeout=180)
        assert out.returncode == 0, out.stderr
        entry = json.loads(out.stdout)[key]["dsagent"]
        assert Path(entry["command"]).is_absolute() and os.access(entry["command"], os.X_OK)
        assert entry["args"][-1] == "mcp"
        assert entry["env"]["DSAGENT_HOME"] == str(settings.home)
        if client == "vscode":
            assert entry["type"] == "stdio"


def test_bind_warning_and_token_file(tmp_settings):
    assert bind_warning("127.0.0.1", 8765) is None and bind_warning("::1", 8765) is None
    assert "WARNING" in bind_warning("0.0.0.0", 8765)
    token, path = http_token(tmp_settings)  # the MCP server's own token by default
    assert path == tmp_settings.home / "mcp_token" and path.read_text().strip() == token
    assert (path.stat().st_mode & 0o777) == 0o600
    assert http_token(tmp_settings)[0] == token
    key, key_path = http_token(tmp_settings, share_engine_key=True)
    assert key_path == tmp_settings.api_key_file and key != token
