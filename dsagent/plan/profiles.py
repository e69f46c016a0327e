"""What each vLLM release spends besides weights and KV cache, per GPU (pure).

vLLM measures these at start; we predict them from the mechanism, with constants fitted to the
public measurements in ``docs/estimate.md``:

- activation (``torch_peak_increase``): the profile run. A forward pass over
  ``max_num_batched_tokens`` tokens (hidden states plus the MLP's gate/up and activated outputs),
  and on the last pipeline stage the sampler warm-up over ``max_num_seqs`` fp32 logit rows
  (``k`` copies of ``max_num_seqs x vocab x 4`` bytes), whichever is larger, plus a fixed base.
- non-torch: cuBLAS workspaces at TP=1; NCCL and custom all-reduce buffers at TP>=2.
- CUDA graphs: captured after the KV cache; from v0.21 an estimate is subtracted up front.

>>> profile_for("0.19.0").engine
'v1'
>>> profile_for("0.6.4").engine
'v0'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CALIBRATED", "DEFAULT_VERSION", "VllmProfile", "batch_defaults", "parse_version", "profile_for"]

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


PRE_AMPERE = ("v100", "t4", "2080", "titan v", "titan rtx", "quadro rtx", "rtx 6000", "rtx 8000", "p100", "p40")
"""GPUs below compute capability 8.0: vLLM 0.8-0.10 runs them on the V0 engine (V1 needs 8.0+)."""


def profile_for(version: str | None, device_name: str = "") -> VllmProfile:
    """The constants for ``version`` (default: ``DEFAULT_VERSION``) on the GPU named ``device_name``.

    >>> profile_for("0.9.2", "Tesla V100-SXM2-32GB").engine, profile_for("0.9.2", "NVIDIA H100").engine
    ('v0', 'v1')
    """
    v = parse_version(version or DEFAULT_VERSION)
    if (0, 8, 0) <= v < (0, 11, 0) and any(k in device_name.lower() for k in PRE_AMPERE):
        return VllmProfile(v, **_V0)  # type: ignore[arg-type]
    if v < (0, 8, 0):
        return VllmProfile(v, **(_V0_DEV if v < (0, 6, 5) else _V0))  # type: ignore[arg-type]
    if v < (0, 17, 0):
        return VllmProfile(v, sampler_copies=9.3 if v >= (0, 11, 0) else 3.27, **_V1_EARLY)  # type: ignore[arg-type]
    if v >= (0, 26, 0):
        return VllmProfile(v, **_V1_026)  # type: ignore[arg-type]
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


def cudagraph_bytes(layers_on_gpu: int, enforce_eager: bool = False) -> int:
    """CUDA-graph pool: ~0.91 GiB for a 32-layer 8B model on H100 (vLLM's own log)."""
    return 0 if enforce_eager else int(layers_on_gpu * 0.0285 * GIB)
