"""The head's roll call: how the head of a multi-node deployment learns what its nodes do.

vLLM tells the head nothing about another node until a collective operation fails or hangs: a
node whose engine crashes while the head starts leaves the head waiting for the missing rank
until its timeout, and one that crashes later leaves the head's GPUs held. So every joined
node's watcher reports to the head's watcher: a heartbeat every few seconds (state, KV tokens
of its stages, GPUs), and at once when its engine dies (reason and log tail). The head's
watcher listens on ``master port + 2`` at the head's address.

A report is ``POST /report`` with the deployment's token as ``Authorization: Bearer <token>``
and the ``NodeReport`` as a JSON body: 204 when it is taken, 403 when the token or the report is
not valid. The listener is reachable by whoever reaches the head, so it holds under abuse:

- the token is compared in constant time (``hmac.compare_digest``) before any byte of the body
  is read: a stranger's body is never read;
- ``Content-Length`` is required (411), must be plain digits (400: ``-1`` or garbage) and at
  most ``MAX_BODY`` (413); the request head is at most ``MAX_HEAD`` bytes (400);
- each connection has ``TIMEOUT`` seconds to send its whole request (408, then closed), so idle
  and half-open connections do not stay;
- one thread serves every connection (asyncio), and at most ``MAX_CONNECTIONS`` are served at
  once: one beyond is answered 503 and closed at once, without reading it.

Every answer closes its connection. The token reaches a node as a file (``<name>.token``, mode
0600, written by ``new_token``; ``join --token-file``, read by ``read_token``) or as
``DSAGENT_JOIN_TOKEN``, never in a command line; it is shown only masked.

This is control-plane only (a few small JSON posts a minute); the model's traffic is vLLM's.
Reports are kept beside the record in ``<name>.nodes`` (not the record itself, which the
launcher rewrites while the deployment starts).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import asdict
from http import HTTPStatus
from pathlib import Path
from typing import Self

from ...errors import InvalidOptionError
from ...files import write_private
from ...settings import Settings
from ..record.names import files
from ..record.reports import NodeReport, store_report

__all__ = ["MAX_BODY", "MAX_CONNECTIONS", "TIMEOUT", "RollCall", "check_token", "new_token", "read_token",
           "report_address", "send_report"]

REPORT_OFFSET = 2
"""The roll call listens on the master port + 2 (+ 1 is the data-parallel handshake port)."""
MAX_HEAD = 8 * 1024
"""Bytes a request line and its headers may take."""
MAX_BODY = 16 * 1024
"""Bytes a report may take (a report with a 30-line log tail is about 3 KiB)."""
TIMEOUT = 5.0
"""Seconds a connection has to send its whole request."""
MAX_CONNECTIONS = 32
"""Connections served at once; one more is answered 503 and closed."""
TOKEN_RULE = re.compile(r"[A-Za-z0-9_-]{16,128}")
"""What a token looks like (``secrets.token_urlsafe``): nothing that could end a header."""
_LENGTH = re.compile(r"[0-9]{1,9}")


def report_address(master: str) -> tuple[str, int]:
    """``(host, port)`` of the head's roll call, from the master's ``IP:PORT``.

    >>> report_address("10.0.0.1:29501")
    ('10.0.0.1', 29503)
    """
    host, _, port = master.rpartition(":")
    return host, int(port) + REPORT_OFFSET


def new_token(settings: Settings, name: str) -> tuple[str, Path]:
    """A new token for deployment ``name``'s roll call, and the file (mode 0600, in the home's
    0700 ``deployments`` folder) that now holds it: what a node's ``join --token-file`` reads."""
    token = secrets.token_urlsafe(24)
    path = files(settings, name).token
    write_private(path, token + "\n")
    return token, path


def check_token(token: str, source: str) -> str:
    """``token`` when it is one ``new_token`` could have made; else ``InvalidOptionError`` naming ``source``."""
    if not TOKEN_RULE.fullmatch(token):
        raise InvalidOptionError(f"{source} does not hold a roll-call token (16-128 letters, digits, '-' or '_')",
                                 "use the token file the head wrote (`dsagent up` printed its path), unchanged",
                                 option=source.split(" ")[0], value=None)
    return token


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (a copy of the head's ``<name>.token``); refused when the file is
    missing, can be read by others than its owner, or holds no token."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text().strip()
    except OSError as exc:
        raise InvalidOptionError(f"--token-file {path} cannot be read: {exc.strerror}",
                                 "copy the token file the head printed to this node, keeping its mode "
                                 f"(scp -p HEAD:PATH {path})", option="--token-file", value=str(path)) from None
    if mode & 0o077:
        raise InvalidOptionError(f"--token-file {path} can be read by others (mode {mode:04o})",
                                 f"chmod 600 {path}", option="--token-file", value=str(path))
    return check_token(text, f"--token-file {path}")


def _answer(status: int) -> bytes:
    length = "" if status == 204 else "Content-Length: 0\r\n"
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n{length}Connection: close\r\n\r\n".encode()


class RollCall:
    """The head's listener: stores each valid report; ``failures`` holds those of dead nodes.

    Bound when made (``OSError`` when the port is taken); serves inside ``with``, on one thread."""

    def __init__(self, settings: Settings, name: str, token: str, master: str, nodes: int, *,
                 timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        self.failures: list[NodeReport] = []
        self.settings, self.name, self.nodes = settings, name, nodes
        self.timeout, self.max_connections = timeout, max_connections
        self._token = token.encode()
        self._open = 0
        self._sock = socket.create_server(report_address(master))
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="dsagent-rollcall")

    def __enter__(self) -> Self:
        self.thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        self._sock.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 (raised again in the thread that entered)
            self._error = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=MAX_HEAD)
        self._started.set()
        async with server:
            await self._stop.wait()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, one answer, then the connection is closed (unread bytes are never read)."""
        if self._open >= self.max_connections:
            status = 503
        else:
            self._open += 1
            try:
                status = await asyncio.wait_for(self._request(reader), self.timeout)
            except TimeoutError:
                status = 408
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
                status = 400
            except Exception:  # noqa: BLE001 (whatever went wrong, the peer gets an answer and is let go)
                status = 500
            finally:
                self._open -= 1
        try:
            writer.write(_answer(status))
            await asyncio.wait_for(writer.drain(), self.timeout)
            writer.close()
        except (TimeoutError, OSError):
            writer.transport.abort()  # a peer that does not read its answer is not waited for

    async def _request(self, reader: asyncio.StreamReader) -> int:
        """The status for one request: head checked (token first), then at most ``MAX_BODY`` read."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _version = head[0].split(" ")
        if (method, target) != ("POST", "/report"):
            return 404
        headers = {}
        for line in filter(None, head[1:]):
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"not a header: {line!r}")
            headers[key.strip().lower()] = value.strip()
        if not self._authorized(headers.get("authorization", "")):
            return 403
        length = headers.get("content-length")
        if length is None or "transfer-encoding" in headers:
            return 411
        if not _LENGTH.fullmatch(length):
            return 400
        if int(length) > MAX_BODY:
            return 413
        return 204 if self._take(await reader.readexactly(int(length))) else 403

    def _authorized(self, value: str) -> bool:
        scheme, _, given = value.partition(" ")
        ok = hmac.compare_digest(given.strip().encode("latin-1"), self._token)  # constant time
        return ok and scheme.lower() == "bearer" and bool(self._token)

    def _take(self, body: bytes) -> bool:
        """Store a valid report (a failure also in ``failures``); ``False`` for an invalid one."""
        try:
            report = NodeReport(**{**json.loads(body), "at": time.time()})
            if not 0 < report.rank < self.nodes:
                return False
        except (ValueError, TypeError, RecursionError):
            return False
        store_report(self.settings, self.name, report)
        if report.state == "failed":
            self.failures.append(report)
        return True


def send_report(master: str, token: str, report: NodeReport, timeout: float = 3.0) -> bool:
    """Post ``report`` to the head's roll call; ``False`` when it cannot be reached or refuses it."""
    import httpx

    host, port = report_address(master)
    data = asdict(report)
    body = json.dumps(data).encode()
    while len(body) > MAX_BODY and data["log_tail"]:  # the newest lines of a long tail fit
        data["log_tail"] = data["log_tail"][len(data["log_tail"]) // 4 + 1:]
        body = json.dumps(data).encode()
    try:
        r = httpx.post(f"http://{host}:{port}/report", content=body, timeout=timeout,
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        return r.status_code == 204
    except httpx.HTTPError:
        return False
