"""Names checked once, at the edge: every verb refuses a name that would leave the home, before
anything is written or signalled (the CLI, the library and the MCP server)."""

from __future__ import annotations

import json

import psutil
import pytest

import dsagent
from dsagent.deploy.record.names import check_name, files
from dsagent.errors import InvalidOptionError

import strangers

BAD = ["../x", "/abs", "a/b", "..", ".hidden", "a..b", "x" * 65, "", "a b", "new\nline"]


@pytest.mark.parametrize("name", BAD)
def test_the_rule_refuses_names_that_are_not_plain(name):
    with pytest.raises(InvalidOptionError, match="is not allowed"):
        check_name(name)


def test_every_file_of_a_good_name_is_inside_the_home(tmp_settings):
    f = files(tmp_settings, "deepseek-r1-distill-qwen-7b.v2_a")
    for path in (f.record, f.lock, f.nodes, f.log, f.watch_log, f.supervise_log):
        assert path.is_relative_to(tmp_settings.home)


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b"])
def test_every_verb_refuses_a_bad_name_before_writing_anything(tmp_path, cli, name):
    home = tmp_path / "home"
    env = {"DSAGENT_HOME": str(home)}
    verbs = [
        ["up", "--name", name, "--port", "auto", "--dummy-weights"],
        ["serve", "--name", name, "--port", "auto"],
        ["join", "127.0.0.1:1", "--node-rank", "1", "--nodes", "2", "--model", "smollm2-135m-instruct",
         "--name", name, "--timeout", "1"],
        ["stop", name], ["status", name], ["logs", name],
        ["service", "install", "--name", name, "--user", "--dir", str(tmp_path / "units")],
        ["service", "uninstall", name, "--user", "--dir", str(tmp_path / "units")],
    ]
    before = _tree(tmp_path)
    for argv in verbs:
        out = cli(*argv, env=env, timeout=180)
        assert out.returncode == 2 and f"deployment name {name!r} is not allowed" in out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr
    assert _tree(tmp_path) == before  # no record, log, lock or unit anywhere, inside the home or out


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b"])
def test_the_library_refuses_a_bad_name(tmp_settings, name):
    for call in (lambda: dsagent.up(name=name, settings=tmp_settings), lambda: dsagent.stop(name, settings=tmp_settings),
                 lambda: dsagent.status(name, settings=tmp_settings),
                 lambda: dsagent.attach(name, settings=tmp_settings, wait_timeout=0)):
        with pytest.raises(InvalidOptionError, match="is not allowed"):
            call()
    assert not tmp_settings.home.exists() or not any(tmp_settings.home.rglob("*.json"))


def test_stop_never_loads_a_json_file_outside_the_home(tmp_path, cli):
    """A JSON file beside the home that names a live process: ``stop ../../outside`` must not read it.
    The process keeps every signal sent to it (tests/strangers.py): none may be pending after."""
    victim = strangers.start()
    try:
        home = tmp_path / "home"
        (home / "deployments").mkdir(parents=True)
        started = psutil.Process(victim.pid).create_time()
        (tmp_path / "outside.json").write_text(json.dumps({
            "name": "outside", "model": "m", "model_path": "/m", "host": "127.0.0.1", "port": 1, "api_key_file": "/k",
            "log_file": "/dev/null", "argv": [], "pid": victim.pid, "pgid": victim.pid, "state": "ready",
            "started_at": started, "leader_started": started}))
        out = cli("stop", "../../outside", env={"DSAGENT_HOME": str(home)})  # <home>/deployments/../../outside.json
        assert out.returncode == 2 and "is not allowed" in out.stderr
        assert strangers.untouched(victim.pid), strangers.pending(victim.pid)
    finally:
        victim.kill()
        victim.wait()


def test_the_mcp_server_refuses_a_bad_deployment_name(tmp_settings):
    from dsagent.mcp.backend import Backend

    with pytest.raises(InvalidOptionError, match="is not allowed"):
        Backend(tmp_settings, model="../x")


def test_dsagent_mcp_refuses_a_bad_deployment_name_before_serving(tmp_path, cli):
    out = cli("mcp", "--model", "../x", env={"DSAGENT_HOME": str(tmp_path / "home")}, timeout=180)
    assert out.returncode == 2 and "deployment name '../x' is not allowed" in out.stderr, out.stderr
    assert not (tmp_path / "home").exists()
