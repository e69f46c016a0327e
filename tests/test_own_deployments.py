"""Deployments of their own, each in a home of its own that shares the run's converted model: a start
that crashes, and a client that waits for a start and then sees a crash.

In the run's home, a second running deployment would be the newest one, which every other worker's
``local_deepseek()`` (no name) attaches to (``conftest.home_beside``). Nothing is faked: real vLLM
process trees, a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import run_cli as cli

from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.record.identity import processes_of
from dsagent.deploy.record.phase import live_state
from dsagent.deploy.record.state import State
from dsagent.deploy.record.store import load
from dsagent.deploy.up import up
from dsagent.errors import StartupError
from dsagent.system.procs import MARK, alive, vllm_processes


def test_crash_during_start_is_reported_with_the_log_tail_and_leaves_nothing(own_home):
    opts = ServeOptions(port=0, device="cpu", extra_args=("--no-such-vllm-flag",))
    with pytest.raises(StartupError) as info:
        up(options=opts, name="crashy", settings=own_home, timeout=300)
    assert "vLLM exited while" in str(info.value)
    assert "--no-such-vllm-flag" in info.value.log_tail
    rec = load(own_home, "crashy")
    assert not processes_of(rec)
    assert rec.state == "failed" and "no-such-vllm-flag" in rec.reason


def test_local_deepseek_waits_for_a_starting_server_then_a_crash_is_reported_and_reaped(own_home, monkeypatch):
    """local_deepseek() waits while a fresh deployment starts (it returns with the record ready, written
    by that wait); after SIGKILL of its API server the crash is reported without any wait; `dsagent
    stop` then leaves no vLLM process."""
    import dsagent
    from dsagent.deploy import up as up_module
    from dsagent.errors import DeploymentError, NoDeploymentError

    env = {"DSAGENT_HOME": str(own_home.home)}
    dep = up(options=ServeOptions(port=0, device="cpu"), name="waiter", settings=own_home, wait_ready=False)
    assert dep.state == "starting" and live_state(load(own_home, "waiter")) != State.READY
    llm = dsagent.local_deepseek("waiter", settings=own_home, temperature=0, max_tokens=20)
    dep = load(own_home, "waiter")
    assert dep.state == "ready" and dep.measured.get("seconds_to_ready", 0) > 0  # the record its wait wrote
    assert "Paris" in llm.invoke("What is the capital of France?").content

    os.kill(dep.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while alive(dep.pid):  # reaps it: this process launched it
        assert time.monotonic() < deadline, f"pid {dep.pid} outlived SIGKILL by 60 s"
        time.sleep(0.05)
    waits: list[str] = []
    monkeypatch.setattr(up_module, "follow", lambda d, *a, **k: waits.append(d.name))  # reported, never waited on
    with pytest.raises(DeploymentError) as info:
        dsagent.local_deepseek("waiter", settings=own_home)
    assert not isinstance(info.value, NoDeploymentError) and "crashed" in str(info.value)
    assert waits == []
    survivors = [p for p in processes_of(dep) if p.name.startswith("VLLM::")]
    assert survivors, "the engine survives its API server (this is what stop must clean up)"
    assert json.loads(cli("status", dep.name, "--json", env=env).stdout)["state"] == "crashed"
    orphans = json.loads(cli("ps", "--json", env=env).stdout)["orphans"]
    left = [o for o in orphans if o["pid"] in {p.pid for p in survivors}]
    assert left and all(o["deployment"] == dep.env[MARK] for o in left)  # named: which stop reaps it
    assert f"left by deployment {dep.name}: `dsagent stop {dep.name}`" in cli("ps", env=env).stdout
    out = cli("stop", dep.name, env=env)
    assert out.returncode == 0, out.stderr
    assert not processes_of(dep)
    assert not [p for p in vllm_processes() if p.pgid == dep.pgid or p.pid in {s.pid for s in survivors}]
    assert load(own_home, dep.name).state == "stopped"
