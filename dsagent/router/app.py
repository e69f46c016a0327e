"""The router's one OpenAI-compatible address: ``/v1/models`` with states, and requests routed by model.

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` are read once (at most
``MAX_BODY`` bytes), routed by their ``model`` field to that model's vLLM server (loaded or woken
first), and the answer is passed through unchanged, streamed chunk by chunk. Errors have the
OpenAI shape ``{"error": {"message", "type", "code"}}``: an unknown model is 404 naming the
catalogue, a model not ready within the wait is 503 with ``Retry-After`` and its phase. Every
path but ``/health`` needs the deployment key (``deploy.launch.guard.KeyGuard``, the engines' own
guard, compared in constant time).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..deploy.launch.guard import KeyGuard
from .manager import Busy, Failed, Router, Unknown

__all__ = ["MAX_BODY", "ROUTED", "build_app"]

MAX_BODY = 32 << 20
"""The largest request body the router reads (32 MiB: long prompts fit, a flood does not)."""
ROUTED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status, **extra}}, status_code=status,
                        headers=headers)


def build_app(router: Router, key: str, *, wait: float = 60.0, client: httpx.AsyncClient | None = None,
              lifespan: Any = None) -> Any:
    """The ASGI app of ``router`` behind ``key``; a request waits at most ``wait`` s for its model.
    ``lifespan``: Starlette's lifespan context (what runs at the server's start and end)."""
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                       limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(_: Request) -> Response:
        data = [{"id": name, "object": "model", "owned_by": "dsagent", **view}
                for name, view in router.views().items()]
        return JSONResponse({"object": "list", "data": data})

    async def routed(request: Request) -> Response:
        body = await _read(request)
        if isinstance(body, Response):
            return body
        raw, payload = body
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            return _error(400, "the request has no `model`: name one of " + ", ".join(router.slots),
                          "invalid_request_error", param="model")
        for attempt in (1, 2):
            try:
                slot = await router.acquire(name, wait)
            except Unknown:
                return _error(404, f"the model {name!r} is not served here; the catalogue has: "
                              f"{', '.join(router.slots) or 'nothing'} (add one: dsagent models add NAME MODEL)",
                              "not_found_error", param="model")
            except Busy as b:
                return _error(503, str(b), "model_not_ready", {"Retry-After": str(b.retry_after)},
                              state=b.state, phase=b.phase)
            except Failed as f:
                return _error(503, f"model {name} could not be loaded: {f.reason}", "model_load_failed",
                              {"Retry-After": "30"}, state="failed")
            try:
                upstream = await http.send(http.build_request(
                    "POST", slot.url + request.url.path, content=raw,
                    headers={"authorization": f"Bearer {key}", "content-type": "application/json"}), stream=True)
            except httpx.TransportError:
                router.release(slot)
                router.lost(slot)  # stopped from outside or crashed: load it again, once
                if attempt == 2:
                    return _error(502, f"model {name}'s server does not answer", "upstream_error")
                continue
            return StreamingResponse(_relay(upstream, router, slot), status_code=upstream.status_code,
                                     headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP})
        raise AssertionError("unreachable")

    routes = [Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"])]
    routes += [Route(path, routed, methods=["POST"]) for path in ROUTED]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.http = http
    return KeyGuard(app, key=key)


async def _read(request: Request) -> tuple[bytes, dict[str, Any]] | Response:
    """The body (bounded) and its JSON object, or the 4xx answer."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        return _error(413, f"the request body is over {MAX_BODY >> 20} MiB", "invalid_request_error")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return _error(413, f"the request body is over {MAX_BODY >> 20} MiB", "invalid_request_error")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        payload = json.loads(raw)
    except ValueError:
        return _error(400, "the request body is not JSON", "invalid_request_error")
    if not isinstance(payload, dict):
        return _error(400, "the request body must be a JSON object", "invalid_request_error")
    return raw, payload


async def _relay(upstream: httpx.Response, router: Router, slot: Any) -> AsyncIterator[bytes]:
    """The engine's answer, chunk by chunk as it comes; the model stays busy until the last one."""
    try:
        async for chunk in upstream.aiter_bytes():
            yield chunk
    finally:
        await upstream.aclose()
        router.release(slot)
