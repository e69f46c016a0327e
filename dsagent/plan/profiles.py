"""What each vLLM release spends besides weights and KV cache, per GPU (pure).

vLLM measures these at start; we predict them from the mechanism, with constants fitted to the
public measurements in ``docs/estimate.md``:

- activation (``torch_peak_increase``): the profile run. A forward pass over
  ``max_num_batched_tokens`` tokens (hidden states plus the MLP's gate/up and activated outputs),
  and on the last pipeline stage the sampler warm-up over ``max_num_seqs`` fp32 logit rows
  (``k`` copies of ``max_num_seqs x vocab x 4`` bytes), whichever is larger, plus a fixed base.
- non-torch: cuBLAS workspaces at TP=1; NCCL and custom all-reduce buffers at TP>=2.
- CUDA graphs: captured after the KV cache; from v0.21 an estimate is subtracted up front.
- Model runner (v0.26+): V2 for dense models and a few MoE architectures, V1 for other MoE models
  (DeepSeek-V3/R1); the two account differently (``runner_profile``).

>>> profile_for("0.19.0").engine
'v1'
>>> profile_for("0.6.4").engine
'v0'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CALIBRATED", "DEFAULT_VERSION", "VllmProfile", "batch_defaults", "cudagraph_budget_bytes", "parse_version",
           "profile_for", "uses_v1_runner"]

GIB = 1024**3
# Releases whose measurements fitted or checked the constants (docs/estimate.md), oldest first.
CALIBRATED = ("0.6.4", "0.8.1", "0.8.4", "0.11.0", "0.19.0", "0.26.0")
DEFAULT_VERSION = CALIBRATED[-1]  # none named: the newest release the estimate is calibrated for


def parse_version(text: str) -> tuple[int, int, int]:
    """``"v0.11.2rc1"`` -> ``(0, 11, 2)``."""
    nums = [int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3]]
    if not nums:
        raise ValueError(f"cannot read a vLLM version from {text!r}")
    return tuple((nums + [0, 0, 0])[:3])  # type: ignore[return-value]


@dataclass(frozen=True)
class VllmProfile:
    """Constants of one range of vLLM releases (GiB unless named otherwise)."""

    version: tuple[int, int, int]
    engine: str                 # "v0" or "v1"
    activation_base_gib: float  # persistent buffers, workspaces of the profile run
    sampler_copies: float       # fp32 max_num_seqs x vocab tensors alive at the sampler peak
    non_torch_tp1_gib: float
    non_torch_tp_gib: float     # at TP >= 2 (NCCL + custom all-reduce)
    non_torch_per_rank_gib: float
    non_torch_pp_only_gib: float
    cudagraph_in_budget: bool   # v0.21+: the CUDA-graph estimate is subtracted from the KV budget
    default_utilization: float
    block_size: int = 16
    sampler_model_dtype: bool = False  # v0.26+: the sampler peak scales with logits in the model dtype
    weights_reserved: bool = False     # v0.26+: weights logged as reserved memory (2 MiB granules)
    graphs_by_capture: bool = False    # CUDA-graph estimate from the captured sizes x hidden, not the layers


# V0 (before 0.8). The profile run's sampler over 256 dummy sequences peaks at ~6.35 fp32
# copies of 256 x vocab logits: 1.40 GiB at 2048 tokens for R1-Distill-Qwen-7B on a V100 (0.7),
# 1.26 GiB for Llama-3-8B at TP 1 and TP 2 alike (H100), so not the TP-split MLP. Non-torch memory:
# 0.01-0.11 GiB at TP 1 in released V0 builds on V100/T4/4090 (0.6.6-0.8.5); the Dec 2024 dev
# build of vLLM PR #10511 logged 1.79 at TP 1 and 3.58 at TP 2 on H100 (kept for <= 0.6.4).
_V0 = dict(engine="v0", activation_base_gib=0.48, sampler_copies=6.35, non_torch_tp1_gib=0.09,
           non_torch_tp_gib=0.55, non_torch_per_rank_gib=0.0, non_torch_pp_only_gib=0.09,
           cudagraph_in_budget=False, default_utilization=0.9)
_V0_DEV = {**_V0, "non_torch_tp1_gib": 1.79, "non_torch_tp_gib": 3.58, "non_torch_pp_only_gib": 1.79}
# V1 0.8-0.16; 0.11-0.16 logged 4.8-5.6 GiB of activation on H100: a much larger sampler warm-up.
_V1_EARLY = dict(engine="v1", activation_base_gib=0.3, non_torch_tp1_gib=0.25, non_torch_tp_gib=0.55,
                 non_torch_per_rank_gib=0.0, non_torch_pp_only_gib=0.07, cudagraph_in_budget=False,
                 default_utilization=0.9)
# V1 0.17-0.25; from 0.21 the CUDA-graph estimate comes out of the KV budget up front.
_V1 = dict(engine="v1", activation_base_gib=0.3, sampler_copies=3.27, non_torch_tp1_gib=0.24,
           non_torch_tp_gib=2.0, non_torch_per_rank_gib=0.035, non_torch_pp_only_gib=0.07,
           default_utilization=0.9)
# Fitted to the 0.26.0 H100 rehearsal (docs/gpu-rehearsal.md): model runner V2 profiles no
# CUDA-graph memory up front (its profile_cudagraph_memory() returns 0), so graphs come out of the
# slack; non-torch memory at TP 2 was 0.06-0.07 GiB per GPU (TP 1: 0.22); the last stage's
# sampler peak was ~2.3 copies of max_num_seqs x vocab logits in the model dtype.
_V1_026 = dict(engine="v1", activation_base_gib=0.2, sampler_copies=2.3, non_torch_tp1_gib=0.22,
               non_torch_tp_gib=0.07, non_torch_per_rank_gib=0.0, non_torch_pp_only_gib=0.07,
               cudagraph_in_budget=False, default_utilization=0.92, sampler_model_dtype=True,
               weights_reserved=True)
# 0.26.0 on model runner V1, which it keeps for MoE architectures outside its V2 list (DeepSeek-V3/R1).
# Fitted to the 2xH200 rehearsal of DeepSeek-V3 cut to 6 layers, FP8, TP2 with and without EP
# (docs/gpu-rehearsal.md; vLLM logged "5.43 GiB for peak activation, 0.15 GiB for non-torch memory",
# "Estimated CUDA graph memory: 2.18 GiB" / 2.20 with EP, and "Available KV cache memory: 102.07"
# = 128.62 - 18.79 - 5.43 - 0.15 - 2.18):
# - activation: the same 5.43 GiB with EP (E=128, N=2048 per rank) as without (E=256, N=1024), so not
#   the fused-MoE buffers (~1.2-1.3 GiB at 8192 tokens x top-8) but the sampler warm-up, which this
#   runner runs over max_num_seqs x vocab fp32 logits twice (_dummy_sampler_run; native top-k/top-p
#   sort with the FlashInfer sampler off, as in every rehearsal): (5.43 - 0.3) / (1024 x 129280 x 4 B
#   = 0.493 GiB) = 10.4 copies, near the 9.3 that the same runner's warm-up took in 0.11-0.16.
# - the CUDA-graph estimate is subtracted up front (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS, default
#   since 0.21); see cudagraph_budget_bytes.
# - non-torch at TP 2: 0.15 GiB (V2 runner: 0.07).
_V1_026_MRV1 = {**_V1_026, "activation_base_gib": 0.3, "sampler_copies": 10.4, "sampler_model_dtype": False,
                "non_torch_tp_gib": 0.15, "cudagraph_in_budget": True, "graphs_by_capture": True}
V2_RUNNER_MOE = frozenset({"DeepseekV2ForCausalLM", "GraniteMoeForCausalLM", "Qwen2MoeForCausalLM",
                           "LongcatFlashNgramForCausalLM"})
"""MoE architectures that vLLM runs on model runner V2 by default (``DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES``
in ``vllm/config/vllm.py``); other MoE models stay on V1. Seen in 0.26.0: DeepSeek-V2-Lite logged
"Using V2 Model Runner", DeepSeek-V3 (``DeepseekV3ForCausalLM``, FP8) ran ``gpu_model_runner.py``."""


PRE_AMPERE = ("v100", "t4", "2080", "titan v", "titan rtx", "quadro rtx", "rtx 6000", "rtx 8000", "p100", "p40")
"""GPUs below compute capability 8.0: vLLM 0.8-0.10 runs them on the V0 engine (V1 needs 8.0+)."""


def uses_v1_runner(config: Mapping[str, Any] | None) -> bool:
    """vLLM 0.26+ keeps model runner V1 for MoE models outside ``V2_RUNNER_MOE`` (``is_moe``: routed experts).

    >>> uses_v1_runner({"architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 256})
    True
    >>> uses_v1_runner({"architectures": ["DeepseekV2ForCausalLM"], "n_routed_experts": 64})
    False
    """
    if not config:
        return False
    moe = any(int(config.get(k) or 0) > 0 for k in ("n_routed_experts", "num_experts", "num_local_experts"))
    return moe and not V2_RUNNER_MOE.intersection(config.get("architectures") or [])


def profile_for(version: str | None, device_name: str = "", config: Mapping[str, Any] | None = None) -> VllmProfile:
    """The constants for ``version`` (default: ``DEFAULT_VERSION``) on the GPU named ``device_name``
    (and, from 0.26, for the model runner that vLLM picks for ``config``).

    >>> profile_for("0.9.2", "Tesla V100-SXM2-32GB").engine, profile_for("0.9.2", "NVIDIA H100").engine
    ('v0', 'v1')
    >>> profile_for("0.26.0", config={"n_routed_experts": 256}).cudagraph_in_budget
    True
    """
    v = parse_version(version or DEFAULT_VERSION)
    if (0, 8, 0) <= v < (0, 11, 0) and any(k in device_name.lower() for k in PRE_AMPERE):
        return VllmProfile(v, **_V0)  # type: ignore[arg-type]
    if v < (0, 8, 0):
        return VllmProfile(v, **(_V0_DEV if v < (0, 6, 5) else _V0))  # type: ignore[arg-type]
    if v < (0, 17, 0):
        return VllmProfile(v, sampler_copies=9.3 if v >= (0, 11, 0) else 3.27, **_V1_EARLY)  # type: ignore[arg-type]
    if v >= (0, 26, 0):
        return VllmProfile(v, **(_V1_026_MRV1 if uses_v1_runner(config) else _V1_026))  # type: ignore[arg-type]
    return VllmProfile(v, cudagraph_in_budget=v >= (0, 21, 0), **_V1)  # type: ignore[arg-type]


def kv_block_size(profile: VllmProfile, *, mla: bool) -> int:
    """Tokens per KV block: MLA models get FlashMLA on CUDA by default, which forces 64 (0.7.3 on)."""
    return 64 if mla and profile.version >= (0, 7, 3) else profile.block_size


def batch_defaults(profile: VllmProfile, gpu_total_gib: float, max_model_len: int,
                   device_name: str = "") -> tuple[int, int]:
    """``(max_num_batched_tokens, max_num_seqs)`` that ``vllm serve`` picks by default."""
    if profile.engine == "v0":
        # V0 without chunked prefill profiles a whole max_model_len prompt (chunked above 32K).
        tokens = max(max_model_len, 2048) if max_model_len <= 32768 else 2048
        return tokens, 256
    big = gpu_total_gib >= 70 and "a100" not in device_name.lower()
    return (8192, 1024) if big else (2048, 256)


def activation_bytes(profile: VllmProfile, *, hidden: int, inter_per_rank: int, vocab: int,
                     batched_tokens: int, max_num_seqs: int, dtype_bytes: int, last_stage: bool,
                     extra_forward: int = 0) -> int:
    """Peak torch memory of the profile run on one GPU (``extra_forward``: a MoE layer's peak, if larger)."""
    forward = max(batched_tokens * (2 * hidden + 3 * inter_per_rank) * dtype_bytes, extra_forward)
    logit_bytes = dtype_bytes if profile.sampler_model_dtype else 4
    sampler = profile.sampler_copies * min(max_num_seqs, batched_tokens) * vocab * logit_bytes if last_stage else 0
    return int(profile.activation_base_gib * GIB + max(forward, sampler))


def non_torch_bytes(profile: VllmProfile, tp: int, pp: int) -> int:
    if tp >= 2:
        gib = profile.non_torch_tp_gib + profile.non_torch_per_rank_gib * tp
    elif pp >= 2:
        gib = profile.non_torch_pp_only_gib
    else:
        gib = profile.non_torch_tp1_gib
    return int(gib * GIB)



def capture_sizes(limit: int) -> list[int]:
    """vLLM's default CUDA-graph batch sizes up to ``limit``: 1, 2, 4, then steps of 8 to 256, of 16 to 512.

    >>> len(capture_sizes(512)), capture_sizes(512)[-2:], len(capture_sizes(256))
    (51, [496, 512], 35)
    """
    return [s for s in [1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)] if s <= limit]


GRAPH_HIDDEN_COPIES = 3.27
"""Bytes per captured token of vLLM's CUDA-graph estimate, in hidden-state copies (fitted, see below)."""


def cudagraph_budget_bytes(profile: VllmProfile, *, layers: int, hidden: int, dtype_bytes: int, max_num_seqs: int,
                           batched_tokens: int, enforce_eager: bool = False) -> int:
    """The CUDA-graph memory vLLM subtracts from the KV budget (if ``cudagraph_in_budget``) or captures later.

    ``graphs_by_capture`` (model runner V1 from 0.26): ``profile_cudagraph_memory`` captures the two
    largest graphs of each mode (PIECEWISE up to ``min(512, 2 x max_num_seqs, max_num_batched_tokens)``
    tokens, FULL decode up to ``max_num_seqs`` of those), takes the first capture once and the second
    capture's growth for every other graph of the mode. What a graph keeps in the pool is its static
    output and input buffers, ~3 hidden-size vectors per captured token whatever the layer count (the
    per-layer activations are freed and reused within the capture). So::

        estimate = (largest + sum over modes (n_graphs - 1) x second_largest) x hidden x dtype x 3.27

    fitted to DeepSeek-V3 cut to 6 layers (TP2, 0.26.0: 51 + 51 graphs, 512 / 496 tokens, hidden 7168,
    "Estimated CUDA graph memory: 2.18 GiB", 2.20 with EP; 3.26-3.29 copies). A public 0.19 log of
    another model agrees within 8 % (Qwen3.5-9B, hidden 4096, on an L40S: 51 + 35 graphs, "Estimated
    CUDA graph memory: 0.78 GiB" = 3.03 copies; search index id 51781852921), so it is carried over to
    the 61-layer 671B model (~2.2 GiB per GPU at any TP) rather than scaled with the layer count.
    Otherwise (older releases): ~0.91 GiB for a 32-layer 8B model on H100 (vLLM's own log), per layer.

    >>> p = profile_for("0.26.0", config={"n_routed_experts": 256})
    >>> round(cudagraph_budget_bytes(p, layers=6, hidden=7168, dtype_bytes=2, max_num_seqs=1024,
    ...                              batched_tokens=8192) / GIB, 2)
    2.19
    """
    if enforce_eager:
        return 0
    if not profile.graphs_by_capture:
        return int(layers * 0.0285 * GIB)
    piecewise = capture_sizes(min(512, 2 * max_num_seqs, batched_tokens))
    full = [s for s in piecewise if s <= max_num_seqs]
    tokens = max(piecewise[-1], full[-1]) + sum((len(m) - 1) * m[-2] for m in (piecewise, full) if len(m) > 1)
    return int(tokens * hidden * dtype_bytes * GRAPH_HIDDEN_COPIES)
