"""The console's guard and API shapes, in-process (no vLLM server, no browser): who gets in, what
a cross-site request cannot do, and the answers to bad input."""

from __future__ import annotations

import httpx
import pytest

from dsagent.console.app import build_app
from dsagent.console.auth import COOKIE


@pytest.fixture
async def client(tmp_settings):
    app = build_app(tmp_settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console") as c:
        yield c, tmp_settings.api_key()


async def _login(c: httpx.AsyncClient, key: str) -> None:
    r = await c.post("/login", data={"key": key})
    assert r.status_code == 303 and r.headers["location"] == "/"


async def test_without_a_session_pages_redirect_and_the_api_refuses(client):
    c, _ = client
    r = await c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert (await c.post("/api/stop/x")).status_code == 401
    assert (await c.get("/login")).status_code == 200  # the login page itself is open
    assert (await c.post("/login", data={"key": "wrong"})).status_code == 401
    assert COOKIE not in c.cookies


async def test_the_session_cookie_is_httponly_strict_and_not_the_key(client):
    c, key = client
    r = await c.post("/login", data={"key": key})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and key not in cookie
    assert (await c.get("/plan")).status_code == 200


async def test_a_post_without_the_console_header_is_refused(client):
    """A cross-site form can send neither the SameSite=Strict cookie nor a custom header."""
    c, key = client
    await _login(c, key)
    r = await c.post("/api/stop/victim")
    assert r.status_code == 403 and "X-Dsagent-Console" in r.json()["error"]
    r = await c.post("/api/stop/victim", headers={"X-Dsagent-Console": "1"})
    assert r.status_code == 400 and "no deployment named 'victim'" in r.json()["error"]


async def test_bad_chat_requests_get_400_or_404_naming_the_problem(client):
    c, key = client
    await _login(c, key)
    h = {"X-Dsagent-Console": "1"}
    assert (await c.post("/api/chat", headers=h, content=b"not json")).status_code == 400
    assert (await c.post("/api/chat", headers=h, json={"model": "x", "messages": [], "max_tokens": "a"})).status_code == 400
    r = await c.post("/api/chat", headers=h, json={"model": "x", "messages": []})
    assert r.status_code == 404 and "not a ready model" in r.json()["error"]


async def test_a_bad_plan_is_an_error_on_the_page_and_static_files_stay_in_their_folder(client):
    c, key = client
    await _login(c, key)
    r = await c.get("/plan", params={"model": "no-such-model"})
    assert r.status_code == 400 and 'id="plan-error"' in r.text
    assert (await c.get("/static/console.css")).status_code == 200
    assert (await c.get("/static/..%2Fapp.py")).status_code == 404


def test_a_taken_port_is_refused_with_the_fix(tmp_path):
    """Another process holds the port: `dsagent console` says so and names the fix (no traceback)."""
    import socket

    from conftest import run_cli

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = run_cli("console", "--port", str(port), env={"DSAGENT_HOME": str(tmp_path / "home")}, timeout=180)
    assert out.returncode == 2 and f"127.0.0.1:{port} is taken" in out.stderr and "--port auto" in out.stderr
