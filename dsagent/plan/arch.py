"""Model-side numbers for the planner: weight bytes per GPU and KV bytes per token (pure).

Weights follow how vLLM builds a decoder on each rank: the vocabulary padded to a multiple
of 64 and split over TP ranks, q/o and MLP split over TP, K/V split over TP until there are
fewer KV heads than ranks (then each rank holds a replica of one head), norms replicated, the
rotary cos/sin cache (``max_position_embeddings x rotary_dim`` in the model dtype) on every
rank, embeddings on the first pipeline stage and ``lm_head`` plus the final norm on the last.
When ``*.safetensors`` files are present their headers give the exact bytes.

>>> cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
...        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100}
>>> pp_layer_split(30, 4)
[7, 8, 8, 7]
>>> kv_heads_per_rank(cfg, 4)
1
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import read_safetensors_header
from . import moe

__all__ = [
    "DTYPE_BYTES",
    "head_dim",
    "kv_bytes_per_token",
    "kv_heads_per_rank",
    "pad_vocab",
    "pp_layer_split",
    "stage_weight_bytes",
]

DTYPE_BYTES = {
    "float32": 4, "fp32": 4, "float": 4, "f32": 4,
    "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2, "f16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "float8_e4m3fn": 1, "int8": 1,
}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1,
             "I32": 4, "I64": 8, "I16": 2, "BOOL": 1}
VOCAB_PADDING = 64
_LARGE, _GRANULE = 1 << 20, 2 << 20


def _rounder(reserved: bool):
    """Bytes one tensor takes. ``reserved``: what PyTorch's CUDA caching allocator reserves, sizes
    of 1 MiB and more rounded up to 2 MiB. vLLM 0.26 logs weights that way (a 7B Qwen gets ~0.1 GiB
    more than its parameters: its 3584-wide matrices are not 2 MiB multiples); 0.8 logged bytes."""
    if not reserved:
        return lambda nbytes: nbytes
    return lambda nbytes: nbytes if nbytes < _LARGE else -(-nbytes // _GRANULE) * _GRANULE


def head_dim(config: Mapping[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def kv_heads(config: Mapping[str, Any]) -> int:
    return int(config.get("num_key_value_heads") or config["num_attention_heads"])


def kv_heads_per_rank(config: Mapping[str, Any], tp: int) -> int:
    """KV heads one TP rank stores; at least 1 (heads are replicated when TP > KV heads)."""
    return max(1, kv_heads(config) // tp)


def pad_vocab(vocab: int, tp: int = 1) -> int:
    """Vocabulary rows one TP rank holds: padded to a multiple of 64, then split evenly."""
    padded = -(-vocab // VOCAB_PADDING) * VOCAB_PADDING
    return -(-padded // tp)


def pp_layer_split(layers: int, pp: int, partition: Sequence[int] | None = None) -> list[int]:
    """Layers per pipeline stage as vLLM's ``get_pp_indices`` assigns them.

    Each stage gets ``layers // pp``; the remainder goes one each to stages pp-2, pp-3, ...
    (the last stage, which also holds lm_head, gets none extra). ``partition`` mirrors
    ``VLLM_PP_LAYER_PARTITION``.
    """
    if partition:
        if len(partition) != pp or sum(partition) != layers:
            raise ValueError(f"layer partition {list(partition)} must have {pp} parts summing to {layers}")
        return list(partition)
    split = [layers // pp] * pp
    for i in range(layers % pp):
        split[(pp - 2 - i) % pp] += 1
    return split


def kv_bytes_per_token(config: Mapping[str, Any], tp: int, layers: int, kv_dtype_bytes: int) -> int:
    """KV-cache bytes per token on one GPU holding ``layers`` layers.

    MLA (DeepSeek-V2/V3/R1): vLLM's ``MLAAttentionSpec`` caches one latent "head" of
    ``kv_lora_rank + qk_rope_head_dim`` elements (576) per layer, no K/V pair, no padding, and
    every TP rank holds the whole latent cache (it is not split by TP)."""
    if config.get("kv_lora_rank"):
        width = int(config["kv_lora_rank"]) + int(config.get("qk_rope_head_dim", 64))
        return layers * width * kv_dtype_bytes
    return 2 * layers * kv_heads_per_rank(config, tp) * head_dim(config) * kv_dtype_bytes


def _is_fp8(config: Mapping[str, Any]) -> bool:
    q = config.get("quantization_config") or {}
    return str(q.get("quant_method", "")).lower() in {"fp8", "fbgemm_fp8", "compressed-tensors"} and \
        "8" in json.dumps(q)


def _rope_cache_elems(config: Mapping[str, Any]) -> int:
    positions = int(config.get("max_position_embeddings") or 2048)
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type") or ""
    if kind in {"yarn", "dynamic", "linear"} and scaling.get("factor"):
        positions = int(positions * float(scaling["factor"])) if kind != "yarn" else \
            int(int(scaling.get("original_max_position_embeddings", positions)) * float(scaling["factor"]))
    rotary = int(head_dim(config) * float(config.get("partial_rotary_factor", 1.0)))
    return positions * rotary


def stage_weight_bytes(
    config: Mapping[str, Any], *, tp: int, pp: int, stage: int, layers: int, dtype_bytes: int,
    reserved: bool = False, first: int | None = None, dp: int = 1, expert_parallel: bool = False,
) -> int:
    """Weight bytes on one TP rank of pipeline ``stage`` holding ``layers`` decoder layers
    (``reserved``: as the CUDA caching allocator reserves them, see ``_rounder``). ``first``: the
    stage's first layer (default: as ``pp_layer_split``); ``dp``/``expert_parallel`` matter for
    DeepSeek MoE models only (``dsagent.plan.moe``)."""
    _alloc = _rounder(reserved)
    if moe.is_deepseek(config):
        if first is None:
            first = sum(pp_layer_split(int(config["num_hidden_layers"]), pp)[:stage])
        return moe.stage_bytes(config, tp=tp, pp=pp, stage=stage, first=first, layers=layers,
                               dtype_bytes=dtype_bytes, alloc=_alloc, dp=dp, expert_parallel=expert_parallel)
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    heads, hd = int(config["num_attention_heads"]), head_dim(config)
    kvr = kv_heads_per_rank(config, tp)
    qkv_bias = bool(config.get("attention_bias")) or str(config.get("model_type")) == "qwen2"
    fp8 = _is_fp8(config)
    lin = 1 if fp8 else dtype_bytes
    q_out, kv_out, inter_r = heads // tp * hd, kvr * hd, -(-inter // tp)
    # vLLM's fused tensors: qkv_proj, o_proj, gate_up_proj, down_proj
    per_layer = (_alloc(hidden * (q_out + 2 * kv_out) * lin) + _alloc(q_out * hidden * lin)
                 + _alloc(2 * inter_r * hidden * lin) + _alloc(inter_r * hidden * lin) + 2 * hidden * dtype_bytes)
    if qkv_bias:
        per_layer += (q_out + 2 * kv_out) * dtype_bytes
    if fp8:  # fp8 per-channel scales (fp32), one per output row of each linear
        per_layer += (q_out + 2 * kv_out + hidden + 2 * (-(-inter // tp)) + hidden) * 4
    total = layers * per_layer + _alloc(_rope_cache_elems(config) * dtype_bytes)
    vocab_rows = pad_vocab(int(config["vocab_size"]), tp)
    tied = bool(config.get("tie_word_embeddings"))
    if stage == 0:
        total += _alloc(vocab_rows * hidden * dtype_bytes)
    if stage == pp - 1:
        total += hidden * dtype_bytes
        if not tied or pp > 1:
            total += _alloc(vocab_rows * hidden * dtype_bytes)
    return total


def safetensors_stage_bytes(
    directory: str | Path, config: Mapping[str, Any], *, tp: int, split: Sequence[int], dtype_bytes: int,
    dp: int = 1, expert_parallel: bool = False, pp: int | None = None,
) -> list[int] | None:
    """Exact weight bytes per TP rank of each stage from the safetensors headers, or None.

    (Long: one branch per kind of tensor.) Layers at or past ``num_hidden_layers`` (DeepSeek's MTP
    layer) are skipped, as vLLM's loader skips them without speculative decoding."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    pp = len(split)
    starts = [sum(split[:i]) for i in range(pp)]
    vocab = int(config["vocab_size"])
    kv = kv_heads(config)
    deepseek, layers = moe.is_deepseek(config), int(config["num_hidden_layers"])
    out = [0] * pp
    for file in files:
        for name, meta in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in meta["shape"]:
                numel *= int(d)
            nbytes = numel * _ST_BYTES.get(meta["dtype"], 2)
            if meta["dtype"] in {"F32", "F16", "BF16"} and "scale" not in name:
                nbytes = numel * dtype_bytes  # vLLM casts to the serving dtype
            if "embed_tokens" in name or "lm_head" in name:
                share = nbytes * pad_vocab(vocab, tp) // vocab
                targets = [0] if "embed_tokens" in name else [pp - 1]
                if "embed_tokens" in name and config.get("tie_word_embeddings") and pp > 1:
                    targets.append(pp - 1)
                for t in targets:
                    out[t] += share
                continue
            if ".layers." in name:
                idx = int(name.split(".layers.")[1].split(".")[0])
                if idx >= layers:
                    continue
                stage = max(i for i in range(pp) if starts[i] <= idx)
            else:
                stage = pp - 1
            if deepseek:
                share = moe.tensor_share(config, name, nbytes, tp=tp, dp=dp, expert_parallel=expert_parallel)
            elif any(k in name for k in ("k_proj", "v_proj")):
                share = nbytes * kv_heads_per_rank(config, tp) // kv
            elif any(k in name for k in ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) \
                    and not name.endswith("scale"):
                share = nbytes // tp
            else:
                share = nbytes
            out[stage] += share
    if deepseek:
        copy = moe.dequant_copy_bytes(config, tp, dtype_bytes)
        return [b + moe.rope_bytes(config, dtype_bytes) + copy * n for b, n in zip(out, split)]
    rope = _rope_cache_elems(config) * dtype_bytes
    return [b + rope for b in out]
