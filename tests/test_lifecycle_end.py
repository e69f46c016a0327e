"""stop ends everything, including after the API server was SIGKILLed. These run last."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from dsagent.system.ports import port_is_free
from dsagent.system.procs import MARK, vllm_processes
from dsagent.deploy.record.identity import processes_of
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


def test_local_deepseek_waits_for_a_starting_server_then_a_crash_is_reported_and_reaped(settings, cli):
    """One fresh server: local_deepseek() waits while it starts; after SIGKILL of its API server
    the crash is reported at once; `dsagent stop` then leaves no vLLM process."""
    import dsagent
    from dsagent.errors import DeploymentError, NoDeploymentError

    dep = up(options=ServeOptions(port=0, device="cpu"), settings=settings, wait_ready=False)
    assert dep.state == "starting"
    t0 = time.monotonic()
    llm = dsagent.local_deepseek(settings=settings, temperature=0, max_tokens=20)
    assert time.monotonic() - t0 > 5  # it really waited for the start
    assert "Paris" in llm.invoke("What is the capital of France?").content
    dep = load(settings, dep.name)
    assert dep.state == "ready"

    os.kill(dep.pid, signal.SIGKILL)
    time.sleep(1)
    t0 = time.monotonic()
    with pytest.raises(DeploymentError) as info:
        dsagent.local_deepseek(settings=settings)
    assert not isinstance(info.value, NoDeploymentError) and "crashed" in str(info.value)
    assert time.monotonic() - t0 < 10
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
