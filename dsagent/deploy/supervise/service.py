"""service: a systemd unit that keeps a deployment up across crashes and reboots.

``render_unit`` is pure: it turns the ``dsagent up`` argv (run with ``--foreground``, so systemd
tracks the supervisor as the service's main process) and the environment into the unit's text
and its environment file. ``install`` writes both (``--user``: ``~/.config/systemd/user``; else
``/etc/systemd/system``), ``uninstall`` removes them; neither runs ``systemctl``: they return the
commands to run.

What goes into the unit is checked, not trusted: a value holding a newline, a carriage return or
another control character is refused (``InvalidOptionError`` naming it), since a newline would end
the line and start a directive of its own; ``ExecStart=`` words are quoted (``"`` and ``\\``
escaped, ``%`` and ``$`` doubled); paths are written as systemd reads them (``%`` doubled, never
quoted). The environment (``DSAGENT_HOME`` and the settings of the installing shell, which may hold
a mirror's or an index's credentials) is not written into the unit, which every user may read and
``systemctl show`` prints, but into ``dsagent-NAME.env`` beside it, mode 0600, read through
``EnvironmentFile=``. A system unit runs as ``User=`` the invoking account (``service_user``), never
root by accident.

Two layers of restarts: the foreground supervisor relaunches vLLM itself (``--restart
on-failure``, with the GPU-memory wait and the backoff); once it gives up it exits 1 and systemd's
``Restart=on-failure`` starts the whole again, ``StartLimitBurst`` times per interval.
``KillMode=mixed`` sends SIGTERM to the supervisor alone, which ends vLLM in order.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidOptionError, NoDeploymentError
from ..launch.options import ServeOptions
from ..record.names import check_name
from .policy import RestartPolicy

__all__ = [
    "UnitFile", "check_owner", "install", "parse_unit", "render_unit", "service_user", "uninstall", "unit_dir",
    "unit_name", "up_command",
]

_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")


def unit_name(name: str) -> str:
    """The unit of deployment ``name``.

    >>> unit_name("smollm2-135m-instruct")
    'dsagent-smollm2-135m-instruct.service'
    """
    return f"dsagent-{check_name(name)}.service"


def up_command(model: str | None, name: str, options: ServeOptions, policy: RestartPolicy) -> list[str]:
    """The unit's command: ``dsagent up`` in the foreground, its flags built from the typed options.

    >>> up_command("smol", "s", ServeOptions(port=0), RestartPolicy("on-failure"))[3:]
    ['up', 'smol', '--port', 'auto', '--restart', 'on-failure', '--name', 's', '--foreground']
    """
    return [sys.executable, "-m", "dsagent.cli", "up", *([model] if model else []), *options.up_flags(),
            *policy.up_flags(), "--name", check_name(name), "--foreground"]


def unit_dir(user: bool, home: Path | None = None) -> Path:
    """Where systemd looks for units: the user's (``--user``) or the system's."""
    return (home or Path.home()) / ".config/systemd/user" if user else Path("/etc/systemd/system")


def _checked(option: str, value: str, fix: str) -> str:
    """``value``, unless it holds a control character (a newline would start a directive of its own).

    >>> _checked("HF_HOME", "a\\nExecStartPre=/bin/evil", "unset it")
    Traceback (most recent call last):
    ...
    dsagent.errors.InvalidOptionError: HF_HOME 'a\\nExecStartPre=/bin/evil' holds a control character ('\\n'), ...
    """
    if (bad := _CONTROL.search(value)) is not None:
        raise InvalidOptionError(f"{option} {value!r} holds a control character ({bad.group()!r}), which a systemd "
                                 "unit cannot carry: a newline or carriage return would end the line and start a "
                                 "directive of its own", fix, option=option, value=value)
    return value


def _quote(word: str) -> str:
    """One word of ``ExecStart=``: ``%`` and ``$`` doubled, double-quoted (``"`` and ``\\`` escaped) when needed.

    >>> _quote("--port"), _quote("a b"), _quote("50%"), _quote('say "hi"')
    ('--port', '"a b"', '50%%', '"say \\\\"hi\\\\""')
    """
    word = _checked("the unit's command", word, "remove the control character from the flag or path that holds it")
    word = word.replace("%", "%%").replace("$", "$$")
    if _SAFE.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path(option: str, value: str | Path) -> str:
    """An absolute path as ``WorkingDirectory=`` and ``EnvironmentFile=`` read it: ``%`` doubled, not
    quoted (systemd takes the rest of the line, spaces included, and refuses a quoted path)."""
    text = _checked(option, str(value), f"use a {option} path without control characters")
    if not text.startswith("/") or text != text.strip():
        raise InvalidOptionError(f"{option} {text!r} is not an absolute path without surrounding blanks",
                                 f"use an absolute {option} path", option=option, value=text)
    return text.replace("%", "%%")


def _env_file(env: Mapping[str, str]) -> str:
    """The environment file's text: ``NAME="value"`` lines, ``\\ " ` $`` escaped (how systemd writes one).

    >>> print(_env_file({"HF_HOME": "/data/hf 100%", "X": 'a"b$c'}), end="")
    HF_HOME="/data/hf 100%"
    X="a\\"b\\$c"
    """
    lines = []
    for key, value in sorted(env.items()):
        if not _ENV_NAME.match(key):
            raise InvalidOptionError(f"{key!r} is not an environment variable name", "use letters, digits and _",
                                     option=key, value=value)
        value = _checked(key, value, f"unset {key} or set it without control characters in the shell that runs "
                                     "`dsagent service install`")
        lines.append(f"{key}=\"" + re.sub(r'([\\"`$])', r"\\\1", value) + '"')
    return "".join(line + "\n" for line in lines)


def service_user(run_as: str, *, user: bool, euid: int, sudo_user: str, me: str) -> str:
    """Who the unit runs as (its ``User=``): nobody for a ``--user`` unit (the user's own manager
    runs it); else ``run_as`` (``--run-as``), else the invoking account: ``me``, or as root the
    account that ran ``sudo`` (``SUDO_USER``). Root with neither is refused: vLLM would run as root.

    >>> service_user("", user=False, euid=1000, sudo_user="", me="ann"), service_user("", user=False, euid=0,
    ...     sudo_user="ann", me="root"), service_user("", user=True, euid=0, sudo_user="", me="root")
    ('ann', 'ann', '')
    """
    if user:
        if run_as:
            raise InvalidOptionError(f"--run-as {run_as} with --user: a user unit runs as the user whose systemd "
                                     "runs it", "drop --run-as, or drop --user for a system unit", option="--run-as",
                                     value=run_as)
        return ""
    chosen = run_as or (me if euid != 0 else sudo_user if sudo_user != "root" else "")
    if not chosen:
        raise InvalidOptionError("a system unit installed as root without --run-as would run vLLM as root",
                                 "pass --run-as USER, the account that owns DSAGENT_HOME (or run `sudo dsagent "
                                 "service install` from that account, or install a --user unit)", option="--run-as")
    if not _USER_NAME.match(chosen):
        raise InvalidOptionError(f"--run-as {chosen!r} is not an account name", "pass --run-as USER, an account "
                                 "of this machine", option="--run-as", value=chosen)
    return chosen


def check_owner(account: str, home: Path) -> None:
    """Refuse a unit whose account could not use ``home``: no such account here, or a home that
    exists and belongs to another (the service would fail at every start, unable to read its key)."""
    try:
        uid = pwd.getpwnam(account).pw_uid
    except KeyError:
        raise InvalidOptionError(f"there is no account {account!r} on this machine", "pass --run-as USER, the "
                                 "account that owns DSAGENT_HOME", option="--run-as", value=account) from None
    try:
        owner = home.stat().st_uid
    except FileNotFoundError:
        return
    if owner != uid:
        name = next((p.pw_name for p in pwd.getpwall() if p.pw_uid == owner), str(owner))
        raise InvalidOptionError(f"DSAGENT_HOME {home} belongs to {name}, and the unit would run as {account}",
                                 f"pass --run-as {name}, or set DSAGENT_HOME to a home of {account}",
                                 option="--run-as", value=account)


@dataclass(frozen=True)
class UnitFile:
    """A rendered unit: its file name, text and folder, and its environment file's text (0600)."""

    name: str
    text: str
    folder: Path
    env_text: str = ""

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @property
    def env_path(self) -> Path:
        """``dsagent-NAME.env`` beside the unit."""
        return self.folder / (self.name.removesuffix(".service") + ".env")


def render_unit(name: str, argv: Sequence[str], env: Mapping[str, str], *, user: bool, folder: Path,
                run_as: str = "", start_limit: int = 5, start_window: float = 600.0, workdir: str = "") -> UnitFile:
    """The unit that runs ``argv`` (``dsagent up ... --foreground`` or ``dsagent router serve``), to be written into
    ``folder``, with ``env`` in its environment file beside it."""
    if "--foreground" not in argv and list(argv[3:5]) != ["router", "serve"]:  # `router serve` is foreground
        raise InvalidOptionError("the unit's command must run in the foreground", "add --foreground",
                                 option="--foreground")
    shell = UnitFile(unit_name(name), "", folder)
    if run_as and not _USER_NAME.match(run_as):
        raise InvalidOptionError(f"--run-as {run_as!r} is not an account name", "pass --run-as USER, an account of "
                                 "this machine", option="--run-as", value=run_as)
    lines = [
        "[Unit]",
        f"Description=dsagent {'router' if list(argv[3:5]) == ['router', 'serve'] else 'deployment ' + name} "
        "(vLLM, supervised)",
        "After=network-online.target",
        "Wants=network-online.target",
        f"StartLimitIntervalSec={start_window:.0f}",
        f"StartLimitBurst={start_limit}",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_quote(a) for a in argv),
        f"EnvironmentFile={_path('environment file', shell.env_path)}",
        *([f"WorkingDirectory={_path('DSAGENT_HOME', workdir)}"] if workdir else []),
        *([f"User={run_as}"] if run_as and not user else []),
        "Restart=on-failure",
        "RestartSec=10",
        "KillMode=mixed",
        "TimeoutStopSec=60",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
        "",
    ]
    return UnitFile(shell.name, "\n".join(lines), folder, _env_file(env))


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit's sections and their keys (repeated keys keep every value, in order).

    >>> parse_unit("[Service]\\nEnvironment=A=1\\nEnvironment=B=2\\n")["Service"]["Environment"]
    ['A=1', 'B=2']
    """
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        if not sep or not section:
            raise InvalidOptionError(f"not a unit line: {raw!r}", "a unit holds [Section] headers and Key=Value lines",
                                     option="unit")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def _commands(unit: str, user: bool, enable: bool) -> list[str]:
    ctl = "systemctl --user" if user else "sudo systemctl"
    if enable:
        return [f"{ctl} daemon-reload", f"{ctl} enable --now {unit}"] + (
            ["loginctl enable-linger $USER   # so it starts at boot, before you log in"] if user else [])
    return [f"{ctl} disable --now {unit}", f"{ctl} daemon-reload"]


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600 from the start (a temporary file renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def install(unit: UnitFile, *, user: bool) -> tuple[Path, list[str]]:
    """Write ``unit`` and its environment file (0600) into its folder; the unit's path and the
    ``systemctl`` commands that start it."""
    unit.folder.mkdir(parents=True, exist_ok=True)
    _write_private(unit.env_path, unit.env_text)
    unit.path.write_text(unit.text)
    return unit.path, _commands(unit.name, user, enable=True)


def uninstall(name: str, folder: Path, *, user: bool) -> tuple[Path, list[str]]:
    """Remove deployment ``name``'s unit (and its environment file) from ``folder``; the path and the
    commands that stop it. Run them first: a unit removed while it runs keeps running until stopped."""
    path = folder / unit_name(name)
    if not path.exists():
        raise NoDeploymentError(f"no unit {path}", "see `ls " + str(folder) + "`; install one with "
                                "`dsagent service install`", name=name)
    path.unlink()
    with contextlib.suppress(FileNotFoundError):
        UnitFile(path.name, "", folder).env_path.unlink()
    return path, _commands(path.name, user, enable=False)
