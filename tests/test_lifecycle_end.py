"""stop ends everything, including after the API server was SIGKILLed. These run last."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from dsagent.system.ports import port_is_free
from dsagent.system.procs import MARK, alive, vllm_processes
from dsagent.deploy.record.identity import processes_of
from dsagent.deploy.record.phase import live_state
from dsagent.deploy.record.state import State
from dsagent.deploy.record.store import load
from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.up import up

pytestmark = pytest.mark.lifecycle_end


def test_stop_leaves_no_process_and_frees_the_port(server, settings, cli):
    assert processes_of(server)
    group = server.pgid
    out = cli("stop", server.name)
    assert out.returncode == 0, out.stderr
    assert "none left" in out.stdout
    assert not processes_of(server)
    assert not [p for p in vllm_processes() if p.pgid == group]
    assert port_is_free("127.0.0.1", server.port)
    assert json.loads(cli("status", server.name, "--json").stdout)["state"] == "stopped"


def test_local_deepseek_waits_for_a_starting_server_then_a_crash_is_reported_and_reaped(settings, cli, monkeypatch):
    """One fresh deployment of its own name: local_deepseek() waits while it starts (it returns
    with the record ready, written by that wait); after SIGKILL of its API server the crash is
    reported without any wait; `dsagent stop` then leaves no vLLM process. Whether the session
    server still runs does not matter (the deployment is named)."""
    import dsagent
    from dsagent.deploy import up as up_module
    from dsagent.errors import DeploymentError, NoDeploymentError

    dep = up(options=ServeOptions(port=0, device="cpu"), name="waiter", settings=settings, wait_ready=False)
    assert dep.state == "starting" and live_state(load(settings, "waiter")) != State.READY
    llm = dsagent.local_deepseek("waiter", settings=settings, temperature=0, max_tokens=20)
    dep = load(settings, "waiter")
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
        dsagent.local_deepseek("waiter", settings=settings)
    assert not isinstance(info.value, NoDeploymentError) and "crashed" in str(info.value)
    assert waits == []
    survivors = [p for p in processes_of(dep) if p.name.startswith("VLLM::")]
    assert survivors, "the engine survives its API server (this is what stop must clean up)"
    assert json.loads(cli("status", dep.name, "--json").stdout)["state"] == "crashed"
    left = [o for o in json.loads(cli("ps", "--json").stdout)["orphans"] if o["pid"] in {p.pid for p in survivors}]
    assert left and all(o["deployment"] == dep.env[MARK] for o in left)  # named: which stop reaps it
    assert f"left by deployment {dep.name}: `dsagent stop {dep.name}`" in cli("ps").stdout
    out = cli("stop", dep.name)
    assert out.returncode == 0, out.stderr
    assert not processes_of(dep)
    assert not [p for p in vllm_processes() if p.pgid == dep.pgid or p.pid in {s.pid for s in survivors}]
    assert load(settings, dep.name).state == "stopped"
