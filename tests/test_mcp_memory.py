"""The MCP tools in memory: the SDK's real client connected in-process to ``build_server``
(the stdio and HTTP tests keep the transports covered).

The "starting" and "unhealthy" cases need a deployment whose API server runs but does not
answer ``/health``: a real ``sleep`` process stands in for vLLM's API server there (the narrowest
fake: only its pid and start time are read), on a port nobody listens on.
"""

from __future__ import annotations

import subprocess

import anyio
import psutil
import pytest
from mcp import Client
from mcp.server.mcpserver.exceptions import ToolError

from dsagent.deploy.record.store import Deployment, create
from dsagent.deploy.record.state import State
from dsagent.mcp.backend import Backend
from dsagent.mcp.server import build_server
from dsagent.system.ports import free_port

from answers import are_names

TOOLS = {"translate", "suggest_names", "ask", "deployment_status", "list_models"}


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def silent_leader(tmp_settings):
    """A live process recorded as a deployment's API server, listening nowhere."""
    proc = subprocess.Popen(["sleep", "120"])
    log = tmp_settings.logs_dir / "ghost.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("INFO Starting to load model /m...\n")
    dep = Deployment(name="ghost", model="ghost", model_path="/nowhere", host="127.0.0.1", port=free_port(),
                     api_key_file=str(tmp_settings.api_key_file), log_file=str(log), argv=["vllm"], pid=proc.pid,
                     pgid=None, state=State.LOADING, started_at=psutil.Process(proc.pid).create_time(),
                     leader_started=psutil.Process(proc.pid).create_time())
    create(tmp_settings, dep)
    yield dep
    proc.kill()
    proc.wait()


@pytest.mark.timeout(60)
async def test_tools_are_listed_with_one_sentence_and_described_arguments(tmp_settings):
    with anyio.fail_after(30):
        async with Client(build_server(Backend(tmp_settings))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.description and tool.description.count(".") == 1
                for name, prop in tool.input_schema.get("properties", {}).items():
                    assert prop.get("description"), f"{tool.name}.{name} has no description"
            assert tools["suggest_names"].input_schema["properties"]["n"]["maximum"] == 20


@pytest.mark.timeout(60)
async def test_no_deployment_is_a_tool_error_that_names_the_command(tmp_settings):
    with anyio.fail_after(30):
        async with Client(build_server(Backend(tmp_settings))) as client:
            out = await client.call_tool("ask", {"question": "hi"})
            assert out.is_error
            assert "no running deployment" in text(out) and "dsagent up" in text(out) and "--up" in text(out)
            status = (await client.call_tool("deployment_status", {})).structured_content
            assert status["state"] == "none" and status["started_by_this_mcp_server"] is False
            card = (await client.read_resource("dsagent://deployment/model-card")).contents[0].text
            assert card.startswith("# No model is deployed")


@pytest.mark.timeout(60)
async def test_a_starting_model_says_how_long_to_wait(tmp_settings, silent_leader, monkeypatch):
    """The call waits ``wait`` (0.5 s) for the model, not for its start: at most three looks at
    the deployment (two, or one on a slow machine, or three if the clock lands a hair short of the
    deadline), where waiting for the start would look once a second for the 90 s expected."""
    from dsagent.mcp import backend as backend_module

    looks: list[str | None] = []
    real_find = backend_module.find
    monkeypatch.setattr(backend_module, "find", lambda settings, name: looks.append(name) or real_find(settings, name))
    backend = Backend(tmp_settings, wait=0.5, expected_start=90.0)
    with anyio.fail_after(30):
        async with Client(build_server(backend)) as client:
            out = await client.call_tool("translate", {"text": "hello"})
            assert out.is_error and 1 <= len(looks) <= 3, looks
            assert "model is starting (loading, " in text(out)
            retry = int(text(out).rsplit("try again in ", 1)[1].split()[0])
            assert 5 <= retry <= 90
            status = (await client.call_tool("deployment_status", {})).structured_content
            assert status["state"] == "loading" and status["name"] == "ghost"


@pytest.mark.timeout(60)
async def test_a_launch_that_lands_between_two_looks_is_starting_not_missing(tmp_settings, silent_leader, monkeypatch):
    """``mcp --up``: the background launch writes its record, then stops preparing. A tool call whose
    look at the records came just before the record, and whose look at the launcher just after,
    once said "not ready after 0 s" (CI, stop 31). Both it and ``deployment_status`` must say the
    model is starting. The interleaving is forced by wrapping ``find``: its first answer is the
    one read before the record landed, and the launch finishes while it runs."""
    from dsagent.mcp import backend as backend_module

    backend = Backend(tmp_settings, start=True, wait=0.0, expected_start=90.0)
    real_find = backend_module.find

    def find_as_the_launch_lands(settings, name):
        if backend.launcher.preparing:  # this look saw no record yet; the launch completes meanwhile
            backend.launcher.preparing = False
            return None, State.STOPPED, []
        return real_find(settings, name)

    monkeypatch.setattr(backend_module, "find", find_as_the_launch_lands)
    backend.launcher.begin()
    with pytest.raises(ToolError) as caught:
        await backend.deployment()
    assert str(caught.value).startswith("model is starting (preparing, "), caught.value
    with pytest.raises(ToolError) as caught:  # the next call finds the record, still loading
        await backend.deployment()
    assert str(caught.value).startswith("model is starting (loading, "), caught.value

    backend.launcher.begin()
    assert (await backend.report())["state"] == "preparing"
    assert (await backend.report())["state"] == "loading"


@pytest.mark.timeout(60)
async def test_an_unhealthy_model_names_its_log(tmp_settings, silent_leader):
    silent_leader.state = State.READY  # it was ready once; now /health does not answer
    create(tmp_settings, silent_leader)
    with anyio.fail_after(30):
        async with Client(build_server(Backend(tmp_settings, wait=0.5))) as client:
            out = await client.call_tool("ask", {"question": "hi"})
            assert out.is_error and "is unhealthy" in text(out) and "dsagent logs ghost" in text(out)


@pytest.mark.timeout(600 + 120)
async def test_each_tool_against_the_real_model(server, settings):
    with anyio.fail_after(180):
        async with Client(build_server(Backend(settings))) as client:
            out = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 32})
            assert not out.is_error and "Paris" in text(out)
            out = await client.call_tool("suggest_names", {"description": "a nickname for a baby boy", "n": 3})
            names = out.structured_content["names"]
            assert len(names) == 3 and are_names(names), names
            out = await client.call_tool("ask", {"question": "word " * 6000, "max_tokens": 16})
            assert out.is_error and "too long for the context" in text(out) and "--max-model-len" in text(out)
            status = (await client.call_tool("deployment_status", {})).structured_content
            assert status["state"] == "ready" and status["served_model_name"] == server.name
