"""``dsagent console`` in a real headless browser (Debian's chromium driven by Playwright) against
the real vLLM CPU server of the test session: the login, the deployments page, a streamed chat,
the plan page against ``dsagent estimate --json``, the GPUs page, and a stop from the page.

Screenshots of each page go to ``artifacts/console/`` (not committed). Every request the page
makes is recorded: none may leave the console's own loopback address, and none may carry the key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import run_cli

from dsagent.deploy.launch.options import ServeOptions
from dsagent.deploy.record.identity import processes_of
from dsagent.deploy.record.store import load
from dsagent.deploy.up import up
from dsagent.system.ports import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DSAGENT_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts")) / "console"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def _console(home: Path) -> Iterator[str]:
    """``dsagent console`` of ``home`` on a free loopback port; its URL."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dsagent.cli", "console", "--port", str(port)],
                            env={**os.environ, "DSAGENT_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/login", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def console(settings, server):
    """The console of the session's home."""
    with _console(settings.home) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@contextmanager
def _logged_in(browser, console: str, key: str) -> Iterator[object]:
    """A page logged in to ``console`` whose every request is recorded (``page.seen``); after it,
    none may have left the console's loopback address or carried the key."""
    context = browser.new_context()
    pg = context.new_page()
    pg.seen = []
    pg.on("request", lambda r: pg.seen.append(r.url))
    pg.goto(f"{console}/")
    pg.fill("#key", key)
    pg.click("#login")
    pg.wait_for_url(f"{console}/")
    yield pg
    assert all(u.startswith(console) or u.startswith("data:") for u in pg.seen), pg.seen  # nothing leaves loopback
    assert not any(key in u for u in pg.seen)  # the key is never in a URL
    context.close()


@pytest.fixture
def page(browser, console, settings):
    """A logged-in page of the session's console (``_logged_in``)."""
    with _logged_in(browser, console, settings.api_key()) as pg:
        yield pg


def _shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.timeout(120)
def test_the_login_needs_the_key_and_sets_a_strict_httponly_cookie(browser, console, settings):
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(f"{console}/plan")
    assert pg.url == f"{console}/login"  # no session: the login page
    assert httpx.get(f"{console}/fragment/deploy", timeout=10, follow_redirects=False).status_code == 303
    assert httpx.post(f"{console}/api/stop/x", timeout=10).status_code == 401
    pg.fill("#key", "not-the-key")
    pg.click("#login")
    assert "not the deployment key" in pg.inner_text("#login-error")
    assert context.cookies() == []
    _shot(pg, "login")
    pg.fill("#key", settings.api_key())
    pg.click("#login")
    pg.wait_for_url(f"{console}/")
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and settings.api_key() not in cookie["value"]
    assert pg.evaluate("document.cookie") == ""  # page scripts cannot read the session
    context.close()


@pytest.mark.timeout(120)
def test_the_deployments_page_shows_the_session_server_ready_with_its_measured_kv_capacity(page, server, settings):
    row = page.locator(f'tr[data-name="{server.name}"]')
    assert row.get_attribute("data-state") == "ready"
    measured = int(load(settings, server.name).measured["kv_cache_tokens"])
    assert row.locator("td.kv").get_attribute("data-measured") == str(measured)
    assert f"{measured:,}" in row.locator("td.kv").inner_text()
    page.wait_for_timeout(2500)  # one refresh of the fragment: still there, still ready
    assert page.locator(f'tr[data-name="{server.name}"]').get_attribute("data-state") == "ready"
    _shot(page, "deployments")


@pytest.mark.timeout(180)
def test_a_chat_streams_the_answer_from_the_model(page, console, server):
    page.goto(f"{console}/try")
    page.select_option("#model", server.name)
    page.fill("#prompt", "What is the capital of France?")
    page.fill("#temperature", "0")  # greedy: the answer the other tests see
    page.click("#send")
    page.wait_for_function("document.getElementById('answer').dataset.done === '1'", timeout=120_000)
    assert "Paris" in page.inner_text("#answer")
    assert int(page.get_attribute("#answer", "data-chunks")) > 1  # it came in pieces
    assert "completion tokens" in page.inner_text("#usage")
    _shot(page, "try")


@pytest.mark.timeout(120)
def test_the_plan_page_draws_the_numbers_estimate_json_prints(page, console):
    """A 14B distill on 4 x 24 GiB: the page's plan is ``dsagent estimate --json``'s, to the digit."""
    page.goto(f"{console}/plan")
    page.fill("#f-model", "deepseek-r1-distill-qwen-14b")
    page.fill("#f-gpus", "4")
    page.fill("#f-gpu_memory_gib", "24")
    page.click("#draw")
    page.wait_for_selector("#verdict")
    drawn = json.loads(page.locator("#plan-json").text_content())
    out = run_cli("estimate", "deepseek-r1-distill-qwen-14b", "--gpus", "4", "--gpu-memory-gib", "24", "--json")
    printed = json.loads(out.stdout)
    assert drawn == printed
    assert page.inner_text("#verdict").endswith("fits" if printed["fits"] else "does not fit")
    detail = printed["detail"]
    assert page.locator(".gpu").count() == detail["tp"] * detail["pp"]
    used = sum(detail["workers"][0][k] for k in ("weights_gib", "activation_gib", "non_torch_gib",
                                                 "cuda_graph_gib", "kv_cache_gib"))
    assert float(page.locator(".gpu").first.get_attribute("data-used")) == pytest.approx(used, abs=1e-3)
    assert page.inner_text("#command").startswith("dsagent up deepseek-r1-distill-qwen-14b")
    _shot(page, "plan")


@pytest.mark.timeout(60)
def test_the_gpus_page_says_there_is_no_gpu(page, console):
    page.goto(f"{console}/gpus")
    assert "No GPU" in page.inner_text("#no-gpu")
    _shot(page, "gpus")


@pytest.mark.timeout(300)
def test_a_deployment_is_stopped_from_the_page_after_a_confirmation(browser, own_home):
    """A deployment still starting, stopped with the page's button: it shows stopped and none of its
    processes is left. In a home of its own, with a console of its own: in the session's home the
    starting 'victim' would be the newest deployment, which another worker's ``local_deepseek()``
    attaches to."""
    victim = up(options=ServeOptions(port=0, device="cpu"), name="victim", settings=own_home, wait_ready=False)
    with _console(own_home.home) as console, _logged_in(browser, console, own_home.api_key()) as page:
        page.goto(f"{console}/")
        page.wait_for_selector('tr[data-name="victim"]')
        asked = []
        page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
        page.click('tr[data-name="victim"] button.stop')
        page.wait_for_selector('tr[data-name="victim"][data-state="stopped"]', timeout=60_000)
        assert asked == ["stop victim?"]
        assert not processes_of(victim)
        _shot(page, "stopped")
