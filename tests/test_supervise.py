"""Supervised deployments (``up --restart``) against real vLLM CPU servers, each in a home of its own.

Nothing is faked: real process trees are killed (SIGKILL of the API server) and stalled (SIGSTOP
of the EngineCore), a real LangChain model and a real MCP client (``dsagent mcp`` over stdio)
call through the restart, and ``dsagent stop`` / ``dsagent up --foreground`` run as commands.
Detection intervals, K and the backoff are short (options of the policy) so the file stays short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import psutil
import pytest

from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.record.store import load
from dsagent.deploy.supervise.policy import RestartPolicy
from dsagent.deploy.record.state import State
from dsagent.deploy.record.phase import live_state
from dsagent.deploy.status import report
from dsagent.deploy.record.identity import supervisor_alive
from dsagent.deploy.stop import stop
from dsagent.deploy.supervise.supervisor import follow
from dsagent.deploy.up import up
from dsagent.errors import DeploymentFailedError
from dsagent.settings import Settings
from dsagent.deploy.record.identity import processes_of
from dsagent.system.procs import alive
from tests.conftest import run_cli

FAST = RestartPolicy(mode="on-failure", backoff=0.5, max_failures=4, window=900, interval=0.5, health_grace=5,
                     stall=15, canary_every=2, canary_deadline=15, start_timeout=400)
"""Short intervals keep the file short; the stall and canary bounds stay well above a 1-token answer's
time on a loaded 2-core machine (a fresh clone's run, beside LangChain's suites: a 4 s canary
deadline missed once, and that false restart was counted where the kill's was asserted)."""
BACK_BOUND = 300.0  # seconds from a kill to ready again on this loaded 2-core machine (cold start: ~60-90)


@pytest.fixture(scope="module")
def model_dir(settings) -> str:
    """The embedded model's folder (converted once per session, shared with the session server)."""
    from dsagent.weights.fetch import fetch

    return str(fetch("smollm2-135m-instruct", settings=settings).path)


def _engines(pgids: set[int]) -> list[int]:
    """Live EngineCore processes in any of the deployment's process groups."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            title = p.info["name"] or ""
            cmd = " ".join(p.info["cmdline"] or ())
            if ("EngineCore" in title or cmd.startswith("VLLM::EngineCore")) and os.getpgid(p.pid) in pgids:
                out.append(p.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return out


class EngineSampler(threading.Thread):
    """Samples the process table while the deployment restarts: the most engines seen at once."""

    def __init__(self, settings: Settings, name: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.name, self.most, self.samples, self.pgids = settings, name, 0, 0, set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            dep = load(self.settings, self.name)
            if dep is not None and dep.pgid:
                self.pgids.add(dep.pgid)
            self.most = max(self.most, len(_engines(self.pgids)))
            self.samples += 1
            time.sleep(0.2)


def _ready_again(settings: Settings, name: str, old_pid: int, bound: float) -> tuple[object, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        dep = load(settings, name)
        if dep.pid and dep.pid != old_pid and live_state(dep) == State.READY:
            return dep, time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"not ready again within {bound} s: {report(load(settings, name))}")


def _mcp_params(home):
    from mcp import StdioServerParameters

    env = {"DSAGENT_HOME": str(home), "DSAGENT_DEVICE": "cpu", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    return StdioServerParameters(command=sys.executable, args=["-m", "dsagent.cli", "mcp"], env=env)


async def _mcp_ask_before_and_during(home, kill, results: dict) -> None:
    """One MCP client: `ask` once (the tools attach), then `kill`, then `ask` again at once."""
    from mcp import Client

    async with Client(_mcp_params(home)) as client:
        first = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 16})
        results["mcp_before"] = "".join(getattr(c, "text", "") for c in first.content)
        await anyio.to_thread.run_sync(kill)
        out = await client.call_tool("ask", {"question": "What is the capital of France?", "max_tokens": 16})
        results["mcp_error"] = out.is_error
        results["mcp_during"] = "".join(getattr(c, "text", "") for c in out.content)


@pytest.mark.server
@pytest.mark.timeout(900)
def test_killed_and_stalled_servers_come_back_alone_and_clients_ride_through(model_dir, tmp_path):
    """SIGKILL of the API server -> ready again with a new pid, never two engines at once, and a
    LangChain call and an MCP tool call sent during the restart get their answers; then SIGSTOP
    of the EngineCore (``/health`` still answers) -> the canary catches it and it comes back."""
    from dsagent.clients.chat import local_deepseek

    settings = Settings.load(tmp_path / "home")
    dep = up(model_dir, options=ServeOptions(port=0, device="cpu"), name="sup", settings=settings, timeout=600,
             restart=FAST)
    sampler = EngineSampler(settings, "sup")
    stalled: list[int] = []
    try:
        assert dep.state == State.READY and supervisor_alive(dep)
        llm = local_deepseek("sup", settings=settings, max_tokens=16, temperature=0)
        sampler.start()

        old = dep.pid
        results: dict = {}
        during: dict = {}

        pool = ThreadPoolExecutor(1)

        def kill() -> None:
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while alive(old):  # a zombie counts as gone
                assert time.monotonic() < deadline, f"pid {old} outlived SIGKILL by 30 s"
                time.sleep(0.05)
            during["state"] = live_state(load(settings, "sup"))
            during["langchain"] = pool.submit(llm.invoke, "What is the capital of France?")  # sent while it is down

        anyio.run(_mcp_ask_before_and_during, settings.home, kill, results)
        answer = during["langchain"].result(timeout=BACK_BOUND).content
        pool.shutdown()
        assert during["state"] == State.RESTARTING
        after, _took = _ready_again(settings, "sup", old, BACK_BOUND)
        assert "Paris" in results["mcp_before"]
        assert not results["mcp_error"] and "Paris" in results["mcp_during"], results
        assert "Paris" in answer
        assert after.restarts == 1 and "exited" in after.failures[-1]["reason"], after.failures
        st = run_cli("status", "sup", env={"DSAGENT_HOME": str(settings.home)})
        assert "1 restart(s)" in st.stdout and "last failure" in st.stdout, st.stdout

        engine = _engines({after.pgid})
        assert len(engine) == 1, engine
        stalled.append(engine[0])
        os.kill(engine[0], signal.SIGSTOP)
        back, _took = _ready_again(settings, "sup", after.pid, BACK_BOUND)
        reason = back.failures[-1]["reason"]
        # vLLM's /health answers from the API server while the engine is stopped: the canary catches it
        assert back.restarts == 2 and ("canary" in reason or "no progress" in reason or "/health" in reason), reason
        assert report(back)["restart"]["restarts"] == 2
    finally:
        sampler.halt.set()
        for pid in stalled:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop("sup", settings=settings)
    assert sampler.samples > 20 and sampler.most == 1, (sampler.samples, sampler.most)
    gone = load(settings, "sup")
    assert not processes_of(gone) and not supervisor_alive(dep) and gone.state == State.STOPPED


@pytest.mark.server
@pytest.mark.timeout(600)
def test_a_launch_that_always_fails_gives_up_after_k_tries_and_leaves_nothing(model_dir, tmp_path):
    """A bad --vllm-arg: every launch fails; after K=2 failures (0.5 s backoff between) the
    deployment is failed with both reasons, and no process of it (nor its supervisor) is left."""
    settings = Settings.load(tmp_path / "home")
    policy = RestartPolicy(mode="on-failure", backoff=0.5, max_failures=2, interval=0.5, canary_every=0)
    opts = ServeOptions(port=0, device="cpu", extra_args=("--no-such-vllm-flag",))
    with pytest.raises(DeploymentFailedError, match="gave up after 2 failures"):  # not NotReadyError at 400 s
        up(model_dir, options=opts, name="bad", settings=settings, timeout=400, restart=policy)
    dep = load(settings, "bad")
    assert dep.state == State.FAILED and dep.restarts == 1 and len(dep.failures) == 2, (dep.reason, dep.failures)
    assert all("no-such-vllm-flag" in f["reason"] or "unrecognized" in f["reason"] for f in dep.failures), dep.failures
    assert not processes_of(dep) and dep.supervisor_pid is None
    assert live_state(dep) == State.FAILED


@pytest.mark.server
@pytest.mark.timeout(600)
def test_stop_during_a_backoff_means_nothing_restarts(model_dir, tmp_path):
    """``dsagent up --foreground`` (what a systemd unit runs) with a launch that fails and a 120 s
    backoff: ``dsagent stop`` during the backoff ends the foreground supervisor, and nothing is
    launched. The supervisor is the only thing that relaunches: once it has exited without saying
    "relaunched", and the log shows one launch (a relaunch would rotate it to .log.1), nothing has
    restarted and nothing can (no sleep that waits for a relaunch not to come)."""
    home = tmp_path / "home"
    env = {**os.environ, "DSAGENT_HOME": str(home)}
    fg = subprocess.Popen([sys.executable, "-m", "dsagent.cli", "up", model_dir, "--name", "backoff", "--port", "auto",
                           "--foreground", "--restart", "on-failure", "--restart-backoff", "120", "--check-interval",
                           "0.5", "--canary-every", "0", "--vllm-arg=--no-such-vllm-flag"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    settings = Settings.load(home)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            dep = load(settings, "backoff")
            if dep is not None and dep.state == State.RESTARTING and "relaunch" in dep.reason:
                break
            assert fg.poll() is None, fg.stdout.read()
            time.sleep(0.2)
        else:
            raise AssertionError("no backoff seen")
        assert dep.supervisor_pid == fg.pid and live_state(dep) == State.RESTARTING
        out = run_cli("stop", "backoff", env={"DSAGENT_HOME": str(home)})
        assert out.returncode == 0, out.stderr
        assert fg.wait(timeout=30) == 0  # the supervisor has exited
        said = fg.stdout.read()
        assert "relaunched" not in said, said
        dep = load(settings, "backoff")
        assert dep.state == State.STOPPED and dep.supervisor_pid is None and dep.restarts == 0
        assert not processes_of(dep)
        log = Path(dep.log_file)
        assert log.read_text().count("dsagent: launch") == 1 and not log.with_suffix(".log.1").exists()
    finally:
        if fg.poll() is None:
            fg.kill()
        if load(settings, "backoff") is not None:
            stop("backoff", settings=settings)


def test_follow_of_an_unsupervised_failed_record_raises(tmp_settings):
    """``follow`` without a supervisor is ``launch.wait``: a record whose process is gone fails at once."""
    from dsagent.deploy.record.store import Deployment, create

    dep = Deployment(name="x", model="m", model_path="/m", host="127.0.0.1", port=1, api_key_file="/k",
                     log_file=str(tmp_settings.logs_dir / "x.log"), argv=[], pid=None, state=State.STARTING,
                     started_at=time.time())
    create(tmp_settings, dep)
    from dsagent.errors import StartupError

    with pytest.raises(StartupError):
        follow(dep, tmp_settings, timeout=5)
