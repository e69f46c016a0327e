"""The layout recommender (`dsagent estimate --goal`): TP vs PP vs DP (and EP) for one stream or many."""

from __future__ import annotations

import argparse
import json

import pytest

from dsagent.cli import estimate as estimate_view
from dsagent.errors import InvalidOptionError
from dsagent.plan.catalog import resolve
from dsagent.plan.layouts import compare_layouts

pytestmark = pytest.mark.timeout(60)

R1 = dict(resolve("deepseek-r1").config)
L70 = dict(resolve("deepseek-r1-distill-llama-70b").config)
H100 = 79.18


def run(argv, capsys):
    ap = argparse.ArgumentParser()
    estimate_view.add_command(ap.add_subparsers())
    args = ap.parse_args(["estimate", *argv])
    return args.func(args), capsys.readouterr().out


def test_latency_picks_the_widest_tp_and_it_reads_least_per_token():
    """70B bf16 on 4 H100: TP4 reads 1/4 of the weights per token; TP2 x PP2 reads half (two stages
    in turn); DP does not help one stream."""
    c = compare_layouts(L70, goal="latency", gpu_memory_gib=H100, gpus=4, max_model_len=32768, vllm_version="0.19.0")
    best = c.options[0]
    assert (best.tp, best.pp, best.dp) == (4, 1, 1) and c.pick.tp == 4
    by = {(o.tp, o.pp, o.dp): o for o in c.options}
    assert by[(2, 2, 1)].token_read_gib == pytest.approx(2 * best.token_read_gib, rel=0.01)
    assert by[(2, 2, 1)].relative_speed == pytest.approx(0.5, abs=0.01)


def test_throughput_on_mla_prefers_pp_or_dp_because_tp_replicates_the_latent_cache():
    """R1 on 8 x H200: TP8 holds one copy of the 61-layer latent cache per GPU; PP/DP layouts hold
    several times more requests, and the pick states the KV tokens and concurrency of each."""
    c = compare_layouts(R1, goal="throughput", gpu_memory_gib=139.8, gpus=8, max_model_len=32768,
                        vllm_version="0.26.0")
    by = {(o.tp, o.pp, o.dp, o.expert_parallel): o for o in c.options}
    tp8 = by[(8, 1, 1, False)]
    best = c.options[0]
    assert tp8.fits and best.fits and best.total_concurrency > 3 * tp8.total_concurrency
    assert best.tp < 8 and c.pick is not None and c.pick.kv_cache_tokens == best.kv_cache_tokens


def test_nodes_needed_when_one_node_is_not_enough():
    c = compare_layouts(R1, goal="latency", gpu_memory_gib=H100, gpus=8, max_model_len=32768, vllm_version="0.26.0")
    assert c.pick is None and c.nodes_needed == 2 and not any(o.fits for o in c.options)


def test_expert_parallel_options_only_for_moe():
    dense = compare_layouts(L70, goal="throughput", gpu_memory_gib=H100, gpus=4, vllm_version="0.19.0")
    assert not any(o.expert_parallel for o in dense.options)
    moe = compare_layouts(R1, goal="throughput", gpu_memory_gib=139.8, gpus=8, vllm_version="0.26.0")
    assert any(o.expert_parallel and o.dp > 1 for o in moe.options)


def test_cli_goal_table_json_and_bad_goal(capsys):
    base = ["--gpu-memory-gib", "79.18", "--gpus", "8", "--max-model-len", "32768", "--vllm-version", "0.26.0"]
    rc, out = run(["deepseek-r1", *base, "--nodes", "2", "--goal", "throughput"], capsys)
    assert rc == 0 and "pick: --tp" in out and "--nodes 2" in out and "KV tokens/replica" in out
    rc, out = run(["deepseek-r1", *base, "--goal", "latency", "--json"], capsys)
    d = json.loads(out)
    assert rc == 1 and d["pick"] is None and d["nodes_needed"] == 2 and d["options"][0]["flags"].startswith("--tp")
    with pytest.raises(InvalidOptionError, match="--goal"):
        compare_layouts(L70, goal="fast", gpu_memory_gib=H100, gpus=4)


def test_cli_dp_and_expert_parallel_plan(capsys):
    rc, out = run(["deepseek-r1", "--gpu-memory-gib", "139.8", "--gpus", "8", "--tp", "4", "--dp", "2",
                   "--enable-expert-parallel", "--vllm-version", "0.26.0", "--max-model-len", "32768", "--json"],
                  capsys)
    d = json.loads(out)
    assert rc == 0 and d["detail"]["dp"] == 2 and d["detail"]["expert_parallel"] is True
