"""``dsagent join``: this node's part of a multi-node deployment (the command the head printed)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..deploy.launch.options import ServeOptions
from ..deploy.nodes.join import JoinSpec, join
from ..system.gpus import detect_device
from ._common import ProgressLine, cpu_list, settings

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    spec = JoinSpec(head=args.head, node_rank=args.node_rank, model=args.model, nodes=args.nodes, tp=args.tp,
                    pp=args.pp, dp=args.dp, name=args.name, node_ip=args.node_ip, head_url=args.head_url or "",
                    vllm_version=args.vllm_version or "", fingerprint=args.fingerprint or "",
                    max_model_len=args.max_model_len, dtype=args.dtype, dummy_weights=args.dummy_weights,
                    kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=args.gpu_memory_utilization,
                    token_file=args.token_file or "", tokenizer=args.tokenizer)
    options = ServeOptions(device=args.device or detect_device(settings()), cpus=args.cpus)
    dep = join(spec, options=options, settings=settings(), master_timeout=args.timeout, on_step=ProgressLine().step)
    if args.json:
        print(json.dumps(dep.to_json(), indent=2))
    else:
        print(f"{dep.name}: rank {dep.node_rank} started (pid {dep.pid}); it serves once every node has joined, "
              f"and stops by itself when the head {args.head} is gone. `dsagent status {dep.name}` follows it.")
    return 0


def add_command(sub: Any) -> None:
    text = "join a multi-node deployment as one of its nodes (run what the head printed)"
    p = sub.add_parser("join", help=text, description=text)
    p.add_argument("head", metavar="HEAD_IP:PORT", help="the head's master address")
    p.add_argument("--node-rank", type=int, required=True, help="this node's rank (1 .. nodes-1)")
    p.add_argument("--model", required=True, help="the model the head serves")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--name", help="the deployment's name (the head's)")
    p.add_argument("--node-ip", help="this node's address (default: the one on the route to the head)")
    p.add_argument("--head-url", help="the head's API root, watched to stop this node when the head is gone")
    p.add_argument("--vllm-version", help="the head's vLLM version; refused when this node's differs")
    p.add_argument("--fingerprint", help="the head's model fingerprint; refused when this node's weights differ")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--dummy-weights", action="store_true")
    p.add_argument("--kv-cache-gib", type=int, help="CPU KV-cache size (the head's)")
    p.add_argument("--gpu-memory-utilization", type=float, help="the head's share of each GPU")
    p.add_argument("--tokenizer", help="the head's tokenizer folder (the same path here)")
    p.add_argument("--token-file", metavar="PATH",
                   help="the head's token file (mode 0600, copied from the head) for this node's reports to the "
                        "head; default: the DSAGENT_JOIN_TOKEN variable")
    p.add_argument("--device", choices=("cpu", "gpu"))
    p.add_argument("--cpus", type=cpu_list, help="CPU cores this node's workers may use (CPU only)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the head's master port (default 300)")
    p.add_argument("--json", action="store_true", help="print this node's deployment record as JSON")
    p.set_defaults(func=run)
