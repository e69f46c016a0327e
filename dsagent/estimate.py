"""Memory planning before anything is downloaded (pure: no torch, no vllm, no I/O).

This first version holds the two checks that ``serve`` needs; the full GPU planner
(issue 3) extends it with the same signatures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import DoesNotFitError, ParallelismError

__all__ = ["CpuPlan", "check_layout", "plan_cpu"]

GIB = 1024**3


def _head_dim(config: Mapping[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def check_layout(config: Mapping[str, Any], tp: int = 1, pp: int = 1, gpus: int | None = None) -> None:
    """Refuse a TP/PP layout the way vLLM would, before launch.

    >>> check_layout({"num_attention_heads": 9, "num_hidden_layers": 30}, tp=3)
    """
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    if tp < 1 or pp < 1:
        raise ParallelismError(f"--tp {tp} --pp {pp}: both must be at least 1", "use --tp 1 --pp 1 for one device")
    if heads % tp:
        ok = [t for t in range(1, heads + 1) if heads % t == 0]
        raise ParallelismError(
            f"tensor parallel size {tp} does not divide the model's {heads} attention heads "
            "(vLLM refuses this layout)",
            f"use --tp in {ok}, or keep --tp 1 and spread layers with --pp",
            tp=tp,
            heads=heads,
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
    kv_bytes_per_element: int = 2,
) -> CpuPlan:
    """Size the CPU KV cache: enough for 8 full-length requests, at most a quarter of free RAM."""
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    vocab, inter = int(config["vocab_size"]), int(config["intermediate_size"])
    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = _head_dim(config)
    q = int(config["num_attention_heads"]) * head_dim
    per_layer = hidden * q * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * inter + 2 * hidden
    embeds = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    weights = (layers * per_layer + embeds + hidden) * weight_bytes_per_param
    per_token = 2 * layers * kv_heads * head_dim * kv_bytes_per_element
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
    tokens = kv_cache_gib * GIB // per_token
    return CpuPlan(
        weights_gib=weights / GIB,
        kv_cache_gib=int(kv_cache_gib),
        kv_cache_tokens=int(tokens),
        max_concurrency=tokens / max_model_len,
        ram_available_gib=ram_available_bytes / GIB,
    )
