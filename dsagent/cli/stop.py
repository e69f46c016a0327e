"""``dsagent stop``: end a deployment's whole process tree (or every one, or the orphans)."""

from __future__ import annotations

import argparse
from typing import Any

from ..deploy.record.phase import live_state
from ..deploy.record.state import State
from ..deploy.record.store import list_all
from ..deploy.stop import stop, stop_orphans
from ..errors import AmbiguousDeploymentError
from ._common import settings

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    home = settings()
    if args.orphans:
        print(f"ended {len(stop_orphans(settings=home))} orphaned vLLM process(es)")
        return 0
    name = args.name
    if not name and not args.all:
        running = [d.name for d in list_all(home) if live_state(d).running or live_state(d) == State.CRASHED]
        if len(running) != 1:
            raise AmbiguousDeploymentError(f"{len(running)} deployments are running: {', '.join(running) or 'none'}",
                                           "name one (dsagent stop NAME) or use --all", names=running)
        name = running[0]
    problems = 0
    if args.all and not name:
        from ..router.serve import stop as stop_router

        if (info := stop_router(home)) is not None:  # first: it would load its models again on demand
            print(f"router (pid {info.pid}): stopped, and the models it started")
    for res in stop(name, all=args.all and not name, settings=home):
        if res.problem:
            problems += 1
            print(f"{res.name}: not stopped: {res.problem}")
        elif res.removed:
            print(f"{res.name}: nothing of it was running; its stale record is removed")
        else:
            print(f"{res.name}: stopped ({len(res.ended)} process(es) ended, none left)")
    return 1 if problems else 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("stop", help="end a deployment's whole process tree")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="stop every deployment (and the router)")
    p.add_argument("--orphans", action="store_true", help="end vLLM processes no deployment owns")
    p.set_defaults(func=run)
