"""join: a node's part of a multi-node deployment, on vLLM's own multi-node engine.

The head (``dsagent up MODEL --nodes N ... --node-ip IP``) starts rank 0 and prints, for every
other node, the ``dsagent join`` command to run there (``join_command``). ``join`` checks,
before anything starts, what makes multi-node launches hang or fail later: this node's IP is
its own, the head's master port answers, the vLLM version and the model's content (manifest
fingerprint) are the head's. Then it starts this node's headless engine (``--headless``, no API
server) and a watcher (``dsagent.deploy.nodes.watch``) that stops it when the head is gone.

The roll call's token (``rollcall``) never travels in a command line, where ``ps`` shows it to
every user: the head writes it to ``<home>/deployments/<name>.token`` (mode 0600) and the join
command names that file (``--token-file``), to be copied to the node with its mode; or the node
is given it as ``DSAGENT_JOIN_TOKEN``. The node keeps it in its own record (mode 0600), where its
watcher reads it; neither the engine nor the watcher sees it in its environment.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace

from ...errors import InvalidOptionError, JoinError, NotReadyError
from ...plan.budget import check_nodes
from ...plan.catalog import ModelSpec, resolve
from ...settings import Settings
from ...system.ports import is_local_address, reachable, route_address
from ...weights.fetch import FetchResult, fetch
from ..launch.argv import plan_serve
from ..launch.options import ServeOptions
from ..launch.spawn import check_compiler, engine_version, launch, pin_interface, record_of
from ..record.names import check_name
from ..record.phase import wait_for
from ..record.state import State
from ..record.store import Deployment
from .rollcall import check_token, read_token
from .watch import start_watcher

__all__ = ["JoinSpec", "join", "join_command"]

Step = Callable[[str], None]


@dataclass(frozen=True)
class JoinSpec:
    """What the head tells a node (the flags of ``dsagent join``)."""

    head: str
    """The head's ``IP:MASTER_PORT``."""
    node_rank: int
    model: str
    nodes: int
    tp: int = 1
    pp: int = 1
    dp: int = 1
    name: str | None = None
    node_ip: str | None = None
    head_url: str = ""
    vllm_version: str = ""
    fingerprint: str = ""
    max_model_len: int | None = None
    dtype: str = "auto"
    dummy_weights: bool = False
    kv_cache_gib: int | None = None
    """CPU: the head's KV-cache size (every node holds the same share of layers' cache)."""
    gpu_memory_utilization: float | None = None
    tokenizer: str | None = None
    """The head's ``--tokenizer`` folder (the same path on every node, as the model's)."""
    token_file: str = ""
    """The file (mode 0600) holding the deployment's token for this node's reports to the head
    (``rollcall``); empty: ``DSAGENT_JOIN_TOKEN`` (``Settings.join_token``)."""


def join_command(dep: Deployment, spec: JoinSpec) -> str:
    """The exact ``dsagent join`` command for one node (what the head prints)."""
    argv = ["dsagent", "join", spec.head, "--node-rank", str(spec.node_rank), "--model", spec.model,
            "--nodes", str(spec.nodes), "--tp", str(spec.tp), "--pp", str(spec.pp), "--name", dep.name,
            "--head-url", spec.head_url, "--vllm-version", spec.vllm_version]
    argv += ["--dp", str(spec.dp)] if spec.dp > 1 else []
    argv += ["--node-ip", spec.node_ip] if spec.node_ip else []
    argv += ["--fingerprint", spec.fingerprint] if spec.fingerprint else []
    argv += ["--max-model-len", str(spec.max_model_len)] if spec.max_model_len else []
    argv += ["--dtype", spec.dtype] if spec.dtype != "auto" else []
    argv += ["--dummy-weights"] if spec.dummy_weights else []
    argv += ["--kv-cache-gib", str(spec.kv_cache_gib)] if spec.kv_cache_gib else []
    argv += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)] if spec.gpu_memory_utilization else []
    argv += ["--tokenizer", spec.tokenizer] if spec.tokenizer else []
    argv += ["--token-file", spec.token_file] if spec.token_file else []
    return shlex.join(argv)


def _wait_for_master(host: str, port: int, timeout: float) -> None:
    try:
        wait_for(lambda: State.READY if reachable(host, port) else State.STARTING, timeout=timeout, interval=1.0,
                 what=f"the head's master port {host}:{port}")
    except NotReadyError:
        raise JoinError(f"the head's master port {host}:{port} does not answer (waited {timeout:.0f} s)",
                        "start the head first (dsagent up ... --nodes N) and check that this node can reach "
                        f"{host}:{port} (firewall, the address the head printed)", head=f"{host}:{port}",
                        check="master") from None


def _token(spec: JoinSpec, settings: Settings) -> str:
    """This node's token for the head's roll call: ``--token-file``, else ``DSAGENT_JOIN_TOKEN``."""
    if spec.token_file:
        return read_token(spec.token_file)
    if settings.join_token:
        return check_token(settings.join_token, "DSAGENT_JOIN_TOKEN")
    raise InvalidOptionError("no token for this node's reports to the head: --token-file is not given and "
                             "DSAGENT_JOIN_TOKEN is not set",
                             "copy the token file the head printed to this node, keeping its mode "
                             "(scp -p HEAD:PATH PATH), and pass --token-file PATH; or set DSAGENT_JOIN_TOKEN "
                             "to its content", option="--token-file", value=None)


def _node_ip(spec: JoinSpec, host: str, port: int) -> str:
    ip = spec.node_ip or route_address(host, port)
    if not is_local_address(ip):
        raise InvalidOptionError(f"--node-ip {ip} is not an address of this machine",
                                 "pass this node's own address, the one the head can reach "
                                 "(`ip -brief address` lists them)", option="--node-ip", value=ip)
    return ip


def join(spec: JoinSpec, *, options: ServeOptions | None = None, settings: Settings | None = None,
         master_timeout: float = 300.0, on_step: Step | None = None) -> Deployment:
    """Check this node against the head, then start its headless engine and its watcher."""
    settings = settings or Settings.load()
    step = on_step or (lambda _m: None)
    if spec.name is not None:
        check_name(spec.name)
    host, _, port_text = spec.head.rpartition(":")
    if not host or not port_text.isdigit():
        raise InvalidOptionError(f"head {spec.head!r} is not IP:PORT", "pass what the head printed, e.g. "
                                 "10.0.0.1:29501", option="HEAD", value=spec.head)
    port = int(port_text)
    if not 0 < spec.node_rank < spec.nodes:
        raise InvalidOptionError(f"--node-rank {spec.node_rank} is not one of 1..{spec.nodes - 1}",
                                 "rank 0 is the head; give each other node its own rank", option="--node-rank",
                                 value=spec.node_rank)
    check_nodes(spec.tp, spec.pp, spec.dp, spec.nodes)
    ip = _node_ip(spec, host, port)
    token = _token(spec, settings)
    model = resolve(spec.model)
    o = replace(options or ServeOptions(), tp=spec.tp, pp=spec.pp, dp=spec.dp, nodes=spec.nodes,
                node_rank=spec.node_rank, node_ip=ip, master_addr=host, master_port=port,
                max_model_len=spec.max_model_len, dtype=spec.dtype, dummy_weights=spec.dummy_weights,
                kv_cache_gib=spec.kv_cache_gib, gpu_memory_utilization=spec.gpu_memory_utilization,
                tokenizer=spec.tokenizer)
    check_compiler(o)
    version = engine_version(settings, o.device)
    if spec.vllm_version and version != spec.vllm_version:
        raise JoinError(f"this node has vLLM {version}, the head {spec.vllm_version}",
                        f"install vLLM {spec.vllm_version} here (the same build as the head)", head=spec.head,
                        check="vllm_version")
    step(f"fetch: {model.name} ({model.source})")
    fetched = fetch(model, settings=settings, weights=not o.dummy_weights)
    mine = fetched.manifest.fingerprint if fetched.manifest else ""
    if spec.fingerprint and mine != spec.fingerprint:
        raise JoinError(f"{model.name} here ({fetched.path}, fingerprint {mine[:12] or 'none'}) is not the head's "
                        f"({spec.fingerprint[:12]})", f"fetch the head's revision: dsagent fetch --force {spec.model}; "
                        "every node must serve the same weights", head=spec.head, check="model")
    # data-parallel heads listen first on the replicas' handshake port (master port + 1)
    port_open = port + 1 if spec.dp > 1 else port
    step(f"waiting for the head at {host}:{port_open}")
    _wait_for_master(host, port_open, master_timeout)
    return _start(spec, token, model, o, fetched, version, settings, step)


def _start(spec: JoinSpec, token: str, model: ModelSpec, o: ServeOptions, fetched: FetchResult, version: str,
           settings: Settings, step: Step) -> Deployment:
    name = check_name(spec.name or model.name)
    plan = plan_serve(name, fetched.path, settings, o, reasoning=model.reasoning, context_limit=model.context_limit,
                      sampling=model.sampling, think_tags=model.think_tags)
    plan = pin_interface(plan)
    record = record_of(plan, settings, model=model.repo_id or name, vllm_version=version, estimate={},
                       revision=fetched.revision)
    record.master, record.head_url = spec.head, spec.head_url
    record.token = token
    step(f"serve (headless, rank {spec.node_rank} of {spec.nodes}): {' '.join(plan.argv[1:])}")
    record = launch(plan, settings, api_key=settings.api_key(), record=record)
    return start_watcher(record, settings)
