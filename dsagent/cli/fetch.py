"""``dsagent fetch``: put a model's weights in the store, verified."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..weights.fetch import fetch
from ._common import settings

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    res = fetch(args.model, settings=settings(), force=args.force, deep_verify=args.verify, dry_run=args.dry_run,
                sources=args.source, mirror=args.mirror, revision=args.revision, progress=False if args.json else None)
    if res.plan is not None:
        print(json.dumps(res.plan.to_json(), indent=2) if args.json else res.plan.table())
    elif args.json:
        print(json.dumps(res.to_json(), indent=2))
    else:
        verb = "verified" if args.verify else ("already in the store" if res.reused else "fetched")
        pin = f" @ {res.revision}" if res.revision else ""
        print(f"{args.model}{pin}: {verb} at {res.path} ({res.seconds:.1f} s)")
        for name in res.refetched:
            print(f"  {name} failed verification and was fetched again")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("fetch", help="put a model's weights in the store, verified")
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="fetch or convert again")
    p.add_argument("--verify", action="store_true",
                   help="re-check every file's sha256 (hub models: against the source's metadata; bad files are fetched again)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the files, sizes, what is cached and the disk needed vs free; download nothing")
    p.add_argument("--source", metavar="ORDER",
                   help="sources to try in order, e.g. hub,mirror,modelscope (default: $DSAGENT_FETCH_SOURCES, "
                        "else hub,mirror,modelscope; mirror first when one is set)")
    p.add_argument("--mirror", metavar="URL", help="an HF-compatible mirror (default: $HF_ENDPOINT)")
    p.add_argument("--revision", help="branch, tag or commit of a hub model (default: main; ModelScope: master)")
    p.add_argument("--json", action="store_true", help="print the result as JSON; no progress bar")
    p.set_defaults(func=run)
