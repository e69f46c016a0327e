"""up: estimate -> fetch -> serve in one call, refusing bad input before anything expensive.

Order of checks (cheap first): model name, existing deployment, parallel layout, context
length, memory plan, port, vLLM install; then the fetch (minutes) and the launch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .catalog import DEFAULT_CPU_MODEL, ModelSpec, resolve
from .errors import AlreadyRunningError, InputError
from .estimate import check_layout, plan_cpu
from .fetch import fetch
from .ports import check_port, free_port
from .procs import port_owner
from .ready import Progress
from .records import Deployment, load, save
from .serve import ServeOptions, engine_version, launch, plan_serve, serves_dummy_weights, wait
from .settings import Settings
from .status import live_state

__all__ = ["DEFAULT_GPU_MODEL", "attach", "detect_device", "up"]

DEFAULT_GPU_MODEL = "deepseek-r1-distill-qwen-7b"
RUNNING = ("starting", "loading", "profiling", "ready", "unhealthy")


def detect_device() -> str:
    """``cpu`` or ``gpu``: ``DSAGENT_DEVICE`` if set, else whether an NVIDIA device node exists."""
    forced = os.environ.get("DSAGENT_DEVICE")
    if forced in ("cpu", "gpu"):
        return forced
    return "gpu" if Path("/dev/nvidia0").exists() else "cpu"


def _ram_available() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _config_of(spec: ModelSpec) -> dict[str, Any]:
    return dict(spec.config)


def _same_launch(dep: Deployment, opts: ServeOptions, model_path: str | None) -> bool:
    wanted_port = opts.port in (0, dep.port)
    same_path = model_path is None or dep.model_path == model_path
    same_weights = serves_dummy_weights(dep.argv) == opts.dummy_weights  # never answer real calls with random weights
    return (wanted_port and dep.host == opts.host and dep.tp == opts.tp and dep.pp == opts.pp and same_path
            and same_weights)


def _preflight(spec: ModelSpec, opts: ServeOptions, vllm_version: str | None = None,
               step: Callable[[str], None] = lambda _m: None) -> tuple[ServeOptions, dict[str, Any]]:
    """Layout, context and memory checks; returns the options with dsagent's choices filled in."""
    config = _config_of(spec)
    estimate: dict[str, Any] = {}
    if not config:
        return opts, estimate
    check_layout(config, opts.tp, opts.pp)
    limit = spec.context_limit
    if opts.max_model_len and limit and opts.max_model_len > limit:
        raise InputError(
            f"--max-model-len {opts.max_model_len} exceeds {spec.name}'s limit of {limit} tokens",
            f"use --max-model-len {limit} or less",
            max_model_len=opts.max_model_len,
            limit=limit,
        )
    if opts.device == "cpu":
        max_len = opts.max_model_len or min(limit or 2048, 2048)
        float32 = opts.dtype in ("auto", "float32")
        plan = plan_cpu(config, max_model_len=max_len, ram_available_bytes=_ram_available(),
                        kv_cache_gib=opts.kv_cache_gib, kv_bytes_per_element=4 if float32 else 2,
                        weight_bytes_per_param=4 if float32 else 2)
        return replace(opts, kv_cache_gib=plan.kv_cache_gib), asdict(plan)
    return _preflight_gpu(config, spec, opts, vllm_version, step)


def _preflight_gpu(config: dict[str, Any], spec: ModelSpec, opts: ServeOptions, vllm_version: str | None,
                   step: Callable[[str], None]) -> tuple[ServeOptions, dict[str, Any]]:
    """Plan against the GPUs this process sees (free memory included); refuse what won't fit.

    With no ``--max-model-len`` and a full context that does not fit, the largest that does is
    chosen and said."""
    from .estimate import plan_gpu, raise_unless_fits
    from .gpus import visible_gpus

    gpus = visible_gpus()
    if not gpus:
        step("no GPU visible through NVML (pip install nvidia-ml-py): skipping the memory plan")
        return opts, {}
    check_layout(config, opts.tp, opts.pp, gpus=len(gpus))
    used = gpus[: opts.tp * opts.pp]
    kwargs = dict(gpu_memory_gib=min(g.total_gib for g in used), gpus=len(gpus), tp=opts.tp, pp=opts.pp,
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


def up(
    model: str | None = None,
    *,
    options: ServeOptions | None = None,
    name: str | None = None,
    settings: Settings | None = None,
    wait_ready: bool = True,
    timeout: float = 900.0,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Deployment:
    """Bring ``model`` up (the embedded default on a machine with no GPU) and return its record.

    A deployment of the same model already running with the same settings is returned as it
    is (waiting for it if it is still starting); with other settings it is refused.
    """
    settings = settings or Settings.load()
    opts = options or ServeOptions(device=detect_device())
    step = on_step or (lambda _msg: None)
    spec = resolve(model or (DEFAULT_CPU_MODEL if opts.device == "cpu" else DEFAULT_GPU_MODEL))
    name = name or spec.name

    existing = load(settings, name)
    if existing is not None and live_state(existing) in RUNNING:
        local_path = str(spec.path) if spec.path else None
        if not _same_launch(existing, opts, local_path):
            raise AlreadyRunningError(
                f"{name} is already running on {existing.base_url} (tp {existing.tp}, pp {existing.pp}"
                f"{', random weights' if serves_dummy_weights(existing.argv) else ''}, pid {existing.pid}) with other settings "
                f"than asked",
                f"use it as it is, or stop it first: dsagent stop {name}",
                base_url=existing.base_url,
            )
        step(f"{name} is already running at {existing.base_url}; attaching")
        if wait_ready and existing.state != "ready":
            return wait(existing, settings, timeout=timeout, on_progress=on_progress)
        return existing

    step(f"estimate: {spec.name} on {opts.device}, tp {opts.tp} pp {opts.pp}")
    if spec.config:
        check_layout(dict(spec.config), opts.tp, opts.pp)
    version = engine_version(settings, opts.device)
    opts, estimate = _preflight(spec, opts, version, step)
    api_key = settings.api_key()
    if opts.port == 0:
        opts = replace(opts, port=free_port(opts.host))
    elif check_port(opts.host, opts.port, name, api_key) == "ours":
        raise AlreadyRunningError(
            f"{name} is already served on port {opts.port} by pid "
            f"{getattr(port_owner(opts.port), 'pid', '?')}, but not from this DSAGENT_HOME ({settings.home})",
            f"use it at http://{opts.host}:{opts.port}/v1, or set DSAGENT_HOME to the home that started it",
        )

    step(f"fetch: {spec.name} ({spec.source})")
    fetched = fetch(spec, settings, weights=not opts.dummy_weights)  # random weights: no weight download
    if not spec.config:
        import json

        spec = replace(spec, config=json.loads((fetched.path / "config.json").read_text()))
        opts, estimate = _preflight(spec, opts, version, step)

    plan = plan_serve(name, fetched.path, settings, opts, reasoning=spec.reasoning, context_limit=spec.context_limit,
                      sampling=spec.sampling)
    o = plan.options
    record = Deployment(
        name=name, model=spec.repo_id or spec.name, model_path=str(fetched.path), host=o.host, port=o.port,
        api_key_file=str(settings.api_key_file), log_file=str(plan.log_file), argv=list(plan.argv),
        env=dict(plan.env), device=o.device, tp=o.tp, pp=o.pp, dtype=o.dtype, max_model_len=o.max_model_len,
        reasoning=spec.reasoning, engine_python=settings.engine_python, vllm_version=version, estimate=estimate,
        revision=fetched.revision,
        measured={"fetch_seconds": round(fetched.seconds, 1)},
    )
    step(f"serve: {' '.join(plan.argv[1:])}")
    record = launch(plan, settings, api_key=api_key, record=record)
    if not wait_ready:
        return record
    return wait(record, settings, timeout=timeout, on_progress=on_progress)


def attach(settings: Settings | None = None, name: str | None = None, *, wait_timeout: float = 600.0) -> Deployment:
    """The running deployment (by name, or the most recent), waiting while it still starts.

    A deployment that is starting is waited for (bounded by ``wait_timeout``); one that failed
    or crashed is reported at once with the reason and its log tail.
    """
    from .errors import DeploymentError, NoDeploymentError
    from .ready import log_tail
    from .records import list_all

    settings = settings or Settings.load()
    deps = [d for d in list_all(settings) if name is None or d.name == name]
    states = {d.name: live_state(d) for d in deps}
    running = [d for d in deps if states[d.name] in RUNNING]
    if not running:
        dead = [d for d in deps if states[d.name] in ("failed", "crashed")]
        if dead:
            d = max(dead, key=lambda d: d.started_at or 0.0)
            tail = log_tail(d.log_file, 15)
            raise DeploymentError(
                f"deployment {d.name} is {states[d.name]}: {d.reason or 'see its log'}",
                f"read {d.log_file}; then `dsagent stop {d.name}` and `dsagent up {d.name}`\n{tail}",
                log_tail=tail,
            )
        which = f" named {name!r}" if name else ""
        raise NoDeploymentError(
            f"no running deployment{which} in {settings.home}",
            f"start one: dsagent up{' ' + name if name else ''}",
        )
    dep = max(running, key=lambda d: d.started_at or 0.0)
    if states[dep.name] != "ready":
        return wait(dep, settings, timeout=wait_timeout)
    return dep
