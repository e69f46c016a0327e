"""The head's roll call: how the head of a multi-node deployment learns what its nodes do.

vLLM tells the head nothing about another node until a collective operation fails or hangs: a
node whose engine crashes while the head starts leaves the head waiting for the missing rank
until its timeout, and one that crashes later leaves the head's GPUs held. So every joined
node's watcher reports to the head's watcher: a heartbeat every few seconds (state, KV tokens
of its stages, GPUs), and at once when its engine dies (reason and log tail). The head's
watcher listens on ``master port + 2`` at the head's address; a report carries the
deployment's token (printed in the join command), so a stranger cannot stop it.

This is control-plane only (a few small JSON posts a minute); the model's traffic is vLLM's.
Reports are kept beside the record in ``<name>.nodes`` (not the record itself, which the
launcher rewrites while the deployment starts).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ...settings import Settings
from ..record.reports import NodeReport, store_report

__all__ = ["RollCall", "report_address", "send_report"]

REPORT_OFFSET = 2
"""The roll call listens on the master port + 2 (+ 1 is the data-parallel handshake port)."""


def report_address(master: str) -> tuple[str, int]:
    """``(host, port)`` of the head's roll call, from the master's ``IP:PORT``.

    >>> report_address("10.0.0.1:29501")
    ('10.0.0.1', 29503)
    """
    host, _, port = master.rpartition(":")
    return host, int(port) + REPORT_OFFSET


class RollCall:
    """The head's listener: stores each valid report; ``failures`` holds those of dead nodes."""

    def __init__(self, settings: Settings, name: str, token: str, master: str, nodes: int) -> None:
        self.failures: list[NodeReport] = []
        lock = threading.Lock()
        roll = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                    report = NodeReport(**{**body["report"], "at": time.time()})
                    ok = body.get("token") == token and 0 < report.rank < nodes
                except (ValueError, TypeError, KeyError):
                    ok, report = False, None
                if ok and report is not None:
                    with lock:
                        store_report(settings, name, report)
                        if report.state == "failed":
                            roll.failures.append(report)
                self.send_response(204 if ok else 403)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(report_address(master), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RollCall:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_report(master: str, token: str, report: NodeReport, timeout: float = 3.0) -> bool:
    """Post ``report`` to the head's roll call; ``False`` when it cannot be reached."""
    import httpx

    host, port = report_address(master)
    try:
        r = httpx.post(f"http://{host}:{port}/report", json={"token": token, "report": asdict(report)},
                       timeout=timeout)
        return r.status_code == 204
    except httpx.HTTPError:
        return False
