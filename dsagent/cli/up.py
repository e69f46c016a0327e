"""``dsagent up`` / ``dsagent serve``: estimate, fetch and serve a model; print how to call it.

``--restart on-failure|always`` hands the deployment to a detached supervisor; ``--foreground``
supervises it from this process until it is stopped (what a systemd unit runs).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..deploy.record.state import State
from ..deploy.supervise.supervisor import run_foreground
from ..deploy.up import up
from ._common import (ProgressLine, add_cluster_flags, add_restart_flags, add_serve_flags, print_deployment,
                      restart_policy, serve_options, settings)

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    progress, home, policy = ProgressLine(), settings(), restart_policy(args)
    dep = up(args.model, options=serve_options(args), name=args.name, settings=home,
             wait_ready=not args.no_wait and not args.foreground, timeout=args.timeout, on_step=progress.step,
             on_progress=progress, peers=args.peers, restart=policy, foreground=args.foreground)
    if args.foreground:
        progress.step(f"supervising {dep.name} in the foreground (--restart {policy.mode}); stop with Ctrl-C, "
                      f"SIGTERM or `dsagent stop {dep.name}`")
        return 0 if run_foreground(dep.name, home) == State.STOPPED else 1
    if args.json:
        print(json.dumps(dep.to_json(), indent=2))
    elif dep.state == State.READY:
        print_deployment(dep)
    else:
        print(f"{dep.name} is starting (pid {dep.pid}); follow it with: dsagent status {dep.name}")
    return 0


def add_command(sub: Any) -> None:
    for verb, text in (("up", "estimate, fetch and serve a model; print how to call it"), ("serve", "same as up")):
        p = sub.add_parser(verb, help=text, description=text)
        add_serve_flags(p)
        add_cluster_flags(p)
        add_restart_flags(p)
        p.add_argument("--foreground", action="store_true",
                       help="stay in the foreground supervising the deployment (for systemd: dsagent service)")
        p.set_defaults(func=run)
