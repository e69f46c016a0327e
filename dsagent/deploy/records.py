"""One JSON state record per deployment, under ``<home>/deployments/<name>.json``.

The record is the deployment's receipt: what was launched (argv, environment overrides, model
path and source checksum, vLLM version), where it listens, which processes are its own, what
the estimate said and what the server reported (KV capacity, time to ready).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..settings import Settings
from .state import State

__all__ = ["Deployment", "argv_flag", "delete", "list_all", "load", "save"]


def argv_flag(argv: Sequence[str], name: str) -> str | None:
    """The value that follows ``name`` in a launch's argv, or ``None``.

    >>> argv_flag(["--served-model-name", "dummy", "--load-format", "dummy"], "--load-format")
    'dummy'
    """
    return next((b for a, b in zip(argv, argv[1:]) if a == name), None)


_VISIBLE = "CUDA_VISIBLE_DEVICES"


@dataclass
class Deployment:
    """The state of one deployment; ``state`` is the last phase dsagent saw."""

    name: str
    model: str
    model_path: str
    host: str
    port: int
    api_key_file: str
    log_file: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    pgid: int | None = None
    state: State = State.PLANNED
    reason: str = ""
    started_at: float | None = None
    ready_at: float | None = None
    device: str = "cpu"
    tp: int = 1
    pp: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    reasoning: bool = False
    engine_python: str = ""
    vllm_version: str = ""
    revision: str = ""
    estimate: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    dp: int = 1
    node_rank: int = 0
    master: str = ""
    """``IP:PORT`` of rank 0's master (multi-node deployments), on every node."""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    """On the head of a multi-node deployment: ``{"rank", "ip", "join"}`` of each node."""
    head_url: str = ""
    """On a joined node: the head's API root, whose ``/health`` says whether the whole is up."""
    watcher_pid: int | None = None
    token: str = ""
    """Multi-node: the secret a node's reports to the head's roll call carry (in the join command)."""
    restart: dict[str, Any] = field(default_factory=dict)
    """The restart policy (``RestartPolicy`` as a dict) of a supervised deployment; empty when not."""
    supervisor_pid: int | None = None
    supervisor_started: float | None = None
    """The supervisor's start time, so a later process reusing its pid is not taken for it."""
    restarts: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    """The latest failures the supervisor saw: ``{"at", "reason", "log_tail"}``, oldest first."""

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def gpus(self) -> str:
        """The GPUs this launch was given (its ``CUDA_VISIBLE_DEVICES``, from the record's own
        environment overrides, not this process's environment); empty when not set."""
        return self.env.get(_VISIBLE, "")

    @property
    def nodes_total(self) -> int:
        """How many nodes the deployment spans (from its argv: ``--nnodes``)."""
        return int(argv_flag(self.argv, "--nnodes") or 1)

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["base_url"] = self.base_url
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        names = {f.name for f in fields(cls)}
        dep = cls(**{k: v for k, v in data.items() if k in names})
        dep.state = State(dep.state)
        return dep


def _path(settings: Settings, name: str) -> Path:
    return settings.deployments_dir / f"{name}.json"


def save(settings: Settings, dep: Deployment) -> Path:
    """Write the record atomically (a reader never sees half a file)."""
    path = _path(settings, dep.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dep.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load(settings: Settings, name: str) -> Deployment | None:
    path = _path(settings, name)
    try:
        return Deployment.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def list_all(settings: Settings) -> list[Deployment]:
    if not settings.deployments_dir.is_dir():
        return []
    out = []
    for path in sorted(settings.deployments_dir.glob("*.json")):
        try:
            out.append(Deployment.from_json(json.loads(path.read_text())))
        except (json.JSONDecodeError, TypeError, ValueError):
            continue
    return out


def delete(settings: Settings, name: str) -> None:
    _path(settings, name).unlink(missing_ok=True)
