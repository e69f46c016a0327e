"""The supervisor's pure policy, its GPU-memory wait (with a fake pynvml: there is no GPU here),
the RESTARTING state as status reads it, and the systemd unit (parsed, and checked by
``systemd-analyze verify`` where that program exists)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from dsagent.cli import build_parser
from dsagent.cli._common import restart_policy, serve_options
from dsagent.deploy.record.store import Deployment, create, load
from dsagent.deploy.supervise.policy import Failure, Monitor, Observation, RestartPolicy, decide
from dsagent.deploy.supervise.service import parse_unit, render_unit, uninstall, up_command
from dsagent.deploy.record.state import State
from dsagent.deploy.record.phase import live_state
from dsagent.deploy.status import report
from dsagent.deploy.supervise.supervisor import wait_gpu_free
from dsagent.errors import InvalidOptionError, NoDeploymentError, StopError
from dsagent.system.gpus import memory_holders
from dsagent.deploy.record.identity import started_at

pytestmark = pytest.mark.timeout(60)
GIB = 1024**3
P = RestartPolicy(mode="on-failure", backoff=1, backoff_max=8, max_failures=3, window=100, stall=10,
                  canary_every=5, canary_deadline=2, health_grace=4, start_timeout=50)


def test_backoff_doubles_up_to_its_cap_and_gives_up_at_k_failures_in_the_window():
    assert [P.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 8]
    assert decide(P, [0.0], 0.0, Failure("x")) == decide(P, [0.0], 0.0, Failure("x"))
    assert decide(P, [0.0, 1.0], 1.0, Failure("x")).delay == 2
    give_up = decide(P, [0.0, 1.0, 2.0], 2.0, Failure("x"))
    assert not give_up.relaunch and "3 failures within 100 s" in give_up.reason
    assert decide(P, [0.0, 1.0, 200.0], 200.0, Failure("x")).relaunch  # two fell out of the window
    assert not decide(RestartPolicy(mode="no"), [0.0], 0.0, Failure("x")).relaunch
    assert not decide(P, [0.0], 0.0, Failure("bye", clean=True)).relaunch
    assert decide(RestartPolicy(mode="always"), [0.0], 0.0, Failure("bye", clean=True)).relaunch


def test_a_bad_policy_is_refused_with_the_fix():
    with pytest.raises(InvalidOptionError, match="use --restart no, on-failure or always"):
        RestartPolicy(mode="sometimes")
    with pytest.raises(InvalidOptionError, match="max_failures >= 1"):
        RestartPolicy(max_failures=0)
    assert RestartPolicy.from_dict({**P.to_dict(), "unknown": 1}) == P


def test_monitor_startup_death_timeout_and_health():
    m = Monitor(P, started=0.0)
    assert m.check(Observation(alive=True), 10.0) is None and not m.ready
    assert "while starting" in m.check(Observation(alive=False), 11.0).reason
    assert "not ready after 51 s" in Monitor(P, 0.0).check(Observation(alive=True), 51.0).reason
    m = Monitor(P, 0.0)
    assert m.check(Observation(alive=True, healthy=True, tokens=0), 1.0) is None and m.ready
    assert m.check(Observation(alive=True, healthy=False, tokens=0), 4.0) is None  # within the grace
    assert "/health has failed for 6 s" in m.check(Observation(alive=True, healthy=False, tokens=0), 7.0).reason
    clean = Monitor(P, 0.0).check(Observation(alive=False, clean_exit=True), 1.0)
    assert clean.clean


def test_monitor_progress_counts_only_while_requests_run():
    m = Monitor(P, 0.0)
    m.check(Observation(alive=True, healthy=True, tokens=5), 1.0)
    assert m.check(Observation(alive=True, healthy=True, running=0, tokens=5), 30.0) is None  # idle is fine
    assert m.check(Observation(alive=True, healthy=True, running=2, tokens=9), 31.0) is None
    assert m.check(Observation(alive=True, healthy=True, running=2, tokens=12), 39.0) is None  # tokens moved
    assert m.check(Observation(alive=True, healthy=True, running=2, tokens=12), 48.0) is None
    stall = m.check(Observation(alive=True, healthy=True, running=2, tokens=12), 50.0)
    assert stall.reason == "no progress: 2 request(s) running and no token generated for 11 s"


def test_canary_is_due_only_when_idle_and_a_miss_counts_only_without_progress():
    m = Monitor(P, 0.0)
    m.check(Observation(alive=True, healthy=True, tokens=0), 1.0)
    idle = Observation(alive=True, healthy=True, tokens=0)
    assert not m.canary_due(idle, 3.0) and m.canary_due(idle, 6.0)
    assert not m.canary_due(Observation(alive=True, healthy=True, running=1, tokens=0), 6.0)
    busy_miss = Observation(alive=True, healthy=True, tokens=4, canary_ok=False, canary_progressed=True)
    assert m.check(busy_miss, 6.0) is None and not m.canary_due(idle, 7.0)  # the server was busy: no count
    miss = Observation(alive=True, healthy=True, tokens=4, canary_ok=False)
    assert "canary completion got no answer within 2 s" in m.check(miss, 12.0).reason


class FakeNvml:
    """pynvml with one GPU whose process list empties after ``polls`` reads (the driver lags)."""

    def __init__(self, pids: dict[int, float], polls: int) -> None:
        self.pids, self.polls, self.reads = pids, polls, 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self.reads += 1
        if self.reads > self.polls:
            return []
        return [SimpleNamespace(pid=p, usedGpuMemory=int(g * GIB)) for p, g in self.pids.items()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []


@pytest.fixture
def pauses(monkeypatch) -> list[float]:
    """The pauses this test's thread asks ``time.sleep`` for, not slept (other threads still sleep)."""
    asked: list[float] = []
    real, me = time.sleep, threading.get_ident()
    monkeypatch.setattr(time, "sleep", lambda s: asked.append(s) if threading.get_ident() == me else real(s))
    return asked


def test_relaunch_waits_until_the_ended_processes_hold_no_gpu_memory(pauses):
    fake = FakeNvml({101: 70.5, 999: 1.0}, polls=3)
    assert memory_holders(lambda: fake) == {101: 70.5, 999: 1.0}
    wait_gpu_free({101, 102}, interval=0.01, holders=lambda: memory_holders(lambda: fake))
    assert fake.reads == 4 and pauses == [0.01, 0.01]  # reads 2 and 3 still listed 101, read 4 did not
    pauses.clear()
    wait_gpu_free({1}, holders=lambda: None)
    assert pauses == []  # a CPU machine: nothing to wait for


def test_relaunch_gives_up_on_memory_that_stays_held():
    stuck = FakeNvml({101: 70.5}, polls=10**6)
    with pytest.raises(StopError, match=r"70.5 GiB\) is still held by ended processes \[101\]") as err:
        wait_gpu_free({101}, timeout=0.05, interval=0.01, holders=lambda: memory_holders(lambda: stuck))
    assert list(err.value.pids) == [101]
    assert memory_holders(lambda: (_ for _ in ()).throw(ImportError("no pynvml"))) is None


class FailingNvml(FakeNvml):
    """NVML that is there but errs on its first ``fails`` process listings (a driver hiccup)."""

    def __init__(self, fails: int) -> None:
        super().__init__({}, polls=0)
        self.fails = fails

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self.reads += 1
        if self.reads <= self.fails:
            raise RuntimeError("NVML_ERROR_UNKNOWN")
        return []


def test_an_nvml_error_is_unknown_never_free(pauses):
    """The old reading took an NVML error for "nothing held" and relaunched at once."""
    said: list[str] = []
    flaky = FailingNvml(fails=3)
    wait_gpu_free({101}, interval=0.01, holders=lambda: memory_holders(lambda: flaky), on_unknown=said.append)
    assert flaky.reads == 4 and pauses == [0.01, 0.02, 0.04]  # backed off (doubling) while unknown, then free
    assert len(said) == 1 and "NVML could not list" in said[0] and "NVML_ERROR_UNKNOWN" in said[0]


def test_an_nvml_error_that_lasts_is_refused_after_the_bound():
    broken = FailingNvml(fails=10**6)
    with pytest.raises(StopError, match=r"is unknown after 0 s \(NVML could not list"):
        wait_gpu_free({101}, timeout=0.05, interval=0.01, holders=lambda: memory_holders(lambda: broken))


def _record(tmp_settings, **kw) -> Deployment:
    dep = Deployment(name="sup", model="m", model_path="/m", host="127.0.0.1", port=1, api_key_file="/k",
                     log_file=str(tmp_settings.logs_dir / "sup.log"), argv=[], **{"state": State.READY, **kw})
    create(tmp_settings, dep)
    return dep


def test_a_dead_server_with_a_live_supervisor_is_restarting_and_status_says_so(tmp_settings):
    """The "supervisor" is a real ``sleep`` process: live_state checks pid and start time."""
    sup = subprocess.Popen(["sleep", "30"])
    try:
        failure = {"at": time.time() - 5, "reason": "the API server exited", "log_tail": ""}
        dep = _record(tmp_settings, supervisor_pid=sup.pid, supervisor_started=started_at(sup.pid),
                      restart=P.to_dict(), restarts=1, failures=[failure])
        assert live_state(dep) == State.RESTARTING and State.RESTARTING.running
        r = report(dep)
        assert r["restart"] == {"mode": "on-failure", "supervisor_pid": sup.pid, "restarts": 1, "failures": 1,
                                "last_failure": {"at": failure["at"], "reason": "the API server exited"},
                                "uptime_s": None}
        reused = _record(tmp_settings, supervisor_pid=sup.pid, supervisor_started=started_at(sup.pid) - 50)
        assert live_state(reused) == State.STALE  # another process under that pid is not the supervisor
    finally:
        sup.kill()
        sup.wait()
    assert live_state(dep) == State.STALE and report(_record(tmp_settings))["restart"] is None


UP = ["dsagent", "service", "install", "smollm2-135m-instruct", "--port", "auto", "--vllm-arg=--enforce-eager",
      "--cpus", "0,1", "--canary-every", "30", "--dummy-weights"]


def _unit_argv(tmp_path) -> list[str]:
    args = build_parser().parse_args(UP[1:])
    return up_command(args.model, "smol", serve_options(args), restart_policy(args))


def _unit(tmp_path, user: bool = True):
    args = build_parser().parse_args(UP[1:])
    argv = up_command(args.model, "smol", serve_options(args), restart_policy(args))
    env = {"DSAGENT_HOME": str(tmp_path / "home"), "CUDA_VISIBLE_DEVICES": "0,1", "HF_HOME": "/data/hf 100%"}
    return args, render_unit("smol", argv, env, user=user, run_as="svc", workdir=str(tmp_path),
                             folder=tmp_path / "units")


def test_the_unit_runs_up_in_the_foreground_with_the_environment_and_restarts(tmp_path):
    args, unit = _unit(tmp_path)
    u = parse_unit(unit.text)
    assert unit.name == "dsagent-smol.service" and set(u) == {"Unit", "Service", "Install"}
    exec_start = u["Service"]["ExecStart"][0]
    assert exec_start.startswith(f"{sys.executable} -m dsagent.cli up smollm2-135m-instruct --port auto ")
    assert "--vllm-arg=--enforce-eager" in exec_start and "--cpus 0,1" in exec_start
    assert "--restart on-failure" in exec_start and "--canary-every 30.0" in exec_start
    assert exec_start.endswith("--foreground") and "--dummy-weights" in exec_start
    assert "Environment" not in u["Service"]  # the environment is in a 0600 file, not in the unit
    assert u["Service"]["EnvironmentFile"] == [str(tmp_path / "units" / "dsagent-smol.env")]
    assert unit.env_text.splitlines() == ['CUDA_VISIBLE_DEVICES="0,1"', f'DSAGENT_HOME="{tmp_path}/home"',
                                          'HF_HOME="/data/hf 100%"']
    assert u["Service"]["Restart"] == ["on-failure"] and u["Service"]["KillMode"] == ["mixed"]
    assert u["Install"]["WantedBy"] == ["default.target"] and "User" not in u["Service"]
    assert parse_unit(_unit(tmp_path, user=False)[1].text)["Service"]["User"] == ["svc"]
    again = build_parser().parse_args(_unit_argv(tmp_path)[3:])  # the unit's flags parse as `up` flags
    assert again.port == 0 and again.cpus == (0, 1) and again.vllm_arg == ["--enforce-eager"]
    with pytest.raises(InvalidOptionError, match="add --foreground"):
        render_unit("smol", ["dsagent", "up"], {}, user=True, folder=tmp_path)
    with pytest.raises(InvalidOptionError, match="deployment name 'a b' is not allowed"):
        render_unit("a b", ["--foreground"], {}, user=True, folder=tmp_path)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed "
                    "(Debian's systemd package); the unit is still parsed by the test above")
def test_systemd_analyze_verify_accepts_the_unit_and_catches_a_broken_one(tmp_path):
    _args, unit = _unit(tmp_path)
    good = tmp_path / unit.name
    good.write_text(unit.text)
    out = subprocess.run(["systemd-analyze", "verify", str(good)], check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "dsagent-bad.service"
    bad.write_text(unit.text.replace(f"ExecStart={sys.executable}", "ExecStart=no-such-program"))
    out = subprocess.run(["systemd-analyze", "verify", str(bad)], check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "no-such-program" in out.stderr


def test_service_install_print_and_uninstall_through_the_cli(cli, tmp_path):
    env = {"DSAGENT_HOME": str(tmp_path / "home")}
    out = cli("service", "install", "--name", "smol", "--port", "9000", "--print", "--run-as", "root", env=env)
    assert out.returncode == 0, out.stderr
    assert parse_unit(out.stdout)["Service"]["ExecStart"][0].endswith("--port 9000 --restart on-failure "
                                                                      "--name smol --foreground")
    out = cli("service", "install", "--name", "smol", "--user", "--dir", str(tmp_path / "units"), env=env)
    assert out.returncode == 0 and "systemctl --user enable --now dsagent-smol.service" in out.stdout, out.stderr
    assert (tmp_path / "units" / "dsagent-smol.service").is_file()
    assert (tmp_path / "units" / "dsagent-smol.env").is_file()
    out = cli("service", "uninstall", "smol", "--user", "--dir", str(tmp_path / "units"), env=env)
    assert out.returncode == 0 and not (tmp_path / "units" / "dsagent-smol.service").exists()
    assert not (tmp_path / "units" / "dsagent-smol.env").exists()
    with pytest.raises(NoDeploymentError, match="no unit"):
        uninstall("smol", tmp_path / "units", user=True)


def test_a_call_refused_during_a_restart_waits_for_ready_and_is_sent_again(tmp_settings):
    """``ride_through`` with a record whose supervisor and (later) API server are real ``sleep``
    processes and whose ``/health`` is a loopback HTTP server. The restart is played in steps, each
    after the event it follows (no clock): the first call is refused; then the relaunch is recorded
    (starting, /health 503); once the waiting client has probed it, /health answers; once it has
    probed that, the "supervisor" records it ready. The second call must find the record ready.
    Unsupervised: the error at once."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    from dsagent.clients.ride import ride_through

    up, refused, probed = threading.Event(), threading.Event(), {503: threading.Event(), 200: threading.Event()}

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            code = 200 if up.is_set() else 503
            self.send_response(code)
            self.end_headers()
            probed[code].set()

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    sup, api = subprocess.Popen(["sleep", "60"]), subprocess.Popen(["sleep", "60"])
    try:
        dep = _record(tmp_settings, supervisor_pid=sup.pid, supervisor_started=started_at(sup.pid),
                      restart=P.to_dict(), state=State.RESTARTING)
        dep.port = http.server_address[1]
        create(tmp_settings, dep)

        def supervisor() -> None:
            if not refused.wait(30):
                return
            dep.pid, dep.started_at, dep.state = api.pid, started_at(api.pid), State.STARTING
            dep.leader_started = dep.started_at
            create(tmp_settings, dep)  # relaunched, not answering yet
            if not probed[503].wait(30):
                return
            up.set()
            if probed[200].wait(30):
                dep.state = State.READY  # what the supervisor records once it has seen /health answer
                create(tmp_settings, dep)

        threading.Thread(target=supervisor, daemon=True).start()
        seen: list[State] = []

        def call():
            if not refused.is_set():
                refused.set()
                raise httpx.ConnectError("refused")
            seen.append(load(tmp_settings, "sup").state)
            return "answer"

        home = str(tmp_settings.home)
        assert ride_through(call, name="sup", home=home, timeout=30) == "answer"
        assert seen == [State.READY]  # sent again once, and only once it was recorded ready
        with pytest.raises(httpx.ConnectError):  # ready now: a refused call is not a restart
            ride_through(lambda: (_ for _ in ()).throw(httpx.ConnectError("x")), name="sup", home=home, timeout=30)
        with pytest.raises(httpx.ConnectError):
            ride_through(lambda: (_ for _ in ()).throw(httpx.ConnectError("x")), name="nope", home=home, timeout=30)
    finally:
        up.set()
        http.shutdown()
        for p in (sup, api):
            p.kill()
            p.wait()
