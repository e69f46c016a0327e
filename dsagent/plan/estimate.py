"""estimate: the memory plan of a model on the GPUs at hand (or named), before any download.

``estimate(model)`` is what ``dsagent estimate`` prints: with ``tp``/``pp`` the plan of that
layout (and, when it does not fit, what would); without, the fitting layout with the most
concurrency (``recommend``). With no GPU visible and none described, the CPU plan.

>>> p = estimate("deepseek-r1-distill-qwen-7b", gpu_memory_gib=79.18, gpus=1,
...              max_model_len=8192, vllm_version="0.19.0")
>>> p.fits, (p.tp, p.pp)
(True, (1, 1))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import InvalidOptionError, ParallelismError
from ..settings import Settings
from ..system import gpus as machine
from .arch import stage_weight_bytes
from .budget import CpuPlan, GpuPlan, check_layout, check_nodes, cpu_context, plan_cpu, plan_gpu
from .catalog import CATALOG, ModelSpec, resolve
from .layouts import NEAR, LayoutChoice, compare_layouts, token_read_gib

__all__ = ["NO_GPU", "choose_layout", "estimate", "plan_json", "recommend", "smaller_models", "with_config"]


def _layouts(config: Mapping[str, Any], gpus: int, nodes: int = 1) -> list[tuple[int, int]]:
    """TP/PP layouts over ``nodes`` nodes of ``gpus`` GPUs: every node holds the same number of
    ranks, and a TP group stays within a node (vLLM's rule of thumb: TP inside, PP across)."""
    out = []
    for tp in range(1, gpus + 1):
        for pp in range(1, gpus * nodes // tp + 1):
            local, rest = divmod(tp * pp, nodes)
            if rest or local > gpus or local % tp:
                continue
            try:
                check_layout(config, tp, pp, gpus * nodes)
            except ParallelismError:
                continue
            out.append((tp, pp))
    return out


def recommend(config: Mapping[str, Any], *, gpu_memory_gib: float, gpus: int, max_model_len: int | None = None,
              smaller_models: Sequence[tuple[str, Mapping[str, Any]]] = (), nodes: int = 1, **kw: Any) -> GpuPlan:
    """The fitting TP/PP layout with the most concurrency at ``max_model_len`` (``gpus`` per node).

    When nothing fits, return the best plan (``fits=False``) with ``suggestions``: the smallest
    change that fits (more GPUs or nodes, shorter context, fp8 KV cache, a smaller model).
    """
    kw = {k: v for k, v in kw.items() if k not in {"tp", "pp"}}
    plans = [replace(plan_gpu(config, gpu_memory_gib=gpu_memory_gib, gpus=gpus * nodes, tp=tp, pp=pp,
                              max_model_len=max_model_len, **kw), nodes=nodes)
             for tp, pp in _layouts(config, gpus, nodes)]
    if not plans:
        raise ParallelismError(f"no TP/PP layout of this model spreads evenly over {nodes} node(s) of {gpus} GPUs",
                               "make more GPUs visible, or use fewer nodes")
    # Prefer fitting, then concurrency, then fewer GPUs; within 10 % of the most concurrency, the
    # fastest stream (an MLA model holds most requests at PP = GPUs, one GPU per stage: slow streams).
    best = max(plans, key=lambda p: (p.fits, p.max_concurrency, -p.tp * p.pp))
    if best.fits:
        near = [p for p in plans if p.fits and p.max_concurrency >= NEAR * best.max_concurrency]
        return min(near, key=lambda p: (round(token_read_gib(config, p), 2), -p.max_concurrency, p.tp * p.pp))
    hints: list[str] = []
    fit_len = max(plans, key=lambda p: p.max_model_len_fit)
    if fit_len.max_model_len_fit >= 1024:
        hints.append(f"shorter context: --max-model-len {fit_len.max_model_len_fit} fits with "
                     f"--tp {fit_len.tp} --pp {fit_len.pp}")
    if (kw.get("kv_cache_dtype") or "auto") == "auto":
        fp8 = recommend_quiet(config, gpu_memory_gib, gpus, max_model_len, {**kw, "kv_cache_dtype": "fp8"})
        if fp8:
            hints.append(f"fp8 KV cache: --kv-cache-dtype fp8 fits with --tp {fp8.tp} --pp {fp8.pp}")
    if nodes == 1:
        for more in range(gpus + 1, 65):
            p = recommend_quiet(config, gpu_memory_gib, more, max_model_len, kw)
            if p:
                hints.append(f"more GPUs: {more} GPUs fit with --tp {p.tp} --pp {p.pp}")
                break
    for more in range(nodes + 1, 9):
        p = recommend_quiet(config, gpu_memory_gib, gpus, max_model_len, kw, nodes=more)
        if p:
            hints.append(f"more nodes: {more} nodes of {gpus} GPUs fit with --tp {p.tp} --pp {p.pp} --nodes {more}")
            break
    for name, cfg in smaller_models:
        if recommend_quiet(cfg, gpu_memory_gib, gpus, max_model_len, kw):
            hints.append(f"a smaller model: {name} fits on these {gpus} GPU(s)")
            break
    return replace(best, suggestions=tuple(hints))


def recommend_quiet(config: Mapping[str, Any], gpu_memory_gib: float, gpus: int, max_model_len: int | None,
                    kw: Mapping[str, Any], nodes: int = 1) -> GpuPlan | None:
    """The smallest fitting plan on ``nodes`` nodes of ``gpus`` GPUs, or None."""
    for tp, pp in sorted(_layouts(config, gpus, nodes), key=lambda t: t[0] * t[1]):
        p = plan_gpu(config, gpu_memory_gib=gpu_memory_gib, gpus=gpus * nodes, tp=tp, pp=pp,
                     max_model_len=max_model_len, **{k: v for k, v in kw.items() if k != "free_memory_gib"})
        if p.fits:
            return replace(p, nodes=nodes)
    return None


def _size(config: Mapping[str, Any]) -> int:
    """Weight bytes on one GPU (a MoE model is as large as all its experts, not its hidden size)."""
    if not config.get("hidden_size"):
        return 0
    layers = int(config["num_hidden_layers"])
    return stage_weight_bytes(config, tp=1, pp=1, stage=0, layers=layers, dtype_bytes=2)


def smaller_models(spec: ModelSpec) -> list[tuple[str, Mapping[str, Any]]]:
    """The catalog's reasoning models smaller than ``spec``, largest first (the suggestions' fallback)."""
    if not _size(spec.config):
        return []
    family = [s for s in CATALOG if s.reasoning and s.config and s.name != spec.name and _size(s.config) < _size(spec.config)]
    return [(s.name, s.config) for s in sorted(family, key=lambda s: -_size(s.config))]


def with_config(model: str | ModelSpec) -> ModelSpec:
    """``model`` resolved; refused when its architecture (config.json) is not known offline."""
    spec = model if isinstance(model, ModelSpec) else resolve(model)
    if not spec.config:
        raise InvalidOptionError(f"no architecture known offline for {spec.repo_id or spec.name!r}",
                                 "download it first (`dsagent fetch`) or pass a folder that holds its config.json",
                                 option="MODEL", value=spec.repo_id or spec.name)
    return spec


def choose_layout(model: str | ModelSpec, *, goal: str, gpu_memory_gib: float | None = None,
                  gpus: int | None = None, nodes: int = 1, settings: Settings | None = None,
                  **options: Any) -> LayoutChoice:
    """``dsagent estimate --goal``: every layout of ``model`` on these GPUs ranked for ``goal``
    (``latency`` or ``throughput``, see ``dsagent.plan.layouts``); the visible GPUs unless described."""
    spec = with_config(model)
    free, name = None, ""
    if gpu_memory_gib is None:
        seen = machine.visible_gpus(settings=settings)
        if not seen:
            raise InvalidOptionError("no GPU is visible here, so there is no layout to choose",
                                     "pass --gpu-memory-gib and --gpus to plan for another machine",
                                     option="--gpu-memory-gib")
        gpu_memory_gib, free, name = min(g.total_gib for g in seen), [g.free_gib for g in seen], seen[0].name
        gpus = gpus or len(seen)
    return compare_layouts(spec.config, goal=goal, gpu_memory_gib=gpu_memory_gib, gpus=gpus or 1, nodes=nodes,
                           free_memory_gib=free, model_dir=spec.path, device_name=name, **options)


def estimate(model: str | ModelSpec, *, gpu_memory_gib: float | None = None, gpus: int | None = None,
             tp: int | None = None, pp: int | None = None, max_model_len: int | None = None, nodes: int = 1,
             settings: Settings | None = None, **options: Any) -> GpuPlan | CpuPlan:
    """The plan ``dsagent estimate`` shows; ``options`` are ``plan_gpu``'s (``vllm_version``, ``dtype``, ...).

    ``gpu_memory_gib`` (and ``gpus``, per node) describe another machine; without them the visible
    GPUs are planned for, free memory included, and with none visible the CPU plan is returned.
    ``nodes``: the layout spans that many nodes of ``gpus`` GPUs each (TP within a node).
    """
    spec = with_config(model)
    free, name = None, ""
    if gpu_memory_gib is None:
        seen = machine.visible_gpus(settings=settings)
        if not seen:
            if tp or pp or gpus:
                raise InvalidOptionError("no GPU is visible here, so there is no GPU memory size to plan with",
                                         "pass --gpu-memory-gib (e.g. 79.18 for an H100) to plan for another machine",
                                         option="--gpu-memory-gib")
            return plan_cpu(spec.config, max_model_len=cpu_context(spec.context_limit, max_model_len),
                            ram_available_bytes=machine.ram_available())
        gpu_memory_gib, free, name = min(g.total_gib for g in seen), [g.free_gib for g in seen], seen[0].name
        gpus = gpus or len(seen)
    if gpu_memory_gib <= 0:
        raise InvalidOptionError(f"--gpu-memory-gib {gpu_memory_gib} must be positive",
                                 "use the GPU's memory, e.g. 79.18 for an H100", option="--gpu-memory-gib",
                                 value=gpu_memory_gib)
    kw = dict(options, free_memory_gib=free, model_dir=spec.path, device_name=name)
    if not (tp or pp or kw.get("dp", 1) > 1):
        kw = {k: v for k, v in kw.items() if k not in {"dp", "expert_parallel"}}
        return recommend(spec.config, gpu_memory_gib=gpu_memory_gib, gpus=gpus or 1, max_model_len=max_model_len,
                         smaller_models=smaller_models(spec), nodes=nodes, **kw)
    tp, pp, dp = tp or 1, pp or 1, int(kw.get("dp") or 1)
    check_nodes(tp, pp, dp, nodes)  # the rule the launch applies
    plan = plan_gpu(spec.config, gpu_memory_gib=gpu_memory_gib, gpus=(gpus or tp * pp * dp // nodes) * nodes, tp=tp,
                    pp=pp, max_model_len=max_model_len, **kw)
    plan = replace(plan, nodes=nodes)
    if plan.fits:
        return plan
    hint = recommend(spec.config, gpu_memory_gib=gpu_memory_gib, gpus=max(gpus or 0, tp * pp * dp),
                     max_model_len=max_model_len, smaller_models=smaller_models(spec),
                     **{k: v for k, v in kw.items() if k not in {"dp", "expert_parallel"}})
    return replace(plan, suggestions=hint.suggestions or ((f"--tp {hint.tp} --pp {hint.pp} fits",) if hint.fits else ()))


NO_GPU = "no GPU visible (nvidia-ml-py found none): showing the CPU plan; pass --gpu-memory-gib to plan a GPU machine"


def plan_json(plan: GpuPlan | CpuPlan, name: str) -> dict[str, Any]:
    """The plan as ``dsagent estimate --json`` prints it (and the console draws it)."""
    if isinstance(plan, CpuPlan):
        return {"fits": True, "weights_gib": round(plan.weights_gib, 3), "kv_cache_gib": plan.kv_cache_gib,
                "kv_cache_tokens": plan.kv_cache_tokens, "max_concurrency": round(plan.max_concurrency, 2),
                "max_model_len_fit": plan.max_model_len_fit, "model": name,
                "detail": {"backend": "cpu", "note": NO_GPU, "ram_available_gib": round(plan.ram_available_gib, 2),
                           "max_model_len": plan.max_model_len}}
    return {**plan.to_dict(), "model": name}
