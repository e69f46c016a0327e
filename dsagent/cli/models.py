"""``dsagent models``: the models dsagent knows by name, and the router's catalogue.

``dsagent models`` lists both; ``models add NAME [MODEL] [up's flags] [--ttl S] [--always-on]
[--no-sleep]`` and ``models remove NAME`` edit the catalogue ``dsagent router`` serves.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from ..plan.catalog import CATALOG
from ..router.catalogue import Entry, add, catalogue_file, load, remove
from ._common import add_serve_flags, serve_options, settings

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    for spec in CATALOG:
        print(f"{spec.name:32} {spec.repo_id:45} {spec.description}")
    home = settings()
    entries = load(home)
    print(f"\nthe router's catalogue ({catalogue_file(home)}):" if entries else
          "\nthe router's catalogue is empty: dsagent models add NAME MODEL")
    for e in entries:
        policy = "always on" if e.always_on else (f"ttl {e.ttl:g} s" if e.ttl else "kept loaded")
        print(f"  {e.name:24} {e.model:40} {e.options.device:4} {policy}" + ("" if e.can_sleep else ", no sleep"))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    opts = replace(serve_options(args), host="127.0.0.1", port=0)
    from ..deploy.up import default_model

    entry = Entry(name=args.name, model=args.model or default_model(opts.device), options=opts, ttl=args.ttl,
                  always_on=args.always_on, sleep=not args.no_sleep)
    entries = add(settings(), entry, replace_existing=args.replace)
    print(f"{entry.name}: added ({len(entries)} model(s) in {catalogue_file(settings())}); a running router "
          "reads the catalogue at its start: dsagent router stop && dsagent router start")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    entries = remove(settings(), args.name)
    print(f"{args.name}: removed ({len(entries)} model(s) left)")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("models", help="list known models and the router's catalogue; add or remove entries")
    p.set_defaults(func=run)
    verbs = p.add_subparsers(dest="models_command")
    a = verbs.add_parser("add", help="add a model to the router's catalogue (up's flags say how it runs)")
    a.add_argument("name", help="the name clients send as `model`")
    add_serve_flags(a, launch=False)
    a.add_argument("--ttl", type=float, default=300.0, help="idle seconds before it sleeps or stops (0: never)")
    a.add_argument("--always-on", action="store_true", help="load at the router's start; never evict")
    a.add_argument("--no-sleep", action="store_true", help="stop it when idle instead of vLLM's sleep (GPU)")
    a.add_argument("--replace", action="store_true", help="replace an entry of the same name")
    a.set_defaults(func=cmd_add)
    r = verbs.add_parser("remove", help="remove a model from the catalogue")
    r.add_argument("name")
    r.set_defaults(func=cmd_remove)
