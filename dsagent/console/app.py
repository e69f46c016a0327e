"""``dsagent console``: the web console's routes, its metrics sampler, and the server (a thin face).

======================  ==============================================================
page / endpoint          what it does (every number from the library)
======================  ==============================================================
GET  /login, POST        the key, once, in a form; a session cookie back (``auth``)
GET  /                   deployments and router models, refreshed every 2 s from
GET  /fragment/deploy    ``status.report`` (KV use, requests from /metrics with the key)
POST /api/stop/NAME      ``deploy.stop``; ``/api/restart/NAME`` stops and starts it again
GET  /plan?model=..      ``estimate`` + ``plan_json``: the numbers ``estimate --json`` prints
GET  /gpus               NVML's GPUs and who holds them; "no GPU" on a CPU machine
GET  /try, POST /api/chat  a streamed chat with a ready model, relayed (the key stays here)
======================  ==============================================================

Nothing is fetched from elsewhere: the CSS and JS are the package's own files.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..deploy.record.logs import log_tail
from ..deploy.record.phase import metrics
from ..deploy.record.store import list_all, load
from ..deploy.status import reports
from ..errors import DsagentError
from ..settings import Settings
from . import views
from .auth import Sessions

__all__ = ["build_app", "serve"]

STATIC = Path(__file__).with_name("static")
SAMPLE_EVERY = 5.0
SAMPLES = 60  # five minutes of tokens/s


class Sampler:
    """tokens/s per deployment from vLLM's ``generation_tokens_total`` counter, every few seconds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rates: dict[str, collections.deque[float]] = {}
        self.gpu_used: dict[int, collections.deque[float]] = {}
        self._last: dict[str, tuple[float, float]] = {}

    def sample_gpus(self) -> None:
        from ..system import gpus as machine

        for g in machine.visible_gpus(settings=self.settings):
            self.gpu_used.setdefault(g.index, collections.deque(maxlen=SAMPLES)).append(round(g.total_gib - g.free_gib, 2))

    def sample(self) -> None:
        self.sample_gpus()
        for dep in list_all(self.settings):
            m = metrics(dep)  # one /metrics read; a server that does not answer gives None
            if m is None or "generation_tokens_total" not in m:
                continue
            now, total = time.monotonic(), m["generation_tokens_total"]
            if (prev := self._last.get(dep.name)) is not None and now > prev[0]:
                rate = max(0.0, (total - prev[1]) / (now - prev[0]))
                self.rates.setdefault(dep.name, collections.deque(maxlen=SAMPLES)).append(round(rate, 2))
            self._last[dep.name] = (now, total)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(DsagentError, OSError, httpx.HTTPError):
                await asyncio.to_thread(self.sample)
            await asyncio.sleep(SAMPLE_EVERY)


def _router_view(settings: Settings) -> dict[str, Any] | None:
    from ..router.serve import find

    info = find(settings)
    return None if info is None else {"base_url": info.base_url, "models": info.models}


def _ready_models(settings: Settings) -> list[str]:
    names = [r["name"] for r in reports(settings) if r.get("state") == "ready" and "estimate" in r]
    router = _router_view(settings)
    return names + [n for n in (router or {}).get("models", {}) if n not in names]


def _base_url(settings: Settings, name: str) -> str | None:
    """Where a chat with ``name`` goes: the router when its catalogue has it, else the ready
    deployment of that name; ``None`` when neither."""
    from ..deploy.record.phase import live_state
    from ..deploy.record.state import State

    router = _router_view(settings)
    if router and name in router["models"]:
        return str(router["base_url"])
    try:
        dep = load(settings, name)
    except DsagentError:  # not a deployment name at all
        return None
    return dep.base_url if dep is not None and live_state(dep) == State.READY else None


def _gpus(settings: Settings) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The visible GPUs, and for each the deployments whose processes hold GPU memory (NVML's
    per-process list names who; a deployment pinned with ``--gpus`` is put on its own GPUs)."""
    from ..deploy.record.identity import processes_of
    from ..system import gpus as machine

    seen = machine.visible_gpus(settings=settings)
    if not seen:
        return [], {}
    try:
        held = machine.memory_holders() or {}
    except machine.GpuUnknown:
        held = {}
    holders: dict[int, list[str]] = {}
    for dep in list_all(settings):
        gib = sum(held.get(p.pid, 0.0) for p in processes_of(dep))
        if gib > 0:
            pinned = [int(x) for x in dep.gpus.split(",") if x.strip().isdigit()]
            for i in pinned or [g.index for g in seen]:
                holders.setdefault(i, []).append(f"{dep.name} ({gib:.1f} GiB)")
    return [g.__dict__ for g in seen], {i: ", ".join(v) for i, v in holders.items()}


def _state(request: Request) -> tuple[Settings, Sessions, Sampler]:
    st = request.app.state
    return st.settings, st.sessions, st.sampler


async def login_form(request: Request) -> Response:
    _, sessions, _ = _state(request)
    if request.method == "GET":
        return HTMLResponse(views.login_page())
    form = await request.form()
    token = sessions.login(str(form.get("key", "")))
    if token is None:
        return HTMLResponse(views.login_page("That is not the deployment key."), status_code=401)
    return RedirectResponse("/", status_code=303, headers={"set-cookie": sessions.cookie(token)})


async def logout(request: Request) -> Response:
    from .auth import COOKIE

    _state(request)[1].logout(request.cookies.get(COOKIE, ""))
    return RedirectResponse("/login", status_code=303, headers={"set-cookie": f"{COOKIE}=; Max-Age=0; Path=/"})


def _fragment(settings: Settings, sampler: Sampler) -> str:
    rows = reports(settings)
    tails = {r["name"]: log_tail(r["log_file"], 12) for r in rows if r.get("log_file") and r["state"] != "ready"}
    return views.deployments_rows(rows, _router_view(settings), sampler.rates, tails)


async def home(request: Request) -> Response:
    settings, _, sampler = _state(request)
    rows = await asyncio.to_thread(_fragment, settings, sampler)
    body = f'<h1>Deployments</h1><div id="deploy" data-refresh="/fragment/deploy">{rows}</div>'
    return HTMLResponse(views.page("Deployments", body, active="/"))


async def fragment(request: Request) -> Response:
    settings, _, sampler = _state(request)
    return HTMLResponse(await asyncio.to_thread(_fragment, settings, sampler))


async def stop_one(request: Request) -> Response:
    from ..deploy.stop import stop

    settings, name = _state(request)[0], request.path_params["name"]
    try:
        result = (await asyncio.to_thread(lambda: stop(name, settings=settings)))[0]
    except DsagentError as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    return JSONResponse({"name": name, "stopped": not result.problem, "ended": len(result.ended),
                         "problem": result.problem})


async def restart_one(request: Request) -> Response:
    """Stop the deployment and start it again with its recorded options (not waiting for ready)."""
    from ..deploy.launch.options import ServeOptions
    from ..deploy.stop import stop
    from ..deploy.up import up

    settings, name = _state(request)[0], request.path_params["name"]
    dep = await asyncio.to_thread(load, settings, name)
    if dep is None:
        return JSONResponse({"error": f"no deployment named {name!r}"}, status_code=404)

    def again() -> None:
        stop(name, settings=settings)
        up(dep.model_path, options=ServeOptions.from_dict(dep.options), name=name, settings=settings,
           wait_ready=False)

    try:
        await asyncio.to_thread(again)
    except DsagentError as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    return JSONResponse({"name": name, "restarting": True})


PLAN_FIELDS = ("model", "gpus", "gpu_memory_gib", "tp", "pp", "max_model_len", "dtype")


async def plan(request: Request) -> Response:
    from ..plan import estimate as planner
    from ..plan.catalog import CATALOG, resolve

    form = {k: v for k, v in request.query_params.items() if k in PLAN_FIELDS and len(v) < 300}
    models = [s.name for s in CATALOG]
    if not form.get("model"):
        return HTMLResponse(views.plan_page(models, form, None))
    try:
        num = {k: (float(form[k]) if k == "gpu_memory_gib" else int(form[k]))
               for k in ("gpus", "gpu_memory_gib", "tp", "pp", "max_model_len") if form.get(k)}
        spec = resolve(form["model"])
        result = await asyncio.to_thread(lambda: planner.estimate(spec, dtype=form.get("dtype") or "auto", **num))
    except (DsagentError, ValueError) as err:
        return HTMLResponse(views.plan_page(models, form, None, str(err)), status_code=400)
    return HTMLResponse(views.plan_page(models, form, planner.plan_json(result, spec.name)))


async def gpus(request: Request) -> Response:
    settings, _, sampler = _state(request)
    seen, holders = await asyncio.to_thread(_gpus, settings)
    return HTMLResponse(views.gpus_page(seen, holders, {i: list(v) for i, v in sampler.gpu_used.items()}))


async def try_it(request: Request) -> Response:
    return HTMLResponse(views.try_page(await asyncio.to_thread(_ready_models, _state(request)[0])))


async def chat(request: Request) -> Response:
    """Relay a streamed chat to a ready model (a deployment, or the router's) with the key."""
    settings = _state(request)[0]
    try:
        body = await request.json()
        name, messages, max_tokens = body.get("model"), body.get("messages"), int(body.get("max_tokens", 256))
    except (ValueError, TypeError, AttributeError):
        return JSONResponse({"error": "send a JSON object {model, messages[, max_tokens, temperature]}"},
                            status_code=400)
    if not isinstance(name, str) or not isinstance(messages, list) or not 1 <= max_tokens <= 8192:
        return JSONResponse({"error": "send {model, messages}, max_tokens 1-8192"}, status_code=400)
    base = await asyncio.to_thread(_base_url, settings, name)
    if base is None:
        return JSONResponse({"error": f"{name!r} is not a ready model here"}, status_code=404)
    payload: dict[str, Any] = {"model": name, "messages": messages, "stream": True, "max_tokens": max_tokens,
                               "stream_options": {"include_usage": True}}
    if isinstance(body.get("temperature"), (int, float)):
        payload["temperature"] = float(body["temperature"])
    return StreamingResponse(_relay(base, settings.api_key(), payload), media_type="text/event-stream")


async def static(request: Request) -> Response:
    path = STATIC / request.path_params["file"]
    if path.parent != STATIC or not path.is_file():
        return Response(status_code=404)
    return FileResponse(path)


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(app.state.sampler.run())
    try:
        yield
    finally:
        task.cancel()


ROUTES = [
    Route("/login", login_form, methods=["GET", "POST"]), Route("/logout", logout, methods=["POST"]),
    Route("/", home), Route("/fragment/deploy", fragment), Route("/plan", plan), Route("/gpus", gpus),
    Route("/try", try_it), Route("/api/chat", chat, methods=["POST"]),
    Route("/api/stop/{name}", stop_one, methods=["POST"]), Route("/api/restart/{name}", restart_one, methods=["POST"]),
    Route("/static/{file}", static),
]


def build_app(settings: Settings) -> Any:
    """The console's ASGI app for ``settings``' home, behind its key."""
    sessions = Sessions(settings.api_key())
    app = Starlette(routes=ROUTES, lifespan=_lifespan)
    app.state.settings, app.state.sessions, app.state.sampler = settings, sessions, Sampler(settings)
    return sessions.guard(app)


async def _relay(base: str, key: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """The model's SSE stream, passed to the page as it comes (the key never leaves this process)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0)) as client:
        try:
            async with client.stream("POST", f"{base}/chat/completions", json=payload,
                                     headers={"Authorization": f"Bearer {key}"}) as r:
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")[:500]
                    yield f"data: {json.dumps({'error': f'{r.status_code}: {text}'})}\n\n".encode()
                    return
                async for chunk in r.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as exc:
            yield f"data: {json.dumps({'error': f'{type(exc).__name__}: {exc}'})}\n\n".encode()


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8700) -> None:
    """Serve the console until Ctrl-C / SIGTERM."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(build_app(settings), host=host, port=port, log_level="warning",
                                  timeout_graceful_shutdown=3)).run()
