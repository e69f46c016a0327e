"""``dsagent mcp --up``: the handshake does not wait for a cold start, tools say "model is starting",
and when the client leaves, the vLLM server this MCP server started is gone, every process of it.

It starts a vLLM server in a home of its own and never touches the session server, so it is
scheduled like any other file (under pytest-xdist, on whichever worker is free).
"""

from __future__ import annotations

import time

import anyio
import pytest
from mcp import Client
from conftest import home_beside
from test_mcp import stdio_params, text

from dsagent.system.ports import port_is_free
from dsagent.deploy.record.identity import processes_of
from dsagent.deploy.record.store import list_all

pytestmark = pytest.mark.server  # starts vLLM in a home of its own (the session server is not touched)


@pytest.mark.timeout(900)
async def test_up_starts_in_the_background_and_exit_leaves_no_process(settings, tmp_path):
    own = await anyio.to_thread.run_sync(home_beside, settings, tmp_path)
    home = own.home

    t0 = time.monotonic()
    async with Client(stdio_params(home, "--up", "--wait", "2")) as client:
        handshake = time.monotonic() - t0
        # the handshake did not wait for the model: the first call after it finds the model starting
        early = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 16})
        assert early.is_error and "model is starting" in text(early) and "try again in" in text(early), text(early)

        with anyio.fail_after(700):
            while (status := (await client.call_tool("deployment_status", {})).structured_content)["state"] != "ready":
                assert status["state"] not in ("failed", "crashed", "none"), status
                await anyio.sleep(2)
        assert status["started_by_this_mcp_server"] is True
        out = await client.call_tool("translate", {"text": "I love programming.", "to": "French", "max_tokens": 48})
        assert not out.is_error, text(out)
        (dep,) = list_all(own)
        assert processes_of(dep)
    closed = time.monotonic()

    with anyio.fail_after(30):
        while processes_of(dep):
            await anyio.sleep(0.5)
    gone = time.monotonic() - closed
    print(f"\n--up: handshake {handshake:.1f} s; every vLLM process gone {gone:.1f} s after the client left")
    assert port_is_free("127.0.0.1", dep.port)
    (after,) = list_all(own)
    assert after.state == "stopped"
