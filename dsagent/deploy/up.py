"""up: estimate -> fetch -> serve in one call, refusing bad input before anything expensive.

Order of checks (cheap first): model name, existing deployment, parallel layout, context
length, vLLM install, memory plan, port; then the fetch (minutes) and the launch. ``attach``
finds the running deployment a client means.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import cache
from typing import Any

from ..errors import AlreadyRunningError, DeploymentFailedError, InvalidOptionError, NoDeploymentError
from ..plan.budget import CpuPlan, check_layout, check_nodes, cpu_context, plan_cpu, plan_gpu, raise_unless_fits
from ..plan.catalog import DEFAULT_CPU_MODEL, ModelSpec, resolve
from ..settings import Settings
from ..system import gpus as machine
from ..system.gpus import detect_device
from ..system.ports import check_port, free_port, is_local_address, is_loopback, port_is_free
from ..system.procs import port_owner
from ..weights.fetch import FetchResult, fetch
from .launch.argv import check_eager_pp, plan_serve
from .launch.options import ServeOptions, ServePlan
from .launch.spawn import check_compiler, engine_version, launch, pin_interface, record_of
from .nodes.join import JoinSpec, join_command
from .nodes.ray import attach_ray
from .nodes.rollcall import new_token, report_address
from .nodes.watch import start_watcher
from .record.identity import supervisor_alive
from .record.logs import log_tail
from .record.names import check_name
from .record.phase import Progress, live_state
from .record.state import State
from .record.store import Deployment, load, masked, update
from .status import find
from .supervise.policy import RestartPolicy
from .supervise.supervisor import adopt, follow, start_supervisor

__all__ = ["DEFAULT_GPU_MODEL", "attach", "default_model", "up"]

DEFAULT_GPU_MODEL = "deepseek-r1-distill-qwen-7b"


def default_model(device: str) -> str:
    """What ``up()`` serves when no model is named: the embedded model on a CPU, an R1 distill on GPUs."""
    return DEFAULT_CPU_MODEL if device == "cpu" else DEFAULT_GPU_MODEL


Step = Callable[[str], None]


def _options(dep: Deployment) -> ServeOptions:
    """The options the deployment was launched with (as its record keeps them)."""
    return ServeOptions.from_dict(dep.options)


def _same_launch(dep: Deployment, opts: ServeOptions, model_path: str | None) -> bool:
    wanted_port = opts.port in (0, dep.port)
    same_path = model_path is None or dep.model_path == model_path
    same_weights = _options(dep).dummy_weights == opts.dummy_weights  # never answer real calls with random weights
    return (wanted_port and dep.host == opts.host and dep.tp == opts.tp and dep.pp == opts.pp and same_path
            and same_weights)


def cpu_plan(spec: ModelSpec, opts: ServeOptions, ram_available_bytes: int) -> CpuPlan:
    """The CPU plan of ``spec`` launched with ``opts`` (float32 unless another dtype is asked),
    against ``ram_available_bytes``: what ``up`` and the router size the KV cache with."""
    float32 = opts.dtype in ("auto", "float32")
    return plan_cpu(dict(spec.config), max_model_len=cpu_context(spec.context_limit, opts.max_model_len),
                    ram_available_bytes=ram_available_bytes, kv_cache_gib=opts.kv_cache_gib,
                    kv_bytes_per_element=4 if float32 else 2, weight_bytes_per_param=4 if float32 else 2)


def _preflight(spec: ModelSpec, opts: ServeOptions, version: Callable[[], str],
               step: Step = lambda _m: None, settings: Settings | None = None) -> tuple[ServeOptions, dict[str, Any]]:
    """Layout, context and memory checks; returns the options with dsagent's choices filled in.

    ``version`` gives the engine's vLLM version; it is asked only once the cheap checks pass."""
    config = dict(spec.config)
    if not config:
        return opts, {}
    check_layout(config, opts.tp, opts.pp)
    limit = spec.context_limit
    if opts.max_model_len and limit and opts.max_model_len > limit:
        raise InvalidOptionError(f"--max-model-len {opts.max_model_len} exceeds {spec.name}'s limit of {limit} tokens",
                                 f"use --max-model-len {limit} or less", option="--max-model-len",
                                 value=opts.max_model_len)
    if opts.device == "cpu":
        check_eager_pp(opts)
        check_compiler(opts)
        plan = cpu_plan(spec, opts, machine.ram_available())
        return replace(opts, kv_cache_gib=plan.kv_cache_gib), asdict(plan)
    return _preflight_gpu(config, spec, opts, version(), step, settings)


def _preflight_gpu(config: dict[str, Any], spec: ModelSpec, opts: ServeOptions, vllm_version: str | None,
                   step: Step, settings: Settings | None) -> tuple[ServeOptions, dict[str, Any]]:
    """Plan against the GPUs this process sees (free memory included); refuse what won't fit.

    With no ``--max-model-len`` and a full context that does not fit, the largest that does is
    chosen and said."""
    gpus = machine.visible_gpus(settings=settings)
    if not gpus:
        step("no GPU visible through NVML (pip install nvidia-ml-py): skipping the memory plan")
        return opts, {}
    check_layout(config, opts.tp, opts.pp, gpus=len(gpus) * opts.nodes)  # the same GPUs on every node
    used = [g for g in gpus if g.index in opts.gpus] if opts.gpus else gpus[: opts.tp * opts.pp // opts.nodes]
    if opts.gpus and len(used) != len(set(opts.gpus)):
        raise InvalidOptionError(f"--gpus {','.join(map(str, opts.gpus))} names a GPU this machine does not show "
                                 f"(it shows {', '.join(str(g.index) for g in gpus)})",
                                 "pass GPU numbers as nvidia-smi lists them", option="--gpus", value=opts.gpus)
    kwargs = dict(gpu_memory_gib=min(g.total_gib for g in used), gpus=len(gpus) * opts.nodes, tp=opts.tp, pp=opts.pp,
                  gpu_memory_utilization=opts.gpu_memory_utilization, vllm_version=vllm_version,
                  dtype=None if opts.dtype == "auto" else opts.dtype, free_memory_gib=[g.free_gib for g in used],
                  enforce_eager=bool(opts.enforce_eager), device_name=used[0].name,
                  model_dir=str(spec.path) if spec.path else None)
    plan = plan_gpu(config, max_model_len=opts.max_model_len, **kwargs)
    if not plan.fits and opts.max_model_len is None and plan.max_model_len_fit >= 1024:
        fit = plan.max_model_len_fit // 1024 * 1024
        retry = plan_gpu(config, max_model_len=fit, **kwargs)
        if retry.fits:
            step(f"the full {plan.max_model_len}-token context does not fit; using --max-model-len {fit}")
            plan, opts = retry, replace(opts, max_model_len=fit)
    raise_unless_fits(plan)
    step(f"plan: {plan.weights_gib:.1f} GiB weights and {plan.kv_cache_gib:.1f} GiB KV cache per GPU, "
         f"{plan.kv_cache_tokens:,} tokens, {plan.max_concurrency:.1f}x concurrency at {plan.max_model_len}")
    return opts, plan.to_dict()


def _running(existing: Deployment, spec: ModelSpec, opts: ServeOptions, step: Step) -> Deployment:
    """A deployment of this name already runs: the same launch is attached to, another refused."""
    if not _same_launch(existing, opts, str(spec.path) if spec.path else None):
        raise AlreadyRunningError(
            f"{existing.name} is already running on {existing.base_url} (tp {existing.tp}, pp {existing.pp}"
            f"{', random weights' if _options(existing).dummy_weights else ''}, pid {existing.pid}) with other "
            f"settings than asked",
            f"use it as it is, or stop it first: dsagent stop {existing.name}",
            name=existing.name, base_url=existing.base_url,
        )
    step(f"{existing.name} is already running at {existing.base_url}; attaching")
    return existing


def _supervised(dep: Deployment, restart: RestartPolicy | None, foreground: bool, settings: Settings) -> Deployment:
    """Hand ``dep`` to a supervisor: this process (``foreground``) or a detached one (a policy other
    than ``no``); a running deployment that already has a live supervisor keeps it."""
    if restart is None or (restart.mode == "no" and not foreground):
        return dep
    if supervisor_alive(dep):
        if foreground:
            raise AlreadyRunningError(f"{dep.name} is already supervised by pid {dep.supervisor_pid}",
                                      f"stop it first (dsagent stop {dep.name}), then run this again",
                                      name=dep.name, base_url=dep.base_url)
        return dep
    dep = update(settings, dep.name, restart=restart.to_dict())
    return adopt(dep, settings) if foreground else start_supervisor(dep, settings)


def _port(opts: ServeOptions, name: str, settings: Settings) -> ServeOptions:
    """The options with a free port chosen (``--port auto``), or the asked one checked."""
    if opts.port == 0:
        return replace(opts, port=free_port(opts.host))
    if check_port(opts.host, opts.port, name, settings.api_key()) == "ours":
        raise AlreadyRunningError(
            f"{name} is already served on port {opts.port} by pid "
            f"{getattr(port_owner(opts.port), 'pid', '?')}, but not from this DSAGENT_HOME ({settings.home})",
            f"use it at http://{opts.host}:{opts.port}/v1, or set DSAGENT_HOME to the home that started it",
            name=name, base_url=f"http://{opts.host}:{opts.port}/v1",
        )
    return opts


def _exposure(opts: ServeOptions, settings: Settings) -> str:
    """What a bind beyond loopback makes reachable from other machines (said before the launch)."""
    roll = (f"; the nodes' roll call listens at {report_address(f'{opts.node_ip}:{opts.master_port}')[0]}:"
            f"{report_address(f'{opts.node_ip}:{opts.master_port}')[1]} (its own token)" if opts.nodes > 1 else "")
    return (f"--host {opts.host}: the engine on port {opts.port} is reachable from other machines; every path but "
            f"/health and /ping needs the key in {settings.api_key_file} (Authorization: Bearer){roll}; "
            "`dsagent mcp` stays on 127.0.0.1 unless you give it --host")


def _head(opts: ServeOptions) -> ServeOptions:
    """The head of a multi-node deployment: its own address, reachable by the others, is the master."""
    check_nodes(opts.tp, opts.pp, opts.dp, opts.nodes)
    if not opts.node_ip:
        raise InvalidOptionError(f"--nodes {opts.nodes} needs this node's address: --node-ip IP",
                                 "pass the address the other nodes reach this one at", option="--node-ip")
    if not is_local_address(opts.node_ip):
        raise InvalidOptionError(f"--node-ip {opts.node_ip} is not an address of this machine",
                                 "pass this node's own address (`ip -brief address` lists them)",
                                 option="--node-ip", value=opts.node_ip)
    for port, what in ((opts.master_port, "master"), (report_address(f"{opts.node_ip}:{opts.master_port}")[1], "roll call")):
        if not port_is_free(opts.node_ip, port):
            raise InvalidOptionError(f"port {port} at {opts.node_ip} (the {what} port) is taken",
                                     "pick another --master-port (dsagent uses it, +1 and +2)",
                                     option="--master-port", value=opts.master_port)
    return replace(opts, node_rank=0, master_addr=opts.node_ip)


def _several_nodes(opts: ServeOptions, restart: RestartPolicy | None, foreground: bool) -> ServeOptions:
    """Checks of a deployment over several nodes: no supervisor (a multi-node deployment restarts
    only as a whole); with vLLM's multi-node engine this node is the head."""
    if restart is not None and (restart.mode != "no" or foreground):
        raise InvalidOptionError(f"--restart/--foreground with --nodes {opts.nodes}: a supervisor restarts one "
                                 "node's engine, and a multi-node deployment restarts only as a whole",
                                 "leave out --restart; a node that fails is reported on the head, which stops "
                                 "(docs/multinode.md), and `dsagent up` + the join commands start it again",
                                 option="--restart", value=restart.mode)
    return _head(opts) if opts.backend == "mp" else opts


def _start(plan: ServePlan, record: Deployment, spec: ModelSpec, fetched: FetchResult, peers: Sequence[str],
           settings: Settings, step: Step) -> Deployment:
    """Launch ``plan``; the head of several nodes (vLLM's multi-node engine) first pins its network
    interface and prints every node's join command, then holds the roll call (``watch``)."""
    opts = plan.options
    head = opts.nodes > 1 and opts.backend == "mp"
    if head:
        plan = pin_interface(plan)
        record.env = {**record.env, **plan.env}
        record.master = f"{opts.node_ip}:{opts.master_port}"
        _tell_nodes(record, opts, spec, fetched.manifest.fingerprint if fetched.manifest else "", peers, settings,
                    step)
    step(f"serve: {' '.join(plan.argv[1:])}")
    record = launch(plan, settings, api_key=settings.api_key(), record=record)
    return start_watcher(record, settings, head=True) if head else record


def _model_ref(spec: ModelSpec) -> str:
    """How another node names the model: the hub id, the folder's path, or the catalog name."""
    return spec.repo_id if spec.source == "hub" else str(spec.path) if spec.path else spec.name


def _tell_nodes(record: Deployment, opts: ServeOptions, spec: ModelSpec, fingerprint: str, peers: Sequence[str],
                settings: Settings, step: Step) -> None:
    """Make the roll call's token, record every node of a multi-node deployment and print the
    command each must run (built from the head's options as launched). The token is printed
    masked; the commands name its file (mode 0600), never the token itself."""
    record.token, token_file = new_token(settings, record.name)
    step(f"the nodes' token ({masked(record.token)}) is in {token_file} (mode 0600): copy it to each node keeping "
         f"its mode (scp -p {token_file} NODE:{token_file}), or set DSAGENT_JOIN_TOKEN there to its content and "
         "leave out --token-file")
    ip = record.master.rsplit(":", 1)[0]
    # the others watch the head's /health: at its own address when the API listens on every interface
    api = ip if record.host in ("0.0.0.0", "::", "") else record.host
    record.nodes = [{"rank": 0, "ip": ip}]
    for rank in range(1, opts.nodes):
        peer = peers[rank - 1] if rank - 1 < len(peers) else None
        cmd = join_command(record, JoinSpec(
            token_file=str(token_file), head=record.master, node_rank=rank, model=_model_ref(spec), nodes=opts.nodes,
            tp=opts.tp, pp=opts.pp, dp=opts.dp, node_ip=peer, head_url=f"http://{api}:{record.port}",
            vllm_version=record.vllm_version, fingerprint=fingerprint, max_model_len=opts.max_model_len,
            dtype=opts.dtype, dummy_weights=opts.dummy_weights, tokenizer=opts.tokenizer,
            kv_cache_gib=opts.kv_cache_gib if opts.device == "cpu" else None,
            gpu_memory_utilization=opts.gpu_memory_utilization if opts.device != "cpu" else None))
        record.nodes.append({"rank": rank, "ip": peer or "", "join": cmd})
        step(f"on node {rank}, run: {cmd}")


def up(
    model: str | None = None,
    *,
    options: ServeOptions | None = None,
    name: str | None = None,
    settings: Settings | None = None,
    wait_ready: bool = True,
    timeout: float = 900.0,
    on_step: Step | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    peers: Sequence[str] = (),
    restart: RestartPolicy | None = None,
    foreground: bool = False,
) -> Deployment:
    """Bring ``model`` up (the embedded default on a machine with no GPU) and return its record.

    A deployment of the same model already running with the same settings is returned as it
    is (waiting for it if it is still starting); with other settings it is refused. With
    ``options.nodes > 1`` this is the head (rank 0): it prints the ``dsagent join`` command of
    every other node (``peers``: their addresses, in rank order, if known) and waits for them.
    ``restart``: a supervisor's policy; ``foreground``: this process supervises (``run_foreground``).
    """
    settings = settings or Settings.load()
    opts = options or ServeOptions(device=detect_device(settings))
    step = on_step or (lambda _msg: None)
    spec = resolve(model or default_model(opts.device))
    name = check_name(name or spec.name)

    existing = load(settings, name)
    if existing is not None and live_state(existing).running:
        dep = _supervised(_running(existing, spec, opts, step), restart, foreground, settings)
        ready = dep.state == State.READY and live_state(dep) == State.READY
        return follow(dep, settings, timeout=timeout, on_progress=on_progress) if wait_ready and not ready else dep

    if opts.nodes > 1:
        opts = _several_nodes(opts, restart, foreground)
    step(f"estimate: {spec.name} on {opts.device}, tp {opts.tp} pp {opts.pp}"
         + (f" dp {opts.dp}" if opts.dp > 1 else "") + (f" over {opts.nodes} nodes" if opts.nodes > 1 else ""))
    version = cache(lambda: engine_version(settings, opts.device))
    if opts.backend == "ray":
        opts = attach_ray(opts, settings, version())
    opts, estimate = _preflight(spec, opts, version, step, settings)
    version()  # no vLLM: refused before the download
    opts = _port(opts, name, settings)
    if not is_loopback(opts.host):
        step(_exposure(opts, settings))

    step(f"fetch: {spec.name} ({spec.source})")
    fetched = fetch(spec, settings=settings, weights=not opts.dummy_weights)  # random weights: no weight download
    if not spec.config:
        spec = replace(spec, config=json.loads((fetched.path / "config.json").read_text()))
        opts, estimate = _preflight(spec, opts, version, step, settings)

    plan = plan_serve(name, fetched.path, settings, opts, reasoning=spec.reasoning, context_limit=spec.context_limit,
                      sampling=spec.sampling, think_tags=spec.think_tags)
    record = record_of(plan, settings, model=spec.repo_id or spec.name, vllm_version=version(), estimate=estimate,
                       revision=fetched.revision, measured={"fetch_seconds": round(fetched.seconds, 1)})
    record = _supervised(_start(plan, record, spec, fetched, peers, settings, step), restart, foreground, settings)
    return follow(record, settings, timeout=timeout, on_progress=on_progress) if wait_ready else record


def attach(name: str | None = None, *, settings: Settings | None = None, wait_timeout: float = 600.0) -> Deployment:
    """The running deployment (by name, or the most recent), waiting while it still starts.

    A deployment that is starting is waited for (bounded by ``wait_timeout``); one that failed
    or crashed is reported at once with the reason and its log tail.
    """
    settings = settings or Settings.load()
    dep, state, seen = find(settings, name)
    if dep is None:
        dead = [(d, s) for d, s in seen if s in (State.FAILED, State.CRASHED)]
        if dead:
            d, s = max(dead, key=lambda ds: ds[0].started_at or 0.0)
            tail = log_tail(d.log_file, 15)
            raise DeploymentFailedError(
                f"deployment {d.name} is {s}: {d.reason or 'see its log'}",
                f"read {d.log_file}; then `dsagent stop {d.name}` and `dsagent up {d.name}`\n{tail}",
                name=d.name, state=str(s), log_tail=tail,
            )
        which = f" named {name!r}" if name else ""
        raise NoDeploymentError(f"no running deployment{which} in {settings.home}",
                                f"start one: dsagent up{' ' + name if name else ''}", name=name)
    return follow(dep, settings, timeout=wait_timeout) if state != State.READY else dep
