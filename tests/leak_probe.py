"""Not part of the suite (not a ``test_*.py`` file): ``test_session_cleanup.py`` runs it in a child
pytest, which starts a deployment-like process tree in its session's home, then waits to be ended."""

from __future__ import annotations

import time

import psutil

from dsagent.deploy.record.identity import MARK, mark_for
from dsagent.deploy.record.state import State
from dsagent.deploy.record.store import Deployment, create
from dsagent.settings import Settings
from dsagent.system.procs import spawn


def test_start_a_deployment_and_wait_to_be_ended():
    settings = Settings.load()  # the session's home, set by tests/conftest.py
    leader = spawn(["sleep", "600"], {"PATH": "/usr/bin:/bin"}, settings.logs_dir / "probe.log")
    create(settings, Deployment(
        name="probe", model="m", model_path="/m", host="127.0.0.1", port=1, api_key_file="/k",
        log_file=str(settings.logs_dir / "probe.log"), argv=["sleep", "600"], env={MARK: mark_for(settings.home, "probe")},
        pid=leader.pid, pgid=leader.pid, leader_started=psutil.Process(leader.pid).create_time(),
        started_at=time.time(), state=State.READY))
    print(f"PROBE {leader.pid}", flush=True)
    time.sleep(120)
