"""``dsagent up`` / ``dsagent serve``: estimate, fetch and serve a model; print how to call it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..deploy.state import State
from ..deploy.up import up
from ._common import Progress, add_cluster_flags, add_serve_flags, print_deployment, serve_options, settings

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    progress = Progress()
    dep = up(args.model, options=serve_options(args), name=args.name, settings=settings(),
             wait_ready=not args.no_wait, timeout=args.timeout, on_step=progress.step, on_progress=progress,
             peers=args.peers)
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
        p.set_defaults(func=run)
