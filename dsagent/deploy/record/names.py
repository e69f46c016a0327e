"""A deployment's name, checked once at the edge, and the one map from a name to its files.

Every verb (up, join, stop, status, logs, service, restart), from the CLI, the library or the
MCP server, passes the name through ``check_name`` before it writes or reads anything; ``files``
is then the only place that turns a name into paths, and it proves each stays inside the home.

>>> check_name("deepseek-r1-distill-qwen-7b")
'deepseek-r1-distill-qwen-7b'
>>> check_name("../x")
Traceback (most recent call last):
...
dsagent.errors.InvalidOptionError: deployment name '../x' is not allowed: it must start with a letter or digit and hold only letters, digits, '.', '_' and '-' (at most 64 characters, no '..')
  fix: pass a plain name such as --name my-model
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError, InvalidOptionError
from ...settings import Settings

__all__ = ["NAME_RULE", "DeploymentFiles", "check_name", "files", "name_for"]

NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """``name`` when it is a valid deployment name, else ``InvalidOptionError`` naming the rule."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name) or ".." in name:
        raise InvalidOptionError(
            f"deployment name {name!r} is not allowed: it must start with a letter or digit and hold only letters, "
            "digits, '.', '_' and '-' (at most 64 characters, no '..')",
            "pass a plain name such as --name my-model", option="--name", value=name)
    return name


@dataclass(frozen=True)
class DeploymentFiles:
    """Where one deployment's state lives, all inside the dsagent home."""

    record: Path
    lock: Path
    nodes: Path
    token: Path
    """Multi-node, on the head: the roll call's token (mode 0600), what a node's ``--token-file`` reads."""
    log: Path
    watch_log: Path
    supervise_log: Path


def name_for(model: str) -> str:
    """The deployment a model argument names: the catalog's (or a weights folder's) name, else the
    argument itself, checked (``InvalidOptionError`` names the rule)."""
    from ...plan.catalog import resolve  # the catalog, only where a model argument is given

    try:
        return resolve(model).name
    except InputError:
        return check_name(model)


def _inside(home: Path, path: Path) -> Path:
    """``path``, proven to stay inside ``home`` (lexically: no ``..`` escapes, no absolute jump)."""
    root, full = os.path.normpath(home), os.path.normpath(path)
    if os.path.commonpath([root, full]) != root:
        raise InvalidOptionError(f"{path} is outside the dsagent home {home}", "pass a plain deployment name",
                                 option="--name", value=str(path))
    return path


def files(settings: Settings, name: str) -> DeploymentFiles:
    """The files of deployment ``name`` (checked) under ``settings.home``."""
    name = check_name(name)
    deps, logs = settings.deployments_dir, settings.logs_dir
    return DeploymentFiles(*(_inside(settings.home, p) for p in (
        deps / f"{name}.json", deps / f"{name}.lock", deps / f"{name}.nodes", deps / f"{name}.token",
        logs / f"{name}.log", logs / f"{name}.watch.log", logs / f"{name}.supervise.log")))
