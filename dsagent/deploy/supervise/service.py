"""service: a systemd unit that keeps a deployment up across crashes and reboots.

``render_unit`` is pure: it turns the ``dsagent up`` argv (run with ``--foreground``, so systemd
tracks the supervisor as the service's main process) and the environment into the unit's text.
``install`` writes it (``--user``: ``~/.config/systemd/user``; else ``/etc/systemd/system``),
``uninstall`` removes it; neither runs ``systemctl``: they return the commands to run.

Two layers of restarts: the foreground supervisor relaunches vLLM itself (``--restart
on-failure``, with the GPU-memory wait and the backoff); once it gives up it exits 1 and systemd's
``Restart=on-failure`` starts the whole again, ``StartLimitBurst`` times per interval.
``KillMode=mixed`` sends SIGTERM to the supervisor alone, which ends vLLM in order.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidOptionError, NoDeploymentError
from ..launch.options import ServeOptions
from ..record.names import check_name
from .policy import RestartPolicy

__all__ = ["UnitFile", "install", "parse_unit", "render_unit", "uninstall", "unit_dir", "unit_name", "up_command"]

_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


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


def _quote(word: str) -> str:
    """One word of ``ExecStart=`` or ``Environment=``: ``%`` and ``$`` escaped, quoted when needed.

    >>> _quote("--port"), _quote("a b"), _quote("50%")
    ('--port', '"a b"', '50%%')
    """
    word = word.replace("%", "%%").replace("$", "$$")
    if _SAFE.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class UnitFile:
    """A rendered unit: its file name and text."""

    name: str
    text: str


def render_unit(name: str, argv: Sequence[str], env: Mapping[str, str], *, user: bool, run_as: str = "",
                start_limit: int = 5, start_window: float = 600.0, workdir: str = "") -> UnitFile:
    """The unit that runs ``argv`` (a ``dsagent up ... --foreground`` command) with ``env``."""
    if "--foreground" not in argv:
        raise InvalidOptionError("the unit's command must run in the foreground", "add --foreground",
                                 option="--foreground")
    lines = [
        "[Unit]",
        f"Description=dsagent deployment {name} (vLLM, supervised)",
        "After=network-online.target",
        "Wants=network-online.target",
        f"StartLimitIntervalSec={start_window:.0f}",
        f"StartLimitBurst={start_limit}",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_quote(a) for a in argv),
        *(f"Environment={_quote(f'{k}={v}')}" for k, v in sorted(env.items())),
        *([f"WorkingDirectory={_quote(workdir)}"] if workdir else []),
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
    return UnitFile(unit_name(name), "\n".join(lines))


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


def install(unit: UnitFile, folder: Path, *, user: bool) -> tuple[Path, list[str]]:
    """Write ``unit`` into ``folder``; the path and the ``systemctl`` commands that start it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / unit.name
    path.write_text(unit.text)
    return path, _commands(unit.name, user, enable=True)


def uninstall(name: str, folder: Path, *, user: bool) -> tuple[Path, list[str]]:
    """Remove deployment ``name``'s unit from ``folder``; the path and the commands that stop it.
    Run them first: a unit removed while it runs keeps running until stopped."""
    path = folder / unit_name(name)
    if not path.exists():
        raise NoDeploymentError(f"no unit {path}", "see `ls " + str(folder) + "`; install one with "
                                "`dsagent service install`", name=name)
    path.unlink()
    return path, _commands(path.name, user, enable=False)
