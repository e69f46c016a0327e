"""``dsagent router``: many models behind one address, loaded on demand (``dsagent models add`` lists them).

``serve`` runs it in the foreground (what a systemd unit or a terminal runs); ``start`` runs it
detached and returns once it answers; ``service`` writes a systemd unit running ``serve`` with
``Restart=on-failure`` (``dsagent service uninstall router`` removes it); ``stop`` ends it and every
model it started; ``status`` prints its models' states.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..router.serve import DEFAULT_PORT, find, run, start, stop
from ._common import port, settings

__all__ = ["add_command", "print_router"]


def _serve_flags(args: argparse.Namespace) -> list[str]:
    out = ["--host", args.host, "--port", str(args.port or "auto"), "--wait", str(args.wait)]
    return out + (["--memory-gib", str(args.memory_gib)] if args.memory_gib is not None else [])


def cmd_serve(args: argparse.Namespace) -> int:
    run(settings(), host=args.host, port=args.port, wait=args.wait, memory_gib=args.memory_gib)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    info = start(settings(), _serve_flags(args))
    print(f"router is up at {info.base_url} (pid {info.pid}) serving: {', '.join(info.models)}\n"
          f"  key: {settings().api_key_file}\n  stop with: dsagent router stop")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    info = stop(settings())
    print("no router is running" if info is None else f"router (pid {info.pid}) stopped, and every model it started")
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from .service import install_unit

    return install_unit("router", [sys.executable, "-m", "dsagent.cli", "router", "serve", *_serve_flags(args)], args)


def print_router(info: Any) -> None:
    """The router's lines of ``dsagent status``."""
    print(f"router: {info.base_url}  pid {info.pid}")
    now = time.time()
    for name, m in info.models.items():
        used = f"used {now - m['last_used']:.0f} s ago" if m.get("last_used") else "not used yet"
        need = f"  needs {m['need_gib']:.1f} GiB" if m.get("need_gib") else ""
        kv = m.get("kv_cache_tokens") or {}
        kv_text = f"  KV tokens planned {kv['planned']:,} measured {kv['measured']:,}" if kv.get("measured") else ""
        print(f"  {name}: {m['state']}" + (f" ({m['phase']})" if m.get("phase") else "") + f"  {used}{need}{kv_text}"
              + (f"\n    error: {m['error']}" if m.get("error") else ""))


def cmd_status(args: argparse.Namespace) -> int:
    info = find(settings())
    if args.json:
        print(json.dumps(None if info is None else info.__dict__, indent=2))
    elif info is None:
        print("no router is running; start one with: dsagent router start")
    else:
        print_router(info)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("router", help="serve the catalogue's models behind one address, loading them on demand",
                       description=__doc__)
    verbs = p.add_subparsers(dest="router_command", required=True)
    for verb, func, text in (("serve", cmd_serve, "run in the foreground until Ctrl-C / SIGTERM"),
                             ("start", cmd_start, "run in the background; return once it answers"),
                             ("service", cmd_service, "write dsagent-router.service (systemd) running "
                              "`dsagent router serve`, restarted on failure")):
        v = verbs.add_parser(verb, help=text, description=text)
        v.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        v.add_argument("--port", type=port, default=DEFAULT_PORT, help=f"port, or 'auto' (default {DEFAULT_PORT})")
        v.add_argument("--wait", type=float, default=60.0,
                       help="seconds a request waits for its model to load before a 503 (default 60)")
        v.add_argument("--memory-gib", type=float,
                       help="host RAM the router may fill with CPU models (default: 80%% of what is free)")
        if verb == "service":
            from .service import add_unit_flags

            add_unit_flags(v)
        v.set_defaults(func=func)
    verbs.add_parser("stop", help="stop the router and every model it started").set_defaults(func=cmd_stop)
    s = verbs.add_parser("status", help="the router's models and their states")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
