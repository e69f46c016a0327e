"""Every path of the engine needs the key, except the liveness probes (``deploy.launch.guard``).

The routes are read from the running vLLM server's own OpenAPI document (with the key), so a new
vLLM release with a new route is walked too. The guard itself is also driven as plain ASGI.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from dsagent.deploy.launch.guard import OPEN_PATHS, KeyGuard

EXTRA = ["/openapi.json", "/docs", "/redoc"]  # FastAPI's own pages are not in the document's paths


def _routes(base: str, key: str) -> list[tuple[str, str]]:
    doc = httpx.get(f"{base}/openapi.json", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    out = [(m.upper(), re.sub(r"\{[^}]+\}", "x", path)) for path, ops in doc["paths"].items() for m in ops]
    return out + [("GET", p) for p in EXTRA]


@pytest.mark.timeout(300)
def test_every_route_refuses_a_request_without_the_key(server, api_key):
    base = server.root_url
    routes = _routes(base, api_key)
    assert len(routes) > 15 and ("GET", "/metrics") in routes and ("POST", "/tokenize") in routes
    refused, open_ = [], []
    with httpx.Client(base_url=base, timeout=60) as client:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": api_key}):
                r = client.request(method, path, json={} if method == "POST" else None, headers=headers)
                (open_ if path in OPEN_PATHS else refused).append((method, path, r.status_code))
    assert all(code == 401 for _, _, code in refused), [x for x in refused if x[2] != 401]
    walked_open = {path for _, path, _ in open_}
    assert "/health" in walked_open and walked_open == OPEN_PATHS & {path for _, path in routes}  # not vacuous
    assert all(code == 200 for _, _, code in open_), open_


@pytest.mark.timeout(300)
def test_every_route_lets_the_key_through(server, api_key):
    """With the key no route answers 401 (an empty body gets the handler's own 4xx, never the guard's)."""
    with httpx.Client(base_url=server.root_url, timeout=60, headers={"Authorization": f"Bearer {api_key}"}) as client:
        codes = {(m, p): client.request(m, p, json={} if m == "POST" else None).status_code
                 for m, p in _routes(server.root_url, api_key)}
    assert not [k for k, code in codes.items() if code == 401], codes
    assert codes[("GET", "/metrics")] == 200 and codes[("GET", "/version")] == 200


def test_a_refused_request_is_answered_before_its_body_is_read():
    """Plain ASGI: the guard answers 401 without calling ``receive`` (the body is never read)."""
    reached, received, sent = [], [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"x" * (64 << 20)}

    async def send(message):
        sent.append(message)

    guard = KeyGuard(app, key="k3y")

    def scope(path: str, auth: bytes | None) -> dict:
        return {"type": "http", "method": "POST", "path": path, "headers": [(b"authorization", auth)] if auth else []}

    asyncio.run(guard(scope("/invocations", None), receive, send))
    asyncio.run(guard(scope("/invocations", b"Bearer k3y-but-longer"), receive, send))
    assert not reached and not received and [m["status"] for m in sent if "status" in m] == [401, 401]
    asyncio.run(guard(scope("/invocations", b"Bearer k3y"), receive, send))
    asyncio.run(guard(scope("/health", None), receive, send))
    assert reached == ["/invocations", "/health"]
    with pytest.raises(RuntimeError, match="no key"):
        KeyGuard(app, key="  ")
