"""``dsagent service install|uninstall``: a systemd unit that runs ``dsagent up --foreground``.

``install`` takes ``up``'s flags (the restart default is ``on-failure``) and writes
``dsagent-NAME.service`` (``--print``: shows it instead) and beside it ``dsagent-NAME.env``
(mode 0600): ``DSAGENT_HOME`` and the other settings this shell has (``CUDA_VISIBLE_DEVICES``,
``HF_*``, ...). A system unit runs as ``--run-as USER``, else the invoking account (as root: the
one that ran ``sudo``); root with neither is refused.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from ..deploy.supervise.service import check_owner, install, render_unit, service_user, uninstall, unit_dir, up_command
from ..errors import InputError
from ..plan.catalog import DEFAULT_CPU_MODEL, resolve
from ._common import add_restart_flags, add_serve_flags, restart_policy, serve_options, settings

__all__ = ["add_command", "add_unit_flags", "install_unit"]

def _name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    try:
        return resolve(args.model or DEFAULT_CPU_MODEL).name
    except InputError:
        return Path(args.model).name


def cmd_install(args: argparse.Namespace) -> int:
    policy, options = restart_policy(args), serve_options(args)  # bad flags are refused here, not at boot
    name = _name(args)
    return install_unit(name, up_command(args.model, name, options, policy), args)


def install_unit(name: str, argv: list[str], args: argparse.Namespace) -> int:
    """Write (or ``--print``) the unit ``dsagent-NAME.service`` running ``argv`` (``add_unit_flags``' options)."""
    home = settings()
    env = {**dict(home.exported), "DSAGENT_HOME": str(home.home)}
    run_as = service_user(args.run_as or "", user=args.user, euid=os.geteuid(), sudo_user=home.sudo_user,
                          me=pwd.getpwuid(os.geteuid()).pw_name)
    if run_as:
        check_owner(run_as, home.home)
    unit = render_unit(name, argv, env, user=args.user, run_as=run_as, workdir=str(home.home),
                       folder=Path(args.dir).absolute() if args.dir else unit_dir(args.user))
    if args.print:
        print(unit.text, end="")
        print(f"# install also writes {unit.env_path} (mode 0600): {' '.join(sorted(env))}", file=sys.stderr)
        return 0
    path, commands = install(unit, user=args.user)
    print(f"wrote {path}; start it now and at every boot with:\n  " + "\n  ".join(commands))
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    path, commands = uninstall(args.name, Path(args.dir) if args.dir else unit_dir(args.user), user=args.user)
    print(f"removed {path}; if it still runs, stop it with:\n  " + "\n  ".join(commands))
    return 0


def add_unit_flags(p: argparse.ArgumentParser, *, install: bool = True) -> None:
    """Where the unit goes (``--user``, ``--dir``) and, to install, ``--print`` and ``--run-as``."""
    p.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user), not a system one")
    p.add_argument("--dir", help="write the unit here instead of systemd's folder")
    if install:
        p.add_argument("--print", action="store_true", help="print the unit instead of writing it")
        p.add_argument("--run-as", metavar="USER", help="the account a system unit runs as (default: yours; as "
                       "root, the one that ran sudo); the account that owns DSAGENT_HOME")


def add_command(sub: Any) -> None:
    p = sub.add_parser("service", help="install or remove a systemd unit that keeps a deployment up")
    verbs = p.add_subparsers(dest="action", required=True)
    i = verbs.add_parser("install", help="write dsagent-NAME.service running `dsagent up --foreground`")
    add_serve_flags(i)
    add_restart_flags(i, default="on-failure")
    add_unit_flags(i)
    u = verbs.add_parser("uninstall", help="remove dsagent-NAME.service (NAME: a deployment, or router)")
    add_unit_flags(u, install=False)
    i.set_defaults(func=cmd_install)
    u.add_argument("name", help="the deployment's name")
    u.set_defaults(func=cmd_uninstall)
