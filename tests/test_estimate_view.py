"""The `dsagent estimate` face: JSON contract, table, no-GPU path, error messages."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from dsagent.cli import estimate as estimate_view
from dsagent.system import gpus
from dsagent.errors import InputError, ParallelismError, UnknownModelError

pytestmark = pytest.mark.timeout(30)


def run(argv, capsys):
    ap = argparse.ArgumentParser()
    estimate_view.add_command(ap.add_subparsers())
    args = ap.parse_args(["estimate", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr().out


BASE = ["--gpu-memory-gib", "79.18", "--gpu-memory-utilization", "0.9", "--vllm-version", "0.19.0"]


def test_json_contract(capsys):
    rc, out = run(["deepseek-r1-distill-qwen-7b", *BASE, "--max-model-len", "8192", "--tp", "2", "--pp", "1",
                   "--json"], capsys)
    d = json.loads(out)
    from dsagent.plan.budget import plan_gpu
    from dsagent.plan.catalog import resolve

    plan = plan_gpu(dict(resolve("deepseek-r1-distill-qwen-7b").config), gpu_memory_gib=79.18, gpu_memory_utilization=0.9,
                    vllm_version="0.19.0", max_model_len=8192, tp=2, pp=1, gpus=2)
    assert rc == 0 and d.pop("model") == "deepseek-r1-distill-qwen-7b"
    assert d == plan.to_dict() and d["fits"] is True  # the planner's numbers, every one, as JSON
    assert d["detail"]["tp"] == 2 and len(d["detail"]["workers"]) == 1


def test_no_vllm_version_plans_the_newest_calibrated_release_and_says_so(capsys):
    """Through the CLI's main: no --vllm-version, whatever vLLM is (or is not) installed."""
    from dsagent.cli import main
    from dsagent.plan.profiles import CALIBRATED, DEFAULT_VERSION, parse_version

    assert DEFAULT_VERSION == max(CALIBRATED, key=parse_version) == "0.26.0"
    gpu = ["deepseek-r1-distill-qwen-7b", "--gpu-memory-gib", "79.18", "--max-model-len", "8192"]
    assert main(["estimate", *gpu]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith(f"deepseek-r1-distill-qwen-7b  vLLM 0.26.0 (v1; {estimate_view.ASSUMED})  TP 1 x PP 1")
    assert main(["estimate", *gpu, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detail"]["vllm_version"] == "0.26.0"
    assert main(["estimate", *gpu, "--vllm-version", "0.19.0"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "vLLM 0.19.0 (v1)  TP" in head and "assumed" not in head


def test_config_dir_and_table(tmp_path, capsys):
    from dsagent.plan.catalog import resolve

    from dsagent.plan.estimate import recommend

    config = dict(resolve("deepseek-r1-distill-llama-8b").config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    rc, out = run([str(tmp_path), *BASE, "--gpus", "2", "--max-model-len", "8192"], capsys)
    plan = recommend(config, gpu_memory_gib=79.18, gpus=2, max_model_len=8192, vllm_version="0.19.0",
                     gpu_memory_utilization=0.9)
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith(f"{resolve(str(tmp_path)).name}  vLLM 0.19.0 (v1)  TP {plan.tp} x PP {plan.pp}  79.18 GiB/GPU")
    assert lines[1].startswith(f"verdict: FITS   KV cache {plan.kv_cache_tokens:,} tokens")
    assert re.search(r"^ +0 +32 .*\|[WANK.]{50}\|$", out, re.M), out  # the one stage's row and budget bar


def test_does_not_fit_shows_reasons_and_suggestions(capsys):
    rc, out = run(["deepseek-r1-distill-llama-70b", *BASE, "--tp", "1", "--max-model-len", "8192", "--json"], capsys)
    d = json.loads(out)
    assert rc == 1 and d["fits"] is False
    assert d["detail"]["reasons"][0].startswith("no memory left for the KV cache on stage 0"), d["detail"]["reasons"]
    assert any(s.startswith("more GPUs: ") for s in d["detail"]["suggestions"]), d["detail"]["suggestions"]


def test_bad_tp_names_the_fix(capsys):
    with pytest.raises(ParallelismError, match="fix: use --tp in"):
        run(["deepseek-r1-distill-qwen-7b", *BASE, "--tp", "3"], capsys)


def test_unknown_model_names_the_catalog(capsys):
    with pytest.raises(UnknownModelError, match="fix: use one of"):
        run(["no-such-model", *BASE], capsys)


def test_no_gpu_shows_cpu_plan(monkeypatch, capsys):
    monkeypatch.setattr(gpus, "visible_gpus", lambda **_: ())
    rc, out = run(["smollm2-135m-instruct", "--max-model-len", "2048", "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["detail"]["backend"] == "cpu" and "no GPU" in d["detail"]["note"]


def test_no_gpu_with_layout_asks_for_memory(monkeypatch, capsys):
    monkeypatch.setattr(gpus, "visible_gpus", lambda **_: ())
    with pytest.raises(InputError, match="fix: pass --gpu-memory-gib"):
        run(["deepseek-r1-distill-qwen-7b", "--tp", "2"], capsys)


def test_reads_visible_gpus(monkeypatch, capsys):
    fake = (gpus.Gpu(0, "H100", 79.18, 78.0), gpus.Gpu(1, "H100", 79.18, 78.0))
    monkeypatch.setattr(gpus, "visible_gpus", lambda **_: fake)
    rc, out = run(["deepseek-r1-distill-qwen-14b", "--vllm-version", "0.19.0", "--max-model-len", "32768",
                   "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["fits"]
    assert d["detail"]["gpu_memory_gib"] == 79.18 and d["detail"]["tp"] * d["detail"]["pp"] == 2  # both, their size


def test_nodes_spread_a_model_that_one_node_cannot_hold(capsys):
    """70B on 24 GiB cards: one node of 4 does not hold it at 8k, and the fix says how many nodes
    do; with 2 nodes the layout keeps TP within a node and puts PP across."""
    card = ["--gpu-memory-gib", "23.55", "--vllm-version", "0.26.0", "--max-model-len", "8192", "--json"]
    rc, out = run(["deepseek-r1-distill-llama-70b", "--gpus", "4", *card], capsys)
    one = json.loads(out)
    assert rc == 1 and any("--nodes 2" in s for s in one["detail"]["suggestions"])
    rc, out = run(["deepseek-r1-distill-llama-70b", "--gpus", "4", "--nodes", "2", *card], capsys)
    two = json.loads(out)
    assert rc == 0 and two["fits"] and two["detail"]["nodes"] == 2
    assert two["detail"]["tp"] <= 4 and two["detail"]["tp"] * two["detail"]["pp"] == 8
    with pytest.raises(ParallelismError, match="TP must stay within a node"):
        run(["deepseek-r1-distill-llama-70b", "--gpus", "4", "--nodes", "2", "--tp", "8", *card], capsys)
