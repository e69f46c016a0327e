"""dsagent: serve DeepSeek models locally with vLLM and use them from LangChain and MCP agents.

Everything public is importable from here; names load on first use, so ``import dsagent``
stays fast and imports neither torch, vLLM nor LangChain. No subpackage or module of dsagent
bears the name of an export, so ``dsagent.up`` is the function even after ``import
dsagent.deploy.up`` (a test pins it).

The package, in layers (each imports only from the layers before it)::

    errors, settings, files     the exception tree, every setting, file digests and headers
    system                      processes, GPUs, ports: the machine
    plan                        the catalog and the memory plan (pure)
    weights                     fetch: hubs, the bundled model, manifests
    deploy                      up, launch, ready, status, stop, records, State
    clients                     LangChain chat classes, reasoning, recipes, snippets
    mcp, cli, demo              the faces
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ERRORS = (
    "AlreadyRunningError", "AmbiguousDeploymentError", "ChecksumError", "ConversionError", "DeploymentError",
    "DeploymentFailedError", "DiskSpaceError", "DoesNotFitError", "DsagentError", "FetchError", "InputError",
    "InstallError", "InvalidOptionError", "JoinError", "NoDeploymentError", "NotReadyError", "ParallelismError",
    "PortInUseError", "RouterError", "SourceError", "StartupError", "StopError", "StreamTimeoutError", "UnknownModelError",
    "UnreadableRecordError",
)

_EXPORTS = {
    **{name: "errors" for name in _ERRORS},
    "CpuPlan": "plan.budget",
    "Deployment": "deploy.record.store",
    "FetchResult": "weights.fetch",
    "GpuPlan": "plan.budget",
    "LayoutChoice": "plan.layouts",
    "LocalChatDeepSeek": "clients.chat",
    "LocalChatOpenAI": "clients.chat",
    "ModelSpec": "plan.catalog",
    "RestartPolicy": "deploy.supervise.policy",
    "ServeOptions": "deploy.launch.options",
    "Settings": "settings",
    "State": "deploy.record.state",
    "StopResult": "deploy.stop",
    "ask": "clients.recipes",
    "attach": "deploy.up",
    "choose_layout": "plan.estimate",
    "estimate": "plan.estimate",
    "fetch": "weights.fetch",
    "local_deepseek": "clients.chat",
    "plan_cpu": "plan.budget",
    "plan_gpu": "plan.budget",
    "recommend": "plan.estimate",
    "resolve": "plan.catalog",
    "status": "deploy.status",
    "stop": "deploy.stop",
    "suggest_names": "clients.recipes",
    "translate": "clients.recipes",
    "up": "deploy.up",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dsagent' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dsagent.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .clients.chat import LocalChatDeepSeek, LocalChatOpenAI, local_deepseek
    from .clients.recipes import ask, suggest_names, translate
    from .deploy.launch.options import ServeOptions
    from .deploy.record.store import Deployment
    from .deploy.supervise.policy import RestartPolicy
    from .deploy.record.state import State
    from .deploy.status import status
    from .deploy.stop import StopResult, stop
    from .deploy.up import attach, up
    from .errors import (
        AlreadyRunningError, AmbiguousDeploymentError, ChecksumError, ConversionError, DeploymentError,
        DeploymentFailedError, DiskSpaceError, DoesNotFitError, DsagentError, FetchError, InputError,
        InstallError, InvalidOptionError, JoinError, NoDeploymentError, NotReadyError, ParallelismError, PortInUseError,
        RouterError, SourceError, StartupError, StopError, StreamTimeoutError, UnknownModelError, UnreadableRecordError,
    )
    from .plan.budget import CpuPlan, GpuPlan, plan_cpu, plan_gpu
    from .plan.catalog import ModelSpec, resolve
    from .plan.estimate import choose_layout, estimate, recommend
    from .plan.layouts import LayoutChoice
    from .settings import Settings
    from .weights.fetch import FetchResult, fetch
