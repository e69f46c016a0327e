"""What ``local_deepseek`` binds to: a running deployment, or a model behind this home's router.

``target`` answers with one ``Target`` either way: where to send requests, the key, the served
name, and what the launch says of reasoning and tools (the record's argv for a deployment; the
catalogue entry's for a router model, which may not be loaded yet: the router loads it on the
first request).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..deploy.record.names import name_for
from ..deploy.record.store import Deployment
from ..deploy.up import attach, up
from ..errors import InputError
from ..plan.catalog import resolve
from ..settings import Settings

__all__ = ["Target", "target", "tool_repeats"]


@dataclass(frozen=True)
class Target:
    """What a chat class is bound to; ``deployment`` is ``None`` behind the router."""

    name: str
    model: str
    api_key: str
    base_url: str
    reasoning: bool
    argv: tuple[str, ...]
    vllm_version: str
    deployment: str | None

    @classmethod
    def of(cls, dep: Deployment) -> Target:
        return cls(dep.name, dep.name, Path(dep.api_key_file).read_text().strip(), dep.base_url, dep.reasoning,
                   tuple(dep.argv), dep.vllm_version, dep.name)


def _routed(model: str, settings: Settings) -> Target | None:
    """``model`` behind this home's running router (its catalogue has it), else ``None``."""
    from ..deploy.launch.spawn import engine_version
    from ..router.serve import serving

    found = serving(settings, model)
    if found is None:
        return None
    info, entry = found
    spec = resolve(entry.model)
    flags = ("--reasoning-parser",) if spec.reasoning else ("--reasoning-config",) if spec.think_tags else ()
    return Target(model, spec.name, settings.api_key(), info.base_url, spec.reasoning,
                  flags + entry.options.extra_args, engine_version(settings, entry.options.device), None)


def target(model: str | None, settings: Settings, *, ensure: bool = False, wait_timeout: float = 600.0) -> Target:
    """The deployment ``model`` names (started first with ``ensure``), or the router's model of
    that name; without ``model`` the running deployment."""
    if ensure:
        return Target.of(up(model, settings=settings, timeout=wait_timeout))
    routed = _routed(model, settings) if model else None  # the router's name wins: it keeps the model up
    if routed is not None:
        return routed
    return Target.of(attach(name_for(model) if model else None, settings=settings, wait_timeout=wait_timeout))


def tool_repeats(name: str) -> str:
    try:
        return resolve(name).tool_repeats
    except InputError:
        return "args"
