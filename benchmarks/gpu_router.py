#!/usr/bin/env python3
"""The router's sleep/wake path on a real GPU: `dsagent router` with real vLLM and random weights.

Run on a GPU machine (benchmarks/gpu_device.sh router; docs/router-gpu.md):

    python benchmarks/gpu_router.py --tokenizer DIR --out router.json [--alternations 20]
    python benchmarks/gpu_router.py --analyze router.json [--trim docs/router-gpu.json]

A home of its own catalogues three config-only model folders (``--dummy-weights``, ``--tokenizer``,
``--ttl 0``, sleep on: the router launches each with ``--enable-sleep-mode`` and
``VLLM_SERVER_DEV_MODE=1``), sized with dsagent's own estimate (``VllmEngines.need``, what the
router plans with) against the card this run got:

- ``big``: the DeepSeek-R1-Distill-Qwen-14B shape at the shortest ``--max-model-len`` (a multiple
  of 4096) whose need no longer fits beside ``mid`` on the card, yet fits alone;
- ``mid``: the Qwen-7B shape at 8192;
- ``small``: the Qwen-1.5B shape at 8192, which the plan places beside ``mid`` on the same GPU.

``dsagent router start --port auto --wait 600``; then, every request streamed (time to first
byte and to the first token taken at the client):

1. ``big`` (cold load), 2. ``mid`` (``big`` slept to make room, ``mid`` cold),
3. ``--alternations`` requests alternating ``big``/``mid``: each puts the other to sleep (level 1)
   and wakes the one asked for,
4. a few requests to the ready model (the warm baseline of the first-token time),
5. ``small``: loaded beside ``mid`` (both ready at once, each with its plan's
   ``--gpu-memory-utilization``), then ``mid`` and ``small`` asked together,
6. ``dsagent router stop``; GPU memory back to the baseline, no vLLM process left.

``nvidia-smi --query-gpu=memory.used`` is read before and after every request and, in a thread,
every ``--interval`` s; a second thread polls ``GET /v1/models`` (states, phases, loads, wakes,
``load_seconds``) every 0.1 s. The models' vLLM logs give the engine's own sleep and wake times
("It took X seconds to fall asleep", "... to wake up") and "Sleep mode freed X GiB, Y GiB is still
in use". Goals (issue 26): a wake at most 1/10 of the cold start; after sleep level 1 at most 10% of
the model's loaded GPU memory; no OOM in the alternations (every request 200).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PROMPT = "Write a long story about a lighthouse keeper and the sea."
MAX_TOKENS = 32
SHAPES = {"big": ("qwen14b-tp2", "deepseek-r1-distill-qwen-14b"), "mid": ("qwen7b-tp1", "deepseek-r1-distill-qwen-7b"),
          "small": ("qwen1.5b-fp32-tp2pp2", "deepseek-r1-distill-qwen-1.5b")}
"""Entry name -> (gpu_rehearsal shape whose config.json is used, catalog name); all run at TP1, dtype auto."""
MID_LEN = SMALL_LEN = 8192
MARGIN_GIB = 4.0
"""``big`` + ``mid`` must exceed the router's capacity by at least this much (no fit by rounding)."""

_FREED = re.compile(r"Sleep mode freed ([\d.]+) GiB memory, ([\d.]+) GiB memory is still in use")
_ASLEEP = re.compile(r"It took ([\d.]+) seconds to fall asleep")
_AWAKE = re.compile(r"It took ([\d.]+) seconds to wake up")
_OOM = re.compile(r"OutOfMemoryError|CUDA out of memory|CUDA error: out of memory")


# ---------------------------------------------------------------- sampling

def smi_used() -> int | None:
    """MiB used, summed over the visible GPUs (one here)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=False).stdout
        return sum(int(x) for x in out.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


class Poller(threading.Thread):
    """Calls ``fn()`` every ``interval`` s; keeps ``(t, value)`` (all, or only changes with ``changes``)."""

    def __init__(self, fn: Any, t0: float, interval: float, changes: bool = False) -> None:
        super().__init__(daemon=True)
        self.fn, self.t0, self.interval, self.changes, self.rows = fn, t0, interval, changes, []
        self._halt, self._last = threading.Event(), object()

    def run(self) -> None:
        while not self._halt.is_set():
            start = time.time()
            try:
                value = self.fn()
            except Exception as exc:  # noqa: BLE001 - keep polling
                value = {"error": repr(exc)[:200]}
            if not self.changes or value != self._last:
                self.rows.append([round(start - self.t0, 3), value])
                self._last = value
            self._halt.wait(max(0.0, self.interval - (time.time() - start)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def vllm_processes() -> list[list[Any]]:
    """``[pid, title]`` of every vLLM process left (API servers and engines)."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            name = p.info["name"] or ""
            if name.startswith("VLLM") or "VLLM::" in cmd[:40] or "vllm.entrypoints" in cmd:
                out.append([p.pid, (cmd or name)[:80]])
        except Exception:  # noqa: BLE001, S112 - a process that just ended
            continue
    return out


# ---------------------------------------------------------------- dsagent and HTTP

def dsagent(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsagent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def ask(base: str, key: str, model: str, t0: float, timeout: float = 900.0) -> dict[str, Any]:
    """One streamed chat request: status, time to headers, first SSE chunk, first token, end."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "stream": True}
    a = time.perf_counter()
    out: dict[str, Any] = {"model": model, "t": round(time.time() - t0, 3)}
    first_chunk = first_token = None
    chunks = 0
    try:
        with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=timeout,
                          headers={"Authorization": f"Bearer {key}"}) as r:
            out["status"] = r.status_code
            out["headers_s"] = round(time.perf_counter() - a, 3)
            if r.status_code != 200:
                out["error"] = r.read().decode(errors="replace")[:600]
            else:
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    now = time.perf_counter()
                    first_chunk = first_chunk or now
                    obj = json.loads(data)
                    delta = (obj.get("choices") or [{}])[0].get("delta") or {}
                    if any(delta.get(k) for k in ("content", "reasoning_content", "reasoning")):
                        chunks += 1
                        first_token = first_token or now
    except Exception as exc:  # noqa: BLE001 - a failed request is a result
        out["status"], out["error"] = None, f"{type(exc).__name__}: {exc}"[:600]
    out["first_chunk_s"] = None if first_chunk is None else round(first_chunk - a, 3)
    out["first_token_s"] = None if first_token is None else round(first_token - a, 3)
    out["total_s"] = round(time.perf_counter() - a, 3)
    out["token_chunks"] = chunks
    return out


def models_view(base: str, key: str) -> dict[str, dict[str, Any]]:
    import httpx

    r = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    r.raise_for_status()
    return {m["id"]: m for m in r.json()["data"]}


def short_view(view: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    return {n: [m["state"], m.get("phase") or "", m["loads"], m["wakes"]] for n, m in view.items()}


# ---------------------------------------------------------------- vLLM logs

def log_events(text: str) -> dict[str, Any]:
    """Sleep / wake lines of one model's vLLM log, in order, and any OOM line."""
    sleeps, wakes, freed, oom = [], [], [], []
    for line in text.splitlines():
        if m := _ASLEEP.search(line):
            sleeps.append(float(m.group(1)))
        elif m := _AWAKE.search(line):
            wakes.append(float(m.group(1)))
        elif m := _FREED.search(line):
            freed.append([float(m.group(1)), float(m.group(2))])
        if _OOM.search(line):
            oom.append(line[-300:])
    return {"sleep_s": sleeps, "wake_s": wakes, "freed_and_still_used_gib": freed, "oom_lines": oom[:5]}


# ---------------------------------------------------------------- the run (GPU)

def choose(settings: Any, cap_gib: float, tokenizer: str, models: Path) -> tuple[dict[str, Any], list[Any]]:
    """Entries sized by the router's own need: big + mid > cap + MARGIN, big alone fits."""
    from dataclasses import replace

    from gpu_rehearsal import model_dir

    from dsagent.deploy.launch.options import ServeOptions
    from dsagent.router.catalogue import Entry
    from dsagent.router.engines import VllmEngines

    eng = VllmEngines(settings)
    base = ServeOptions(port=0, host="127.0.0.1", device="gpu", dummy_weights=True, tokenizer=tokenizer)

    def entry(name: str, length: int) -> Entry:
        return Entry(name=name, model=str(model_dir(SHAPES[name][0], models)),
                     options=replace(base, max_model_len=length), ttl=0.0)

    mid = entry("mid", MID_LEN)
    need_mid = eng.need(mid).per_gpu
    big_len, need_big = None, None
    for length in range(4096, 131072 + 1, 4096):
        n = eng.need(entry("big", length)).per_gpu
        if n + need_mid > cap_gib + MARGIN_GIB:
            big_len, need_big = length, n
            break
    if big_len is None or need_big is None or need_big > cap_gib - 4.0:
        raise SystemExit(f"no 14B length fits alone yet not beside mid ({need_mid} GiB) on {cap_gib} GiB")
    small = entry("small", SMALL_LEN)
    chosen = {"cap_gib": cap_gib, "big": {"max_model_len": big_len, "need_gib": need_big},
              "mid": {"max_model_len": MID_LEN, "need_gib": need_mid},
              "small": {"max_model_len": SMALL_LEN, "need_gib": eng.need(small).per_gpu}}
    return chosen, [entry("big", big_len), mid, small]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gpu_rehearsal import gpu_info, parse_vllm_log

    from dsagent.deploy.record.names import files
    from dsagent.deploy.record.store import load as load_dep
    from dsagent.router.engines import capacity_here
    from dsagent.router.packing import need_of
    from dsagent.router.serve import find
    from dsagent.settings import Settings

    t_start = time.time()
    deadline = t_start + args.budget
    home = Path(os.environ.get("DSAGENT_HOME") or "/tmp/dsh")
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings.load(home)
    res: dict[str, Any] = {"meta": {"gpu": gpu_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "home": str(home), "alternations": args.alternations, "max_tokens": MAX_TOKENS,
                                    "interval_s": args.interval},
                           "requests": [], "events": []}
    try:
        import vllm

        res["meta"]["vllm_version"] = vllm.__version__
    except Exception as exc:  # noqa: BLE001
        res["meta"]["vllm_version"] = f"unavailable: {exc!r}"[:200]
    t0 = time.time()
    out_path = Path(args.out)

    def event(what: str, **kw: Any) -> None:
        e = {"t": round(time.time() - t0, 3), "event": what, **kw}
        res["events"].append(e)
        print(f"[{e['t']:8.2f}] {what} {json.dumps(kw, default=str)[:400]}", flush=True)

    mem = Poller(smi_used, t0, args.interval)
    mem.start()
    time.sleep(1.5)
    cap = capacity_here(settings)
    res["meta"]["capacity_gib"] = list(cap.gpus)
    chosen, entries = choose(settings, min(cap.gpus), args.tokenizer, Path(args.models))
    phases = set(args.phases.split(","))
    if "switch" not in phases:
        entries = [e for e in entries if e.name != "big"]
    res["meta"]["chosen"], res["meta"]["phases"] = chosen, sorted(phases)
    event("chosen", **chosen)
    # `dsagent estimate` for each, as a user would ask, and the router's need from its JSON
    res["estimates"] = {}
    for e in entries:
        est = dsagent("estimate", e.model, "--gpu-memory-gib", str(round(min(g.total_gib for g in _cards(settings)), 2)),
                      "--gpus", "1", "--tp", "1", "--pp", "1", "--max-model-len", str(e.options.max_model_len),
                      "--json", timeout=120)
        try:
            plan = json.loads(est.stdout)
            need = need_of(plan, device="gpu", gpus=1).per_gpu
            res["estimates"][e.name] = {"need_gib": need, "weights_gib": plan.get("weights_gib"),
                                        "kv_cache_tokens_full_card": plan.get("kv_cache_tokens"),
                                        "max_model_len": e.options.max_model_len}
        except ValueError:
            res["estimates"][e.name] = {"error": (est.stdout + est.stderr)[-800:]}
        event("estimate", name=e.name, **res["estimates"][e.name])
    for e in entries:
        argv = ["models", "add", e.name, e.model, "--device", "gpu", "--dummy-weights", "--tokenizer", args.tokenizer,
                "--max-model-len", str(e.options.max_model_len), "--ttl", "0"]
        r = dsagent(*argv, timeout=120)
        event("models_add", name=e.name, rc=r.returncode, out=(r.stdout + r.stderr)[-300:])
        if r.returncode:
            return res
    res["meta"]["catalogue"] = (home / "router.toml").read_text()
    key = settings.api_key()
    stop_done = False
    poll = None
    try:
        r = dsagent("router", "start", "--port", "auto", "--wait", "600", timeout=180)
        event("router_start", rc=r.returncode, out=(r.stdout + r.stderr)[-600:])
        if r.returncode:
            return res
        info = find(settings)
        assert info is not None
        base = info.base_url
        res["meta"]["router_url"] = base
        poll = Poller(lambda: short_view(models_view(base, key)), t0, 0.1, changes=True)
        poll.start()
        seen: dict[str, int] = {e.name: 0 for e in entries}

        def request(model: str, phase: str) -> dict[str, Any]:
            before = smi_used()
            v0 = models_view(base, key)
            q = ask(base, key, model, t0)
            v1 = models_view(base, key)
            q.update(phase=phase, used_before_mib=before, used_after_mib=smi_used(),
                     states_before={n: m["state"] for n, m in v0.items()},
                     states_after={n: m["state"] for n, m in v1.items()})
            m1 = v1[model]
            done = m1["loads"] + m1["wakes"]
            if done > seen[model]:
                q["did"] = "load" if m1["loads"] > v0[model]["loads"] else "wake"
                q["router_load_s"] = (m1["load_seconds"] or [None])[-1]
            else:
                q["did"] = "none"
            seen[model] = done
            q["put_away"] = [n for n, m in v1.items() if n != model and v0[n]["state"] == "ready"
                             and m["state"] != "ready"]
            res["requests"].append(q)
            print(f"  {phase:10} {model:6} {q.get('status')} did={q['did']:4} router_s={q.get('router_load_s')} "
                  f"first_token={q['first_token_s']} total={q['total_s']} put_away={q['put_away']} "
                  f"used {before}->{q['used_after_mib']} MiB", flush=True)
            return q

        last = "mid"
        if "switch" in phases:
            request("big", "cold")
            request("mid", "cold")
            _save(res, mem, poll, out_path)
            names = ["big", "mid"]
            for i in range(args.alternations):
                if deadline - time.time() < args.reserve:
                    event("alternations_cut", done=i, why=f"less than {args.reserve} s of the budget left")
                    break
                request(names[i % 2], "switch")
            last = res["requests"][-1]["model"]
            for _ in range(3):
                request(last, "warm")
            _save(res, mem, poll, out_path)
        else:
            request("mid", "cold")
        # two models on one GPU together: `small` beside the ready `mid`
        if "coplace" not in phases or deadline - time.time() < args.reserve + args.small_cold:
            event("coplace_skipped", why="not asked" if "coplace" not in phases else "budget")
        else:
            if last != "mid":
                request("mid", "switch")
            request("small", "cold")
            with_both = models_view(base, key)
            res["coplace"] = {"view": {n: {k: m.get(k) for k in ("state", "need_gib", "gpus", "kv_cache_tokens",
                                                                    "loads", "wakes")} for n, m in with_both.items()},
                              "used_mib": smi_used()}

            async def both() -> list[dict[str, Any]]:
                return list(await asyncio.gather(*(asyncio.to_thread(ask, base, key, n, t0) for n in ("mid", "small"))))

            res["coplace"]["together"] = asyncio.run(both())
            after = models_view(base, key)
            res["coplace"]["after"] = short_view(after)
            event("coplace", **{k: v for k, v in res["coplace"].items() if k != "view"})
        # launches as recorded (the plan's --gpu-memory-utilization share) and the vLLM logs
        res["deployments"] = {}
        for e in entries:
            dep = load_dep(settings, e.name)
            text = ""
            try:
                text = Path(files(settings, e.name).log).read_text(errors="replace")
            except OSError:
                pass
            argv = list(dep.argv) if dep is not None else []
            util = argv[argv.index("--gpu-memory-utilization") + 1] if "--gpu-memory-utilization" in argv else None
            res["deployments"][e.name] = {"gpu_memory_utilization": util, "argv": argv,
                                          "env_sleep": (dep.env or {}).get("VLLM_SERVER_DEV_MODE") if dep else None,
                                          "estimate": dep.estimate if dep is not None else None,
                                          "measured": dep.measured if dep is not None else None,
                                          "vllm": parse_vllm_log(text), "log": log_events(text)}
        res["router_view"] = models_view(base, key)
        st = dsagent("router", "status", "--json", timeout=60)
        res["router_status_json"] = st.stdout[-6000:]
    finally:
        if poll is not None:
            poll.stop()
        event("router_stop_call", used_mib=smi_used())
        stop = dsagent("router", "stop", timeout=240)
        stop_done = True
        event("router_stop_done", rc=stop.returncode, out=(stop.stdout + stop.stderr)[-400:])
        base_used = [u for t, u in mem.rows if t < 1.5 and u is not None]
        res["baseline_mib"] = baseline = min(base_used) if base_used else 0
        end = time.time() + 90
        while time.time() < end:
            u = smi_used()
            if u is not None and u <= baseline + 16:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a few samples after
        stop_t = next(e["t"] for e in res["events"] if e["event"] == "router_stop_call")
        back = next((t for t, u in mem.rows if t >= stop_t and u is not None and u <= baseline + 16), None)
        res["end"] = {"used_mib": smi_used(), "vllm_processes": vllm_processes(),
                      "stop_to_baseline_s": None if back is None else round(back - stop_t, 2)}
        event("end", **res["end"], stop_done=stop_done)
        mem.stop()
        try:
            res["router_log_tail"] = (home / "logs" / "router.log").read_text(errors="replace")[-4000:]
        except OSError:
            pass
        _save(res, mem, poll, out_path)
    return res


def _cards(settings: Any) -> Any:
    from dsagent.system import gpus

    return gpus.visible_gpus(settings=settings)


def _save(res: dict[str, Any], mem: Poller, poll: Poller | None, path: Path) -> None:
    res["memory"] = list(mem.rows)
    res["states"] = list(poll.rows) if poll is not None else []
    path.write_text(json.dumps(res, default=str))


# ---------------------------------------------------------------- analysis (pure)

def _med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def _min_between(mem: list[list[Any]], a: float, b: float) -> int | None:
    vals = [u for t, u in mem if a <= t <= b and u is not None]
    return min(vals) if vals else None


def analyze(res: dict[str, Any]) -> dict[str, Any]:
    reqs = res.get("requests", [])
    mem = res.get("memory", [])
    states = res.get("states", [])
    base = res.get("baseline_mib")
    if base is None:
        first = [u for t, u in mem if t < 1.5 and u is not None]
        base = min(first) if first else 0
    deps = res.get("deployments", {})
    out: dict[str, Any] = {"baseline_mib": base, "models": {}}
    cold = {q["model"]: q for q in reqs if q.get("did") == "load"}
    switches = [q for q in reqs if q.get("phase") == "switch"]
    wakes = [q for q in reqs if q.get("did") == "wake"]
    warm = [q for q in reqs if q.get("phase") == "warm"]
    # when each model was last seen 'sleeping' with no phase (asleep, its sleep done) and the other not yet loaded
    for name in ("big", "mid", "small"):
        c = cold.get(name)
        if c is None:
            continue
        mw = [q for q in wakes if q["model"] == name]
        log = deps.get(name, {}).get("log", {})
        vl = deps.get(name, {}).get("vllm", {})
        m: dict[str, Any] = {
            "cold_load_s": c.get("router_load_s"), "cold_first_token_s": c.get("first_token_s"),
            "wakes": len(mw), "wake_s_router": [q.get("router_load_s") for q in mw],
            "wake_s_router_median": _med([q.get("router_load_s") for q in mw]),
            "wake_s_router_max": max((q.get("router_load_s") or 0 for q in mw), default=None),
            "sleep_s_vllm": log.get("sleep_s"), "wake_s_vllm": log.get("wake_s"),
            "freed_and_still_used_gib": log.get("freed_and_still_used_gib"), "oom_lines": log.get("oom_lines"),
            "gpu_memory_utilization": deps.get(name, {}).get("gpu_memory_utilization"),
            "vllm_workers": vl.get("workers"), "kv_cache_tokens": vl.get("kv_cache_tokens"),
        }
        if m["cold_load_s"] and m["wake_s_router_max"]:
            m["wake_over_cold_max"] = round(m["wake_s_router_max"] / m["cold_load_s"], 4)
            m["wake_over_cold_median"] = round((m["wake_s_router_median"] or 0) / m["cold_load_s"], 4)
        out["models"][name] = m
    # Loaded use and residue per model. vLLM's own line at each sleep ("Sleep mode freed X GiB, Y GiB is
    # still in use", Y device-wide): big's first sleep comes while it is alone on the card (Y = its
    # residue); mid's first sleep while big sleeps (Y = both residues). Loaded = freed + residue (the first
    # sleep: as loaded cold; later ones: as woken). nvidia-smi cross-checks each figure.
    gib = 1024
    fb = (out["models"].get("big") or {}).get("freed_and_still_used_gib") or []
    fm = (out["models"].get("mid") or {}).get("freed_and_still_used_gib") or []
    if fb:
        big = out["models"]["big"]
        big["asleep_gib"] = rb = fb[0][1]
        big["loaded_cold_gib"] = round(fb[0][0] + rb, 2)
        big["loaded_woken_gib"] = round(fb[1][0] + rb, 2) if len(fb) > 1 else None
        if fm:
            mid = out["models"]["mid"]
            mid["asleep_gib"] = rm = round(fm[0][1] - rb, 2)
            mid["loaded_cold_gib"] = round(fm[0][0] + rm, 2)
            mid["loaded_woken_gib"] = round(fm[1][0] + rm, 2) if len(fm) > 1 else None
            big["both_asleep_gib"] = mid["both_asleep_gib"] = fm[0][1]
        for m in (out["models"].get("big"), out["models"].get("mid")):
            if m and m.get("asleep_gib") is not None:
                m["asleep_over_loaded_cold"] = round(m["asleep_gib"] / m["loaded_cold_gib"], 4)
                if m.get("loaded_woken_gib"):
                    m["asleep_over_loaded_woken"] = round(m["asleep_gib"] / m["loaded_woken_gib"], 4)
    qb, qm = cold.get("big"), cold.get("mid")
    smi: dict[str, Any] = {}
    if qb:
        smi["big_alone_loaded_mib"] = qb["used_after_mib"] - base
    if qb and qm:
        # the lowest reading within 20 s of big's first sleep: mid's engine holds nothing yet by then
        asleep_t = next((t for t, v in states if isinstance(v, dict) and v.get("big", [""])[0] == "sleeping"
                         and not v["big"][1] and t >= qm["t"]), None)
        window = [u for t, u in mem if asleep_t is not None and asleep_t <= t <= asleep_t + 20 and u is not None]
        if window:
            smi["big_asleep_alone_mib"] = min(window) - base
        smi["mid_loaded_big_asleep_mib"] = qm["used_after_mib"] - base
    for name, other in (("big", "mid"), ("mid", "big")):
        after = [q["used_after_mib"] - base for q in switches if q["model"] == name and q.get("status") == 200]
        if after:
            smi[f"{name}_woken_{other}_asleep_mib"] = sorted(set(after))
            m, o = out["models"].get(name, {}), out["models"].get(other, {})
            if m.get("loaded_woken_gib") and o.get("asleep_gib") is not None:
                smi[f"{name}_woken_{other}_asleep_predicted_mib"] = round((m["loaded_woken_gib"] + o["asleep_gib"]) * gib)
    out["nvidia_smi"] = smi
    for name in ("big", "mid"):
        m = out["models"].get(name, {})
        log_sleeps = m.get("sleep_s_vllm") or []
        log_wakes = m.get("wake_s_vllm") or []
        m["first_sleep_s"] = log_sleeps[0] if log_sleeps else None
        m["later_sleep_s_median"] = _med(log_sleeps[1:])
        m["wake_s_vllm_median"] = _med(log_wakes)
    # switches
    ok = [q for q in switches if q.get("status") == 200]
    out["switches"] = {
        "n": len(switches), "answered_200": len(ok),
        "statuses": sorted({str(q.get("status")) for q in switches}),
        "first_token_s": [q.get("first_token_s") for q in switches],
        "first_token_s_median": _med([q.get("first_token_s") for q in switches]),
        "first_token_s_median_after_first_two": _med([q.get("first_token_s") for q in switches[2:]]),
        "first_token_s_max": max((q.get("first_token_s") or 0 for q in switches), default=None),
        "used_after_mib": [q.get("used_after_mib") for q in switches],
        "peak_used_mib": max((u for t, u in mem if u is not None), default=None),
        "oom_lines": sum(len(out["models"].get(n, {}).get("oom_lines") or []) for n in ("big", "mid", "small")),
    }
    out["warm_first_token_s_median"] = _med([q.get("first_token_s") for q in warm])
    cp = res.get("coplace")
    if cp:
        tog = cp.get("together") or []
        out["coplace"] = {"used_mib_both_ready": cp.get("used_mib"),
                          "states": {n: v.get("state") for n, v in cp["view"].items()},
                          "together_status": [q.get("status") for q in tog],
                          "together_first_token_s": [q.get("first_token_s") for q in tog],
                          "together_first_chunk_s": [q.get("first_chunk_s") for q in tog],
                          "after": cp.get("after"),
                          "shares": {n: deps.get(n, {}).get("gpu_memory_utilization") for n in ("mid", "small")},
                          "need_gib": {n: cp["view"][n].get("need_gib") for n in ("mid", "small")}}
    out["end"] = res.get("end")
    models = out["models"]
    goals = {}
    if "big" in models and "mid" in models:
        goals["wake_at_most_tenth_of_cold"] = all(models[n].get("wake_over_cold_max", 1) <= 0.1 for n in ("big", "mid"))
        goals["asleep_at_most_10pct_of_loaded"] = all(max(models[n].get("asleep_over_loaded_cold") or 1,
                                                          models[n].get("asleep_over_loaded_woken") or 0) <= 0.1
                                                      for n in ("big", "mid"))
    if switches:
        goals["no_oom_all_200"] = len(ok) == len(switches) and out["switches"]["oom_lines"] == 0
    if cp:
        goals["two_models_ready_together"] = (out["coplace"]["states"].get("mid") == "ready"
                                              and out["coplace"]["states"].get("small") == "ready"
                                              and out["coplace"]["together_status"] == [200, 200])
    end = res.get("end") or {}
    goals["stop_back_to_baseline_no_vllm_left"] = (end.get("used_mib") is not None
                                                   and end["used_mib"] <= base + 16 and not end.get("vllm_processes"))
    out["goals"] = goals
    return out


def print_report(res: dict[str, Any], s: dict[str, Any]) -> None:
    m = res.get("meta", {})
    print(f"\n{m.get('gpu', {}).get('name')}, vLLM {m.get('vllm_version')}; capacity {m.get('capacity_gib')} GiB; "
          f"chosen {json.dumps(m.get('chosen'))}; baseline {s['baseline_mib']} MiB\n")
    print(f"{'#':>3} {'phase':7} {'model':6} {'st':>4} {'did':5} {'router s':>9} {'1st tok s':>10} {'total s':>8} "
          f"{'MiB before':>10} {'MiB after':>10} put away")
    for i, q in enumerate(res.get("requests", [])):
        print(f"{i:>3} {q.get('phase', ''):7} {q['model']:6} {q.get('status')!s:>4} {q.get('did', ''):5} "
              f"{q.get('router_load_s')!s:>9} {q.get('first_token_s')!s:>10} {q.get('total_s')!s:>8} "
              f"{q.get('used_before_mib')!s:>10} {q.get('used_after_mib')!s:>10} {q.get('put_away')}")
    print()
    for name, mm in s["models"].items():
        print(f"{name}: {json.dumps({k: v for k, v in mm.items() if k not in ('vllm_workers',)}, default=str)}")
    print(f"nvidia-smi: {json.dumps(s.get('nvidia_smi'))}")
    print(f"switches: {json.dumps(s['switches'])}")
    print(f"warm first token (median) {s['warm_first_token_s_median']} s")
    print(f"coplace: {json.dumps(s.get('coplace'), default=str)}")
    print(f"end: {json.dumps(s.get('end'), default=str)}")
    print(f"GOALS: {json.dumps(s['goals'])}")


def trim(res: dict[str, Any]) -> dict[str, Any]:
    """For docs/: memory samples kept where they change by more than 64 MiB (and one in 10)."""
    out = dict(res)
    kept, prev = [], None
    for i, (t, u) in enumerate(res.get("memory", [])):
        if prev is None or u is None or abs(u - prev) > 64 or i % 10 == 0:
            kept.append([t, u])
            prev = u
    out["memory"] = kept
    for d in (out.get("deployments") or {}).values():
        d.pop("argv_full", None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", help="tokenizer folder for --dummy-weights (e.g. SmolLM2's)")
    ap.add_argument("--out", help="the JSON written")
    ap.add_argument("--models", default="/tmp/router-models", help="where the config-only folders are written")
    ap.add_argument("--alternations", type=int, default=20)
    ap.add_argument("--phases", default="switch,coplace",
                    help="switch (big/mid alternations), coplace (small beside mid); default both")
    ap.add_argument("--small-cold", type=float, default=110, help="seconds the coplace phase needs at least")
    ap.add_argument("--interval", type=float, default=0.2, help="nvidia-smi sampling period (s)")
    ap.add_argument("--budget", type=float, default=560, help="seconds the whole run may take (stop included)")
    ap.add_argument("--reserve", type=float, default=45, help="seconds kept for the stop and the checks")
    ap.add_argument("--analyze", metavar="JSON", help="analyze a saved run instead of running")
    ap.add_argument("--trim", metavar="JSON", help="with --analyze: also write a copy for docs/ here (indented)")
    ap.add_argument("--decimate", action="store_true", help="with --trim: keep only memory samples that change")
    args = ap.parse_args(argv)
    if args.analyze:
        res = json.loads(Path(args.analyze).read_text())
    else:
        if not (args.tokenizer and args.out):
            ap.error("--tokenizer and --out are needed to run")
        res = run(args)
    res["summary"] = s = analyze(res)
    if args.out and not args.analyze:
        Path(args.out).write_text(json.dumps(res, default=str))
    if args.trim:
        Path(args.trim).write_text(json.dumps(trim(res) if args.decimate else res, indent=1, default=str) + "\n")
    print_report(res, s)
    return 0 if all(s["goals"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
