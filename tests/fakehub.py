"""Loopback stand-ins for the Hugging Face hub and ModelScope, for tests without network.

``FakeHub`` serves one or more tiny model repositories on 127.0.0.1 and speaks the part of each
hub's HTTP protocol that the real clients (``huggingface_hub``, ``modelscope``) use, so tests drive
those real clients through their ``endpoint=`` settings. Faults are injected per file: a connection
cut halfway through the first download, bytes corrupted on the first (or every) download, or a
whole source answering 503.

>>> repo = tiny_repo()
>>> sorted(repo.files)[:2]
['.gitattributes', 'README.md']
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "a" * 8 + "0123456789abcdef0123456789abcdef"  # 40 hex digits, like a git commit


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A file in the safetensors format: u64 header length, JSON header, raw tensor data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset, blobs = 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def _floats(n: int, seed: int) -> bytes:
    block = struct.pack("<256f", *((i * 0.001 + seed) for i in range(256)))
    return (block * (n // 256 + 1))[: 4 * n]


@dataclass
class Repo:
    """One repository at one commit: file name -> content; LFS files are the weights."""

    repo_id: str
    files: dict[str, bytes]
    commit: str = COMMIT
    lfs: frozenset[str] = frozenset()
    gated: bool = False  # listed as the hub lists a gated repo, but its files answer 401 GatedRepo

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def git_oid(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tiny_repo(repo_id: str = "deepseek-ai/Tiny-R1", shards: int = 2, floats: int = 40_000) -> Repo:
    """A small model repository laid out like the DeepSeek distills on the hub.

    Besides what vLLM needs it holds what a fetch must skip: a ``*.bin`` duplicate of the weights,
    an ``original/`` folder and a README.
    """
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "intermediate_size": 32, "vocab_size": 64, "max_position_embeddings": 256}
    files: dict[str, bytes] = {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"# Tiny\n",
        "config.json": json.dumps(cfg, indent=2).encode(),
        "generation_config.json": b'{"temperature": 0.6}',
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}).encode(),
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "pytorch_model.bin": b"\x80duplicate weights" * 100,
        "original/consolidated.00.pth": b"duplicate weights" * 100,
    }
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)] if shards > 1 else ["model.safetensors"]
    for i, name in enumerate(names):
        files[name] = safetensors_bytes({f"layers.{i}.weight": ("F32", [floats], _floats(floats, i))})
    if shards > 1:
        weight_map = {f"layers.{i}.weight": name for i, name in enumerate(names)}
        files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    lfs = frozenset(n for n in files if n.endswith((".safetensors", ".bin", ".pth")))
    return Repo(repo_id, files, lfs=lfs)


@dataclass
class Faults:
    """What goes wrong, per file path (each set is consumed as faults fire)."""

    cut_once: set[str] = field(default_factory=set)  # first GET sends half the bytes, then hangs up
    corrupt_once: set[str] = field(default_factory=set)  # first GET serves same-size, wrong bytes
    corrupt_always: set[str] = field(default_factory=set)
    status: int | None = None  # every request answers this (a source that is down)


class FakeHub:
    """A loopback server holding ``repos``; ``.url`` is the endpoint, ``.log`` what was asked.

    Hugging Face side, standing for https://huggingface.co (and any HF-compatible mirror):

    - ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true``): model info with ``sha`` (the
      commit) and ``siblings`` carrying size, git ``blobId`` and, for LFS files, ``lfs.sha256``;
    - ``GET /api/models/{repo}/tree/{rev}?recursive=...``: the file list ``snapshot_download``
      walks (``oid``, ``size``, ``lfs.oid``);
    - ``HEAD/GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit`` and ``ETag`` (the git oid) for
      small files; LFS files answer 302 to a CDN path with ``X-Linked-Etag`` (the sha256) and
      ``X-Linked-Size``, as the real hub does; the CDN path honours ``Range`` with 206.
    - Unknown repos answer 401 ``X-Error-Code: RepoNotFound``; unknown revisions 404
      ``X-Error-Code: RevisionNotFound``; the files of a ``gated`` repo 401 ``X-Error-Code:
      GatedRepo`` (its model info and tree stay public, as on the real hub).

    ModelScope side, standing for https://modelscope.cn (``modelscope`` >= 1.38 via ``modelscope_hub``):

    - ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=``: ``{"Code": 200, "Data":
      {"Files": [{"Path", "Name", "Size", "Sha256", "Type": "blob", "Revision"}]}}``;
    - ``GET /api/v1/models/{repo}/revisions``, ``GET /api/v1/models/{repo}``: repo and branch info;
    - ``GET|HEAD /api/v1/models/{repo}/repo?Revision=&FilePath=``: the file bytes, with ``Range``.
    """

    def __init__(self, *repos: Repo, faults: Faults | None = None) -> None:
        self.repos = {r.repo_id: r for r in repos}
        self.faults = faults or Faults()
        self.log: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        # LFS files live on a second origin (another port), as the hub's CDN is another host: the
        # client must not follow that redirect when it reads the metadata of a HEAD.
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self)) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> FakeHub:
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def gets(self, name: str) -> list[tuple[str, str, str]]:
        """The GET requests that fetched the bytes of file ``name`` (from either protocol)."""
        out = []
        for method, raw, rng in self.log:
            url = urlsplit(raw)
            path, query = unquote(url.path), parse_qs(url.query)
            hf = ("/cdn/" in path or "/resolve/" in path) and path.endswith("/" + name)
            if method == "GET" and (hf or query.get("FilePath") == [name]):
                out.append((method, raw, rng))
        return out

    def take(self, kind: str, path: str) -> bool:
        """Consume a one-shot fault for ``path``."""
        with self._lock:
            pool = getattr(self.faults, kind)
            if path in pool:
                pool.discard(path)
                return True
            return False


@contextmanager
def serve(*repos: Repo, faults: Faults | None = None) -> Iterator[FakeHub]:
    hub = FakeHub(*repos, faults=faults).start()
    try:
        yield hub
    finally:
        hub.close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        # -- plumbing ---------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, head: bool = False) -> None:
            self._send(status, json.dumps({"error": code}).encode(), {"X-Error-Code": code, "X-Error-Message": code}, head)

        def _route(self, head: bool) -> None:
            hub.log.append((self.command, self.path, self.headers.get("Range", "")))
            if hub.faults.status:
                return self._send(hub.faults.status, b"down", head=head)
            url = urlsplit(self.path)
            path, query = unquote(url.path), {k: v[0] for k, v in parse_qs(url.query).items()}
            if path.startswith("/api/v1/"):
                return self._modelscope(path[len("/api/v1/"):], query, head)
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                return self._model_info(m[1], m[2] or "main")
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                return self._tree(m[1], m[2], m[3] or "")
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                return self._resolve(m[1], m[2], m[3], head)
            if m := re.fullmatch(r"/cdn/([^/]+/[^/]+)/(.+)", path):
                return self._bytes(hub.repos[m[1]], m[2], head)
            self._error(404, "EntryNotFound", head)

        def _repo(self, repo_id: str, rev: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound")
                return None
            if rev not in ("main", "master", repo.commit):
                self._error(404, "RevisionNotFound")
                return None
            return repo

        # -- Hugging Face -----------------------------------------------------------------------
        def _model_info(self, repo_id: str, rev: str) -> None:
            if (repo := self._repo(repo_id, rev)) is None:
                return
            siblings = []
            for name, data in sorted(repo.files.items()):
                s: dict[str, object] = {"rfilename": name, "size": len(data), "blobId": repo.git_oid(name)}
                if name in repo.lfs:
                    s["lfs"] = {"size": len(data), "sha256": repo.sha256(name), "pointerSize": 134}
                siblings.append(s)
            self._json({"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit, "private": False,
                        "gated": "manual" if repo.gated else False,
                        "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})

        def _tree(self, repo_id: str, rev: str, prefix: str) -> None:
            if (repo := self._repo(repo_id, rev)) is None:
                return
            out: list[dict[str, object]] = []
            for name, data in sorted(repo.files.items()):
                if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                    continue
                e: dict[str, object] = {"type": "file", "path": name, "size": len(data), "oid": repo.git_oid(name)}
                if name in repo.lfs:
                    e["lfs"] = {"oid": repo.sha256(name), "size": len(data), "pointerSize": 134}
                out.append(e)
            self._json(out)

        def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
            if (repo := self._repo(repo_id, rev)) is None:
                return
            if repo.gated:
                return self._error(401, "GatedRepo", head)
            if name not in repo.files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit}, head)
            common = {"X-Repo-Commit": repo.commit}
            if name in repo.lfs:
                size = len(repo.files[name])
                return self._send(302, b"", {**common, "Location": f"{hub.cdn_url}/cdn/{repo_id}/{name}",
                                             "X-Linked-Etag": f'"{repo.sha256(name)}"', "X-Linked-Size": str(size),
                                             "ETag": f'"{repo.git_oid(name)}"'}, head)
            self._bytes(repo, name, head, {**common, "ETag": f'"{repo.git_oid(name)}"'})

        # -- file bytes, with Range and the injected faults -------------------------------------
        def _bytes(self, repo: Repo, name: str, head: bool, extra: dict[str, str] | None = None) -> None:
            data = repo.files[name]
            headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **(extra or {})}
            if head:
                return self._send(200, data, headers, head=True)
            if hub.take("corrupt_once", name) or name in hub.faults.corrupt_always:
                bad = bytearray(data)
                bad[len(bad) // 2] ^= 0xFF
                data = bytes(bad)
            start, status = 0, 200
            if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start, status = int(m[1]), 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            if hub.take("cut_once", name):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(status, body, headers)

        # -- ModelScope -------------------------------------------------------------------------
        def _modelscope(self, path: str, query: dict[str, str], head: bool) -> None:
            m = re.fullmatch(r"models/([^/]+/[^/]+)(/.*)?", path)
            if not m or m[1] not in hub.repos:
                return self._json({"Code": 10010205001, "Message": "repo not found", "Success": False}, 404)
            repo, rest = hub.repos[m[1]], m[2] or ""
            rev = query.get("Revision", "master")
            if rest == "/repo/files":
                files = [{"Name": n.rsplit("/", 1)[-1], "Path": n, "Size": len(d), "Sha256": repo.sha256(n),
                          "Type": "blob", "Revision": repo.commit, "IsLFS": n in repo.lfs}
                         for n, d in sorted(repo.files.items())]
                return self._json({"Code": 200, "Data": {"Files": files}, "Success": True})
            if rest == "/repo" and "FilePath" in query:
                if query["FilePath"] not in repo.files:
                    return self._json({"Code": 404, "Message": "file not found", "Success": False}, 404)
                return self._bytes(repo, query["FilePath"], head, {"ETag": f'"{repo.sha256(query["FilePath"])}"'})
            if rest == "/revisions":
                return self._json({"Code": 200, "Data": {"RevisionMap": {"Branches": [{"Revision": "master", "CommitId": repo.commit}], "Tags": []}}, "Success": True})
            if rest == "":
                return self._json({"Code": 200, "Data": {"Id": 1, "Name": repo.repo_id.split("/")[1], "Path": repo.repo_id.split("/")[0], "Revision": rev}, "Success": True})
            self._json({"Code": 404, "Message": f"not faked: {rest}", "Success": False}, 404)

    return Handler
