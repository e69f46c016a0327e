"""``dsagent console``: the web console on loopback (log in with the deployment key)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import port, settings

__all__ = ["add_command", "run"]


def run(args: argparse.Namespace) -> int:
    from ..console.app import serve
    from ..system.ports import free_port, is_loopback

    from ..errors import PortInUseError
    from ..system.ports import port_is_free

    home = settings()
    chosen = args.port or free_port(args.host)
    if not port_is_free(args.host, chosen):
        raise PortInUseError(f"{args.host}:{chosen} is taken", "pass --port with a free port (or --port auto)",
                             port=chosen)
    if not is_loopback(args.host):
        print(f"WARNING: the console listens on {args.host}, not on loopback: anyone who can reach this machine "
              "and holds the key can stop deployments from it. Use --host 127.0.0.1 unless you mean it.", flush=True)
    print(f"dsagent console on http://{args.host}:{chosen}/  (log in with the key in {home.api_key_file})", flush=True)
    serve(home, host=args.host, port=chosen)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("console", help="the web console: plan, deployments, GPUs, a chat (loopback, behind the key)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8700, help="port, or 'auto' (default 8700)")
    p.set_defaults(func=run)
