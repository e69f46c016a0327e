"""``dsagent models``: the models dsagent knows by name."""

from __future__ import annotations

import argparse
from typing import Any

from ..plan.catalog import CATALOG

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    for spec in CATALOG:
        print(f"{spec.name:32} {spec.repo_id:45} {spec.description}")
    return 0


def add_command(sub: Any) -> None:
    sub.add_parser("models", help="list the models dsagent knows by name").set_defaults(func=run)
