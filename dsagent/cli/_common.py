"""What the ``dsagent`` commands share: argument types, the serve flags, progress, the ready banner."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..deploy.launch.options import ServeOptions
from ..deploy.record.state import PHASES, State
from ..deploy.record.store import Deployment
from ..deploy.supervise.policy import MODES, RestartPolicy
from ..settings import Settings
from ..system.gpus import detect_device

__all__ = [
    "ProgressLine", "add_cluster_flags", "add_restart_flags", "add_serve_flags", "cpu_list", "port", "print_deployment",
    "restart_policy", "serve_options", "settings",
]


def settings() -> Settings:
    return Settings.load()


def port(text: str) -> int:
    """``--port``: a number in 1-65535, or ``auto`` (0: a free one)."""
    if text == "auto":
        return 0
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a number or 'auto', not {text!r}") from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"--port {number} is outside 1-65535")
    return number


class ProgressLine:
    """One status line on a terminal (rewritten in place); phase changes only otherwise."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream, self.tty, self.last = stream, stream.isatty(), ""

    def step(self, message: str) -> None:
        print(f"dsagent: {message}", file=self.stream)

    def __call__(self, p: Any) -> None:
        bar = " -> ".join(x.upper() if x == p.phase else str(x) for x in PHASES)
        if self.tty:
            print(f"\r  {bar}  {p.elapsed:5.0f}s ", end="", file=self.stream, flush=True)
            if p.phase == State.READY:
                print(file=self.stream)
        elif p.phase != self.last:
            print(f"  {p.phase} ({p.elapsed:.0f}s)", file=self.stream, flush=True)
        self.last = p.phase


def add_serve_flags(p: argparse.ArgumentParser, *, launch: bool = True) -> None:
    """The flags of ``up`` / ``serve`` (and the MCP server's ``--up``); ``launch=False``: only how
    the model runs (``models add``: the router chooses name, address and waits)."""
    p.add_argument("model", nargs="?", help="catalog name, hub id or model folder (default: the embedded model on CPU)")
    if launch:
        p.add_argument("--name", help="deployment and served model name (default: the catalog name)")
        p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=port, default=8000, help="port number, or 'auto' for a free one (default 8000)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
    p.add_argument("--dtype", default="auto", help="weights dtype (auto: float32 on CPU)")
    p.add_argument("--max-model-len", type=int, help="context length (CPU default 2048)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="default: gpu when an NVIDIA GPU is present")
    p.add_argument("--kv-cache-gib", type=int, help="CPU KV cache size (default: from the estimate)")
    p.add_argument("--gpu-memory-utilization", type=float, help="share of each GPU vLLM may use")
    p.add_argument("--enforce-eager", action="store_true", help="skip torch.compile / CUDA graphs")
    p.add_argument("--dummy-weights", action="store_true", help="random weights of the real shapes (rehearsal)")
    p.add_argument("--tokenizer", help="tokenizer folder or id, if not the model's (e.g. with --dummy-weights)")
    p.add_argument("--vllm-arg", action="append", metavar="ARG", help="pass one more argument to vLLM (repeatable)")
    p.add_argument("--cpus", type=cpu_list, help="CPU cores this node's workers may use, e.g. 0-3 or 0,1 (CPU only)")
    p.add_argument("--gpus", type=cpu_list, help="GPUs this deployment may use, e.g. 0,1 (CUDA_VISIBLE_DEVICES)")
    if not launch:
        return
    p.add_argument("--sleep-mode", action="store_true",
                   help="enable vLLM's sleep mode (GPU): the router may offload the model when idle")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for ready (default 900)")
    p.add_argument("--no-wait", action="store_true", help="return once launched")
    p.add_argument("--json", action="store_true", help="print the deployment record as JSON")


def cpu_list(text: str) -> tuple[int, ...]:
    """``--cpus``: ``0-3``, ``0,2`` or a mix (``argv.core_list``).

    >>> cpu_list("0-2,5")
    (0, 1, 2, 5)
    """
    from ..deploy.launch.argv import core_list

    try:
        return core_list(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes numbers such as 0-3 or 0,2, not {text!r}") from None


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """``up``'s flags for a multi-node head and for data-parallel replicas."""
    g = p.add_argument_group("several nodes (vLLM's multi-node engine) and replicas")
    g.add_argument("--nodes", type=int, default=1, help="nodes the deployment spans; this one is the head (rank 0)")
    g.add_argument("--node-ip", help="this node's address, which the other nodes reach (needed with --nodes)")
    g.add_argument("--master-port", type=int, default=29501, help="rank 0's port for the other nodes (default 29501)")
    g.add_argument("--peers", type=lambda t: tuple(x for x in t.split(",") if x), default=(),
                   help="the other nodes' addresses in rank order, for the join commands printed")
    g.add_argument("--dp", type=int, default=1, help="data-parallel replicas behind one endpoint")
    g.add_argument("--backend", choices=("mp", "ray"), default="mp",
                   help="mp: vLLM's multi-node engine, `dsagent join` on the other nodes (default); ray: vLLM's Ray "
                        "executor on the running Ray cluster of RAY_ADDRESS (GPUs only; Ray's daemons are yours)")


def add_restart_flags(p: argparse.ArgumentParser, default: str = "no") -> None:
    """The supervisor's flags (``up``, ``service install``); see ``dsagent.deploy.supervise.policy``."""
    d = RestartPolicy()
    g = p.add_argument_group("supervision (restarts)")
    g.add_argument("--restart", choices=MODES, default=default,
                   help=f"relaunch after a failure (on-failure) or any exit (always) (default {default})")
    g.add_argument("--restart-backoff", type=float, default=d.backoff, help="seconds before the first relaunch, "
                   f"doubled after each further failure (default {d.backoff:g})")
    g.add_argument("--restart-max", type=int, default=d.max_failures,
                   help=f"give up after this many failures within --restart-window (default {d.max_failures})")
    g.add_argument("--restart-window", type=float, default=d.window, help=f"seconds (default {d.window:g})")
    g.add_argument("--check-interval", type=float, default=d.interval, help=f"seconds between checks (default {d.interval:g})")
    g.add_argument("--stall-seconds", type=float, default=d.stall,
                   help=f"requests running and no new token this long is a failure (default {d.stall:g})")
    g.add_argument("--canary-every", type=float, default=d.canary_every,
                   help=f"seconds between 1-token canary completions while idle, 0 for none (default {d.canary_every:g})")
    g.add_argument("--canary-deadline", type=float, default=d.canary_deadline,
                   help=f"seconds the canary may take (default {d.canary_deadline:g})")


def restart_policy(args: argparse.Namespace) -> RestartPolicy:
    return RestartPolicy(mode=args.restart, backoff=args.restart_backoff, max_failures=args.restart_max,
                         window=args.restart_window, interval=args.check_interval, stall=args.stall_seconds,
                         canary_every=args.canary_every, canary_deadline=args.canary_deadline,
                         start_timeout=args.timeout)


def serve_options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        host=getattr(args, "host", "127.0.0.1"), port=getattr(args, "port", 0), tp=args.tp, pp=args.pp, dtype=args.dtype,
        max_model_len=args.max_model_len, device=args.device or detect_device(settings()),
        kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=True if args.enforce_eager else None, dummy_weights=args.dummy_weights, tokenizer=args.tokenizer,
        extra_args=tuple(args.vllm_arg or ()), cpus=args.cpus, gpus=args.gpus, sleep_mode=getattr(args, "sleep_mode", False),
        nodes=getattr(args, "nodes", 1), node_ip=getattr(args, "node_ip", None),
        master_port=getattr(args, "master_port", 29501), dp=getattr(args, "dp", 1),
        backend=getattr(args, "backend", "mp"),
    )


def print_deployment(dep: Deployment) -> None:
    """The ready banner: where it listens, estimate vs measured, and how to call it."""
    from ..clients.snippets import snippets

    snip = snippets(dep)
    secs = dep.measured.get("seconds_to_ready")
    print(f"\n{dep.name} is ready" + (f" (started in {secs:.0f} s)" if secs else "") + "\n")
    print(f"  base URL    {dep.base_url}\n  model       {dep.name}\n  API key     {dep.api_key_file}")
    print(f"  log         {dep.log_file}\n  stop with   dsagent stop {dep.name}\n")
    est, got = dep.estimate or {}, dep.measured or {}
    rows = [(label, est.get(key), got.get(key)) for label, key in
            (("KV-cache tokens", "kv_cache_tokens"), ("max concurrency", "max_concurrency"))
            if est.get(key) is not None and got.get(key) is not None]
    if rows:
        print(f"  {'':16} {'estimate':>12} {'measured':>12}")
        for label, e, m in rows:
            print(f"  {label:16} {e:>12,} {m:>12,}" + (f"  ({(e - m) / m * 100:+.1f}%)" if m else ""))
        print()
    for title, text in (("curl", snip["curl"]), ("OpenAI SDK", snip["openai"]), ("LangChain", snip["langchain"])):
        print(f"--- {title} ---\n{text}\n")
