"""Sleep and wake in the router, where vLLM's sleep mode cannot run here (it needs a GPU).

The fake is the narrowest boundary: each "model" is a loopback HTTP server speaking the four
endpoints the router uses on a sleeping-capable vLLM (``POST /sleep?level=N``, ``POST /wake_up``,
``GET /is_sleeping``, ``POST /v1/chat/completions``), behind the same Bearer key; the router's
own HTTP calls (``VllmEngines.sleep``/``wake``), its manager, packing plan and app are the real
ones. The GPU is 80 GiB of arithmetic; the real sleep is measured on the lent GPU (docs/).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from dsagent.router.app import build_app
from dsagent.router.catalogue import Entry
from dsagent.router.engines import Started, VllmEngines
from dsagent.router.manager import Router
from dsagent.router.packing import Capacity, Need
from dsagent.deploy.launch.options import ServeOptions


class _FakeVllm(ThreadingHTTPServer):
    def __init__(self, name: str, key: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name, self.key, self.sleeping, self.calls = name, key, False, []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _FakeVllm

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        if self.headers.get("authorization") != f"Bearer {self.server.key}":
            return self._answer(401, {"error": "Unauthorized"})
        self.server.calls.append(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path.startswith("/sleep"):
            self.server.sleeping = True
            return self._answer(200, {"status": "sleeping", "level": int(self.path.split("=")[1])})
        if self.path == "/wake_up":
            self.server.sleeping = False
            return self._answer(200, {"status": "awake"})
        if self.path == "/is_sleeping":
            return self._answer(200, {"is_sleeping": self.server.sleeping})
        if self.server.sleeping:  # vLLM asleep does not serve
            return self._answer(500, {"error": "engine is sleeping"})
        return self._answer(200, {"model": body.get("model"), "choices": [
            {"message": {"role": "assistant", "content": f"{self.server.name} answers"}}]})

    do_GET = do_POST = _handle


class SleepyEngines(VllmEngines):
    """``VllmEngines`` whose start and stop run a fake server (a GPU's vLLM cannot run here);
    sleep and wake are inherited: the real HTTP calls."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.servers: dict[str, _FakeVllm] = {}
        self.started: list[str] = []

    def need(self, entry: Entry) -> Need:
        return Need(per_gpu=50.0, gpus=1)

    def start(self, entry: Entry, plan: Any, on_progress: Any) -> Started:
        self.started.append(entry.name)
        self.servers[entry.name] = _FakeVllm(entry.name, self.settings.api_key())
        return Started(url=self.servers[entry.name].url, measured={}, estimate={})

    def stop(self, name: str) -> None:
        if (server := self.servers.pop(name, None)) is not None:
            server.shutdown()
            server.server_close()


def _entries() -> list[Entry]:
    gpu = ServeOptions(port=0, device="gpu")
    return [Entry("a", "deepseek-r1-distill-qwen-7b", gpu, ttl=0), Entry("b", "deepseek-r1-distill-qwen-7b", gpu,
                                                                        ttl=0)]


@pytest.fixture
async def sleepy(tmp_settings):
    engines = SleepyEngines(tmp_settings)
    router = Router(_entries(), engines, Capacity(gpus=(80.0,)))
    yield router, engines
    await router.close()
    assert engines.servers == {}  # the close stopped every model it started


async def test_a_switch_puts_the_other_model_to_sleep_and_a_return_wakes_it(sleepy):
    router, engines = sleepy
    app = build_app(router, engines.settings.api_key(), wait=30)
    key = {"Authorization": f"Bearer {engines.settings.api_key()}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as client:
        for name in ("a", "b", "a", "b"):
            r = await client.post("/v1/chat/completions", headers=key, json={"model": name, "messages": []})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == f"{name} answers"
        models = {m["id"]: m for m in (await client.get("/v1/models", headers=key)).json()["data"]}
    assert engines.started == ["a", "b"]  # each loaded once; every later switch was a sleep and a wake
    assert (models["a"]["state"], models["b"]["state"]) == ("sleeping", "ready")
    assert (models["a"]["wakes"], models["b"]["wakes"]) == (1, 1)
    assert engines.servers["a"].calls.count("/sleep?level=1") == 2 and engines.servers["a"].sleeping
    assert engines.servers["b"].calls.count("/wake_up") == 1 and not engines.servers["b"].sleeping


async def test_an_idle_model_sleeps_after_its_ttl_and_wakes_on_the_next_request(sleepy, tmp_settings):
    router, engines = sleepy
    now = [1000.0]
    router.clock = lambda: now[0]
    router.slots["a"].entry = Entry("a", "m", ServeOptions(port=0, device="gpu"), ttl=60)
    slot = await router.acquire("a", 30)
    router.release(slot)
    now[0] += 59
    assert await router.reap() == []
    now[0] += 2
    assert await router.reap() == [("a", "sleep")] and engines.servers["a"].sleeping
    slot = await router.acquire("a", 30)
    assert slot.state == "ready" and slot.wakes == 1 and engines.started == ["a"]
    router.release(slot)


async def test_a_failed_wake_is_reported_and_the_key_is_sent(sleepy):
    router, engines = sleepy
    slot = await router.acquire("a", 30)
    router.release(slot)
    engines.servers["a"].key = "another key"  # the engine refuses the router's key
    await router._put_away(slot, "stop")  # noqa: SLF001 - reset
    assert slot.state == "stopped"
    slot = await router.acquire("a", 30)  # loads again (the fake has the right key again)
    router.release(slot)
    engines.servers["a"].key = "another key"
    router.slots["b"].need = Need(per_gpu=50.0, gpus=1)
    from dsagent.router.manager import Failed

    with pytest.raises(Failed, match="answered 401"):
        await router.acquire("b", 30)  # a must sleep for b; the sleep call is refused
    assert router.slots["a"].state == "ready"  # it still runs and answers as before
    assert router.slots["b"].state == "failed" and "401" in router.slots["b"].error
