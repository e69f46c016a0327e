"""Every error dsagent raises on purpose, in one tree.

Catch ``DsagentError`` for all of them; every message says what went wrong, with the numbers,
and how to fix it (``err.remedy`` holds the fix alone)::

    DsagentError
    ├── InputError              bad input, refused before anything expensive
    │   ├── UnknownModelError       a model name that is neither in the catalog nor a directory
    │   ├── ParallelismError        TP/PP that vLLM would refuse (heads, GPU count)
    │   └── DoesNotFitError         the memory plan says no
    ├── InstallError            a part of the install is missing (names the extra to install)
    ├── FetchError              getting or converting weights failed
    │   ├── ChecksumError           a file does not match its recorded sha256 / size
    │   └── DiskSpaceError          not enough free disk for the download
    ├── PortInUseError          the port is held by a process that is not our deployment
    ├── DeploymentError         about a deployment's life
    │   ├── AlreadyRunningError     `up`/`serve` of a deployment that is already running elsewhere
    │   ├── NoDeploymentError       nothing is deployed (says which command starts one)
    │   ├── StartupError            vLLM exited or failed while starting (carries the log tail)
    │   ├── NotReadyError           still not ready when the bounded wait ran out
    │   └── StreamTimeoutError      a streamed answer gave no first token / stalled too long
    └── StopError               processes of a deployment survived stop
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunningError",
    "ChecksumError",
    "DeploymentError",
    "DiskSpaceError",
    "DoesNotFitError",
    "DsagentError",
    "FetchError",
    "InputError",
    "InstallError",
    "NoDeploymentError",
    "NotReadyError",
    "ParallelismError",
    "PortInUseError",
    "StartupError",
    "StopError",
    "StreamTimeoutError",
    "UnknownModelError",
]


class DsagentError(Exception):
    """Base of every dsagent error: ``str(err)`` is the problem followed by the fix."""

    def __init__(self, problem: str, remedy: str = "", **data: object) -> None:
        self.problem = problem
        self.remedy = remedy
        self.data = data
        super().__init__(f"{problem}\n  fix: {remedy}" if remedy else problem)


class InputError(DsagentError):
    """Input that dsagent refuses before downloading or launching anything."""


class UnknownModelError(InputError):
    """A model name that is not in the catalog, not a hub id and not a local directory."""


class ParallelismError(InputError):
    """A tensor/pipeline-parallel layout that vLLM would refuse."""


class DoesNotFitError(InputError):
    """The memory plan says the deployment does not fit."""


class InstallError(DsagentError):
    """A package dsagent needs for this step is not installed."""


class FetchError(DsagentError):
    """Getting, converting or verifying model weights failed."""


class ChecksumError(FetchError):
    """A file does not match the size or sha256 recorded for it."""


class DiskSpaceError(FetchError):
    """The disk cannot hold what would be downloaded."""


class PortInUseError(DsagentError):
    """The port is held by something that is not our healthy deployment of this model."""


class DeploymentError(DsagentError):
    """A deployment could not be started, found or reached."""


class AlreadyRunningError(DeploymentError):
    """The deployment already runs with other settings."""


class NoDeploymentError(DeploymentError):
    """No deployment matches; the message says which command starts one."""


class StartupError(DeploymentError):
    """vLLM died or reported a fatal error while starting; ``log_tail`` has its last lines."""

    @property
    def log_tail(self) -> str:
        return str(self.data.get("log_tail", ""))


class NotReadyError(DeploymentError):
    """The server did not become ready within the bounded wait."""


class StreamTimeoutError(DeploymentError, TimeoutError):
    """A streamed answer gave no first token, or stalled, within its timeout."""


class StopError(DsagentError):
    """Some processes of a deployment survived ``stop``."""
