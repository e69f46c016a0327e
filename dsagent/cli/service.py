"""``dsagent service install|uninstall``: a systemd unit that runs ``dsagent up --foreground``.

``install`` takes ``up``'s flags (the restart default is ``on-failure``) and writes
``dsagent-NAME.service`` (``--print``: shows it instead); the unit carries ``DSAGENT_HOME`` and
the other settings this shell has (``CUDA_VISIBLE_DEVICES``, ``HF_*``, ...).
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from ..deploy.service import install, render_unit, uninstall, unit_dir
from ..errors import InputError
from ..plan.catalog import DEFAULT_CPU_MODEL, resolve
from ._common import add_restart_flags, add_serve_flags, restart_policy, serve_options, settings

__all__ = ["add_command", "up_argv"]

_NOT_UP = {"json", "no_wait", "timeout", "user", "print", "dir", "func", "command", "action", "model"}


def _up_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_serve_flags(p)
    add_restart_flags(p, default="on-failure")
    return p


def up_argv(args: argparse.Namespace) -> list[str]:
    """The ``dsagent up`` flags that ``args`` sets to other than their defaults, as argv words."""
    out = [args.model] if args.model else []
    for action in _up_parser()._actions:
        if not action.option_strings or action.dest in _NOT_UP:
            continue
        value, flag = getattr(args, action.dest, action.default), action.option_strings[0]
        if value == action.default and action.dest != "restart":
            continue
        if isinstance(action, argparse._StoreTrueAction):
            out.append(flag)
        elif isinstance(value, list):
            out += [f"{flag}={v}" for v in value]  # --vllm-arg=--x: a value that looks like a flag
        elif isinstance(value, tuple):
            out += [flag, ",".join(map(str, value))]
        else:
            out += [flag, "auto" if action.dest == "port" and value == 0 else str(value)]
    return out


def _name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    try:
        return resolve(args.model or DEFAULT_CPU_MODEL).name
    except InputError:
        return Path(args.model).name


def cmd_install(args: argparse.Namespace) -> int:
    restart_policy(args), serve_options(args)  # bad flags are refused here, not at boot
    home, name = settings(), _name(args)
    argv = [sys.executable, "-m", "dsagent.cli", "up", *up_argv(args), "--name", name, "--foreground"]
    env = {**dict(home.exported), "DSAGENT_HOME": str(home.home)}
    unit = render_unit(name, argv, env, user=args.user, run_as=pwd.getpwuid(os.getuid()).pw_name,
                       workdir=str(home.home))
    if args.print:
        print(unit.text, end="")
        return 0
    path, commands = install(unit, Path(args.dir) if args.dir else unit_dir(args.user), user=args.user)
    print(f"wrote {path}; start it now and at every boot with:\n  " + "\n  ".join(commands))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    path, commands = uninstall(args.name, Path(args.dir) if args.dir else unit_dir(args.user), user=args.user)
    print(f"removed {path}; if it still runs, stop it with:\n  " + "\n  ".join(commands))
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("service", help="install or remove a systemd unit that keeps a deployment up")
    verbs = p.add_subparsers(dest="action", required=True)
    i = verbs.add_parser("install", help="write dsagent-NAME.service running `dsagent up --foreground`")
    add_serve_flags(i)
    add_restart_flags(i, default="on-failure")
    for q in (i, u := verbs.add_parser("uninstall", help="remove dsagent-NAME.service")):
        q.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user), not a system one")
        q.add_argument("--dir", help="write the unit here instead of systemd's folder")
    i.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    i.set_defaults(func=cmd_install)
    u.add_argument("name", help="the deployment's name")
    u.set_defaults(func=cmd_uninstall)
