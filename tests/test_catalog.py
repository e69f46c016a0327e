"""Model names: catalog names, hub ids and local folders, and the error for anything else."""

from __future__ import annotations

import json

import pytest

from dsagent.plan.catalog import CATALOG, DEFAULT_CPU_MODEL, resolve
from dsagent.errors import UnknownModelError


def test_catalog_names_hub_ids_and_short_ids_resolve_to_one_entry():
    assert resolve("smollm2-135m-instruct").source == "bundled"
    assert resolve("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").name == "deepseek-r1-distill-qwen-7b"
    assert resolve("DeepSeek-R1-Distill-Llama-70B").name == "deepseek-r1-distill-llama-70b"
    assert resolve(DEFAULT_CPU_MODEL).config["num_attention_heads"] == 9


def test_r1_distills_are_reasoning_models_and_the_default_is_not():
    for spec in CATALOG:
        assert spec.reasoning == spec.name.startswith("deepseek-r1"), spec.name


def test_unknown_name_lists_the_catalog():
    with pytest.raises(UnknownModelError) as info:
        resolve("no-such-model")
    assert "smollm2-135m-instruct" in info.value.remedy
    assert "dsagent models" in str(info.value)


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UnknownModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_local_folder_with_config_resolves(tmp_path):
    folder = tmp_path / "My-Model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": 8}))
    spec = resolve(str(folder))
    assert (spec.source, spec.name, spec.path) == ("local", "my-model", folder.resolve())


def test_unlisted_hub_id_is_a_hub_model():
    spec = resolve("someone/Some-Model-1B")
    assert (spec.source, spec.repo_id, spec.name) == ("hub", "someone/Some-Model-1B", "some-model-1b")
