"""``dsagent status``, ``dsagent ps`` and ``dsagent logs``: what deployments are doing."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..deploy.record.identity import MARK
from ..deploy.record.logs import log_tail
from ..deploy.record.names import check_name
from ..deploy.record.phase import live_state
from ..deploy.record.store import list_all, load
from ..deploy.status import orphans, report, reports
from ..errors import NoDeploymentError
from ._common import settings

__all__ = ["add_command"]


def _load(name: str) -> Any:
    dep = load(settings(), check_name(name))
    if dep is None:
        raise NoDeploymentError(f"no deployment named {name!r}", "list them with `dsagent ps`", name=name)
    return dep


def cmd_status(args: argparse.Namespace) -> int:
    rows = [report(_load(args.name), settings=settings())] if args.name else reports(settings())
    if args.json:
        print(json.dumps(rows[0] if args.name or len(rows) == 1 else rows, indent=2))
        return 0
    from ..router.serve import find as find_router
    from .router import print_router

    router = None if args.name else find_router(settings())
    if not rows and router is None:
        print("no deployments; start one with: dsagent up")
    for r in rows:
        if r["state"] == "unreadable":
            print(f"{r['name']}: unreadable  record {r['record']}\n  {r['reason']}\n  fix: {r['fix']}")
            continue
        kv = f"{r['kv_cache_usage'] * 100:.1f}%" if r["kv_cache_usage"] is not None else "-"
        running = r["requests_running"] if r["requests_running"] is not None else "-"
        print(f"{r['name']}: {r['state']}  {r['base_url']}  pid {r['pid'] or '-'}  KV used {kv}  running {running}"
              + (f"\n  reason: {r['reason']}" if r["reason"] else "") + _restart_line(r["restart"]))
        for n in r.get("nodes", []):
            kv = (f"  KV tokens {n['kv_tokens']:,}" if n.get("kv_tokens") else "") + (
                f"  KV cache {n['kv_cache_gib']:.1f} GiB" if n.get("kv_cache_gib") else "")
            gpus = f"  GPUs {n['gpus']}" if n.get("gpus") else ""
            print(f"  node {n['rank']} {n['ip'] or '?'}: {n['state']}{kv}{gpus}"
                  + (f"\n    {n['reason']}" if n.get("reason") else ""))
    if router is not None:
        print_router(router)
    return 0


def _restart_line(r: dict[str, Any] | None) -> str:
    if not r:
        return ""
    up_for = f", up {r['uptime_s']:.0f} s" if r["uptime_s"] is not None else ""
    last = f"\n  last failure: {time.strftime('%H:%M:%S', time.localtime(r['last_failure']['at']))} " \
           f"{r['last_failure']['reason']}" if r["last_failure"] else ""
    return (f"\n  supervised (--restart {r['mode']}, supervisor pid {r['supervisor_pid'] or '-'}): "
            f"{r['restarts']} restart(s){up_for}{last}")


def cmd_ps(args: argparse.Namespace) -> int:
    deps = list_all(settings())
    rows = [(d.name, str(live_state(d)), d.base_url, d.pid) for d in deps]
    orphan = orphans(settings())
    if args.json:
        print(json.dumps({"deployments": [dict(zip(("name", "state", "base_url", "pid"), r)) for r in rows],
                          "orphans": [o.__dict__ for o in orphan]}, indent=2))
        return 0
    print(f"{'NAME':32} {'STATE':10} {'URL':28} PID")
    for name, state, url, pid in rows:
        print(f"{name:32} {state:10} {url:28} {pid or '-'}")
    if orphan:
        print("\norphaned vLLM processes (no live deployment owns them; `dsagent stop --orphans` ends them):")
        mine = {d.env.get(MARK, d.name): d.name for d in deps}
        for o in orphan:
            left_by = mine.get(o.deployment or "")
            print(f"  {o.describe()}" + (f"\n    left by deployment {left_by}: `dsagent stop {left_by}` ends it"
                                        if left_by else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    dep = _load(args.name)
    print(log_tail(dep.log_file, args.lines))
    if args.follow:
        with open(dep.log_file) as f:
            f.seek(0, 2)
            while True:
                line = f.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.3)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("status", help="state, URL, KV usage and requests of deployments")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("ps", help="list deployments and orphaned vLLM processes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ps)
    p = sub.add_parser("logs", help="show a deployment's vLLM log")
    p.add_argument("name")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)
