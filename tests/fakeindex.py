"""A loopback stand-in for a Python package index: PEP 691 JSON simple pages and the files.

Serves wheels built in the test on 127.0.0.1, with the sha256 the index publishes for each (or
a wrong one, to test the check), and counts every request.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JSON = "application/vnd.pypi.simple.v1+json"


def wheel_bytes(members: dict[str, bytes]) -> bytes:
    """A zip (a wheel's container) holding ``members``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@dataclass
class Index:
    """``project -> {filename: bytes}``; ``publish`` overrides the sha256 the index states for a file."""

    files: dict[str, dict[str, bytes]]
    publish: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    url: str = ""


@contextmanager
def serve(index: Index) -> Iterator[Index]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            index.log.append(self.path)
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "simple" and parts[1] in index.files:
                files = [{"filename": f, "url": f"/files/{f}",
                          "hashes": {"sha256": index.publish.get(f, hashlib.sha256(b).hexdigest())}}
                         for f, b in index.files[parts[1]].items()]
                self._send(json.dumps({"meta": {"api-version": "1.1"}, "name": parts[1], "files": files}).encode(), JSON)
            elif len(parts) == 2 and parts[0] == "files":
                data = next((d[parts[1]] for d in index.files.values() if parts[1] in d), None)
                self._send(data, "application/octet-stream") if data is not None else self.send_error(404)
            else:
                self.send_error(404)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    index.url = f"http://127.0.0.1:{httpd.server_address[1]}/simple"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        httpd.shutdown()
        httpd.server_close()
