"""dsagent: serve DeepSeek models locally with vLLM and use them from LangChain and MCP agents.

Everything public is importable from here; names load on first use, so ``import dsagent``
stays fast and imports neither torch, vLLM nor LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AlreadyRunningError": "errors",
    "ChecksumError": "errors",
    "Deployment": "records",
    "DeploymentError": "errors",
    "DiskSpaceError": "errors",
    "DoesNotFitError": "errors",
    "DsagentError": "errors",
    "FetchError": "errors",
    "InputError": "errors",
    "InstallError": "errors",
    "ModelSpec": "catalog",
    "NoDeploymentError": "errors",
    "NotReadyError": "errors",
    "ParallelismError": "errors",
    "PortInUseError": "errors",
    "ServeOptions": "serve",
    "Settings": "settings",
    "StartupError": "errors",
    "StopError": "errors",
    "StreamTimeoutError": "errors",
    "UnknownModelError": "errors",
    "ask": "recipes",
    "attach": "up",
    "fetch": "fetch",
    "local_deepseek": "chat",
    "resolve": "catalog",
    "status": "status",
    "stop": "stop",
    "suggest_names": "recipes",
    "translate": "recipes",
    "up": "up",
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
    from .catalog import ModelSpec, resolve
    from .chat import local_deepseek
    from .errors import (
        AlreadyRunningError, ChecksumError, DeploymentError, DiskSpaceError, DoesNotFitError, DsagentError,
        FetchError, InputError, InstallError, NoDeploymentError, NotReadyError, ParallelismError,
        PortInUseError, StartupError, StopError, StreamTimeoutError, UnknownModelError,
    )
    from .fetch import fetch
    from .recipes import ask, suggest_names, translate
    from .records import Deployment
    from .serve import ServeOptions
    from .settings import Settings
    from .status import status
    from .stop import stop
    from .up import attach, up
