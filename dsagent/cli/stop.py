"""``dsagent stop``: end a deployment's whole process tree (or every one, or the orphans)."""

from __future__ import annotations

import argparse
from typing import Any

from ..deploy.records import list_all
from ..deploy.state import State
from ..deploy.status import live_state
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
        running = [d.name for d in list_all(home) if live_state(d) not in (State.STOPPED, State.FAILED)]
        if len(running) != 1:
            raise AmbiguousDeploymentError(f"{len(running)} deployments are running: {', '.join(running) or 'none'}",
                                           "name one (dsagent stop NAME) or use --all", names=running)
        name = running[0]
    for res in stop(name, settings=home):
        print(f"{res.name}: stopped ({len(res.ended)} process(es) ended, none left)")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("stop", help="end a deployment's whole process tree")
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true", help="stop every deployment")
    p.add_argument("--orphans", action="store_true", help="end vLLM processes no deployment owns")
    p.set_defaults(func=run)
