"""The planner on DeepSeek-V2/V3/R1: MLA KV cache, routed + shared experts, FP8 block scales, EP, MTP."""

from __future__ import annotations

import json
import struct

import pytest

from dsagent.errors import ParallelismError
from dsagent.plan.arch import kv_bytes_per_token, stage_weight_bytes
from dsagent.plan.budget import GIB, plan_gpu
from dsagent.plan.catalog import resolve
from dsagent.plan.estimate import estimate

pytestmark = pytest.mark.timeout(30)

V3 = dict(resolve("deepseek-r1").config)
LITE = dict(resolve("deepseek-v2-lite-chat").config)


def test_catalog_entries_are_the_real_configs():
    for name in ("deepseek-v3", "deepseek-r1", "deepseek-r1-0528"):
        cfg = resolve(name).config
        assert (cfg["n_routed_experts"], cfg["first_k_dense_replace"], cfg["kv_lora_rank"]) == (256, 3, 512)
        assert cfg["quantization_config"]["weight_block_size"] == [128, 128]
    assert resolve("deepseek-ai/DeepSeek-R1-0528").name == "deepseek-r1-0528"
    assert resolve("DeepSeek-V2-Lite-Chat").config["q_lora_rank"] is None


def test_v2_lite_weights_by_hand():
    """bf16, TP1, elements per part (vLLM's modules):
    MLA layer: q_proj 2048x(16x192) 6,291,456 + kv_a_proj_with_mqa 2048x576 1,179,648 + kv_a_layernorm 512
    + kv_b_proj 512x(16x256) 2,097,152 + o_proj (16x128)x2048 4,194,304 = 13,763,072; + 2 norms 4,096.
    Layer 0 dense MLP 3x2048x10944 = 67,239,936. Layers 1-26 MoE: gate 64x2048 131,072 + shared experts
    3x2048x2816 17,301,504 + 64 experts x 3x2048x1408 553,648,128 = 571,080,704.
    embed + lm_head 2x102400x2048 = 419,430,400; final norm 2,048; YaRN cache 4096x40 x 64 = 10,485,760.
    Sum 15,716,969,984 elements (the 15.7B of the model card) x 2 bytes."""
    elements = 27 * (13_763_072 + 4_096) + 67_239_936 + 26 * 571_080_704 + 419_430_400 + 2_048 + 10_485_760
    assert elements == 15_716_969_984
    assert stage_weight_bytes(LITE, tp=1, pp=1, stage=0, layers=27, dtype_bytes=2) == 2 * elements


def test_v3_is_671b_parameters_and_about_628_gib_in_fp8():
    """Without its quantization_config the V3 config counts 671.0e9 parameters (the MTP layer's
    14B excluded: vLLM loads it only for speculative decoding). The FP8 checkpoint: 1 byte per
    linear weight + an fp32 scale per 128x128 block, bf16 embeddings/norms/router: 675 GB (628.8 GiB),
    inside the 642-690 GB public range (688 GB on the hub with the MTP layer)."""
    bf16 = {k: v for k, v in V3.items() if k != "quantization_config"}
    params = stage_weight_bytes(bf16, tp=1, pp=1, stage=0, layers=61, dtype_bytes=2) / 2
    assert params == pytest.approx(671.0e9, rel=0.001)
    fp8 = stage_weight_bytes(V3, tp=1, pp=1, stage=0, layers=61, dtype_bytes=2)
    assert 642e9 < fp8 < 690e9 and fp8 / GIB == pytest.approx(628.85, abs=0.05)


def test_v3_moe_layer_at_tp8_by_hand():
    """One MoE layer minus one dense layer on a TP8 rank isolates the MoE block:
    router 256x7168x2 = 3,670,016 + e_score_correction_bias 256x4 = 1,024;
    shared experts (2048/8 = 256): gate_up 512x7168 fp8 + 4x56 scales x4, down 7168x256 + 56x2 x4;
    routed: 256 experts x (512x7168 + 4x56x4 + 7168x256 + 56x2x4) bytes.
    Dense MLP (18432/8 = 2304): gate_up 4608x7168 + 36x56x4, down 7168x2304 + 56x18x4."""
    expert = 512 * 7168 + 4 * 56 * 4 + 7168 * 256 + 56 * 2 * 4
    moe = 3_670_016 + 1_024 + expert + 256 * expert
    dense = 4608 * 7168 + 36 * 56 * 4 + 7168 * 2304 + 56 * 18 * 4
    a = stage_weight_bytes(V3, tp=8, pp=1, stage=0, layers=4, dtype_bytes=2)  # layers 0-2 dense, 3 MoE
    b = stage_weight_bytes(V3, tp=8, pp=1, stage=0, layers=3, dtype_bytes=2)
    c = stage_weight_bytes(V3, tp=8, pp=1, stage=0, layers=2, dtype_bytes=2)
    assert (a - b) - (b - c) == moe - dense


def test_expert_parallel_holds_whole_experts_on_fewer_ranks():
    """EP 8: 32 whole experts per rank instead of 256 experts x 1/8 intermediate: same routed bytes
    except the block scales' rounding; the router and shared experts are unchanged."""
    tp = stage_weight_bytes(V3, tp=8, pp=1, stage=0, layers=61, dtype_bytes=2)
    ep = stage_weight_bytes(V3, tp=8, pp=1, stage=0, layers=61, dtype_bytes=2, expert_parallel=True)
    assert ep == pytest.approx(tp, rel=0.001)
    # DP 2 x TP 4 with EP: the experts spread over 8 ranks, attention only over 4
    dp = stage_weight_bytes(V3, tp=4, pp=1, stage=0, layers=61, dtype_bytes=2, dp=2, expert_parallel=True)
    tp4 = stage_weight_bytes(V3, tp=4, pp=1, stage=0, layers=61, dtype_bytes=2)
    assert tp < dp < tp4


def test_mla_kv_is_576_elements_per_layer_and_not_split_by_tp():
    assert kv_bytes_per_token(V3, 1, 61, 2) == kv_bytes_per_token(V3, 8, 61, 2) == 61 * 576 * 2
    one = plan_gpu(LITE, gpu_memory_gib=79.18, tp=1, gpus=2, max_model_len=8192, vllm_version="0.19.0")
    two = plan_gpu(LITE, gpu_memory_gib=79.18, tp=2, gpus=2, max_model_len=8192, vllm_version="0.19.0")
    w = two.workers[0]
    assert two.block_size == 64  # FlashMLA, the CUDA default for MLA, forces blocks of 64
    assert two.kv_cache_tokens == int(w.kv_cache_gib * GIB // (27 * 576 * 2 * 64)) * 64
    # the cache is replicated: halving the weights per GPU does not double the tokens
    assert two.kv_cache_tokens < 1.5 * one.kv_cache_tokens


def test_fp8_block_split_that_vllm_refuses():
    with pytest.raises(ParallelismError, match="--enable-expert-parallel"):
        plan_gpu(V3, gpu_memory_gib=79.18, tp=32, gpus=32, vllm_version="0.19.0")
    plan_gpu(V3, gpu_memory_gib=79.18, tp=32, gpus=32, vllm_version="0.19.0", expert_parallel=True)


def test_r1_on_two_nodes_of_8_h100_fits_but_not_one():
    """628.8 GiB of weights: one node of 8 x 80 GB holds 8 x 71.3 GiB = 570 GiB (no); two do."""
    one = estimate("deepseek-r1", gpu_memory_gib=79.18, gpus=8, max_model_len=32768, vllm_version="0.19.0")
    assert not one.fits and any("--nodes 2" in s for s in one.suggestions)
    two = estimate("deepseek-r1", gpu_memory_gib=79.18, gpus=8, nodes=2, tp=8, pp=2, max_model_len=32768,
                   vllm_version="0.19.0")
    assert two.fits and two.nodes == 2 and len(two.workers) == 2
    assert 35 < two.weights_gib < 45 and two.kv_cache_tokens > 32768


def test_safetensors_headers_skip_mtp_and_split_experts(tmp_path):
    """Exact bytes from headers: the MTP layer (index num_hidden_layers) is skipped, expert tensors
    go whole to their EP rank (experts 0-1 of 4 on rank 0 at EP 2) or 1/TP to every rank."""
    cfg = dict(LITE, num_hidden_layers=2, n_routed_experts=4, first_k_dense_replace=1)
    t = {"dtype": "BF16", "shape": [8, 16], "data_offsets": [0, 1]}
    header = {f"model.layers.1.mlp.experts.{e}.down_proj.weight": t for e in range(4)}
    header["model.layers.2.mlp.experts.0.down_proj.weight"] = t  # MTP layer
    header["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"] = t  # replicated
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    rope = 4096 * 40 * 64 * 2
    ep = plan_gpu(cfg, gpu_memory_gib=80, tp=2, gpus=2, model_dir=tmp_path, expert_parallel=True)
    tp = plan_gpu(cfg, gpu_memory_gib=80, tp=2, gpus=2, model_dir=tmp_path)
    assert round(ep.workers[0].weights_gib * GIB) == 2 * 256 + 256 + rope
    assert round(tp.workers[0].weights_gib * GIB) == 4 * 128 + 256 + rope


@pytest.mark.parametrize("ep", [False, True])
def test_v3_on_026_uses_model_runner_v1_accounting(ep):
    """DeepSeek-V3 cut to 6 layers, TP2 on 2 x H200, vLLM 0.26.0 (docs/gpu-rehearsal-deepseek.json): V1 runner,
    logged 18.79 GiB weights, 5.43 activation, 0.15 non-torch, 2.18 CUDA-graph estimate, 102.07 KV, 15,856,192
    tokens (15,853,168 with EP). V2-Lite stays on the V2 runner: no CUDA graphs in the budget."""
    cut = {**dict(resolve("deepseek-v3").config), "num_hidden_layers": 6}
    p = plan_gpu(cut, gpu_memory_gib=139.8007, tp=2, gpus=2, max_model_len=8192, vllm_version="0.26.0",
                 expert_parallel=ep)
    w = p.workers[0]
    assert abs(w.activation_gib - 5.43) < 0.05 and abs(w.non_torch_gib - 0.15) < 0.01
    assert abs(w.cuda_graph_gib - 2.18) < 0.05
    assert abs(w.requested_gib - w.weights_gib - w.activation_gib - w.non_torch_gib - w.cuda_graph_gib
               - w.kv_cache_gib) < 1e-6
    assert abs(p.kv_cache_tokens / 15_856_192 - 1) < 0.005
    lite = plan_gpu(LITE, gpu_memory_gib=139.8007, tp=1, gpus=1, max_model_len=8192, vllm_version="0.26.0")
    w = lite.workers[0]
    assert abs(w.requested_gib - w.weights_gib - w.activation_gib - w.non_torch_gib - w.kv_cache_gib) < 1e-6
    assert abs(lite.kv_cache_tokens / 3_381_536 - 1) < 0.01
