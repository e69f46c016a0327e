"""What a systemd unit may carry: no value that adds a directive, quotes that survive, the
environment in a 0600 file beside the unit, and never root by accident (issue 23)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dsagent.deploy.supervise.service import check_owner, install, parse_unit, render_unit, service_user
from dsagent.errors import InvalidOptionError

pytestmark = pytest.mark.timeout(60)

ARGV = [sys.executable, "-m", "dsagent.cli", "up", "--name", "smol", "--foreground"]
EVIL = "a\nExecStartPre=/bin/evil"


def _render(tmp_path: Path, argv=ARGV, env=None, **kw):
    env = {"DSAGENT_HOME": str(tmp_path / "home")} if env is None else env
    return render_unit("smol", argv, env, user=True, folder=tmp_path / "units", **kw)


@pytest.mark.parametrize("value", [EVIL, "a\rExecStartPre=/bin/evil", "a\x00b", "a\x1bb", "a\x7fb"])
def test_a_control_character_in_an_environment_value_is_refused_naming_it(tmp_path, value):
    with pytest.raises(InvalidOptionError) as err:
        _render(tmp_path, env={"DSAGENT_HOME": "/h", "HF_HOME": value})
    assert err.value.option == "HF_HOME" and err.value.value == value
    assert repr(value) in str(err.value) and "unset HF_HOME" in err.value.remedy


def test_a_newline_anywhere_else_is_refused_too(tmp_path):
    with pytest.raises(InvalidOptionError, match="the unit's command '--vllm-arg=x\\\\nExecStartPre"):
        _render(tmp_path, argv=[*ARGV[:-1], "--vllm-arg=x\nExecStartPre=/bin/evil", "--foreground"])
    with pytest.raises(InvalidOptionError, match="DSAGENT_HOME"):
        _render(tmp_path, workdir="/srv/a\nExecStartPre=/bin/evil")
    with pytest.raises(InvalidOptionError, match="not an account name"):
        render_unit("smol", ARGV, {}, user=False, folder=tmp_path, run_as="svc\nExecStartPre=/bin/evil")
    with pytest.raises(InvalidOptionError, match="environment variable name"):
        _render(tmp_path, env={"A\nExecStartPre": "x"})


def test_a_newline_in_the_installing_shell_never_reaches_a_unit(cli, tmp_path):
    units = tmp_path / "units"
    env = {"DSAGENT_HOME": str(tmp_path / "home"), "HF_HOME": EVIL}
    out = cli("service", "install", "--name", "smol", "--user", "--dir", str(units), env=env)
    assert out.returncode == 2 and "HF_HOME" in out.stderr and "control character" in out.stderr, out.stderr
    assert not units.exists() or not any(units.iterdir())
    out = cli("service", "install", "--name", "smol", "--user", "--print", env=env)
    assert out.returncode == 2 and "ExecStartPre" not in out.stdout


TRICKY = {"DSAGENT_HOME": "/srv/my home", "HF_HOME": "/d/it's \"q\" $HOME `id` back\\slash 100%",
          "HF_ENDPOINT": "https://user:p$ss@mirror.example/"}


def test_quotes_dollars_and_backslashes_come_back_as_written(tmp_path):
    """The environment file read by a POSIX shell (systemd reads double-quoted values the same way,
    ``\\ " ` $`` escaped) gives every value back byte for byte; an ExecStart word keeps its quotes."""
    unit = _render(tmp_path, env=TRICKY, argv=[*ARGV[:-1], '--vllm-arg=--chat-template "a b"', "--foreground"])
    env_file = tmp_path / "x.env"
    env_file.write_text(unit.env_text)
    names = sorted(TRICKY)
    script = f"set -a; . '{env_file}'; " + " ".join(f'printf "%s\\0" "${n}";' for n in names)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={}, timeout=10, check=True)
    assert dict(zip(names, out.stdout.split("\0"))) == TRICKY
    exec_start = parse_unit(unit.text)["Service"]["ExecStart"][0]
    assert '"--vllm-arg=--chat-template \\"a b\\""' in exec_start


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_a_unit_with_spaces_quotes_and_percents(tmp_path):
    home = tmp_path / "my home 100%"
    home.mkdir()
    argv = [*ARGV[:-1], '--vllm-arg=--chat-template "a b"', "--foreground"]
    unit = render_unit("smol", argv, TRICKY, user=False, folder=tmp_path / "units dir", workdir=str(home),
                       run_as="root")
    path, _ = install(unit, user=False)
    out = subprocess.run(["systemd-analyze", "verify", str(path)], check=False, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"WorkingDirectory={str(home).replace('%', '%%')}" in unit.text  # unquoted: systemd refuses quotes


def test_the_environment_is_in_a_0600_file_beside_the_unit_not_in_it(cli, tmp_path):
    units = tmp_path / "units"
    env = {"DSAGENT_HOME": str(tmp_path / "home"), "HF_ENDPOINT": "https://user:secret@mirror.example"}
    out = cli("service", "install", "--name", "smol", "--user", "--dir", str(units), env=env)
    assert out.returncode == 0, out.stderr
    text = (units / "dsagent-smol.service").read_text()
    env_file = units / "dsagent-smol.env"
    assert "secret" not in text and "Environment=" not in text
    assert parse_unit(text)["Service"]["EnvironmentFile"] == [str(env_file)]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert 'HF_ENDPOINT="https://user:secret@mirror.example"' in env_file.read_text().splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason="the CLI as root; service_user's rule is tested without root below")
def test_root_without_run_as_is_refused_for_a_system_unit(cli, tmp_path):
    env = {"DSAGENT_HOME": str(tmp_path / "home"), "SUDO_USER": ""}
    out = cli("service", "install", "--name", "smol", "--print", env=env)
    assert out.returncode == 2 and "would run vLLM as root" in out.stderr and "--run-as USER" in out.stderr
    assert out.stdout == ""
    out = cli("service", "install", "--name", "smol", "--print", env={**env, "SUDO_USER": "nobody"})
    assert out.returncode == 0 and parse_unit(out.stdout)["Service"]["User"] == ["nobody"], out.stderr
    out = cli("service", "install", "--name", "smol", "--print", "--run-as", "root", env=env)
    assert out.returncode == 0 and parse_unit(out.stdout)["Service"]["User"] == ["root"], out.stderr
    out = cli("service", "install", "--name", "smol", "--print", "--user", env=env)
    assert out.returncode == 0 and "User" not in parse_unit(out.stdout)["Service"], out.stderr


def test_who_a_unit_runs_as():
    assert service_user("", user=False, euid=1000, sudo_user="", me="ann") == "ann"
    assert service_user("", user=False, euid=0, sudo_user="ann", me="root") == "ann"
    assert service_user("bob", user=False, euid=0, sudo_user="ann", me="root") == "bob"
    assert service_user("", user=True, euid=0, sudo_user="", me="root") == ""
    for sudo_user in ("", "root"):
        with pytest.raises(InvalidOptionError, match="--run-as USER, the account that owns DSAGENT_HOME"):
            service_user("", user=False, euid=0, sudo_user=sudo_user, me="root")
    with pytest.raises(InvalidOptionError, match="with --user"):
        service_user("bob", user=True, euid=1000, sudo_user="", me="ann")


def test_a_unit_for_an_account_that_cannot_use_the_home_is_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    owner = Path(home).owner()
    check_owner(owner, home)
    check_owner("nobody", tmp_path / "not-made-yet")
    other = "nobody" if owner != "nobody" else "root"
    with pytest.raises(InvalidOptionError, match=f"belongs to {owner}.*run as {other}"):
        check_owner(other, home)
    with pytest.raises(InvalidOptionError, match="no account 'no-such-account-x'"):
        check_owner("no-such-account-x", home)
