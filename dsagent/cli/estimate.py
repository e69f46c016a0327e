"""``dsagent estimate``: argument parsing, a table with per-GPU bars, or ``--json``.

All logic lives in :mod:`dsagent.plan.estimate`; this module only gathers inputs and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..plan import estimate as planner
from ..plan.budget import CpuPlan, GpuPlan, WorkerPlan
from ..plan.catalog import resolve
from ..plan.profiles import DEFAULT_VERSION
from .estimate_layouts import render_choice

__all__ = ["add_command", "render", "run"]

BAR = 50
NO_GPU = planner.NO_GPU
ASSUMED = "assumed: the newest release the estimate is calibrated for; --vllm-version X.Y.Z plans another"


def add_command(subparsers: Any) -> None:
    """Register ``dsagent estimate`` on an argparse subparsers object."""
    text = "plan vLLM memory per GPU before downloading anything"
    p = subparsers.add_parser("estimate", help=text, description=text)
    p.add_argument("model", metavar="MODEL_OR_CONFIG_DIR", help="catalog name or a folder with config.json")
    p.add_argument("--gpu-memory-gib", type=float, help="memory of each GPU as vLLM sees it (H100: 79.18)")
    p.add_argument("--gpus", type=int, help="number of GPUs per node (default: visible GPUs, or tp*pp)")
    p.add_argument("--nodes", type=int, default=1, help="nodes the layout spans, --gpus each (TP within a node)")
    p.add_argument("--gpu-memory-utilization", type=float, help="vLLM's share of each GPU (release default)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's limit; CPU: 2048)")
    p.add_argument("--tp", type=int, help="tensor parallel size (default: recommended)")
    p.add_argument("--pp", type=int, help="pipeline parallel size (default: recommended)")
    p.add_argument("--vllm-version", default=None,
                   help=f"vLLM release to model, e.g. 0.19.0 (default: {DEFAULT_VERSION}, the newest calibrated)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--block-size", type=int)
    p.add_argument("--kv-cache-dtype", default="auto", help="auto, fp8, fp8_e4m3, fp8_e5m2")
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--dp", type=int, help="data parallel replicas (each with its own KV cache)")
    p.add_argument("--enable-expert-parallel", action="store_true",
                   help="MoE models: whole experts per GPU over tp x dp ranks (vLLM's flag)")
    p.add_argument("--goal", choices=("latency", "throughput"),
                   help="compare TP/PP/DP layouts for one stream (latency) or many (throughput) and pick one")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``dsagent estimate``: 0 when the plan fits, 1 when not; bad input raises ``InputError``."""
    spec = resolve(args.model)
    if getattr(args, "goal", None):
        return _goal(args, spec)
    extra = {"dp": getattr(args, "dp", None), "expert_parallel": getattr(args, "enable_expert_parallel", False)}
    plan = planner.estimate(
        spec, gpu_memory_gib=args.gpu_memory_gib, gpus=args.gpus, tp=args.tp, pp=args.pp,
        max_model_len=args.max_model_len, nodes=args.nodes, gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_version=args.vllm_version, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
        block_size=args.block_size, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        **{k: v for k, v in extra.items() if v})
    if isinstance(plan, CpuPlan):
        return _cpu(plan, spec.name, args.json)
    if args.json:
        print(json.dumps(planner.plan_json(plan, spec.name), indent=2))
    else:
        print(render(plan, spec.name, assumed=args.vllm_version is None))
    return 0 if plan.fits else 1


def _goal(args: argparse.Namespace, spec: Any) -> int:
    """``--goal``: the layouts ranked for it, the nodes needed if none fits, the pick's plan."""
    choice = planner.choose_layout(
        spec, goal=args.goal, gpu_memory_gib=args.gpu_memory_gib, gpus=args.gpus, nodes=args.nodes,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_version=args.vllm_version, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
        block_size=args.block_size, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    if args.json:
        print(json.dumps({**choice.to_dict(), "model": spec.name}, indent=2))
    else:
        print(render_choice(choice, spec.name, render(choice.pick, spec.name) if choice.pick else ""))
    return 0 if choice.pick else 1


def _cpu(plan: CpuPlan, name: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps(planner.plan_json(plan, name), indent=2))
        return 0
    print(NO_GPU, file=sys.stderr)
    print(f"{name} on CPU: weights {plan.weights_gib:.2f} GiB, KV cache {plan.kv_cache_gib} GiB "
          f"(VLLM_CPU_KVCACHE_SPACE), {plan.kv_cache_tokens:,} tokens, "
          f"{plan.max_concurrency:.2f}x at {plan.max_model_len} tokens, longest request {plan.max_model_len_fit:,}; "
          f"{plan.ram_available_gib:.1f} GiB RAM available")
    return 0


def _bar(w: WorkerPlan) -> str:
    parts = [("W", w.weights_gib), ("A", w.activation_gib), ("N", w.non_torch_gib + w.cuda_graph_gib),
             ("K", max(0.0, w.kv_cache_gib)), (".", max(0.0, w.total_gib - w.requested_gib))]
    scale = BAR / w.total_gib
    return "".join(ch * round(v * scale) for ch, v in parts)[:BAR].ljust(BAR, " ")


def render(plan: GpuPlan, name: str = "", *, assumed: bool = False) -> str:
    """The terminal view: summary, one budget row and bar per GPU, reasons and suggestions.

    ``assumed``: no vLLM release was named, so the header says which one the plan assumes and why.
    """
    engine = f"{plan.engine}; {ASSUMED}" if assumed else plan.engine
    lines = [
        f"{name}  vLLM {plan.vllm_version} ({engine})  TP {plan.tp} x PP {plan.pp}"
        + (f" over {plan.nodes} nodes" if plan.nodes > 1 else "") + "  "
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
    if plan.dp > 1 or plan.expert_parallel:
        lines.insert(1, f"data parallel {plan.dp} (KV tokens and concurrency per replica; {plan.total_concurrency:.2f}x "
                        f"over all){', expert parallel over tp x dp' if plan.expert_parallel else ''}")
    lines += [f"reason: {r}" for r in plan.reasons]
    lines += [f"suggest: {s}" for s in plan.suggestions]
    return "\n".join(lines)
