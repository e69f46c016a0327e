"""The one place that starts, finds and ends processes.

Mechanisms only: spawn a session leader, list processes (``ProcInfo``: pid, group, start time,
command line, the ``DSAGENT_DEPLOYMENT`` mark where /proc shows it), signal and verify. Which of
them belong to a deployment is decided in one place, ``dsagent.deploy.record.identity``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import StopError
from ..files import append_private
from ..settings import SECRETS

__all__ = [
    "PACKAGE_ROOT", "PIN", "ProcInfo", "TimeoutExpired", "all_processes", "alive", "cxx_compiler", "end_processes", "engine_env",
    "numa_nodes", "port_owner", "process_info", "run", "spawn", "vllm_processes",
]

MARK = "DSAGENT_DEPLOYMENT"
"""The environment variable a deployment's processes carry (its value: ``deploy.record.identity.mark_for``)."""


@dataclass(frozen=True)
class ProcInfo:
    """A process as ``ps`` shows it: pid, group, name, command line and its deployment mark."""

    pid: int
    pgid: int
    ppid: int
    name: str
    cmdline: str
    deployment: str | None
    started: float = 0.0

    def describe(self) -> str:
        return f"pid {self.pid} ({self.name}): {self.cmdline[:160]}"


PIN = "DSAGENT_CPUS"
"""An environment variable of a launch (``0,1``): ``spawn`` confines the new process tree to those
cores (the CPU affinity every child inherits); kept in the record's environment, so a relaunch does too."""


def spawn(argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new session, output appended to ``log_path`` (mode 0600,
    in a 0700 folder: a log may hold prompts, paths and tracebacks); on the cores ``env[PIN]`` names."""
    cores = {int(c) for c in env[PIN].split(",")} if env.get(PIN) else None
    with os.fdopen(append_private(log_path), "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    if cores is not None:  # at once, while it starts its interpreter: every thread and child inherits them
        try:
            os.sched_setaffinity(proc.pid, cores)
        except OSError:  # gone already: the wait that follows reports why
            pass
    return proc


TimeoutExpired = subprocess.TimeoutExpired
"""What ``run`` raises when its command outlives ``timeout``."""

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the dsagent package (put on the engine interpreter's path)."""


def engine_env(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """``base`` plus ``extra``, with dsagent importable by another interpreter (``python -m dsagent...``
    in the engine's environment, which may not have dsagent installed), less dsagent's secrets
    (``settings.SECRETS``: a join token stays with ``dsagent join``)."""
    env = {k: v for k, v in {**base, **extra}.items() if k not in SECRETS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), base.get("PYTHONPATH")]))
    return env


def numa_nodes() -> int:
    """NUMA nodes of this machine (``/sys``; 1 where it does not say)."""
    return max(1, len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))))


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use (``g++``, else ``c++``), or ``None``."""
    import shutil

    return shutil.which("g++") or shutil.which("c++")


def run(argv: Sequence[str], *, timeout: float | None = 60.0, env: Mapping[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion with its output captured (version probes, conversions).

    Raises ``OSError`` when the program cannot be started at all."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else None)


def alive(pid: int | None) -> bool:
    """True while ``pid`` runs (a zombie counts as dead, and is reaped if it is our child)."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _info(proc: psutil.Process, environ: bool) -> ProcInfo | None:
    try:
        with proc.oneshot():
            name = proc.name()
            cmd = " ".join(proc.cmdline()) or name
            mark = None
            if environ:
                try:
                    mark = proc.environ().get(MARK)
                except psutil.Error:
                    mark = None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return ProcInfo(proc.pid, os.getpgid(proc.pid), proc.ppid(), name, cmd, mark, proc.create_time())
    except (psutil.Error, ProcessLookupError):
        return None


def all_processes(environ: bool = True) -> list[ProcInfo]:
    """Every live process but this one (zombies left out)."""
    me = os.getpid()
    found = (_info(p, environ) for p in psutil.process_iter() if p.pid != me)
    return [p for p in found if p is not None]


def process_info(pid: int) -> ProcInfo | None:
    """``pid`` as a ``ProcInfo`` (for ``end_processes``), or ``None`` when it is gone."""
    try:
        return _info(psutil.Process(pid), environ=False)
    except psutil.Error:
        return None


def vllm_processes() -> list[ProcInfo]:
    """Every live vLLM engine or worker process (titled ``VLLM::...``) and API server."""
    return [
        p
        for p in all_processes()
        if p.name.startswith("VLLM") or p.cmdline.startswith("VLLM::") or "vllm.entrypoints" in p.cmdline
        or "dsagent.deploy.launch.vllm_cli" in p.cmdline  # multi-node and data-parallel launches
    ]


def _signal(procs: Sequence[ProcInfo], sig: signal.Signals, groups: bool = True) -> None:
    for pgid in {p.pgid for p in procs} if groups else ():
        if pgid > 1 and pgid != os.getpgid(0):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
    for p in procs:
        try:
            proc = psutil.Process(p.pid)
            if p.started and abs(proc.create_time() - p.started) >= 0.5:
                continue  # the pid now names another process: never signal it
            proc.send_signal(sig)
        except (psutil.Error, PermissionError):
            pass


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = {pid for pid in pids if alive(pid)}
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.1)


KILL_BOUND = 120.0
"""Seconds a SIGKILLed process may take to be gone. Milliseconds, usually; on a 2-core VM under a
full test run with the kernel's autogroup scheduling on (each session one equal CPU share, so a
deployment's many processes starve together), vLLM processes killed while still importing took
over 45 s to exit (state R, gone later). A process that outlives this is reported, not waited for."""


def _state(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.Error:
        return "gone"


def end_processes(procs: Sequence[ProcInfo], grace: float = 15.0, *, groups: bool = True) -> list[ProcInfo]:
    """SIGTERM the processes and (``groups``) their groups, wait ``grace`` s, SIGKILL survivors, verify.

    Returns what was ended; raises ``StopError`` if anything survives SIGKILL.
    """
    if not procs:
        return []
    _signal(procs, signal.SIGTERM, groups)
    left = _wait_gone({p.pid for p in procs}, grace)
    if left:
        _signal([p for p in procs if p.pid in left], signal.SIGKILL, groups)
        left = _wait_gone(left, KILL_BOUND)
    if left:
        raise StopError(
            f"processes survived SIGKILL for {KILL_BOUND:.0f} s: "
            + ", ".join(f"{pid} ({_state(pid)})" for pid in sorted(left)),
            "check them with `ps -o pid,stat,cmd -p PID` (a process in state D waits on the kernel)",
            pids=sorted(left),
        )
    return list(procs)


def port_owner(port: int) -> ProcInfo | None:
    """The process listening on TCP ``port``, where the system lets us see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return _info(psutil.Process(conn.pid), environ=True)
            except psutil.Error:
                return None
    return None
