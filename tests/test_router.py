"""``dsagent router`` on the real vLLM CPU server: the embedded model catalogued under two names,
with room (``--memory-gib``) for one at a time, everything driven through the real CLI, the real
OpenAI SDK, LangChain and the MCP client.

One router (a request waits up to 240 s for its model) serves the module's tests, in any order:
the key, the 404/400 shapes, N concurrent first requests causing one load, a stream,
alternation (one load per switch), the TTL, ``local_deepseek`` and the MCP tool through it,
``status``, and the stop that leaves nothing. A test that needs *a* model asks for the one that
is up (``_loaded``), so a shuffled order costs no loads beyond the ones tests are about. A second router (a 1 s wait) gives the 503 shape
and is stopped in the middle of a load.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import httpx
import openai
import pytest
from conftest import home_beside, run_cli

from dsagent.deploy.record.identity import processes_of
from dsagent.deploy.record.store import list_all
from dsagent.router.catalogue import load
from dsagent.router.engines import VllmEngines
from dsagent.router.serve import RouterInfo, find
from dsagent.settings import Settings
from dsagent.system.procs import all_processes

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _cli(home: Settings, *args: str, timeout: float = 120) -> str:
    out = run_cli(*args, timeout=timeout, env={"DSAGENT_HOME": str(home.home)})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _ours(home: Settings) -> list[str]:
    """This home's processes still alive: the marks of its deployments' and the router's processes,
    and the deployment names whose records still prove a process theirs (vLLM's engines retitle
    themselves, which hides their environment)."""
    marks = {p.deployment for p in all_processes()} - {None}
    held = {f"{d.name}@{home.home}" for d in list_all(home) if processes_of(d)}
    return sorted({m for m in marks if m and m.endswith(f"@{home.home}")} | held)


def _models(info: RouterInfo, key: str) -> dict[str, dict]:
    r = httpx.get(f"{info.base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["data"]}


@pytest.fixture(scope="module")
def routed(settings, tmp_path_factory):
    """``(home, router, key, budget)``: the running router of a fresh home, catalogue of two names."""
    home = home_beside(settings, tmp_path_factory.mktemp("router"))
    _cli(home, "models", "add", "smol-a", "--device", "cpu", "--ttl", "0")
    _cli(home, "models", "add", "smol-b", "--device", "cpu", "--ttl", "8")
    need = VllmEngines(home).need(load(home)[0]).host
    budget = round(need * 1.5, 2)  # room for one model, not two
    _cli(home, "router", "start", "--port", "auto", "--memory-gib", str(budget), "--wait", "240")
    info = find(home)
    assert info is not None
    try:
        yield home, info, home.api_key(), budget
    finally:  # the stop is a test of its own: every model the router started is gone with it
        _cli(home, "router", "stop", timeout=300)
        assert find(home) is None and not (home.home / "router.json").exists()
        assert _ours(home) == []
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{info.host}:{info.port}/health", timeout=5)


def test_the_key_is_required_and_the_catalogue_is_listed_with_states(routed):
    home, info, key, _ = routed
    assert httpx.get(f"{info.base_url}/models", timeout=10).status_code == 401
    bad = httpx.post(f"{info.base_url}/chat/completions", headers={"Authorization": "Bearer nope"},
                     json={"model": "smol-a", "messages": QUESTION}, timeout=10)
    assert bad.status_code == 401
    assert httpx.get(f"http://{info.host}:{info.port}/health", timeout=10).status_code == 200  # liveness is open
    models = _models(info, key)
    assert set(models) == {"smol-a", "smol-b"}
    assert {m["state"] for m in models.values()} <= {"stopped", "ready"}
    assert os.stat(home.home / "router.json").st_mode & 0o777 == 0o600


def test_an_unknown_model_is_404_naming_the_catalogue_and_no_model_is_400(routed):
    _, info, key, _ = routed
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{info.base_url}/chat/completions", headers=auth, json={"model": "gpt-4", "messages": QUESTION},
                   timeout=10)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "not_found_error" and "smol-a" in err["message"] and "smol-b" in err["message"]
    r = httpx.post(f"{info.base_url}/chat/completions", headers=auth, json={"messages": QUESTION}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(f"{info.base_url}/chat/completions", headers=auth, content=b"{not json", timeout=10)
    assert r.status_code == 400


def _loaded(info: RouterInfo, key: str) -> str:
    """The model that is ready now, else smol-b: what a test that needs *a* model asks for, so that
    in any order (pytest-randomly) it causes no load of its own when one is up. smol-b, the one with
    a TTL, so the TTL test (last in the module) finds it up whatever ran before it: the alternation
    test ends on it too, having loaded smol-a first."""
    return next((n for n, m in sorted(_models(info, key).items()) if m["state"] == "ready"), "smol-b")


def test_concurrent_first_requests_cause_one_load_and_alternating_models_one_load_per_switch(routed):
    """Six requests at once for a model that is not up: one load, six answers. Then the other
    model: room for one, so each switch evicts the one up (stopped: vLLM cannot sleep on a CPU)
    and loads the one asked for, once. (Two loads in all: the first switch is the six requests'
    load whenever the other model was up.)"""
    home, info, key, _ = routed
    client = openai.OpenAI(base_url=info.base_url, api_key=key, max_retries=0, timeout=300)
    before = _models(info, key)
    # one that must be loaded, smol-a when neither is up: the test ends on smol-b, which the TTL test uses
    first = next(n for n in ("smol-a", "smol-b") if before[n]["state"] != "ready")
    second = ({"smol-a", "smol-b"} - {first}).pop()

    def ask(name: str) -> str:
        out = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=8, temperature=0)
        assert out.model == name
        return out.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, [first] * 6))
    assert all("Paris" in a for a in answers), answers
    after = _models(info, key)
    assert after[first]["state"] == "ready" and after[first]["loads"] - before[first]["loads"] == 1, after
    assert after[first]["kv_cache_tokens"]["measured"] and after[first]["kv_cache_tokens"]["planned"], after
    assert after[second]["state"] == "stopped", after  # evicted if it was up

    assert "Paris" in ask(second)
    end = _models(info, key)
    assert {n: m["state"] for n, m in end.items()} == {second: "ready", first: "stopped"}, end
    assert {n: end[n]["loads"] - before[n]["loads"] for n in end} == {first: 1, second: 1}
    assert len([m for m in _ours(home) if not m.startswith("dsagent-router@")]) == 1  # one model's processes


def test_a_stream_is_passed_through_chunk_by_chunk(routed):
    _, info, key, _ = routed
    client = openai.OpenAI(base_url=info.base_url, api_key=key, max_retries=0, timeout=300)
    stream = client.chat.completions.create(model=_loaded(info, key), messages=QUESTION, max_tokens=12,
                                            temperature=0, stream=True)
    chunks = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) >= 3 and "Paris" in "".join(chunks), chunks


@pytest.mark.last_in_module  # it leaves no model up: every test after it would load one again
def test_an_idle_model_is_unloaded_after_its_ttl(routed):
    home, info, key, _ = routed
    client = openai.OpenAI(base_url=info.base_url, api_key=key, max_retries=0, timeout=300)
    client.chat.completions.create(model="smol-b", messages=QUESTION, max_tokens=4)
    loads = {n: m["loads"] for n, m in _models(info, key).items()}
    deadline = time.monotonic() + 120
    while (b := _models(info, key)["smol-b"])["state"] != "stopped":
        assert time.monotonic() < deadline, b
        time.sleep(0.5)
    assert b["last_used"] is not None and time.time() - b["last_used"] >= 8  # not before its TTL
    assert {n: m["loads"] for n, m in _models(info, key).items()} == loads  # no load evicted it
    assert [m for m in _ours(home) if not m.startswith("dsagent-router@")] == []


def test_local_deepseek_and_the_mcp_tool_go_through_the_router(routed):
    home, info, key, _ = routed
    import anyio
    from mcp import Client

    from dsagent import local_deepseek
    from dsagent.mcp.backend import Backend
    from dsagent.mcp.server import build_server

    name = _loaded(info, key)
    llm = local_deepseek(name, settings=home, temperature=0, max_tokens=8)
    assert llm.openai_api_base == info.base_url
    assert "Paris" in llm.invoke("What is the capital of France?").content

    async def tools() -> dict:
        async with Client(build_server(Backend(home, model=name))) as client:
            listed = (await client.call_tool("list_models", {})).structured_content
            asked = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 8})
            return {"listed": listed, "asked": asked.content[0].text}

    out = anyio.run(tools)
    assert {m["name"]: m["state"] for m in out["listed"]["models"]}[name] == "ready"
    assert out["listed"]["router"]["base_url"] == info.base_url
    assert "Paris" in out["asked"]


def test_status_shows_the_router_and_its_models(routed):
    home, info, key, _ = routed
    states = {n: m["state"] for n, m in _models(info, key).items()}
    text = _cli(home, "status")
    assert f"router: {info.base_url}" in text
    for name, state in states.items():
        assert f"  {name}: {state}" in text, text
    assert json.loads(_cli(home, "router", "status", "--json"))["pid"] == info.pid


def test_a_request_that_waits_too_long_gets_503_with_its_phase_and_a_stop_mid_load_leaves_nothing(settings,
                                                                                                   tmp_path):
    home = home_beside(settings, tmp_path)
    _cli(home, "models", "add", "smol", "--device", "cpu")
    _cli(home, "router", "start", "--port", "auto", "--wait", "1")
    info = find(home)
    assert info is not None
    try:
        r = httpx.post(f"{info.base_url}/chat/completions", headers={"Authorization": f"Bearer {home.api_key()}"},
                       json={"model": "smol", "messages": QUESTION}, timeout=30)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["type"] == "model_not_ready" and err["state"] in ("loading", "stopped")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        deadline = time.monotonic() + 120
        while f"smol@{home.home}" not in _ours(home):  # the load goes on: its vLLM process is there
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        _cli(home, "router", "stop", timeout=300)
    assert _ours(home) == [] and find(home) is None
