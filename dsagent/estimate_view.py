"""The CLI face of ``estimate``: argument parsing, a table with per-GPU bars, or ``--json``.

All logic lives in :mod:`dsagent.estimate`; this module only gathers inputs and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import catalog, estimate, gpus as gpus_mod
from .errors import InputError

__all__ = ["add_command", "render", "run"]

BAR = 50
NO_GPU = "no GPU visible (nvidia-ml-py found none): showing the CPU plan; pass --gpu-memory-gib to plan a GPU machine"


def add_command(subparsers: Any) -> None:
    """Register ``dsagent estimate`` on an argparse subparsers object."""
    p = subparsers.add_parser("estimate", help="plan vLLM memory per GPU before downloading anything",
                              description=estimate.__doc__.splitlines()[0])
    p.add_argument("model", metavar="MODEL_OR_CONFIG_DIR", help="catalog name or a folder with config.json")
    p.add_argument("--gpu-memory-gib", type=float, help="memory of each GPU as vLLM sees it (H100: 79.18)")
    p.add_argument("--gpus", type=int, help="number of GPUs (default: visible GPUs, or tp*pp)")
    p.add_argument("--gpu-memory-utilization", type=float, help="vLLM's share of each GPU (release default)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's limit)")
    p.add_argument("--tp", type=int, help="tensor parallel size (default: recommended)")
    p.add_argument("--pp", type=int, help="pipeline parallel size (default: recommended)")
    p.add_argument("--vllm-version", default=None, help="vLLM release to model, e.g. 0.19.0")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--block-size", type=int)
    p.add_argument("--kv-cache-dtype", default="auto", help="auto, fp8, fp8_e4m3, fp8_e5m2")
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _smaller(spec: catalog.ModelSpec) -> list[tuple[str, Any]]:
    size = sum(int(spec.config.get(k, 0)) for k in ("hidden_size", "num_hidden_layers"))
    family = [s for s in catalog.CATALOG if s.reasoning and s.config and s.name != spec.name]
    return sorted(((s.name, s.config) for s in family
                   if int(s.config["hidden_size"]) * int(s.config["num_hidden_layers"])
                   < int(spec.config.get("hidden_size", 0)) * int(spec.config.get("num_hidden_layers", 0))),
                  key=lambda t: -int(t[1]["hidden_size"]) * int(t[1]["num_hidden_layers"])) if size else []


def run(args: argparse.Namespace) -> int:
    """Handle ``dsagent estimate``: 0 when the plan fits, 1 when not; raises ``InputError`` on bad input."""
    spec = catalog.resolve(args.model)
    if not spec.config:
        raise InputError(f"no architecture known offline for {args.model!r}",
                         "download it first (`dsagent fetch`) or pass a folder that holds its config.json")
    gpu_gib, free, name = args.gpu_memory_gib, None, ""
    count = args.gpus
    if gpu_gib is None:
        seen = gpus_mod.visible_gpus()
        if not seen:
            if args.tp or args.pp or args.gpus:
                raise InputError("no GPU is visible here, so there is no GPU memory size to plan with",
                                 "pass --gpu-memory-gib (e.g. 79.18 for an H100) to plan for another machine")
            return _cpu(spec, args)
        gpu_gib, free, name = min(g.total_gib for g in seen), [g.free_gib for g in seen], seen[0].name
        count = count or len(seen)
    if gpu_gib <= 0:
        raise InputError(f"--gpu-memory-gib {gpu_gib} must be positive", "use the GPU's memory, e.g. 79.18 for an H100")
    kw = dict(gpu_memory_utilization=args.gpu_memory_utilization, vllm_version=args.vllm_version,
              dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype, block_size=args.block_size,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
              free_memory_gib=free, model_dir=spec.path, device_name=name)
    if args.tp or args.pp:
        tp, pp = args.tp or 1, args.pp or 1
        plan = estimate.plan_gpu(spec.config, gpu_memory_gib=gpu_gib, gpus=count or tp * pp, tp=tp, pp=pp,
                                 max_model_len=args.max_model_len, **kw)
        if not plan.fits:
            hint = estimate.recommend(spec.config, gpu_memory_gib=gpu_gib, gpus=max(count or 0, tp * pp),
                                      max_model_len=args.max_model_len, smaller_models=_smaller(spec), **kw)
            plan = estimate._replace(plan, suggestions=hint.suggestions or (
                (f"--tp {hint.tp} --pp {hint.pp} fits",) if hint.fits else ()))
    else:
        plan = estimate.recommend(spec.config, gpu_memory_gib=gpu_gib, gpus=count or 1,
                                  max_model_len=args.max_model_len, smaller_models=_smaller(spec), **kw)
    if args.json:
        print(json.dumps({**plan.to_dict(), "model": spec.name}, indent=2))
    else:
        print(render(plan, spec.name))
    return 0 if plan.fits else 1


def _cpu(spec: catalog.ModelSpec, args: argparse.Namespace) -> int:
    ram = _ram_available()
    plan = estimate.plan_cpu(spec.config, max_model_len=args.max_model_len or 4096, ram_available_bytes=ram)
    data = {"fits": True, "weights_gib": round(plan.weights_gib, 3), "kv_cache_gib": plan.kv_cache_gib,
            "kv_cache_tokens": plan.kv_cache_tokens, "max_concurrency": round(plan.max_concurrency, 2),
            "max_model_len_fit": plan.kv_cache_tokens, "model": spec.name,
            "detail": {"backend": "cpu", "note": NO_GPU, "ram_available_gib": round(plan.ram_available_gib, 2)}}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(NO_GPU, file=sys.stderr)
        print(f"{spec.name} on CPU: weights {plan.weights_gib:.2f} GiB, KV cache {plan.kv_cache_gib} GiB "
              f"(VLLM_CPU_KVCACHE_SPACE), {plan.kv_cache_tokens:,} tokens, "
              f"{plan.max_concurrency:.2f}x at {args.max_model_len or 4096} tokens; "
              f"{plan.ram_available_gib:.1f} GiB RAM available")
    return 0


def _ram_available() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _bar(w: estimate.WorkerPlan) -> str:
    parts = [("W", w.weights_gib), ("A", w.activation_gib), ("N", w.non_torch_gib + w.cuda_graph_gib),
             ("K", max(0.0, w.kv_cache_gib)), (".", max(0.0, w.total_gib - w.requested_gib))]
    scale = BAR / w.total_gib
    return "".join(ch * round(v * scale) for ch, v in parts)[:BAR].ljust(BAR, " ")


def render(plan: estimate.GpuPlan, name: str = "") -> str:
    """The terminal view: summary, one budget row and bar per GPU, reasons and suggestions."""
    lines = [
        f"{name}  vLLM {plan.vllm_version} ({plan.engine})  TP {plan.tp} x PP {plan.pp}  "
        f"{plan.gpu_memory_gib:.2f} GiB/GPU x util {plan.gpu_memory_utilization}",
        f"verdict: {'FITS' if plan.fits else 'DOES NOT FIT'}   KV cache {plan.kv_cache_tokens:,} tokens, "
        f"{plan.max_concurrency:.2f}x concurrency at {plan.max_model_len:,} tokens, "
        f"largest max_model_len {plan.max_model_len_fit:,}",
        "",
        f"{'stage':>5} {'layers':>6} {'weights':>8} {'activ.':>7} {'non-torch':>9} {'graphs':>7} {'KV cache':>9}  "
        "budget (W weights, A activation, N overheads, K KV cache, . headroom)",
    ]
    for w in plan.workers:
        lines.append(f"{w.stage:>5} {w.layers:>6} {w.weights_gib:8.2f} {w.activation_gib:7.2f} "
                     f"{w.non_torch_gib:9.2f} {w.cuda_graph_gib:7.2f} {w.kv_cache_gib:9.2f}  |{_bar(w)}|")
    if plan.tp > 1:
        lines.append(f"(each stage row stands for its {plan.tp} TP ranks, GiB per GPU)")
    lines += [f"reason: {r}" for r in plan.reasons]
    lines += [f"suggest: {s}" for s in plan.suggestions]
    return "\n".join(lines)
