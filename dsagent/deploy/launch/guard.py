"""The key guard: an ASGI middleware dsagent loads into vLLM's API server, so every path needs the key.

vLLM's own ``--api-key`` guards only ``/v1``, ``/v2``, ``/inference`` and ``/cohere``: with a key
set, ``/metrics``, ``/tokenize``, ``/detokenize``, ``/invocations`` (a full completion),
``/version``, ``/load`` and the OpenAPI pages answer anyone. ``plan_serve`` adds
``--middleware dsagent.deploy.launch.guard.KeyGuard``; vLLM instantiates it around its app.

Every HTTP request and WebSocket needs ``Authorization: Bearer <key>`` (the key of
``VLLM_API_KEY``, which dsagent sets in the engine's environment), compared in constant time,
except the liveness probes ``/health`` and ``/ping`` and CORS preflights (``OPTIONS``, which
carry no credentials and reach no handler). A refused request gets 401 before its body is read.
Runs inside the engine's interpreter: imports nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["OPEN_PATHS", "KeyGuard"]

OPEN_PATHS = frozenset({"/health", "/ping"})
"""What a load balancer or a supervisor probes without a key: liveness only, no model output."""

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
_BODY = b'{"error": "Unauthorized: send the deployment key as Authorization: Bearer <key>"}'


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class KeyGuard:
    """Refuse every request without the deployment key (see the module docstring)."""

    def __init__(self, app: App, key: str | None = None) -> None:
        secret = (key if key is not None else os.environ.get("VLLM_API_KEY", "")).strip()
        if not secret:
            raise RuntimeError("dsagent's key guard has no key: VLLM_API_KEY is empty; refusing to serve unguarded")
        self.app, self._key = app, _digest(secret.encode())

    def allowed(self, scope: Scope) -> bool:
        """Whether ``scope`` (an HTTP or WebSocket request) may pass."""
        path = scope.get("path", "").removeprefix(scope.get("root_path", "")) or "/"
        if path in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        auth = next((v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"), b"")
        scheme, _, token = auth.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(token.strip()), self._key)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation, before accept
        else:  # the body is never received
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                    (b"content-length", str(len(_BODY)).encode())]})
            await send({"type": "http.response.body", "body": _BODY})
