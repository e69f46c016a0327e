"""The ``dsagent`` command: a thin face over the library, one module per verb, one error handler.

=========================  ================================================================
module                     commands
=========================  ================================================================
``up``                     ``up``, ``serve`` (also the head of several nodes)
``join``                   ``join`` (another node of a multi-node deployment)
``fetch``                  ``fetch``
``estimate``               ``estimate``
``status``                 ``status``, ``ps``, ``logs``
``stop``                   ``stop``
``models``                 ``models``, ``models add``, ``models remove`` (the router's catalogue)
``router``                 ``router serve|start|stop|status`` (many models behind one address)
``mcp``                    ``mcp``, ``mcp config``
``console``                ``console`` (the web console)
=========================  ================================================================
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import DsagentError
from . import console, estimate, fetch, join, mcp, models, router, service, status, stop, up

__all__ = ["build_parser", "main"]

VERBS = (up, join, fetch, estimate, status, stop, models, router, mcp, service, console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsagent", description="Serve DeepSeek models locally with vLLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DsagentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
