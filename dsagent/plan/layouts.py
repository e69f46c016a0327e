"""Which layout to pick for a goal: TP vs PP vs DP (and expert parallelism) on the same GPUs (pure).

``compare_layouts`` plans every way of spreading a model over ``nodes`` nodes of ``gpus`` GPUs
(TP inside a node, PP and DP across) and ranks them for a goal:

- ``latency`` (one stream): decoding one token reads, in order, every pipeline stage's weights
  on one GPU of each stage; TP splits that read over its ranks, PP does not shorten it and DP
  does not help one stream. The pick reads the fewest bytes per token (``token_read_gib``); for
  MoE models only the experts a token activates are read.
- ``throughput`` (many streams): the most requests of ``max_model_len`` tokens held at once over
  all replicas (``total_concurrency = dp x max_concurrency``); among layouts within 10 % of the
  most, the fastest per stream. For MLA models (DeepSeek-V2/V3/R1)
  TP replicates the latent KV cache on every rank, so PP and DP (with expert parallelism) hold
  far more tokens than TP on the same GPUs.

When nothing fits on ``nodes`` nodes, ``nodes_needed`` is the fewest nodes on which something does.

>>> from dsagent.plan.catalog import resolve
>>> c = compare_layouts(resolve("deepseek-r1-distill-qwen-7b").config, goal="latency", gpu_memory_gib=79.18,
...                     gpus=2, max_model_len=8192, vllm_version="0.19.0")
>>> (c.pick.tp, c.pick.pp, c.pick.dp)
(2, 1, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidOptionError, ParallelismError
from . import moe
from .arch import stage_weight_bytes
from .budget import GIB, GpuPlan, _dtype_bytes, check_layout, check_nodes, plan_gpu
from .profiles import profile_for

__all__ = ["GOALS", "LayoutChoice", "LayoutOption", "compare_layouts", "token_read_gib"]

GOALS = ("latency", "throughput")
MAX_NODES = 8


@dataclass(frozen=True)
class LayoutOption:
    """One layout's plan, reduced to what the choice rests on."""

    tp: int
    pp: int
    dp: int
    expert_parallel: bool
    fits: bool
    weights_gib: float
    kv_cache_tokens: int
    max_concurrency: float
    total_concurrency: float
    token_read_gib: float
    relative_speed: float = 1.0

    @property
    def flags(self) -> str:
        """The ``dsagent up`` / ``vllm serve`` flags of this layout."""
        text = f"--tp {self.tp} --pp {self.pp}" + (f" --dp {self.dp}" if self.dp > 1 else "")
        return text + (" --enable-expert-parallel" if self.expert_parallel else "")


@dataclass(frozen=True)
class LayoutChoice:
    """The options for a goal, best first, and the plan of the pick (``None`` if nothing fits)."""

    goal: str
    nodes: int
    gpus: int
    options: tuple[LayoutOption, ...]
    pick: GpuPlan | None
    nodes_needed: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "nodes": self.nodes, "gpus_per_node": self.gpus, "nodes_needed": self.nodes_needed,
                "pick": self.pick.to_dict() if self.pick else None,
                "options": [{**o.__dict__, "flags": o.flags} for o in self.options]}


def _triples(config: Mapping[str, Any], gpus: int, nodes: int) -> list[tuple[int, int, int, bool]]:
    """(tp, pp, dp, ep) using all ``gpus x nodes`` GPUs that vLLM accepts, TP within a node."""
    world, out = gpus * nodes, []
    experts = bool(config.get("n_routed_experts"))
    for tp in range(1, gpus + 1):
        for pp in range(1, world // tp + 1):
            if world % (tp * pp):
                continue
            dp = world // (tp * pp)
            try:
                check_layout(config, tp, pp, world, dp)
                check_nodes(tp, pp, dp, nodes)
            except ParallelismError:
                continue
            for ep in ((False, True) if experts and tp * dp > 1 else (False,)):
                out.append((tp, pp, dp, ep))
    return out


def token_read_gib(config: Mapping[str, Any], plan: GpuPlan, dtype_bytes: int | None = None) -> float:
    """GiB read along one stream's path per decoded token (sum over stages of one GPU's read)."""
    dtype_bytes = dtype_bytes or _dtype_bytes(config, None)
    total, first = 0, 0
    reserved = profile_for(plan.vllm_version).weights_reserved
    for w in plan.workers:
        held = stage_weight_bytes(config, tp=plan.tp, pp=plan.pp, stage=w.stage, layers=w.layers, first=first,
                                  dtype_bytes=dtype_bytes, reserved=reserved, dp=plan.dp,
                                  expert_parallel=plan.expert_parallel)
        if moe.is_deepseek(config):
            held = moe.token_read_bytes(config, held=held, stage=w.stage, first=first, layers=w.layers, tp=plan.tp,
                                        dp=plan.dp, expert_parallel=plan.expert_parallel, dtype_bytes=dtype_bytes)
        total, first = total + held, first + w.layers
    return total / GIB


def _options(config: Mapping[str, Any], gpus: int, nodes: int,
             kw: Mapping[str, Any]) -> list[tuple[LayoutOption, GpuPlan]]:
    out = []
    dtype_bytes = _dtype_bytes(config, kw.get("dtype"))
    for tp, pp, dp, ep in _triples(config, gpus, nodes):
        try:
            p = plan_gpu(config, gpus=gpus * nodes, tp=tp, pp=pp, dp=dp, expert_parallel=ep, **kw)
        except ParallelismError:
            continue
        p = replace(p, nodes=nodes)
        out.append((LayoutOption(tp, pp, dp, ep, p.fits, p.weights_gib, p.kv_cache_tokens, p.max_concurrency,
                                 p.total_concurrency, round(token_read_gib(config, p, dtype_bytes), 3)), p))
    return out


NEAR = 0.9
"""Throughput: layouts holding at least this share of the most concurrency count as equals, and the
fastest of them per stream wins (PP 16 holding 3 % more requests than PP 8 x DP 2 is not worth 30 %
slower streams)."""


def _rank(goal: str, option: LayoutOption, most: float) -> tuple:
    if goal == "latency":
        return (not option.fits, round(option.token_read_gib, 2), -option.total_concurrency, option.tp * option.pp)
    near = option.total_concurrency >= NEAR * most
    return (not option.fits, not near, option.token_read_gib if near else -option.total_concurrency)


def compare_layouts(config: Mapping[str, Any], *, goal: str, gpu_memory_gib: float, gpus: int, nodes: int = 1,
                    **options: Any) -> LayoutChoice:
    """Rank every layout over ``nodes`` nodes of ``gpus`` GPUs for ``goal``; ``options`` are ``plan_gpu``'s."""
    if goal not in GOALS:
        raise InvalidOptionError(f"unknown --goal {goal!r}", "use --goal latency (one stream) or --goal throughput "
                                 "(many streams)", option="--goal", value=goal)
    kw = {k: v for k, v in options.items() if k not in {"tp", "pp", "dp", "expert_parallel", "gpus"}}
    kw["gpu_memory_gib"] = gpu_memory_gib
    found = _options(config, gpus, nodes, kw)
    if not found:
        raise ParallelismError(f"no layout of this model spreads evenly over {nodes} node(s) of {gpus} GPUs",
                               "make more GPUs visible, or use fewer nodes")
    most = max((o.total_concurrency for o, _ in found if o.fits), default=0.0)
    found.sort(key=lambda pair: _rank(goal, pair[0], most))
    fastest = min((o.token_read_gib for o, _ in found if o.fits), default=0.0)
    opts = tuple(replace(o, relative_speed=round(fastest / o.token_read_gib, 2) if fastest and o.token_read_gib
                         else 0.0) for o, _ in found)
    best_option, best_plan = found[0]
    needed = nodes if best_option.fits else _nodes_needed(config, gpus, nodes, kw)
    return LayoutChoice(goal, nodes, gpus, opts, best_plan if best_option.fits else None, needed)


def _nodes_needed(config: Mapping[str, Any], gpus: int, nodes: int, kw: Mapping[str, Any]) -> int | None:
    kw = {k: v for k, v in kw.items() if k != "free_memory_gib"}
    for more in range(nodes + 1, MAX_NODES + 1):
        if any(o.fits for o, _ in _options(config, gpus, more, kw)):
            return more
    return None
