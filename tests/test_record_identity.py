"""One process identity: only processes proven ours are signalled (``deploy.record.identity``).

Strangers are real processes here (tests/strangers.py): groups whose numbers a stale record
holds, as the kernel's pid reuse would hand them out, that block every signal they can, so one
sent to them stays pending where the test reads it (no sleep that hopes it would have landed).
Ours is a real session leader started the way a launch starts vLLM (``procs.spawn``), recorded
with its pid and start time.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import psutil
import pytest

from dsagent.deploy.record.identity import MARK, mark_for, processes_of
from dsagent.deploy.record.phase import live_state
from dsagent.deploy.record.state import State
from dsagent.deploy.record.store import Deployment, create, load
from dsagent.deploy.stop import stop
from dsagent.system.procs import spawn

import strangers


def _record(settings, name: str, **kw) -> Deployment:
    dep = Deployment(name=name, model="m", model_path="/m", host="127.0.0.1", port=1, api_key_file="/k",
                     log_file=str(settings.logs_dir / f"{name}.log"), argv=["vllm", "serve"],
                     env={MARK: mark_for(settings.home, name)}, **{"state": State.READY, **kw})
    return create(settings, dep)


@pytest.fixture
def stranger():
    """A foreign process group (its pid is its group's id), started now, keeping every signal sent to it."""
    proc = strangers.start()
    assert os.getpgid(proc.pid) == proc.pid
    yield proc
    proc.kill()
    proc.wait()


def _gone(proc: psutil.Process) -> bool:
    """Ended: no such process, or a zombie its (dead) parent can no longer reap."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_foreign_group_with_the_recorded_pgid_survives_stop_name(tmp_settings, stranger, cli):
    """An engine that died an hour ago left its numbers; the kernel gave them to a stranger."""
    long_ago = time.time() - 3600
    _record(tmp_settings, "old", pid=stranger.pid, pgid=stranger.pid, started_at=long_ago, leader_started=long_ago)
    dep = load(tmp_settings, "old")
    assert processes_of(dep) == []
    assert live_state(dep) == State.STALE  # not "crashed": nothing of it runs
    out = cli("status", "old", "--json", env={"DSAGENT_HOME": str(tmp_settings.home)})
    assert json.loads(out.stdout)["state"] == "stale", out.stderr
    out = cli("stop", "old", env={"DSAGENT_HOME": str(tmp_settings.home)})
    assert out.returncode == 0 and "stale record is removed" in out.stdout, out.stderr
    assert strangers.untouched(stranger.pid), strangers.pending(stranger.pid)  # not signalled, not ended
    assert load(tmp_settings, "old") is None


def test_a_foreign_group_survives_stop_all_when_the_leader_pid_is_another_process(tmp_settings, stranger):
    """The recorded leader pid is now some other live process (this test's own), the group a stranger's,
    and the record claims the stranger started after its launch: still nothing of it is ours."""
    started = psutil.Process(stranger.pid).create_time() - 1.0
    _record(tmp_settings, "reused", pid=stranger.pid, pgid=stranger.pid, started_at=started, leader_started=started)
    other = strangers.start(session=False)
    try:
        _record(tmp_settings, "reused2", pid=other.pid, pgid=stranger.pid, started_at=started, leader_started=started)
        results = {r.name: r for r in stop(all=True, settings=tmp_settings, grace=2.0)}
        assert results["reused"].removed and results["reused2"].removed and not results["reused"].ended
        assert strangers.untouched(stranger.pid) and strangers.untouched(other.pid), (
            strangers.pending(stranger.pid), strangers.pending(other.pid))
    finally:
        other.kill()
        other.wait()


def test_our_own_tree_is_stopped_whole(tmp_settings):
    """A real session leader with a child, recorded as a launch records it: stop ends both."""
    log = tmp_settings.logs_dir / "mine.log"
    proc = spawn(["sh", "-c", "sleep 600 & exec sleep 601"], {"PATH": "/usr/bin:/bin"}, log)
    started = psutil.Process(proc.pid).create_time()
    _record(tmp_settings, "mine", pid=proc.pid, pgid=proc.pid, started_at=time.time(), leader_started=started)
    deadline = time.monotonic() + 10
    while len(psutil.Process(proc.pid).children()) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(proc.pid).children()[0]
    assert {p.pid for p in processes_of(load(tmp_settings, "mine"))} == {proc.pid, child.pid}
    (res,) = stop("mine", settings=tmp_settings, grace=5.0)
    proc.wait(timeout=10)
    assert {p.pid for p in res.ended} == {proc.pid, child.pid} and _gone(child)
    assert load(tmp_settings, "mine").state == State.STOPPED and load(tmp_settings, "mine").pid is None


def test_a_strangers_orphaned_engine_is_not_ours_to_reap(tmp_settings, cli):
    """A process titled like a vLLM engine, re-parented away from its starter, that no record of
    this home names: `ps` does not list it and `stop --orphans` leaves it running."""
    line = f"exec -a VLLM::EngineCore {sys.executable} -c {shlex.quote(strangers.BLOCKING)} >/dev/null 2>&1 & echo $!"
    out = subprocess.run(["setsid", "bash", "-c", line], capture_output=True, text=True, timeout=10)
    pid = int(out.stdout.strip())
    try:
        strangers.wait_blocking(pid)
        assert psutil.Process(pid).cmdline()[0] == "VLLM::EngineCore" and psutil.Process(pid).ppid() != os.getpid()
        env = {"DSAGENT_HOME": str(tmp_settings.home)}
        orphans = json.loads(cli("ps", "--json", env=env).stdout)["orphans"]
        assert pid not in {o["pid"] for o in orphans}
        assert cli("stop", "--orphans", env=env).returncode == 0
        assert strangers.untouched(pid), strangers.pending(pid)
    finally:
        psutil.Process(pid).kill()


def test_a_record_of_an_older_dsagent_is_still_stopped_whole(tmp_settings):
    """Records written before the leader's start time was kept have only the launch's clock."""
    proc = spawn(["sleep", "600"], {"PATH": "/usr/bin:/bin"}, tmp_settings.logs_dir / "legacy.log")
    _record(tmp_settings, "legacy", pid=proc.pid, pgid=proc.pid, started_at=time.time())  # no leader_started
    assert [p.pid for p in processes_of(load(tmp_settings, "legacy"))] == [proc.pid]
    (res,) = stop("legacy", settings=tmp_settings, grace=5.0)
    assert [p.pid for p in res.ended] == [proc.pid] and not psutil.pid_exists(proc.pid)  # stop verified and reaped it
