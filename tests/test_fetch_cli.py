"""`dsagent fetch` as a new user meets it: every hub failure gets its own fix, once (issue 16).

Each test runs the real CLI (``dsagent.cli.main``, or ``python -m dsagent.cli`` on a
pseudo-terminal) with the real huggingface_hub / modelscope clients against the loopback
``fakehub`` (the hub is the one part faked: it cannot be reached from tests). Caches and home
are the test's own; sockets reach 127.0.0.1 only, so https://huggingface.co is "unreachable".
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fakehub import COMMIT, serve, tiny_repo

import dsagent
from dsagent.cli import main
from dsagent.system.ports import free_port
from dsagent.weights import sources
from dsagent.weights.fetch import MANIFEST

pytestmark = pytest.mark.timeout(120)

REPO = "deepseek-ai/Tiny-R1"
NEEDED = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
SHARD = "model-00001-of-00002.safetensors"
ID_FIX = ("type the id as the model page on the hub shows it, e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-7B "
          "(`dsagent models` lists the catalog)")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own caches and home; loopback-only sockets; no inherited endpoint, order or token."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("DSAGENT_HOME", str(tmp_path / "home"))
    for var in ("HF_HUB_CACHE", "HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "DSAGENT_FETCH_SOURCES", "HF_HUB_OFFLINE",
                "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(f"test sandbox: {host} is not loopback")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def fetch_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["fetch", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_missing_repository_on_every_source_gets_each_reason_once_and_the_id_fix(capsys, monkeypatch):
    """The default order with a mirror set (mirror, hub, modelscope): one line per source, no
    "skipped" echo before the error, no "trying the next source", and the fix for a wrong id.
    The hub's address is a closed loopback port (no test traffic leaves the machine)."""
    hub = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused at once
    monkeypatch.setattr(sources, "HF_ENDPOINT", hub)
    with serve(tiny_repo()) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        rc, out, err = fetch_cli(capsys, "acme/nope")
    fix = sources.FIX_MISSING.format(name="nope")
    lines = err.splitlines()
    assert rc == 2 and out == ""
    assert lines[0] == "error: could not fetch acme/nope from any source:"
    assert lines[1] == f"  mirror: acme/nope is not on {fake.url}, or is private"
    assert lines[2].startswith(f"  hub: cannot connect to {hub} (")
    assert lines[3] == f"  modelscope: acme/nope is not on {fake.url}, or is private"
    assert lines[4:] == [f"  fix: {fix}"]
    assert "skipped" not in err and "trying" not in err


def test_a_gated_repository_is_called_gated_with_the_licence_fix(capsys):
    gated = replace(tiny_repo("acme/Gated-R1"), gated=True)
    with serve(gated) as fake:
        rc, out, err = fetch_cli(capsys, "acme/Gated-R1", "--source", "mirror", "--mirror", fake.url)
        assert not any(fake.gets(n) for n in NEEDED)  # no byte of it was served
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        ("error: could not fetch acme/Gated-R1 from mirror: the download failed: acme/Gated-R1 is gated: "
         "the account asking (or no login) has not been granted access"),
        f"  fix: {sources.FIX_GATED.format(repo_id='acme/Gated-R1')}",
    ]
    assert "not on" not in err  # not mistaken for a missing or private repository


def test_an_unknown_revision_gets_the_fix_that_lists_branches_and_tags(capsys):
    with serve(tiny_repo()) as fake:
        rc, out, err = fetch_cli(capsys, REPO, "--source", "mirror", "--mirror", fake.url, "--revision", "v9")
        assert [m for m, _path, _r in fake.log] == ["GET"]  # the model info only, nothing downloaded
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        f"error: could not fetch {REPO} from mirror: revision 'v9' of {REPO} is not on {fake.url}",
        f"  fix: {sources.FIX_REVISION.format(repo_id=REPO)}",
    ]
    assert "list_repo_refs('deepseek-ai/Tiny-R1')" in err


def test_an_unreachable_source_gets_the_mirror_and_source_fix(capsys):
    dead = _dead_url()
    rc, out, err = fetch_cli(capsys, REPO, "--source", "mirror", "--mirror", dead)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"error: could not fetch {REPO} from mirror: cannot connect to {dead} (")
    assert lines[1:] == [f"  fix: {sources.FIX_NETWORK}"]
    assert "HF_ENDPOINT" in sources.FIX_NETWORK and "--source" in sources.FIX_NETWORK


@pytest.mark.parametrize(("where", "url", "rule"), [
    ("--mirror", "http://", "it names no host"),
    ("--mirror", "notaurl", "it has no scheme (http:// or https://)"),
    ("--mirror", "ftp://hf-mirror.com", "its scheme is 'ftp'"),
    ("HF_ENDPOINT", "hf-mirror.com", "it has no scheme (http:// or https://)"),
])
def test_a_malformed_mirror_is_refused_with_its_rule_before_any_request(capsys, monkeypatch, where, url, rule):
    """Before: httpx's UnsupportedProtocol surfaced with the generic network advice."""
    with serve(tiny_repo()) as fake:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        if where == "HF_ENDPOINT":
            monkeypatch.setenv("HF_ENDPOINT", url)
            rc, out, err = fetch_cli(capsys, REPO)
        else:
            rc, out, err = fetch_cli(capsys, REPO, "--source", "mirror,modelscope", "--mirror", url)
        assert fake.log == []  # not even the source that would have worked was asked
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"error: {where} {url!r} is not an http(s) URL: {rule}",
                                f"  fix: pass the mirror's base address, e.g. {where} https://hf-mirror.com"]


def test_a_source_that_fails_before_one_that_works_is_named_once(capsys, monkeypatch):
    dead = _dead_url()
    with serve(tiny_repo()) as fake:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        rc, out, err = fetch_cli(capsys, REPO, "--source", "mirror,modelscope", "--mirror", dead)
    assert rc == 0
    assert len(err.splitlines()) == 1 and err.startswith(f"dsagent: mirror: skipped, cannot connect to {dead} (")
    assert out.startswith(f"{REPO} @ ") and ": fetched at " in out


@pytest.mark.parametrize(("repo_id", "rule"), [
    ("acme/tiny--r1", "'--' and '..' are not allowed in a hub id"),
    ("acme/x.git", "a hub id cannot end in '.git'"),
    ("acme/..", "'--' and '..' are not allowed in a hub id"),
])
def test_an_id_huggingface_hub_refuses_is_refused_before_any_request(capsys, monkeypatch, repo_id, rule):
    with serve(tiny_repo()) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        rc, out, err = fetch_cli(capsys, repo_id)
        assert fake.log == []
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"error: {repo_id!r} is not a valid hub id: {rule}", f"  fix: {ID_FIX}"]


def test_the_id_rules_agree_with_huggingface_hub():
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    ids = ["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "a/b", "acme/tiny--r1", "acme/x.git", "acme/..", "acme/-x",
           "acme/x-", "acme/.x", "acme/x.", "_a/b_", "acme/" + "x" * 96, "acme/" + "x" * 97, "a.b/c.d", "acme/x..y"]
    for repo_id in ids:
        try:
            validate_repo_id(repo_id)
            valid = True
        except HFValidationError:
            valid = False
        assert (sources.repo_id_problem(repo_id) == "") == valid, repo_id


def test_force_fetches_an_intact_model_again(capsys, tmp_path):
    with serve(tiny_repo()) as fake:
        args = (REPO, "--source", "mirror", "--mirror", fake.url)
        assert fetch_cli(capsys, *args)[0] == 0
        shard = tmp_path / "hf" / "hub" / "models--deepseek-ai--Tiny-R1" / "snapshots" / COMMIT / SHARD
        os.utime(shard.resolve(), ns=(0, 0))  # marked: a file written again has a new time (no clock granularity)
        rc, out, _ = fetch_cli(capsys, *args)
        assert rc == 0 and ": already in the store at " in out
        assert all(len(fake.gets(n)) == 1 for n in NEEDED)
        assert shard.resolve().stat().st_mtime_ns == 0  # reused untouched
        rc, out, _ = fetch_cli(capsys, *args, "--force")
        assert rc == 0 and ": fetched at " in out
        assert all(len(fake.gets(n)) == 2 for n in NEEDED)  # every file, again
    assert shard.resolve().stat().st_mtime_ns > 0
    assert (tmp_path / "home" / "models" / "tiny-r1" / MANIFEST).is_file()


def _on_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on one pseudo-terminal; return its status and all it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        if select.select([leader], [], [], 0.2)[0]:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def test_one_dsagent_bar_on_a_terminal_closed_before_the_summary(tmp_path):
    """huggingface_hub's bars ("Fetching N files", "Reconstructing", "Downloading bytes") stay
    silent; dsagent's one bar ends at 100% on its own line, and the summary line comes after it."""
    repo = tiny_repo(floats=2_000_000)
    root = str(Path(dsagent.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    with serve(repo) as fake:
        rc, text = _on_a_terminal([sys.executable, "-m", "dsagent.cli", "fetch", REPO, "--source", "mirror",
                                   "--mirror", fake.url], env)
    assert rc == 0, text
    for theirs in ("Fetching", "Reconstructing", "Downloading bytes", "Download complete"):
        assert theirs not in text
    segments = [s for line in text.replace("\r\n", "\n").split("\n") for s in line.split("\r")]
    bars = [s for s in segments if "%|" in s]
    assert bars and all(s.startswith(f"{REPO} from mirror:") for s in bars)
    assert "100%" in bars[-1]
    summary = [i for i, s in enumerate(segments) if ": fetched at " in s]
    assert len(summary) == 1 and segments[summary[0]].startswith(f"{REPO} @ {COMMIT}: fetched at ")
    assert summary[0] > segments.index(bars[-1])  # after the bar's last drawing, on a line of its own
