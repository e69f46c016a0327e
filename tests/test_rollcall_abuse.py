"""The head's roll call under abuse, and the join token kept secret (issue 23, item 3).

Everything is real: the roll call (``RollCall``) listens on a free port of 127.0.0.1, in a child
process where its memory and threads are measured (psutil), or in this process where its
comparison is watched; the clients are raw sockets, httpx and the real watcher process. No vLLM.
Each test prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import hmac
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from dsagent.deploy.nodes import rollcall
from dsagent.deploy.nodes.rollcall import RollCall, send_report
from dsagent.deploy.record.reports import NodeReport, load_reports
from dsagent.settings import Settings
from dsagent.system.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "Tk7_" + "q" * 28  # what secrets.token_urlsafe(24) looks like: 32 URL-safe characters
MIB = 1024 * 1024
CHILD = """
import os, sys
from dsagent.deploy.nodes.rollcall import RollCall
from dsagent.settings import Settings
home, port, token = sys.argv[1], int(sys.argv[2]), os.environ["ROLL_TOKEN"]
with RollCall(Settings.load(home), "abuse", token, f"127.0.0.1:{port - 2}", 2):
    print("listening", flush=True)
    sys.stdin.read()
"""


def _roll_port() -> int:
    port = free_port()
    while port < 3:
        port = free_port()
    return port


@pytest.fixture
def child_roll(tmp_path) -> Iterator[tuple[psutil.Process, int]]:
    """A roll call in a process of its own (its RSS and threads are its alone): ``(process, port)``."""
    port = _roll_port()
    # the token in the environment, not argv: test_no_token_in_any_command_line_nor_printed scans
    # every command line of the machine, and under pytest-xdist this child may run beside it
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "head"), str(port)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "ROLL_TOKEN": TOKEN})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        yield psutil.Process(proc.pid), port
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def roll(tmp_path) -> Iterator[tuple[RollCall, Settings, int]]:
    """A roll call in this process: ``(roll call, the head's settings, port)``."""
    port = _roll_port()
    settings = Settings.load(tmp_path / "head")
    with RollCall(settings, "abuse", TOKEN, f"127.0.0.1:{port - 2}", 2) as r:
        yield r, settings, port


def _head(content_length: str | None, token: str | None = TOKEN) -> bytes:
    lines = ["POST /report HTTP/1.1", "Host: head", "Content-Type: application/json"]
    lines += [f"Authorization: Bearer {token}"] if token is not None else []
    lines += [f"Content-Length: {content_length}"] if content_length is not None else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket, timeout: float = 5.0) -> int:
    """The status of the answer on ``sock`` (read until the peer closes, resets or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    assert data.startswith(b"HTTP/1."), data
    return int(data.split(b" ", 2)[1])


def _ask(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, float]:
    """Send ``raw`` (and nothing else, the connection left open); ``(status, seconds to the answer)``."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return _status(sock, timeout), time.monotonic() - t0


def _peak_rss(proc: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    """Sample ``proc``'s RSS into ``peak[0]`` (the most seen) and count samples in ``peak[1]``."""
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        peak[1] += 1
        time.sleep(0.002)


@pytest.mark.timeout(120)
def test_a_64_mib_post_is_refused_before_its_body_is_read(child_roll):
    """Headers of a 64 MiB POST, then the body streamed: without the token (403) and with it
    (413, over the cap), the answer comes before the body is sent in full, and the roll call's
    process grows by less than 1 MiB (peak RSS sampled every 2 ms against the RSS before)."""
    proc, port = child_roll
    for _ in range(3):  # warm up the paths a refusal takes (first-use allocations are not the flood)
        _ask(port, _head("2", token="x" * 32) + b"{}")
        _ask(port, _head("2") + b"{}")
    total, chunk = 64 * MIB, b"\0" * (64 * 1024)
    for token, expected in ((None, 403), ("W" * len(TOKEN), 403), (TOKEN, 413)):
        before = proc.memory_info().rss
        stop, peak = threading.Event(), [before, 0]
        sampler = threading.Thread(target=_peak_rss, args=(proc, stop, peak))
        sampler.start()
        sent = 0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_head(str(total), token))
            answered = False
            while sent < total:
                readable, _, _ = select.select([sock], [sock], [], 10)
                if readable:
                    answered = True
                    break
                try:
                    sent += sock.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
            status = _status(sock)
        seen = peak[1]
        while peak[1] < seen + 20:  # twenty more samples after the answer, however long they take
            time.sleep(0.002)
        stop.set()
        sampler.join()
        grew = peak[0] - before
        print(f"token={'none' if token is None else 'wrong' if token != TOKEN else 'right'}: {status}, "
              f"{sent / MIB:.2f} of 64 MiB sent (answer seen while sending: {answered}), "
              f"peak RSS growth {grew / 1024:.0f} KiB")
        assert status == expected
        assert sent < total / 4, f"{sent} bytes went in before the refusal"
        assert grew < MIB, f"the roll call grew by {grew / MIB:.1f} MiB"


@pytest.mark.timeout(60)
def test_a_content_length_of_minus_one_or_garbage_is_refused_at_once(roll):
    """``Content-Length: -1`` (which read until the peer hung up) and other garbage: 400 at once,
    with the connection left open by the client; none: 411. "At once" is the status itself: the
    client waits past the roll call's request timeout, so a roll call that waited for a body
    would answer 408 (the milliseconds are printed, not asserted)."""
    _, _, port = roll
    patience = 2 * rollcall.TIMEOUT
    for length in ("-1", "abc", "1e3", "+5", "", "0x10", "99999999999999999999"):
        status, took = _ask(port, _head(length), timeout=patience)
        print(f"Content-Length {length!r}: {status} in {took * 1000:.1f} ms")
        assert status == 400, (length, status, took)
    status, took = _ask(port, _head(None), timeout=patience)
    print(f"no Content-Length: {status} in {took * 1000:.1f} ms")
    assert status == 411


@pytest.mark.timeout(120)
def test_idle_connections_are_closed_within_the_timeout_and_threads_stay_bounded(child_roll):
    """50 connections opened and left idle (and one trickling a byte a second): each is closed by
    the roll call (EOF or reset; those beyond ``MAX_CONNECTIONS`` at once, with a 503) while the
    client still holds it open, the trickler no sooner than its timeout (bytes do not keep it
    alive, nor is it cut at once); its thread count does not grow; then a real report is still
    taken. How soon after the timeout each closes is printed, not asserted (a busy machine)."""
    proc, port = child_roll
    bound = 3 * rollcall.TIMEOUT + 5.0  # the client's patience: closes later than this count as never
    threads_before = proc.num_threads()
    t0 = time.monotonic()
    trickle = socket.create_connection(("127.0.0.1", port), timeout=5)  # first: one the roll call serves
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(50)]
    closed: dict[socket.socket, float] = {}
    threads_max = threads_before
    next_byte = 0.0
    for s in [*idle, trickle]:
        s.setblocking(False)
    while len(closed) < len(idle) + 1 and time.monotonic() - t0 < bound:
        threads_max = max(threads_max, proc.num_threads())
        if trickle not in closed and time.monotonic() >= next_byte:
            try:
                trickle.send(b"P")
            except OSError:
                pass
            next_byte = time.monotonic() + 1.0
        readable, _, _ = select.select([s for s in [*idle, trickle] if s not in closed], [], [], 0.05)
        for s in readable:
            try:
                while s.recv(4096):
                    pass
            except BlockingIOError:
                continue  # an answer, not yet the end
            except OSError:
                pass  # reset
            closed[s] = time.monotonic() - t0
    times = sorted(closed.get(s, float("inf")) for s in idle)
    print(f"50 idle: {sum(t < 1 for t in times)} closed at once, the rest by {max(times):.2f} s "
          f"(timeout {rollcall.TIMEOUT} s); trickler closed at {closed.get(trickle, float('inf')):.2f} s; "
          f"threads {threads_before} before, at most {threads_max} during")
    assert len(closed) == len(idle) + 1, f"{len(idle) + 1 - len(closed)} connection(s) never closed by the roll call"
    assert closed[trickle] >= rollcall.TIMEOUT - 1  # served until its timeout, not refused at once
    assert threads_max <= threads_before + 1
    for s in [*idle, trickle]:
        s.close()
    assert send_report(f"127.0.0.1:{port - 2}", TOKEN, NodeReport(rank=1, ip="127.0.0.2", state="ready"))


@pytest.mark.timeout(60)
def test_the_token_is_compared_in_constant_time_before_the_body(roll, monkeypatch):
    """A wrong token of the right length: 403, before the (never sent) body; the right one: 204
    and the report kept. Every comparison goes through ``hmac.compare_digest``."""
    r, settings, port = roll
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    wrong = TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")
    assert len(wrong) == len(TOKEN)
    status, took = _ask(port, _head("100", wrong), timeout=2 * rollcall.TIMEOUT)  # the 100 bytes never come
    print(f"wrong token, body never sent: {status} in {took * 1000:.1f} ms")
    assert status == 403  # not 408: answered without waiting for the body
    for header in ({}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        assert httpx.post(f"http://127.0.0.1:{port}/report", headers=header, timeout=5,
                          json={"rank": 1, "ip": "x", "state": "ready"}).status_code == 403
    master = f"127.0.0.1:{port - 2}"
    assert not send_report(master, wrong, NodeReport(rank=1, ip="127.0.0.2", state="ready"))
    assert send_report(master, TOKEN, NodeReport(rank=1, ip="127.0.0.2", state="failed", reason="gone"))
    assert load_reports(settings, "abuse")[1].reason == "gone" and r.failures[0].rank == 1
    assert not send_report(master, TOKEN, NodeReport(rank=2, ip="127.0.0.3", state="ready"))  # not a rank: 403
    assert (wrong.encode(), TOKEN.encode()) in calls and (TOKEN.encode(), TOKEN.encode()) in calls
    print(f"hmac.compare_digest called {len(calls)} times")


@pytest.mark.timeout(120)
def test_no_token_in_any_command_line_nor_printed(tmp_path, monkeypatch):
    """A joined node's record holds the token; its real watcher process reports to a real roll call
    (so it has the token) while no process's command line (``ps``) holds it, nor the watcher's
    environment (``DSAGENT_JOIN_TOKEN`` set here is not passed on). The head prints the token
    masked and the join commands name its 0600 file; the record's JSON output masks it."""
    from dsagent.deploy.launch.options import ServeOptions
    from dsagent.deploy.nodes.join import JoinSpec, join_command
    from dsagent.deploy.nodes.watch import start_watcher
    from dsagent.deploy.record.identity import started_at
    from dsagent.deploy.record.state import State
    from dsagent.deploy.record.store import Deployment, create, load
    from dsagent.deploy.up import _tell_nodes
    from dsagent.plan.catalog import resolve

    head, node = Settings.load(tmp_path / "head"), Settings.load(tmp_path / "node")
    monkeypatch.setenv("DSAGENT_JOIN_TOKEN", TOKEN)
    port = _roll_port()
    engine = subprocess.Popen(["sleep", "120"], start_new_session=True)  # stands in for the node's engine
    watcher = None
    try:
        dep = create(node, Deployment(
            name="w", model="m", model_path=str(tmp_path), host="127.0.0.1", port=free_port(),
            api_key_file=str(node.api_key_file), log_file=str(tmp_path / "engine.log"), argv=["sleep", "120"],
            pid=engine.pid, pgid=engine.pid, leader_started=started_at(engine.pid), state=State.STARTING,
            node_rank=1, master=f"127.0.0.1:{port - 2}", token=TOKEN, options={"nodes": 2}))
        with RollCall(head, "w", TOKEN, dep.master, 2) as roll:
            watcher = psutil.Process(start_watcher(dep, node).watcher_pid)
            t0 = time.monotonic()
            while 1 not in load_reports(head, "w") and time.monotonic() - t0 < 30:
                time.sleep(0.1)
            assert load_reports(head, "w")[1].state == "joining"  # the watcher's beat, with the token
            lines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
            assert not [line for line in lines if TOKEN in line]
            assert watcher.cmdline()[-2:] == ["dsagent.deploy.nodes.watch", "w"]
            assert "DSAGENT_JOIN_TOKEN" not in watcher.environ()
            print(f"{len(lines)} command lines scanned, none holds the token; the watcher's beat came "
                  f"{time.monotonic() - t0:.1f} s after it started")
            os.kill(engine.pid, signal.SIGKILL)
            engine.wait(10)
            watcher.wait(30)
            assert roll.failures and roll.failures[0].rank == 1  # its failure report, with the token
        assert load(node, "w").state == State.FAILED
    finally:
        if engine.poll() is None:
            engine.kill()
        if watcher is not None and watcher.is_running():
            watcher.kill()

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(resolve("smollm2-135m-instruct").config)))
    record = Deployment(name="pp2", model="m", model_path=str(folder), host="127.0.0.1", port=8000,
                        api_key_file="", log_file="", argv=[], master="127.0.0.1:29501")
    printed: list[str] = []
    _tell_nodes(record, ServeOptions(device="cpu", pp=2, nodes=3, node_ip="127.0.0.1"), resolve(str(folder)), "",
                (), head, printed.append)
    token_file = head.deployments_dir / "pp2.token"
    assert record.token and token_file.read_text().strip() == record.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(head.deployments_dir.stat().st_mode) == 0o700
    assert not [m for m in printed if record.token in m] and f"({record.token[:4]}…)" in printed[0]
    for n in record.nodes[1:]:
        assert record.token not in n["join"] and f"--token-file {token_file}" in n["join"]
    assert record.token not in json.dumps(record.to_json()) and record.token not in repr(record)
    cmd = join_command(record, JoinSpec(head=record.master, node_rank=1, model="m", nodes=2, token_file="/t"))
    assert "--token-file /t" in cmd and "--token " not in cmd
    print("printed:", *printed, sep="\n  ")


def test_a_token_file_others_can_read_is_refused(tmp_path):
    """``--token-file`` must be the owner's alone (as ssh wants of a key), and hold a token."""
    from dsagent.errors import InvalidOptionError

    path = tmp_path / "t.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(InvalidOptionError, match=r"can be read by others \(mode 0644\)") as info:
        rollcall.read_token(path)
    assert info.value.remedy == f"chmod 600 {path}"
    path.chmod(0o600)
    assert rollcall.read_token(path) == TOKEN
    path.write_text("a b\n")
    with pytest.raises(InvalidOptionError, match="does not hold a roll-call token"):
        rollcall.read_token(path)
    with pytest.raises(InvalidOptionError, match="cannot be read"):
        rollcall.read_token(tmp_path / "missing")
    assert Settings.load(tmp_path, env={"DSAGENT_JOIN_TOKEN": f" {TOKEN}\n"}).join_token == TOKEN
    assert TOKEN not in repr(Settings.load(tmp_path, env={"DSAGENT_JOIN_TOKEN": TOKEN}))
