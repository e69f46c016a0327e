"""Weights of DeepSeek-V2/V3/R1 (MLA attention, routed + shared experts, FP8 block scales) per GPU (pure).

Follows vLLM's ``deepseek_v2.py`` (``DeepseekV2MLAAttention``, ``DeepseekV2MoE``) and its FP8
method, per rank:

- **MLA**: ``fused_qkv_a_proj`` (``q_a_proj`` + ``kv_a_proj_with_mqa``, hidden x (q_lora + kv_lora
  + rope)) is replicated on every TP rank; ``q_b_proj`` (or ``q_proj`` when ``q_lora_rank`` is
  null, V2-Lite), ``kv_b_proj`` and ``o_proj`` are split by heads; ``q_a``/``kv_a`` layernorms.
  With an FP8 checkpoint the MLA backend keeps a dequantised 16-bit copy of ``kv_b_proj``
  (``W_UK_T``/``W_UV``, ``process_weights_after_loading``): ``kv_lora x heads/tp x (nope + v)``.
- **MoE layers** (``layer >= first_k_dense_replace`` and ``layer % moe_layer_freq == 0``): the
  router (``hidden x n_routed`` in the model dtype, never quantised, plus an fp32
  ``e_score_correction_bias`` for ``noaux_tc``), ``n_shared_experts`` as one MLP of
  ``moe_intermediate_size x n_shared`` split over TP, and ``FusedMoE``: without expert parallelism
  every rank holds all experts with the intermediate split over ``tp x dp``; with
  ``--enable-expert-parallel`` (EP size ``tp x dp``) each rank holds ``n_routed / ep`` whole experts
  (the first ``n_routed % ep`` ranks one more).
- **FP8 block quantisation** (``weight_block_size [128, 128]``): 1-byte weights plus one fp32
  ``weight_scale_inv`` per 128 x 128 block of each rank's slice.
- **MTP**: ``num_nextn_predict_layers`` (layer 61 of V3) is skipped by the main model's loader;
  vLLM loads it only with speculative decoding (``DeepSeekMTP``), so it is not counted.

>>> v3 = {"hidden_size": 7168, "n_routed_experts": 256, "moe_intermediate_size": 2048,
...       "first_k_dense_replace": 3, "moe_layer_freq": 1}
>>> is_moe_layer(v3, 2), is_moe_layer(v3, 3)
(False, True)
>>> local_experts(256, ep=16, rank=0), local_experts(64, ep=3, rank=0), local_experts(64, ep=3, rank=2)
(16, 22, 21)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ParallelismError

__all__ = ["block_quant", "check_parallel", "is_deepseek", "is_moe_layer", "local_experts", "moe_forward_bytes",
           "routed_bytes", "stage_bytes", "tensor_share", "token_read_bytes"]

Alloc = Callable[[int], int]


def is_deepseek(config: Mapping[str, Any]) -> bool:
    """MLA attention or DeepSeek-style routed experts (``kv_lora_rank`` / ``n_routed_experts``)."""
    return bool(config.get("kv_lora_rank") or config.get("n_routed_experts"))


def block_quant(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(block_n, block_k)`` of an FP8 block-quantised checkpoint, else None."""
    q = config.get("quantization_config") or {}
    block = q.get("weight_block_size")
    if str(q.get("quant_method", "")).lower() == "fp8" and block:
        return int(block[0]), int(block[1])
    return None


def _fp8(config: Mapping[str, Any]) -> bool:
    q = config.get("quantization_config") or {}
    return str(q.get("quant_method", "")).lower() in {"fp8", "fbgemm_fp8"}


def is_moe_layer(config: Mapping[str, Any], index: int) -> bool:
    """vLLM's rule: routed experts from ``first_k_dense_replace`` on, every ``moe_layer_freq``-th layer."""
    if not config.get("n_routed_experts"):
        return False
    return index >= int(config.get("first_k_dense_replace") or 0) and index % int(config.get("moe_layer_freq") or 1) == 0


def local_experts(experts: int, *, ep: int, rank: int = 0) -> int:
    """Experts one EP rank holds (``determine_expert_map``: the first ``experts % ep`` ranks get one more)."""
    return experts // ep + (1 if rank < experts % ep else 0)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _Linear:
    """Bytes of one rank's slice of a linear layer: weight in the checkpoint's format plus scales."""

    def __init__(self, config: Mapping[str, Any], dtype_bytes: int, alloc: Alloc):
        self.fp8, self.block, self.d, self.alloc = _fp8(config), block_quant(config), dtype_bytes, alloc

    def __call__(self, out: int, inn: int, experts: int = 1) -> int:
        weight = self.alloc(experts * out * inn * (1 if self.fp8 else self.d))
        if self.block:
            bn, bk = self.block
            return weight + self.alloc(experts * _cdiv(out, bn) * _cdiv(inn, bk) * 4)
        return weight + (experts * out * 4 if self.fp8 else 0)  # per-channel fp32 scales


def mla_layer_bytes(config: Mapping[str, Any], tp: int, dtype_bytes: int, alloc: Alloc) -> int:
    """One MLA attention block on one TP rank (norms included, see the module docstring)."""
    lin = _Linear(config, dtype_bytes, alloc)
    h, heads = int(config["hidden_size"]), int(config["num_attention_heads"]) // tp
    kv_lora, rope = int(config["kv_lora_rank"]), int(config.get("qk_rope_head_dim", 64))
    nope, v = int(config.get("qk_nope_head_dim", 128)), int(config.get("v_head_dim", 128))
    q_lora = config.get("q_lora_rank")
    if q_lora:
        q_lora = int(q_lora)
        total = lin(q_lora + kv_lora + rope, h) + q_lora * dtype_bytes + lin(heads * (nope + rope), q_lora)
    else:
        total = lin(heads * (nope + rope), h) + lin(kv_lora + rope, h)
    total += kv_lora * dtype_bytes + lin(heads * (nope + v), kv_lora) + lin(h, heads * v)
    return total + alloc(dequant_copy_bytes(config, tp, dtype_bytes))


def _mha(lin: _Linear, config: Mapping[str, Any], tp: int) -> int:
    """DeepSeek-V1-style MoE models keep plain multi-head attention (qkv split over TP)."""
    h, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    hd, kv = h // heads, int(config.get("num_key_value_heads") or heads)
    return lin((heads // tp + 2 * max(1, kv // tp)) * hd, h) + lin(h, heads // tp * hd)


def _mlp(lin: _Linear, hidden: int, inter: int) -> int:
    return lin(2 * inter, hidden) + lin(hidden, inter)


def moe_bytes(config: Mapping[str, Any], *, tp: int, moe_ranks: int, expert_parallel: bool, dtype_bytes: int,
              alloc: Alloc) -> int:
    """One MoE block on one rank: router, shared experts (split over TP), this rank's routed experts."""
    lin = _Linear(config, dtype_bytes, alloc)
    h, experts = int(config["hidden_size"]), int(config["n_routed_experts"])
    inter = int(config["moe_intermediate_size"])
    total = alloc(experts * h * dtype_bytes)
    if config.get("topk_method") == "noaux_tc":
        total += experts * 4
    shared = int(config.get("n_shared_experts") or 0)
    if shared:
        total += _mlp(lin, h, _cdiv(inter * shared, tp))
    return total + routed_bytes(config, moe_ranks=moe_ranks, expert_parallel=expert_parallel,
                                dtype_bytes=dtype_bytes, alloc=alloc)


def routed_bytes(config: Mapping[str, Any], *, moe_ranks: int, expert_parallel: bool, dtype_bytes: int,
                 alloc: Alloc = int, experts: int | None = None) -> int:
    """This rank's routed experts of one MoE layer (``experts``: only that many of them, e.g. the
    ones one decoded token activates)."""
    lin = _Linear(config, dtype_bytes, alloc)
    h, total = int(config["hidden_size"]), int(config["n_routed_experts"])
    inter = int(config["moe_intermediate_size"])
    if expert_parallel and moe_ranks > 1:
        local, inter_r = local_experts(total, ep=moe_ranks), inter
    else:
        local, inter_r = total, _cdiv(inter, moe_ranks)
    n = local if experts is None else min(experts, local)
    return lin(2 * inter_r, h, experts=n) + lin(h, inter_r, experts=n)


def token_read_bytes(config: Mapping[str, Any], *, held: int, stage: int, first: int, layers: int, tp: int,
                     dp: int, expert_parallel: bool, dtype_bytes: int) -> int:
    """Bytes one GPU of ``stage`` reads to decode one token of one stream: what it holds, minus the
    embedding table (one row is read) and, in MoE layers, the routed experts the token does not use
    (``top_k`` of them split over TP; with EP the busiest rank runs ``ceil(top_k / ep)`` whole ones)."""
    unused = int(config["vocab_size"]) // tp * int(config["hidden_size"]) * dtype_bytes if stage == 0 else 0
    moe_layers = sum(1 for i in range(first, first + layers) if is_moe_layer(config, i))
    if moe_layers:
        ranks, topk = tp * dp, int(config.get("num_experts_per_tok") or 1)
        used = _cdiv(topk, ranks) if expert_parallel and ranks > 1 else topk
        kw = {"moe_ranks": ranks, "expert_parallel": expert_parallel, "dtype_bytes": dtype_bytes}
        unused += moe_layers * (routed_bytes(config, **kw) - routed_bytes(config, experts=used, **kw))
    return max(0, held - unused)


def rope_bytes(config: Mapping[str, Any], dtype_bytes: int) -> int:
    """DeepSeek YaRN cos/sin cache: ``original_max_position x factor`` rows of ``qk_rope_head_dim``."""
    scaling = config.get("rope_scaling") or {}
    positions = int(config.get("max_position_embeddings") or 4096)
    if scaling.get("factor"):
        positions = int(int(scaling.get("original_max_position_embeddings", positions)) * float(scaling["factor"]))
    return positions * int(config.get("qk_rope_head_dim", 64)) * dtype_bytes


def stage_bytes(config: Mapping[str, Any], *, tp: int, pp: int, stage: int, first: int, layers: int,
                dtype_bytes: int, alloc: Alloc, dp: int = 1, expert_parallel: bool = False) -> int:
    """Weight bytes on one rank of pipeline ``stage`` holding layers ``first .. first + layers - 1``."""
    lin = _Linear(config, dtype_bytes, alloc)
    h = int(config["hidden_size"])
    vocab = _cdiv(_cdiv(int(config["vocab_size"]), 64) * 64, tp)
    dense_mlp = _mlp(lin, h, _cdiv(int(config["intermediate_size"]), tp))
    total = alloc(rope_bytes(config, dtype_bytes))
    attn = mla_layer_bytes(config, tp, dtype_bytes, alloc) if config.get("kv_lora_rank") else _mha(lin, config, tp)
    moe = moe_bytes(config, tp=tp, moe_ranks=tp * dp, expert_parallel=expert_parallel, dtype_bytes=dtype_bytes,
                    alloc=alloc) if config.get("n_routed_experts") else 0
    for index in range(first, first + layers):
        total += attn + 2 * h * dtype_bytes + (moe if is_moe_layer(config, index) else dense_mlp)
    if stage == 0:
        total += alloc(vocab * h * dtype_bytes)
    if stage == pp - 1:
        total += h * dtype_bytes + alloc(vocab * h * dtype_bytes)
    return total


def tensor_share(config: Mapping[str, Any], name: str, nbytes: int, *, tp: int, dp: int = 1,
                 expert_parallel: bool = False) -> int:
    """One rank's bytes of the checkpoint tensor ``name`` (DeepSeek naming; scales split like weights)."""
    moe_ranks = tp * dp
    if ".mlp.experts." in name:
        if expert_parallel and moe_ranks > 1:
            expert = int(name.split(".mlp.experts.")[1].split(".")[0])
            return nbytes if expert < local_experts(int(config["n_routed_experts"]), ep=moe_ranks) else 0
        return nbytes // moe_ranks
    if any(k in name for k in ("q_b_proj", "kv_b_proj", "o_proj", ".q_proj", "gate_proj", "up_proj", "down_proj")):
        return nbytes // tp
    return nbytes


def dequant_copy_bytes(config: Mapping[str, Any], tp: int, dtype_bytes: int) -> int:
    """Per MLA layer: the 16-bit ``kv_b_proj`` copy the MLA backend makes of an FP8 checkpoint."""
    if not (_fp8(config) and config.get("kv_lora_rank")):
        return 0
    heads = int(config["num_attention_heads"]) // tp
    return int(config["kv_lora_rank"]) * heads * (int(config.get("qk_nope_head_dim", 128))
                                                  + int(config.get("v_head_dim", 128))) * dtype_bytes


def check_parallel(config: Mapping[str, Any], *, tp: int, dp: int, expert_parallel: bool) -> None:
    """Refuse what vLLM's FP8 block method refuses: a TP slice that is not a whole number of blocks."""
    block = block_quant(config)
    if not block or not config.get("n_routed_experts"):
        return
    moe_tp = 1 if expert_parallel else tp * dp
    inter = int(config["moe_intermediate_size"])
    if inter % moe_tp or (inter // moe_tp) % block[0]:
        good = [t for t in (1, 2, 4, 8, 16, 32, 64) if inter % t == 0 and (inter // t) % block[0] == 0]
        raise ParallelismError(
            f"the experts' intermediate size {inter} split over {moe_tp} ranks is not a multiple of the FP8 "
            f"block size {block[0]} (vLLM refuses this layout)",
            f"use --enable-expert-parallel (whole experts per GPU), or tp x dp in {good}", tp=tp)


def moe_forward_bytes(config: Mapping[str, Any], *, tokens: int, moe_ranks: int, expert_parallel: bool,
                      dtype_bytes: int) -> int:
    """Peak of one fused-MoE call in the profile run: hidden states, the ``tokens x top_k`` workspaces
    (gate/up output, or the down-projection output, whichever is wider; and the activated half)."""
    if not config.get("n_routed_experts"):
        return 0
    h, topk = int(config["hidden_size"]), int(config.get("num_experts_per_tok") or 1)
    inter = int(config["moe_intermediate_size"])
    inter_r = inter if expert_parallel and moe_ranks > 1 else _cdiv(inter, moe_ranks)
    return tokens * (2 * h + topk * (max(2 * inter_r, h) + inter_r)) * dtype_bytes
