"""serve's pure planner: the exact argv and environment of a launch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsagent.errors import InputError, ParallelismError
from dsagent.plan.budget import check_layout
from dsagent.system.procs import MARK, PIN
from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.launch.argv import plan_serve, thread_binding
from dsagent.settings import Settings

SETTINGS = Settings(home=Path("/h"), engine_python="/venv/bin/python")


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_cpu_plan_uses_float32_eager_stable_name_and_kv_space():
    plan = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(port=8123, kv_cache_gib=2), context_limit=8192)
    argv = plan.argv
    assert argv[:3] == ("/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    assert _flag(argv, "--served-model-name") == "smol"
    assert _flag(argv, "--dtype") == "float32"
    assert _flag(argv, "--max-model-len") == "2048"
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8123"
    assert "--enforce-eager" in argv
    assert "--api-key" not in argv  # the key travels in VLLM_API_KEY, invisible to ps
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "2" and plan.env[MARK] == "smol@/h"  # unique per dsagent home
    assert plan.log_file == Path("/h/logs/smol.log")


def test_a_models_sampling_defaults_go_to_the_server_and_none_means_no_flag():
    plan = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(), sampling={"frequency_penalty": 0.3})
    assert _flag(plan.argv, "--override-generation-config") == '{"frequency_penalty": 0.3}'
    assert "--override-generation-config" not in plan_serve("smol", Path("/m"), SETTINGS, ServeOptions()).argv


def test_cpu_pipeline_parallel_binds_threads_and_compiles():
    plan = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(pp=2), cpus=[0, 1])
    assert _flag(plan.argv, "--pipeline-parallel-size") == "2"
    assert plan.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert "--enforce-eager" not in plan.argv  # eager + PP crashes vLLM-CPU's second stage
    assert json.loads(_flag(plan.argv, "--compilation-config")) == {"mode": 2, "backend": "eager"}  # traced once


def test_enforce_eager_with_cpu_pp_is_refused_before_the_download(tmp_path):
    """vLLM-CPU's second stage crashes on the first request in eager mode (checked on vLLM 0.32: the
    server said ready, then answered 500); ``up`` refuses it before fetch, so nothing is downloaded."""
    from dsagent.deploy.up import up
    from dsagent.errors import InvalidOptionError

    home = Settings.load(tmp_path / "home")
    with pytest.raises(InvalidOptionError, match="drop --enforce-eager") as info:
        up(options=ServeOptions(device="cpu", pp=2, enforce_eager=True), settings=home)
    assert info.value.option == "--enforce-eager"
    assert not home.models_dir.exists() or not any(home.models_dir.iterdir())  # nothing fetched
    assert not list(home.deployments_dir.glob("*.json"))
    with pytest.raises(InvalidOptionError):  # the planner refuses it too
        plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(pp=2, enforce_eager=True), cpus=[0, 1])


def test_cpu_data_parallel_runs_one_api_server_unless_asked():
    """vLLM starts one API server per replica; on CPU dsagent asks for one (each is another import
    beside engines on the same cores), on the head only, and a user's own count wins."""
    head = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(dp=2, master_port=5000))
    assert _flag(head.argv, "--api-server-count") == "1"
    own = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(dp=2, master_port=5000,
                                                                extra_args=("--api-server-count=2",)))
    assert own.argv.count("--api-server-count") == 0 and "--api-server-count=2" in own.argv
    alias = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(dp=2, master_port=5000, extra_args=("-asc", "2")))
    assert "--api-server-count" not in alias.argv and alias.argv[-2:] == ("-asc", "2")  # vLLM's short alias
    node = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(dp=2, nodes=2, node_rank=1, node_ip="127.0.0.2",
                                                                 master_port=5000))
    assert "--api-server-count" not in node.argv and "--headless" in node.argv
    gpu = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(device="gpu", dp=2, master_port=5000))
    assert "--api-server-count" not in gpu.argv


def test_one_cpu_worker_runs_inside_the_engine_process_unless_the_user_says_otherwise(monkeypatch):
    """vLLM-CPU swaps its one-process executor for the multiprocess one unless multiprocessing is
    off: a third process that imports torch and vLLM again (benchmarks/cpu_single_start.py: ready
    0.71x the time, 1.32x the decoding speed with it off). Only where a node runs one worker: a
    one-worker launch, or DP with one replica per node (benchmarks/cpu_dp_nodes_start.py)."""
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    one = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(), cpus=[0, 1, 2, 3])
    assert one.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # vLLM binds threads only in workers it spawns: by default torch's own count (every core), unpinned ...
    assert "OMP_NUM_THREADS" not in one.env and PIN not in one.env and "VLLM_CPU_OMP_THREADS_BIND" not in one.env
    # ... but cores the user names hold the whole tree (a launch's PIN: spawn sets its affinity)
    named = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(cpus=(2, 3)), cpus=[0, 1, 2, 3])
    assert named.env["OMP_NUM_THREADS"] == "2" and named.env[PIN] == "2,3"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1-2")
    own = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(), cpus=[0, 1, 2, 3])
    assert own.env["OMP_NUM_THREADS"] == "2" and own.env[PIN] == "1,2"
    for free in ("nobind", "auto"):
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", free)
        plan = plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(), cpus=[0, 1, 2, 3])
        assert "OMP_NUM_THREADS" not in plan.env and PIN not in plan.env
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    for many in (ServeOptions(tp=3, cpus=(0, 1, 2)), ServeOptions(pp=2), ServeOptions(dp=2, master_port=5000),
                 ServeOptions(pp=2, nodes=2, node_ip="127.0.0.2", master_port=5000),
                 ServeOptions(dp=4, nodes=2, node_ip="127.0.0.2", master_port=5000), ServeOptions(device="gpu")):
        plan = plan_serve("smol", Path("/m"), SETTINGS, many, cpus=[0, 1, 2])
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in plan.env and PIN not in plan.env, many
    # one replica per node: each node's one worker runs in its engine, the head's and a joined node's
    for rank in (0, 1):
        node = ServeOptions(dp=2, nodes=2, node_rank=rank, node_ip="127.0.0.2", master_port=5000, cpus=(1,))
        plan = plan_serve("smol", Path("/m"), SETTINGS, node, cpus=[0, 1, 2])
        assert plan.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and plan.env[PIN] == "1", plan.env
        assert _flag(plan.argv, "--distributed-executor-backend") == "uni"  # vLLM's default for any DP: "mp"
    assert "--distributed-executor-backend" not in plan_serve("smol", Path("/m"), SETTINGS,
                                                              ServeOptions(dp=2, master_port=5000)).argv
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's own choice is left alone
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in plan_serve("smol", Path("/m"), SETTINGS, ServeOptions()).env


def test_gpu_plan_passes_parallelism_and_reasoning_parser():
    opts = ServeOptions(device="gpu", tp=2, pp=2, gpu_memory_utilization=0.9, dummy_weights=True, tokenizer="/tok")
    plan = plan_serve("r1", Path("/m"), SETTINGS, opts, reasoning=True)
    assert _flag(plan.argv, "--tensor-parallel-size") == "2"
    assert _flag(plan.argv, "--gpu-memory-utilization") == "0.9"
    assert _flag(plan.argv, "--reasoning-parser") == "deepseek_r1"
    assert _flag(plan.argv, "--load-format") == "dummy"
    assert "--load-format" not in plan_serve("dummy", Path("/m"), SETTINGS, ServeOptions()).argv
    assert _flag(plan.argv, "--tokenizer") == "/tok"
    assert "--dtype" not in plan.argv and "VLLM_CPU_KVCACHE_SPACE" not in plan.env


def test_thread_binding_splits_cores_and_refuses_too_many_workers():
    assert thread_binding(1, [0, 1]) == "0-1"
    assert thread_binding(4, list(range(8))) == "0-1|2-3|4-5|6-7"
    with pytest.raises(InputError, match="need at least 3 cores"):
        thread_binding(3, [0, 1])


def test_tp_that_does_not_divide_heads_names_the_valid_sizes():
    with pytest.raises(ParallelismError) as info:
        check_layout({"num_attention_heads": 9, "num_hidden_layers": 30}, tp=2)
    assert "does not divide the model's 9 attention heads" in str(info.value)
    assert "[1, 3, 9]" in info.value.remedy


def test_a_pinned_launch_runs_on_the_named_cores_only(tmp_path):
    """``procs.spawn`` has set a launch's PIN when it returns, before the child has imported anything:
    a real child's affinity (every thread and process it starts inherits it), read at once."""
    import os

    from dsagent.system.procs import spawn

    core = max(os.sched_getaffinity(0))
    log = tmp_path / "logs" / "pin.log"
    pinned = spawn(["sleep", "60"], {**os.environ, PIN: str(core)}, log)
    free = spawn(["sleep", "60"], dict(os.environ), log)
    try:
        assert os.sched_getaffinity(pinned.pid) == {core}
        assert os.sched_getaffinity(free.pid) == os.sched_getaffinity(0)
    finally:
        for child in (pinned, free):
            child.kill()
            child.wait(timeout=30)


def test_cpus_outside_the_usable_cores_are_refused_before_anything_starts():
    """``--cpus`` names cores the launch is confined to: one this machine does not let us use is refused
    in the planner, naming the usable ones (before, the affinity call failed after the launch, unseen)."""
    with pytest.raises(InputError, match=r"core\(s\) 7 are not among this process's usable cores \(0,1\)") as info:
        plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(cpus=(1, 7)), cpus=[0, 1])
    assert info.value.option == "--cpus"
    assert plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(cpus=(1,)), cpus=[0, 1]).env[PIN] == "1"


def test_a_users_thread_binding_that_is_not_a_usable_core_list_is_refused_before_anything_starts(monkeypatch):
    """``VLLM_CPU_OMP_THREADS_BIND`` of the user's own confines a one-worker launch as ``--cpus`` does:
    a value that is not a core list was a bare ``ValueError`` from the planner, and a core outside the
    usable ones made the affinity call fail after the launch, unseen. Both are refused, naming the
    variable and the fix."""
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "abc")
    with pytest.raises(InputError, match="VLLM_CPU_OMP_THREADS_BIND='abc' in your environment is not a list") as info:
        plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(), cpus=[0, 1])
    assert info.value.option == "VLLM_CPU_OMP_THREADS_BIND" and "--cpus" in info.value.remedy
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1,7")
    with pytest.raises(InputError, match=r"core\(s\) 7 are not among this process's usable cores \(0,1\)"):
        plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(), cpus=[0, 1])
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1")
    assert plan_serve("smol", Path("/m"), SETTINGS, ServeOptions(), cpus=[0, 1]).env[PIN] == "1"
