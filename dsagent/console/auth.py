"""Who may use the console: a login with the deployment key that sets a session cookie.

The key is typed once into the login form (a POST body: never a URL), compared in constant time,
and exchanged for a random session token in an ``HttpOnly``, ``SameSite=Strict`` cookie, so page
scripts cannot read it and no other site's page can send it. Sessions live in this process only
(a restart logs everyone out) and expire after ``SESSION_SECONDS``. Every state-changing request
must also carry ``X-Dsagent-Console: 1`` (a custom header a cross-site form cannot send).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["COOKIE", "HEADER", "SESSION_SECONDS", "Sessions"]

COOKIE = "dsagent_console"
HEADER = "x-dsagent-console"
SESSION_SECONDS = 12 * 3600
OPEN = frozenset({"/login", "/static/console.css", "/favicon.ico"})


class Sessions:
    """The logged-in sessions of one console process, and the ASGI guard that checks them."""

    def __init__(self, key: str) -> None:
        self._key = hashlib.sha256(key.encode()).digest()
        self._live: dict[str, float] = {}

    def login(self, offered: str) -> str | None:
        """A new session token when ``offered`` is the key, else ``None``."""
        if not hmac.compare_digest(hashlib.sha256(offered.strip().encode()).digest(), self._key):
            return None
        token = secrets.token_urlsafe(32)
        self._live[token] = time.time() + SESSION_SECONDS
        return token

    def logout(self, token: str) -> None:
        self._live.pop(token, None)

    def valid(self, token: str | None) -> bool:
        now = time.time()
        for t in [t for t, until in self._live.items() if until < now]:
            del self._live[t]
        return bool(token) and any(hmac.compare_digest(token, t) for t in self._live)  # type: ignore[arg-type]

    def cookie(self, token: str) -> str:
        return f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECONDS}"

    def guard(self, app: Any) -> Callable[..., Awaitable[None]]:
        """Wrap ``app``: pages redirect to /login without a session, the API answers 401, and a
        POST without the console header is 403."""

        async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] in OPEN:
                return await app(scope, receive, send)
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", ())}
            token = _cookie(headers.get("cookie", ""))
            if not self.valid(token):
                if scope["path"].startswith("/api/"):
                    return await _answer(send, 401, b'{"error": "log in first"}', b"application/json")
                return await _answer(send, 303, b"", b"text/plain", [(b"location", b"/login")])
            if scope["method"] == "POST" and headers.get(HEADER) != "1" and scope["path"] != "/logout":
                return await _answer(send, 403, b'{"error": "missing X-Dsagent-Console header"}', b"application/json")
            return await app(scope, receive, send)

        return guarded


def _cookie(header: str) -> str | None:
    """The console's token from a ``Cookie`` header.

    >>> _cookie("a=1; dsagent_console=xyz; b=2")
    'xyz'
    """
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


async def _answer(send: Any, status: int, body: bytes, kind: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})
