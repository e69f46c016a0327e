"""One record store: no update is lost, a torn record is named and never breaks the CLI.

Writers are real processes and threads changing one record file at once, as the launcher, the
supervisor, a watcher, stop and the MCP server's worker threads do.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time

import psutil

from dsagent.deploy.record.identity import MARK, mark_for
from dsagent.deploy.record.state import State
from dsagent.deploy.record.store import Deployment, create, load, scan
from dsagent.system.procs import spawn

WRITER = """
import sys, threading
from dsagent.deploy.record.store import update
from dsagent.settings import Settings
settings, tag = Settings.load(sys.argv[1]), sys.argv[2]
barrier = threading.Barrier(20)
def one(i):
    barrier.wait()
    update(settings, "busy", lambda d: d.failures.append({"at": 0, "reason": f"{tag}-{i}", "log_tail": ""}))
threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
for t in threads: t.start()
for t in threads: t.join()
"""


def _record(settings, name: str, **kw) -> Deployment:
    dep = Deployment(name=name, model="m", model_path="/m", host="127.0.0.1", port=1, api_key_file="/k",
                     log_file=str(settings.logs_dir / f"{name}.log"), argv=["vllm"],
                     env={MARK: mark_for(settings.home, name)}, **{"state": State.READY, **kw})
    return create(settings, dep)


def test_three_processes_of_twenty_threads_keep_all_sixty_changes(tmp_settings):
    _record(tmp_settings, "busy")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_settings.home), f"p{n}"],
                                stderr=subprocess.PIPE, text=True) for n in range(3)]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert all(w.returncode == 0 for w in writers), errors
    reasons = [f["reason"] for f in load(tmp_settings, "busy").failures]
    assert len(reasons) == 60 and set(reasons) == {f"p{n}-{i}" for n in range(3) for i in range(20)}
    assert not list(tmp_settings.deployments_dir.glob("*.tmp"))  # every temporary file was renamed


def test_the_home_and_its_records_are_private(tmp_settings):
    _record(tmp_settings, "private")
    assert stat.S_IMODE(tmp_settings.home.stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_settings.deployments_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_settings.deployments_dir / "private.json").stat().st_mode) == 0o600


def test_a_torn_record_is_one_line_error_and_stop_all_still_stops_the_rest(tmp_settings, cli):
    env = {"DSAGENT_HOME": str(tmp_settings.home)}
    leader = spawn(["sleep", "600"], {"PATH": "/usr/bin:/bin"}, tmp_settings.logs_dir / "good.log")
    _record(tmp_settings, "good", pid=leader.pid, pgid=leader.pid, started_at=time.time(),
            leader_started=psutil.Process(leader.pid).create_time())
    torn = tmp_settings.deployments_dir / "torn.json"
    _record(tmp_settings, "torn")
    torn.write_text(torn.read_text()[:57])  # cut mid-write, as a crash without fsync leaves it

    for verb in (["status", "torn"], ["stop", "torn"], ["logs", "torn"]):
        out = cli(*verb, env=env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (verb, out.stderr)
        first = out.stderr.splitlines()[0]
        assert first.startswith("error: the record of deployment 'torn'") and str(torn) in first, (verb, first)

    out = cli("status", env=env)
    assert out.returncode == 0 and f"torn: unreadable  record {torn}" in out.stdout, out.stdout + out.stderr
    assert "good: unhealthy" in out.stdout
    rows = {r["name"]: r for r in json.loads(cli("status", "--json", env=env).stdout)}
    assert rows["torn"]["state"] == "unreadable" and rows["torn"]["record"] == str(torn)

    out = cli("stop", "--all", env=env)
    assert out.returncode == 1 and "good: stopped (1 process(es) ended" in out.stdout, out.stdout + out.stderr
    assert f"torn: not stopped: the record of deployment 'torn' ({torn}) cannot be read" in out.stdout
    leader.wait(timeout=10)
    assert load(tmp_settings, "good").state == State.STOPPED and torn.exists()  # nothing guessed, nothing lost
    good, bad = scan(tmp_settings)
    assert [d.name for d in good] == ["good"] and [e.path for e in bad] == [str(torn)]
