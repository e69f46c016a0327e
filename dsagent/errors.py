"""Every error dsagent raises on purpose, in one tree.

Catch ``DsagentError`` for all of them; every message says what went wrong, with the numbers,
and how to fix it (``err.remedy`` holds the fix alone). Only the leaves are raised; the inner
classes are there to be caught. Each leaf carries its data as typed attributes::

    DsagentError                    problem, remedy
    ├── InputError                  bad input, refused before anything expensive
    │   ├── UnknownModelError           model: neither a catalog name, a hub id nor a model folder
    │   ├── InvalidOptionError          option, value: a value outside what the option takes
    │   ├── ParallelismError            tp, pp: a TP/PP layout vLLM would refuse (heads, GPUs, layers)
    │   └── DoesNotFitError             plan: the memory plan says no (its JSON)
    ├── InstallError                package: a part of the install is missing (names the extra)
    ├── FetchError                  getting or converting weights failed
    │   ├── SourceError                 repo_id, skipped: no source could list or serve the model
    │   ├── ConversionError             file: converting the bundled model failed
    │   ├── ChecksumError               files: a file does not match its size / sha256 / header
    │   └── DiskSpaceError              needed, free, path: the disk cannot hold the download
    ├── PortInUseError              port, pid, cmdline: the port is held by someone else
    ├── DeploymentError             about a deployment's life
    │   ├── AlreadyRunningError         name, base_url: runs already, with other settings
    │   ├── NoDeploymentError           name: nothing (of that name) is deployed
    │   ├── UnreadableRecordError       name, path: its record cannot be parsed
    │   ├── AmbiguousDeploymentError    names: several run and none was named
    │   ├── DeploymentFailedError       name, state, log_tail: it failed or crashed
    │   ├── JoinError                   head, check: a node cannot join the head's deployment
    │   ├── StartupError                phase, log_tail: vLLM exited while starting
    │   ├── NotReadyError               phase: not ready when the bounded wait ran out
    │   ├── StreamTimeoutError          a streamed answer gave no first token / stalled
    │   └── RouterError                 model: the router cannot serve, sleep or wake a model
    └── StopError                   pids: processes of a deployment survived stop
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AlreadyRunningError",
    "AmbiguousDeploymentError",
    "ChecksumError",
    "ConversionError",
    "DeploymentError",
    "DeploymentFailedError",
    "DiskSpaceError",
    "DoesNotFitError",
    "DsagentError",
    "FetchError",
    "InputError",
    "InstallError",
    "InvalidOptionError",
    "JoinError",
    "NoDeploymentError",
    "NotReadyError",
    "ParallelismError",
    "PortInUseError",
    "RouterError",
    "SourceError",
    "StartupError",
    "StopError",
    "StreamTimeoutError",
    "UnknownModelError",
    "UnreadableRecordError",
]


class DsagentError(Exception):
    """Base of every dsagent error: ``str(err)`` is the problem followed by the fix."""

    def __init__(self, problem: str, remedy: str = "") -> None:
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{problem}\n  fix: {remedy}" if remedy else problem)


class InputError(DsagentError):
    """Input that dsagent refuses before downloading or launching anything."""


class UnknownModelError(InputError):
    """A model name that is not in the catalog, not a hub id and not a model folder."""

    def __init__(self, problem: str, remedy: str = "", *, model: str) -> None:
        super().__init__(problem, remedy)
        self.model = model


class InvalidOptionError(InputError):
    """An option's value is outside what it takes (``option`` names it as the CLI spells it)."""

    def __init__(self, problem: str, remedy: str = "", *, option: str, value: Any = None) -> None:
        super().__init__(problem, remedy)
        self.option, self.value = option, value


class ParallelismError(InputError):
    """A tensor/pipeline-parallel layout that vLLM would refuse."""

    def __init__(self, problem: str, remedy: str = "", *, tp: int | None = None, pp: int | None = None) -> None:
        super().__init__(problem, remedy)
        self.tp, self.pp = tp, pp


class DoesNotFitError(InputError):
    """The memory plan says the deployment does not fit; ``plan`` is its JSON (``None`` on CPU)."""

    def __init__(self, problem: str, remedy: str = "", *, plan: dict[str, Any] | None = None) -> None:
        super().__init__(problem, remedy)
        self.plan = plan


class InstallError(DsagentError):
    """A package dsagent needs for this step is not installed."""

    def __init__(self, problem: str, remedy: str = "", *, package: str = "") -> None:
        super().__init__(problem, remedy)
        self.package = package


class FetchError(DsagentError):
    """Getting, converting or verifying model weights failed."""


class SourceError(FetchError):
    """No source could list or serve the model; ``skipped`` holds ``(source, reason)`` pairs."""

    def __init__(self, problem: str, remedy: str = "", *, repo_id: str = "",
                 skipped: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(problem, remedy)
        self.repo_id, self.skipped = repo_id, tuple(skipped)


class ConversionError(FetchError):
    """Converting the bundled model into a Hugging Face folder failed."""

    def __init__(self, problem: str, remedy: str = "", *, file: str = "") -> None:
        super().__init__(problem, remedy)
        self.file = file


class ChecksumError(FetchError):
    """Files that do not match the size, sha256 or header recorded for them (or hold no weights)."""

    def __init__(self, problem: str, remedy: str = "", *, files: Sequence[str] = ()) -> None:
        super().__init__(problem, remedy)
        self.files = tuple(files)


class DiskSpaceError(FetchError):
    """The disk cannot hold what would be downloaded (bytes ``needed`` vs ``free`` at ``path``)."""

    def __init__(self, problem: str, remedy: str = "", *, needed: int, free: int, path: str) -> None:
        super().__init__(problem, remedy)
        self.needed, self.free, self.path = needed, free, path


class PortInUseError(DsagentError):
    """The port is held by something that is not our healthy deployment of this model."""

    def __init__(self, problem: str, remedy: str = "", *, port: int, pid: int | None = None,
                 cmdline: str | None = None) -> None:
        super().__init__(problem, remedy)
        self.port, self.pid, self.cmdline = port, pid, cmdline


class DeploymentError(DsagentError):
    """A deployment could not be started, found or reached."""


class AlreadyRunningError(DeploymentError):
    """The deployment already runs with other settings (or from another home)."""

    def __init__(self, problem: str, remedy: str = "", *, name: str, base_url: str) -> None:
        super().__init__(problem, remedy)
        self.name, self.base_url = name, base_url


class NoDeploymentError(DeploymentError):
    """No deployment matches; the message says which command starts one."""

    def __init__(self, problem: str, remedy: str = "", *, name: str | None = None) -> None:
        super().__init__(problem, remedy)
        self.name = name


class UnreadableRecordError(DeploymentError):
    """A deployment's record exists but cannot be parsed (torn, edited by hand): ``path`` names it."""

    def __init__(self, problem: str, remedy: str = "", *, name: str, path: str) -> None:
        super().__init__(problem, remedy)
        self.name, self.path = name, path


class AmbiguousDeploymentError(DeploymentError):
    """Several deployments run and the command needs one: ``names`` lists them."""

    def __init__(self, problem: str, remedy: str = "", *, names: Sequence[str] = ()) -> None:
        super().__init__(problem, remedy)
        self.names = tuple(names)


class DeploymentFailedError(DeploymentError):
    """The deployment asked for has failed or crashed; ``log_tail`` has its last log lines."""

    def __init__(self, problem: str, remedy: str = "", *, name: str, state: str, log_tail: str = "") -> None:
        super().__init__(problem, remedy)
        self.name, self.state, self.log_tail = name, state, log_tail


class JoinError(DeploymentError):
    """A node cannot join a multi-node deployment: ``check`` names what differs or fails."""

    def __init__(self, problem: str, remedy: str = "", *, head: str, check: str) -> None:
        super().__init__(problem, remedy)
        self.head, self.check = head, check


class StartupError(DeploymentError):
    """vLLM died or reported a fatal error while starting; ``log_tail`` has its last lines."""

    def __init__(self, problem: str, remedy: str = "", *, phase: str = "", log_tail: str = "") -> None:
        super().__init__(problem, remedy)
        self.phase, self.log_tail = phase, log_tail


class NotReadyError(DeploymentError):
    """The server did not become ready within the bounded wait."""

    def __init__(self, problem: str, remedy: str = "", *, phase: str = "") -> None:
        super().__init__(problem, remedy)
        self.phase = phase


class StreamTimeoutError(DeploymentError, TimeoutError):
    """A streamed answer gave no first token, or stalled, within its timeout."""


class RouterError(DeploymentError):
    """The router cannot serve, put to sleep or wake one of its catalogue's models (``model``)."""

    def __init__(self, problem: str, remedy: str = "", *, model: str = "") -> None:
        super().__init__(problem, remedy)
        self.model = model


class StopError(DsagentError):
    """Some processes of a deployment survived ``stop``; ``pids`` lists them."""

    def __init__(self, problem: str, remedy: str = "", *, pids: Sequence[int] = ()) -> None:
        super().__init__(problem, remedy)
        self.pids = tuple(pids)
