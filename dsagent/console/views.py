"""The console's pages, rendered on the server from the library's own data (pure: no I/O).

Every number comes from the library (``status.report``, ``estimate.plan_json``, the router's
record): the pages draw, they do not recompute. Text is escaped once, here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

__all__ = ["deployments_rows", "gpus_page", "login_page", "page", "plan_page", "try_page"]

NAV = (("/", "Deployments"), ("/plan", "Plan"), ("/gpus", "GPUs"), ("/try", "Try it"))
PARTS = (("weights_gib", "weights"), ("activation_gib", "activation"), ("non_torch_gib", "overheads"),
         ("cuda_graph_gib", "CUDA graphs"), ("kv_cache_gib", "KV cache"))


def page(title: str, body: str, *, active: str = "", script: str = "") -> str:
    nav = "".join(f'<a href="{href}"{" class=on" if href == active else ""}>{name}</a>' for href, name in NAV)
    js = f'<script src="/static/console.js"></script>{script}' if active else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · dsagent</title>'
            '<link rel="stylesheet" href="/static/console.css"><link rel="icon" href="data:,"></head><body>'
            + (f'<header><b>dsagent</b><nav>{nav}</nav><form method="post" action="/logout">'
               '<button>Log out</button></form></header>' if active else "")
            + f"<main>{body}</main>{js}</body></html>")


def login_page(error: str = "") -> str:
    msg = f'<p class="error" id="login-error">{escape(error)}</p>' if error else ""
    return page("Log in", f"""<h1>dsagent console</h1>{msg}
<form method="post" action="/login" class="login"><label>Deployment key
<input type="password" name="key" id="key" autocomplete="current-password" autofocus></label>
<button id="login">Log in</button></form>
<p class="hint">The key is in <code>~/.dsagent/api_key</code> (or <code>$DSAGENT_HOME/api_key</code>).</p>""")


def _age(seconds: float | None) -> str:
    """
    >>> _age(3725.0)
    '1 h 2 min'
    """
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def _spark(rates: Sequence[float]) -> str:
    """An inline SVG line of tokens/s samples (no chart library)."""
    if len(rates) < 2:
        return '<span class="dim">-</span>'
    top = max(max(rates), 1e-9)
    pts = " ".join(f"{i * 100 / (len(rates) - 1):.1f},{30 - r / top * 28:.1f}" for i, r in enumerate(rates))
    return f'<svg class="spark" viewBox="0 0 100 30" preserveAspectRatio="none"><polyline points="{pts}"/></svg>'


def deployments_rows(reports: Sequence[Mapping[str, Any]], router: Mapping[str, Any] | None,
                     rates: Mapping[str, Sequence[float]], tails: Mapping[str, str]) -> str:
    """The deployments (and the router's models) as table rows and their log tails."""
    if not reports and not router:
        return '<p id="none">No deployments. Start one: <code>dsagent up</code></p>'
    now = time.time()
    rows = []
    for r in reports:
        name, state = escape(r["name"]), escape(r["state"])
        kv = r.get("kv_cache_usage")
        est, got = (r.get("estimate") or {}).get("kv_cache_tokens"), (r.get("measured") or {}).get("kv_cache_tokens")
        restart = r.get("restart") or {}
        started = (r.get("measured") or {}).get("started_at") or r.get("started_at")
        uptime = restart.get("uptime_s") if restart else (now - started if started and state == "ready" else None)
        last = (restart.get("last_failure") or {}).get("reason", "") if restart else ""
        rate = rates.get(r["name"], ())
        rows.append(f"""<tr data-name="{name}" data-state="{state}"><td><b>{name}</b><br><span class="dim">
{escape(str(r.get("model", "")))}</span></td><td><span class="state {state}">{state}</span>
{f'<br><span class="dim">{escape(r["reason"])}</span>' if r.get("reason") else ""}</td>
<td>{escape(str(r.get("device", "")))} tp {r.get("tp")} pp {r.get("pp")}</td><td><code>{escape(r["base_url"])}</code></td>
<td>{_age(uptime)}</td><td>{restart.get("restarts", 0) if restart else "-"}{f'<br><span class="dim">{escape(last)}</span>' if last else ""}</td>
<td>{f"{kv * 100:.1f}%" if kv is not None else "-"}</td>
<td>{r.get("requests_running") if r.get("requests_running") is not None else "-"} /
{r.get("requests_waiting") if r.get("requests_waiting") is not None else "-"}</td>
<td class="kv" data-planned="{est or ''}" data-measured="{got or ''}">{f"{est:,}" if est else "-"} / {f"{got:,}" if got else "-"}</td>
<td>{f"{rate[-1]:.1f}" if rate else "-"} {_spark(rate)}</td>
<td><button class="stop" data-name="{name}">Stop</button> <button class="restart" data-name="{name}">Restart</button></td></tr>""")
    table = ("<table id=\"deployments\"><thead><tr><th>deployment</th><th>state</th><th>layout</th><th>endpoint</th>"
             "<th>uptime</th><th>restarts</th><th>KV used</th><th>running / waiting</th>"
             "<th>KV tokens planned / measured</th><th>tokens/s</th><th></th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>") if rows else ""
    logs = "".join(f'<details class="log"><summary>{escape(n)}: log tail</summary><pre>{escape(t)}</pre></details>'
                   for n, t in tails.items())
    return table + _router(router) + logs


def _router(router: Mapping[str, Any] | None) -> str:
    if not router:
        return ""
    rows = "".join(f'<tr data-model="{escape(n)}"><td>{escape(n)}</td><td><span class="state {escape(m["state"])}">'
                   f'{escape(m["state"])}</span> <span class="dim">{escape(m.get("phase") or "")}</span></td>'
                   f'<td>{m.get("loads", 0)} / {m.get("wakes", 0)}</td><td>{m.get("need_gib") or "-"}</td></tr>'
                   for n, m in router["models"].items())
    return (f'<h2>Router <code>{escape(router["base_url"])}</code></h2><table id="router"><thead><tr><th>model</th>'
            f"<th>state</th><th>loads / wakes</th><th>needs GiB</th></tr></thead><tbody>{rows}</tbody></table>")


def _bars(plan: Mapping[str, Any]) -> str:
    """Each GPU's memory as a stacked bar: the plan's parts, then what is left of the card (a
    stage's ``tp`` GPUs hold the same)."""
    detail = plan.get("detail") or {}
    out, gpu = [], 0
    for w in detail.get("workers") or []:
        total = float(w.get("total_gib") or 0.0) or 1.0
        parts = [(label, float(w.get(key) or 0.0)) for key, label in PARTS]
        used = sum(v for _, v in parts)
        segs = "".join(f'<span class="seg {label.split()[0].lower()}" style="width:{v / total * 100:.2f}%" '
                       f'title="{label}: {v:.2f} GiB"></span>' for label, v in parts if v > 0)
        segs += f'<span class="seg free" style="width:{max(0.0, total - used) / total * 100:.2f}%"></span>'
        for _ in range(max(1, int(detail.get("tp") or 1))):
            out.append(f'<div class="gpu" data-stage="{w.get("stage")}" data-used="{used:.4f}"><div class="label">'
                       f'GPU {gpu} (stage {w.get("stage")}, {w.get("layers")} layers): {used:.1f} of {total:.1f} GiB'
                       f'</div><div class="bar">{segs}</div></div>')
            gpu += 1
    legend = "".join(f'<span class="key {label.split()[0].lower()}"></span>{label} ' for _, label in PARTS)
    return "".join(out) + f'<p class="legend">{legend}<span class="key free"></span>headroom</p>'


def _command(form: Mapping[str, str], plan: Mapping[str, Any]) -> str:
    """The ``dsagent up`` that serves this plan: its layout, and the context and dtype asked for.

    >>> _command({"model": "m", "max_model_len": "8192"}, {"detail": {"tp": 2, "pp": 1}})
    'dsagent up m --tp 2 --max-model-len 8192'
    """
    detail = plan.get("detail") or {}
    flags = [form.get("model", "")]
    for key, flag in (("tp", "--tp"), ("pp", "--pp")):
        if int(detail.get(key) or 1) > 1:
            flags += [flag, str(detail[key])]
    if form.get("max_model_len"):
        flags += ["--max-model-len", form["max_model_len"]]
    if form.get("dtype") and form["dtype"] != "auto":
        flags += ["--dtype", form["dtype"]]
    return "dsagent up " + " ".join(flags)


def plan_page(models: Sequence[str], form: Mapping[str, str], plan: Mapping[str, Any] | None, error: str = "") -> str:
    opts = "".join(f'<option{" selected" if m == form.get("model") else ""}>{escape(m)}</option>' for m in models)
    field = lambda k, label, hint="": (f'<label>{label}<input name="{k}" id="f-{k}" value="{escape(form.get(k, ""))}" '
                                       f'placeholder="{hint}"></label>')
    body = (f'<h1>Memory plan</h1><form method="get" action="/plan" class="plan"><label>model<input name="model" '
            f'id="f-model" list="models" value="{escape(form.get("model", ""))}"></label><datalist id="models">{opts}'
            f'</datalist>{field("gpus", "GPUs", "4")}{field("gpu_memory_gib", "GiB per GPU", "24")}'
            f'{field("tp", "TP", "auto")}{field("pp", "PP", "auto")}{field("max_model_len", "context", "model limit")}'
            f'{field("dtype", "dtype", "auto")}<button id="draw">Draw</button></form>')
    if error:
        return page("Plan", body + f'<p class="error" id="plan-error">{escape(error)}</p>', active="/plan")
    if plan is None:
        return page("Plan", body, active="/plan")
    verdict = "fits" if plan.get("fits") else "does not fit"
    detail = plan.get("detail") or {}
    suggestions = "".join(f'<li><a class="suggestion" href="/plan?{_suggested(form, s)}">{escape(s)}</a></li>'
                          for s in plan.get("suggestions") or ())
    reasons = "".join(f"<li>{escape(r)}</li>" for r in detail.get("reasons") or ())
    body += (f'<h2 id="verdict" class="{"ok" if plan.get("fits") else "bad"}">{escape(plan.get("model", ""))}: '
             f'{verdict}</h2><p id="summary">tp {detail.get("tp", "-")} × pp {detail.get("pp", "-")}, context '
             f'{detail.get("max_model_len", "-")}: weights {plan.get("weights_gib", 0):.2f} GiB, KV cache '
             f'{plan.get("kv_cache_gib", 0):.2f} GiB per GPU, {plan.get("kv_cache_tokens", 0):,} tokens, '
             f'{plan.get("max_concurrency", 0)}× concurrency</p>' + _bars(plan)
             + (f"<ul class=reasons>{reasons}</ul>" if reasons else "")
             + (f'<h3>Alternatives</h3><ul id="suggestions">{suggestions}</ul>' if suggestions else "")
             + f'<h3>Run it</h3><pre id="command">{escape(_command(form, plan))}</pre>'
             + f'<script type="application/json" id="plan-json">{_script_json(plan)}</script>')
    return page("Plan", body, active="/plan")


def _script_json(data: Any) -> str:
    """JSON for a ``<script type="application/json">``, whose text is not HTML-decoded: only ``<``
    is hidden (as ``\\u003c``), so no ``</script>`` can end it early.

    >>> _script_json({"a": "</script>"})
    '{"a": "\\\\u003c/script>"}'
    """
    return json.dumps(data).replace("<", "\\u003c")


def _suggested(form: Mapping[str, str], suggestion: str) -> str:
    """The plan form's query with a suggestion's flags applied (``--tp 2 --pp 1 fits`` -> tp=2&pp=1).

    >>> _suggested({"model": "m", "tp": "1"}, "--tp 2 --max-model-len 8192 fits")
    'model=m&tp=2&max_model_len=8192'
    """
    query = dict(form)
    words = suggestion.split()
    for flag, value in zip(words, words[1:], strict=False):
        if flag.startswith("--") and value[:1].isdigit():
            query[flag[2:].replace("-", "_")] = value
    return urlencode({k: v for k, v in query.items() if v})


def gpus_page(gpus: Sequence[Mapping[str, Any]], holders: Mapping[int, str],
              history: Mapping[int, Sequence[float]] | None = None) -> str:
    """Each GPU's used memory (a bar, and a line over the last minutes) and who holds it; on a
    machine without one, says so instead of drawing zeros."""
    if not gpus:
        body = ('<h1>GPUs</h1><p id="no-gpu">No GPU: NVML sees none on this machine, so there is no GPU memory to '
                "draw. Deployments here run on the CPU.</p>")
        return page("GPUs", body, active="/gpus")
    history = history or {}
    rows = "".join(f'<div class="gpu" data-index="{g["index"]}"><div class="label">GPU {g["index"]} '
                   f'{escape(g["name"])}: {g["total_gib"] - g["free_gib"]:.1f} of {g["total_gib"]:.1f} GiB used'
                   f'{" by " + escape(holders[g["index"]]) if g["index"] in holders else ""} '
                   f'{_spark(history.get(g["index"], ()))}</div><div class="bar">'
                   f'<span class="seg weights" style="width:{(1 - g["free_gib"] / g["total_gib"]) * 100:.1f}%"></span>'
                   "</div></div>" for g in gpus)
    return page("GPUs", f'<h1>GPUs</h1><div id="gpus">{rows}</div>', active="/gpus")


RECIPES = (("Translate", "Translate into French: Thank you very much."),
           ("Name", "Suggest three nicknames for a baby boy, as a comma-separated list."),
           ("Ask", "What is the capital of France?"))


def try_page(models: Sequence[str]) -> str:
    opts = "".join(f"<option>{escape(m)}</option>" for m in models) or "<option disabled>no model is ready</option>"
    recipes = "".join(f'<button type="button" class="recipe" data-prompt="{escape(p)}">{escape(n)}</button>'
                      for n, p in RECIPES)
    return page("Try it", f"""<h1>Try a model</h1><form id="chat"><label>model <select id="model">{opts}</select>
</label><div class="recipes">{recipes}</div><textarea id="prompt" rows="3">What is the capital of France?</textarea>
<label>temperature <input id="temperature" size="4" placeholder="model's"></label>
<button id="send">Send</button></form><details id="reasoning-box" hidden><summary>reasoning
(<span id="reasoning-tokens">0</span> chunks)</summary><pre id="reasoning"></pre></details>
<div id="answer" data-chunks="0" data-done="0"></div><p class="dim" id="usage"></p>""", active="/try")
