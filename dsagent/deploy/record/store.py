"""One JSON state record per deployment, under ``<home>/deployments/<name>.json``: the one store.

The record is the deployment's receipt: what was launched (its options, argv, environment
overrides, model path and source checksum, vLLM version), where it listens, which processes are
its own (leader pid and start time, the members seen at ready), what the estimate said and what
the server reported (KV capacity, time to ready).

Several processes write one record (the launcher, the supervisor, a node's watcher, stop, the
roll call), and the MCP server does from several threads. So every change goes through
``update(settings, name, change)``: it takes an OS lock (``<name>.lock`` beside the record),
loads, applies ``change`` and saves; a save writes a temporary file of its own (unique per
write), fsyncs it, renames it over the record and fsyncs the folder. ``create`` writes a new
launch's whole record under the same lock. A record that cannot be parsed raises
``UnreadableRecordError`` naming its file; ``scan`` returns the readable ones and the paths of
the others.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ...errors import NoDeploymentError, UnreadableRecordError
from ...files import locked, private_dir, write_private
from ...settings import Settings
from .names import NAME_RULE, files
from .state import State

__all__ = ["Deployment", "create", "delete", "list_all", "load", "masked", "private_dir", "scan", "update"]


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
    """The leader (the API server, or a headless node's engine); its pid is the tree's process group."""
    pgid: int | None = None
    leader_started: float | None = None
    """The leader's start time as the kernel gives it: with ``pid``, what proves a process is ours."""
    members: list[dict[str, Any]] = field(default_factory=list)
    """``{"pid", "started"}`` of every process of the tree when it became ready (``identity``)."""
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
    watcher_started: float | None = None
    token: str = field(default="", repr=False)
    """Multi-node: the secret a node's reports to the head's roll call carry (``Authorization``
    header); the head keeps it in ``<name>.token`` too, for the nodes. Shown only ``masked``."""
    restart: dict[str, Any] = field(default_factory=dict)
    """The restart policy (``RestartPolicy`` as a dict) of a supervised deployment; empty when not."""
    supervisor_pid: int | None = None
    supervisor_started: float | None = None
    """The supervisor's start time, so a later process reusing its pid is not taken for it."""
    restarts: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    """The latest failures the supervisor saw: ``{"at", "reason", "log_tail"}``, oldest first."""
    options: dict[str, Any] = field(default_factory=dict)
    """The launch's ``ServeOptions`` (as a dict): a relaunch, the join commands and the unit are built from it."""

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
        """How many nodes the deployment spans (its options' ``nodes``)."""
        return int(self.options.get("nodes", 1))

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def to_json(self, *, secrets: bool = False) -> dict[str, Any]:
        """The record as JSON; the token ``masked`` unless ``secrets`` (the store's own save)."""
        data = asdict(self)
        data["base_url"] = self.base_url
        if not secrets:
            data["token"] = masked(self.token)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        names = {f.name for f in fields(cls)}
        dep = cls(**{k: v for k, v in data.items() if k in names})
        dep.state = State(dep.state)
        return dep


def masked(secret: str) -> str:
    """How a secret is shown: its first four characters, enough to tell two apart.

    >>> masked("Zq3xYh0dW2v8s1kE")
    'Zq3x…'
    >>> masked("")
    ''
    """
    return f"{secret[:4]}…" if secret else ""


@contextlib.contextmanager
def _locked(settings: Settings, name: str) -> Iterator[Path]:
    """Hold deployment ``name``'s lock (an exclusive ``flock`` on ``<name>.lock``); yield the record's path."""
    f = files(settings, name)
    private_dir(settings.home)
    with locked(f.lock):
        yield f.record


def _write(path: Path, dep: Deployment) -> None:
    """Atomically replace the record at ``path`` with ``dep`` (``files.write_private``)."""
    write_private(path, json.dumps(dep.to_json(secrets=True), indent=2) + "\n")


def _read(path: Path, name: str) -> Deployment | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Deployment.from_json(json.loads(text))
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnreadableRecordError(
            f"the record of deployment {name!r} ({path}) cannot be read: {type(exc).__name__}: {exc}",
            f"look at it, then remove it (rm {path}) and stop what may still run (dsagent ps, dsagent stop "
            "--orphans)", name=name, path=str(path)) from None


def create(settings: Settings, dep: Deployment) -> Deployment:
    """Write a new launch's whole record (replacing the last launch's) under the lock."""
    with _locked(settings, dep.name) as path:
        _write(path, dep)
    return dep


def update(settings: Settings, name: str, change: Callable[[Deployment], Any] | None = None,
           **values: Any) -> Deployment:
    """Load ``name``'s record under its lock, set ``values``, apply ``change``, save; the result.

    ``NoDeploymentError`` when there is no record (it was stopped and removed meanwhile)."""
    with _locked(settings, name) as path:
        dep = _read(path, name)
        if dep is None:
            raise NoDeploymentError(f"no deployment named {name!r} in {settings.home}",
                                    "see them with `dsagent ps`", name=name)
        for key, value in values.items():
            if not hasattr(dep, key):
                raise AttributeError(f"a deployment record has no field {key!r}")
            setattr(dep, key, value)
        if change is not None:
            change(dep)
        _write(path, dep)
        return dep


def load(settings: Settings, name: str) -> Deployment | None:
    """Deployment ``name``'s record, ``None`` when there is none; ``UnreadableRecordError`` when
    its file cannot be parsed. (A reader needs no lock: a save is one rename.)"""
    return _read(files(settings, name).record, name)


def scan(settings: Settings) -> tuple[list[Deployment], list[UnreadableRecordError]]:
    """Every readable record, and an error naming each record that cannot be read."""
    if not settings.deployments_dir.is_dir():
        return [], []
    good, bad = [], []
    for path in sorted(settings.deployments_dir.glob("*.json")):
        if not NAME_RULE.fullmatch(path.stem) or ".." in path.stem:
            continue  # not a record dsagent wrote
        try:
            dep = _read(path, path.stem)
        except UnreadableRecordError as err:
            bad.append(err)
            continue
        if dep is not None:
            good.append(dep)
    return good, bad


def list_all(settings: Settings) -> list[Deployment]:
    """Every readable record (``scan`` also names the unreadable ones)."""
    return scan(settings)[0]


def delete(settings: Settings, name: str) -> None:
    """Remove ``name``'s record, its node reports and its token (under the lock; the lock file stays)."""
    f = files(settings, name)
    with _locked(settings, name):
        f.record.unlink(missing_ok=True)
        f.nodes.unlink(missing_ok=True)
        f.token.unlink(missing_ok=True)
