"""Pure readers: log phases, failure reasons, KV capacity and Prometheus metrics."""

from __future__ import annotations

from dsagent.deploy.record.logs import failure_reason, parse_capacity, phase_of_log
from dsagent.deploy.record.phase import parse_metrics

LOG = """\
(APIServer pid=1) INFO [model.py:733] Resolved architecture: LlamaForCausalLM
(APIServer pid=1) WARNING [vllm.py:1703] Enforce eager set, disabling torch.compile, CUDAGraphs
(Worker pid=3) INFO [cpu_model_runner.py:68] Starting to load model /m...
(Worker pid=3) INFO [default_loader.py:501] Loading weights took 1.64 seconds
(EngineCore pid=2) INFO [kv_cache_utils.py:2327] CPU KV cache size: 23,296 tokens, Maximum concurrency for 2,048 tokens per request: 11.38x
(APIServer pid=1) INFO [entry.py:140] Starting vLLM server on http://127.0.0.1:8111
"""


def test_phases_follow_the_log():
    lines = LOG.splitlines()
    assert phase_of_log("\n".join(lines[:2])) == "starting"  # "disabling torch.compile" is not compiling
    assert phase_of_log("\n".join(lines[:3])) == "loading"
    assert phase_of_log("\n".join(lines[:5])) == "profiling"
    assert phase_of_log(LOG) == "serving"


def test_capacity_is_read_from_the_log():
    assert parse_capacity(LOG) == {"kv_cache_tokens": 23296, "max_concurrency": 11.38}


def test_failure_reason_prefers_the_last_error_line():
    tail = "INFO x\nTraceback (most recent call last):\n  File a\n(EngineCore pid=9) ValueError: too long\nINFO bye"
    assert failure_reason(tail) == "ValueError: too long"
    assert failure_reason("api_server.py: error: unrecognized arguments: --bogus") == (
        "api_server.py: error: unrecognized arguments: --bogus"
    )


def test_metrics_are_summed_over_engines():
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 1.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.125\n'
        'vllm:prompt_tokens_total{engine="0"} NaN\n'
    )
    assert parse_metrics(text) == {"num_requests_running": 3.0, "kv_cache_usage_perc": 0.125}
