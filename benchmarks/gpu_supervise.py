#!/usr/bin/env python3
"""The supervisor on a real GPU: SIGKILLs under ``dsagent up --restart on-failure``, sampled by nvidia-smi.

Run on a GPU machine (benchmarks/gpu_device.sh supervise; docs/supervise.md "Proven on a real GPU"):

    python benchmarks/gpu_supervise.py --tokenizer DIR --out sup.json [--shape qwen1.5b] [--faults api,engine,api]
    python benchmarks/gpu_supervise.py --analyze sup.json          # the table again, from a saved run

One TP1 dummy-weights deployment (a folder holding only config.json, ``--dummy-weights``,
``--tokenizer DIR``) is started with the CLI, ``dsagent up --restart on-failure --port auto``. For
each fault (``api``: SIGKILL of the API server; ``engine``: SIGKILL of ``VLLM::EngineCore``) the
script waits until the deployment is ready again with a new API server pid; then ``dsagent stop``
and it samples until the GPU is back at 0 MiB used. For the whole run a thread samples, every
``--interval`` (0.25) s, ``nvidia-smi --query-gpu=memory.used`` and ``--query-compute-apps=pid,used_memory``
and the ``VLLM::`` processes psutil sees; a second thread reads the deployment's record and live
state, and what the supervisor itself asks NVML (``dsagent.system.gpus.memory_holders``), every
``--state-interval`` (1) s.

From the samples, for each fault: kill -> old engine memory free (used memory back at the idle
baseline and no old pid in NVML's list), -> the new engine process appears (psutil), -> it holds
GPU memory, -> ready; and the proof that no new engine existed while the old memory was held. For
``stop``: stop -> 0 MiB. Last: whether NVML's per-process list names the pids psutil sees.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_MIB = 256
"""Used memory more than this above the idle baseline counts as held (a bare CUDA context is ~500 MiB)."""
SHAPES = {"qwen1.5b": "qwen1.5b-fp32-tp2pp2", "qwen7b": "qwen7b-tp1"}
"""Our shape -> gpu_rehearsal's shape whose config.json is used (run here at TP1, dtype auto)."""
MAX_MODEL_LEN = 8192


# ---------------------------------------------------------------- sampling

def _smi(query: str) -> subprocess.Popen:
    return subprocess.Popen(["nvidia-smi", query, "--format=csv,noheader,nounits"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]


def vllm_processes(since: float = 0.0) -> list[list[Any]]:
    """``[pid, ppid, title]`` of every process titled ``VLLM::...`` (EngineCore, workers) started at or
    after ``since`` (epoch s): observation only, nothing is signalled from this list."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline", "ppid", "create_time"]):
        try:
            if (p.info["create_time"] or 0.0) < since:
                continue
            title = " ".join(p.info["cmdline"] or []).strip() or (p.info["name"] or "")
            name = p.info["name"] or ""
            if "VLLM::" in title[:40] or name.startswith("VLLM"):
                out.append([p.pid, p.info["ppid"], title[:40] if "VLLM::" in title[:40] else name])
        except Exception:  # noqa: BLE001, S112 - a process that just ended
            continue
    return out


def is_engine(title: str) -> bool:
    """An engine process, by its title. A process that has exited but is not yet reaped shows only its
    15-character name ("VLLM::EngineCor"): it holds no memory and is not counted."""
    return "EngineCore" in title or "Worker" in title


def smi_sample(t0: float) -> dict[str, Any]:
    """One sample: time (s since ``t0``), used MiB per GPU, NVML's compute apps, the VLLM:: processes
    started since ``t0``."""
    a = time.time()
    used_p, apps_p = _smi("--query-gpu=memory.used"), _smi("--query-compute-apps=pid,used_memory")
    procs = vllm_processes(since=t0 - 1.0)
    used_out, used_err = used_p.communicate(timeout=20)
    apps_out, apps_err = apps_p.communicate(timeout=20)
    b = time.time()
    s: dict[str, Any] = {"t": round((a + b) / 2 - t0, 3), "dt": round(b - a, 3)}
    try:
        s["used"] = [int(r[0]) for r in _rows(used_out)]
    except ValueError:
        s["used"], s["err"] = None, (used_out + used_err)[-200:]
    try:
        s["apps"] = [[int(r[0]), int(r[1])] for r in _rows(apps_out) if r and r[0].isdigit()]
    except (ValueError, IndexError):
        s["apps"], s["err"] = [], (apps_out + apps_err)[-200:]
    s["procs"] = procs
    return s


class Sampler(threading.Thread):
    """Calls ``fn(t0)`` every ``interval`` seconds into ``self.samples`` until ``stop()``."""

    def __init__(self, fn: Any, t0: float, interval: float) -> None:
        super().__init__(daemon=True)
        self.fn, self.t0, self.interval, self.samples = fn, t0, interval, []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            start = time.time()
            try:
                self.samples.append(self.fn(self.t0))
            except Exception as exc:  # noqa: BLE001 - keep sampling
                self.samples.append({"t": round(start - self.t0, 3), "error": repr(exc)[:300]})
            self._halt.wait(max(0.0, self.interval - (time.time() - start)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def state_sampler(settings: Any, name: str) -> Any:
    """The slower reader: record, live state, and the supervisor's own NVML view."""
    from dsagent.deploy.record.phase import live_state
    from dsagent.deploy.record.store import load
    from dsagent.system import gpus

    def read(t0: float) -> dict[str, Any]:
        t = time.time()
        s: dict[str, Any] = {"t": round(t - t0, 3)}
        dep = load(settings, name)
        if dep is not None:
            s.update(record_state=str(dep.state), state=str(live_state(dep)), pid=dep.pid, restarts=dep.restarts,
                     supervisor_pid=dep.supervisor_pid, reason=(dep.reason or "")[:200])
        try:
            held = gpus.memory_holders()
            s["holders"] = None if held is None else {str(k): round(v, 3) for k, v in held.items()}
        except gpus.GpuUnknown as exc:
            s["holders"] = f"unknown: {exc}"
        return s

    return read


# ---------------------------------------------------------------- the run (GPU)

def dsagent(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsagent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def our_engines(dep: Any) -> list[int]:
    """The engine processes of ``dep`` proven ours by dsagent's own rule (pid, start time, mark, group):
    the only processes this script ever signals, besides the recorded, live API server."""
    from dsagent.deploy.record.identity import processes_of

    if dep is None:
        return []
    return [p.pid for p in processes_of(dep) if is_engine(p.name) or is_engine(p.cmdline[:40])]


def wait_ready_again(settings: Any, name: str, old_pid: int, bound: float) -> tuple[bool, Any]:
    from dsagent.deploy.record.phase import live_state
    from dsagent.deploy.record.state import State
    from dsagent.deploy.record.store import load

    end = time.time() + bound
    while time.time() < end:
        dep = load(settings, name)
        if dep is not None and dep.pid and dep.pid != old_pid and live_state(dep) == State.READY:
            return True, dep
        if dep is not None and str(dep.state) == "failed":
            return False, dep
        time.sleep(0.2)
    return False, load(settings, name)


def wait_supervisor_ready(settings: Any, name: str, pid: int, bound: float = 30.0) -> bool:
    """Until the supervisor itself has recorded launch ``pid`` ready (it looks every --check-interval s):
    a kill before that is, to it, a launch that died while starting."""
    from dsagent.deploy.record.store import load

    end = time.time() + bound
    while time.time() < end:
        dep = load(settings, name)
        if dep is not None and dep.pid == pid and str(dep.state) == "ready":
            return True
        time.sleep(0.1)
    return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gpu_rehearsal import gpu_info, model_dir

    from dsagent.deploy.record.identity import leader_alive
    from dsagent.deploy.record.names import files
    from dsagent.deploy.record.store import load
    from dsagent.settings import Settings

    t_start = time.time()
    deadline = t_start + args.budget
    settings = Settings.load()
    name = args.name or f"sup-{args.shape.replace('.', '_')}"
    out_path = Path(args.out)
    res: dict[str, Any] = {"meta": {"gpu": gpu_info(), "shape": args.shape, "tp": 1, "max_model_len": MAX_MODEL_LEN,
                                    "name": name, "interval_s": args.interval, "state_interval_s": args.state_interval,
                                    "faults": args.faults, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "held_mib": HELD_MIB},
                           "events": []}
    try:
        import vllm

        res["meta"]["vllm_version"] = vllm.__version__
    except Exception as exc:  # noqa: BLE001
        res["meta"]["vllm_version"] = f"unavailable: {exc!r}"[:200]
    mdir = model_dir(SHAPES[args.shape], Path(args.models))
    res["meta"]["model_config"] = json.loads((mdir / "config.json").read_text())
    t0 = time.time()
    fast = Sampler(smi_sample, t0, args.interval)
    slow = Sampler(state_sampler(settings, name), t0, args.state_interval)

    def event(what: str, **kw: Any) -> dict[str, Any]:
        e = {"t": round(time.time() - t0, 3), "event": what, **kw}
        res["events"].append(e)
        print(f"[{e['t']:8.2f}] {what} {json.dumps(kw)[:300]}", flush=True)
        return e

    def save() -> None:
        res["samples"], res["states"] = list(fast.samples), list(slow.samples)
        out_path.write_text(json.dumps(res, default=str))

    fast.start()
    time.sleep(1.5)  # the idle baseline
    slow.start()
    try:
        argv = ["up", str(mdir), "--name", name, "--device", "gpu", "--dummy-weights", "--tokenizer", args.tokenizer,
                "--restart", "on-failure", "--port", "auto", "--max-model-len", str(MAX_MODEL_LEN), "--json",
                "--timeout", str(int(max(60, min(480, deadline - time.time() - 60))))]
        res["meta"]["up_argv"] = ["dsagent", *argv]
        event("up_call")
        up = dsagent(*argv, timeout=max(90, deadline - time.time()))
        if up.returncode != 0:
            event("up_failed", rc=up.returncode, stderr=up.stderr[-3000:])
            return res
        dep = json.loads(up.stdout)
        event("ready", pid=dep["pid"], engines=our_engines(load(settings, name)), supervisor_pid=dep.get("supervisor_pid"))
        if wait_supervisor_ready(settings, name, dep["pid"]):
            event("supervisor_ready", fault=0, pid=dep["pid"])
        res["meta"]["vllm_argv"] = dep.get("argv")
        res["meta"]["restart_policy"] = dep.get("restart")
        save()
        for i, kind in enumerate(f for f in args.faults.split(",") if f):
            if deadline - time.time() < args.need:
                event("skipped", fault=i + 1, kind=kind, why=f"less than {args.need} s of the budget left")
                continue
            dep = load(settings, name)
            old_api, engines = dep.pid, our_engines(dep)
            target = (old_api if leader_alive(dep) else None) if kind == "api" else (engines or [None])[0]
            if target is None:  # never signal a process not proven to be this deployment's
                event("skipped", fault=i + 1, kind=kind, why="no live process of the deployment to kill")
                continue
            os.kill(target, signal.SIGKILL)
            event("kill", fault=i + 1, kind=kind, target=target, old_api=old_api, old_engines=engines)
            ok, dep = wait_ready_again(settings, name, old_api, max(30, deadline - time.time() - 45))
            if not ok:
                event("not_ready", fault=i + 1, state=str(dep.state) if dep else None,
                      reason=dep.reason if dep else None)
                break
            event("ready_again", fault=i + 1, pid=dep.pid, engines=our_engines(dep), restarts=dep.restarts)
            if wait_supervisor_ready(settings, name, dep.pid):
                event("supervisor_ready", fault=i + 1, pid=dep.pid)
            save()
        st = dsagent("status", name, "--json", timeout=60)
        res["status_json"] = st.stdout[-4000:] or st.stderr[-2000:]
    finally:
        dep = load(settings, name)
        if dep is not None:
            res["record"] = {k: getattr(dep, k, None) for k in ("failures", "measured", "restarts", "restart", "state",
                                                                "reason", "argv")}
            for f in res["record"]["failures"] or []:
                f["log_tail"] = (f.get("log_tail") or "")[-1500:]
        event("stop_call")
        stop = dsagent("stop", name, timeout=180)
        event("stop_done", rc=stop.returncode, out=(stop.stdout + stop.stderr)[-600:])
        end = time.time() + min(90, max(10, deadline - time.time()))
        while time.time() < end:
            last = fast.samples[-1] if fast.samples else {}
            if last.get("used") is not None and sum(last["used"]) == 0 and last["t"] > res["events"][-1]["t"]:
                break
            time.sleep(args.interval)
        time.sleep(1.0)  # a few samples after
        event("end", engines=[p[0] for p in vllm_processes(since=t0 - 1.0) if is_engine(p[2])])
        fast.stop()
        slow.stop()
        for what, path in (("supervise_log", files(settings, name).supervise_log), ("vllm_log", files(settings, name).log)):
            try:
                text = Path(path).read_text(errors="replace")
                res[what + "_tail"] = text[-6000:] if what == "supervise_log" else "\n".join(
                    ln[-300:] for ln in text.splitlines()[-40:])
            except OSError as exc:
                res[what + "_tail"] = repr(exc)
        save()
    return res


# ---------------------------------------------------------------- analysis (pure)

def _used(s: dict[str, Any]) -> int | None:
    return None if s.get("used") is None else sum(s["used"])


def _engine_pids(s: dict[str, Any]) -> list[int]:
    return [p[0] for p in s.get("procs") or [] if is_engine(p[2])]


def _at(samples: list[dict[str, Any]], t: float) -> dict[str, Any]:
    """The last good sample at or before ``t`` (else the first one): what was there when it happened."""
    good = [s for s in samples if "used" in s and s.get("used") is not None]
    return next((s for s in reversed(good) if s["t"] <= t), good[0] if good else {})


def analyze(res: dict[str, Any]) -> dict[str, Any]:
    """Per fault: kill -> old memory free, -> new engine process, -> new engine memory, -> ready; the
    overlap check; stop -> 0 MiB; whether NVML named the pids. Times in seconds after the kill."""
    samples = [s for s in res.get("samples", []) if s.get("used") is not None]
    events = res.get("events", [])
    ev = {e["event"]: e for e in events}
    up_t = ev.get("up_call", {}).get("t", samples[0]["t"] if samples else 0.0)
    before = [_used(s) for s in samples if s["t"] < up_t]
    base = min(before) if before else 0

    def held(s: dict[str, Any]) -> bool:
        return _used(s) - base > HELD_MIB

    kills = [e for e in events if e["event"] == "kill"]
    readies = {e["fault"]: e for e in events if e["event"] in ("ready_again", "not_ready")}
    sup_ready = {e["fault"]: e["t"] for e in events if e["event"] == "supervisor_ready"}
    seen_before: set[int] = set()
    faults = []
    for k in kills:
        for s in samples:
            if s["t"] < k["t"]:
                seen_before.update(_engine_pids(s))
        old = set(k["old_engines"]) | {k["old_api"]}
        end_t = readies.get(k["fault"], {}).get("t", float("inf"))
        nxt = next((e["t"] for e in kills if e["t"] > k["t"]), float("inf"))
        win = [s for s in samples if k["t"] <= s["t"] <= min(end_t, nxt)]
        free = next((s for s in win if not held(s) and not old & {a[0] for a in s["apps"]}), None)
        old_gone = next((s for s in win if not set(k["old_engines"]) & set(_engine_pids(s))), None)
        new_pids = sorted({p for s in win for p in _engine_pids(s)} - seen_before - old)
        new_proc = next((s for s in win if set(new_pids) & set(_engine_pids(s))), None)
        new_mem = next((s for s in win if free and s["t"] > free["t"] and held(s)), None)
        new_named = next((s for s in win if set(new_pids) & {a[0] for a in s["apps"]}), None)
        # the proof: no sample in which a new engine process exists while the old memory is still held
        overlap = [s["t"] for s in win if set(new_pids) & set(_engine_pids(s)) and (free is None or s["t"] < free["t"])]
        both_named = [s["t"] for s in win if old & {a[0] for a in s["apps"]} and set(new_pids) & {a[0] for a in s["apps"]}]
        def rel(s: dict[str, Any] | None, at: float = k["t"]) -> float | None:
            return None if s is None else round(s["t"] - at, 2)

        before_gap = max((b["t"] - a["t"] for a, b in pairwise(win)), default=None)
        r = readies.get(k["fault"], {})
        faults.append({
            "fault": k["fault"], "kind": k["kind"], "killed_pid": k["target"], "old_api": k["old_api"],
            "old_engines": k["old_engines"], "new_engines": new_pids, "new_api": r.get("pid"),
            "used_mib_at_kill": _used(_at(samples, k["t"])),
            "kill_to_old_engine_gone_s": rel(old_gone), "kill_to_old_memory_free_s": rel(free),
            "kill_to_new_engine_process_s": rel(new_proc), "kill_to_new_engine_memory_s": rel(new_mem),
            "kill_to_new_engine_named_by_nvml_s": rel(new_named),
            "kill_to_ready_s": round(r["t"] - k["t"], 2) if r.get("event") == "ready_again" else None,
            "kill_to_supervisor_ready_s": round(sup_ready[k["fault"]] - k["t"], 2) if k["fault"] in sup_ready else None,
            "came_back": r.get("event") == "ready_again",
            "overlap_samples": len(overlap), "old_and_new_named_together": len(both_named),
            "samples_in_window": len(win), "max_sample_gap_s": None if before_gap is None else round(before_gap, 3),
            "sample_t": {"kill": k["t"], "old_memory_free": free and free["t"], "new_engine_process": new_proc and new_proc["t"],
                         "new_engine_memory": new_mem and new_mem["t"]},
        })
        seen_before.update(new_pids)
    stop = ev.get("stop_call")
    stop_out: dict[str, Any] = {}
    if stop:
        after = [s for s in samples if s["t"] >= stop["t"]]
        zero = next((s for s in after if _used(s) == 0), None)
        at_base = next((s for s in after if not held(s)), None)
        stop_out = {"used_mib_at_stop": _used(_at(samples, stop["t"])),
                    "stop_to_0_mib_s": None if zero is None else round(zero["t"] - stop["t"], 2),
                    "sample_t_0_mib": zero and zero["t"],
                    "stop_to_baseline_s": None if at_base is None else round(at_base["t"] - stop["t"], 2),
                    "stop_command_s": round(ev["stop_done"]["t"] - stop["t"], 2) if "stop_done" in ev else None,
                    "final_used_mib": _used(after[-1]) if after else None,
                    "engines_left": ev.get("end", {}).get("engines"),
                    "final_apps": after[-1]["apps"] if after else None}
    # Does NVML's per-process list name the pids psutil sees?
    engine_seen = sorted({p for s in samples for p in _engine_pids(s)})
    apps_seen = sorted({a[0] for s in samples for a in s["apps"]})
    with_mem = [s for s in samples if held(s) and _engine_pids(s)]
    named = [s for s in with_mem if set(_engine_pids(s)) & {a[0] for a in s["apps"]}]
    max_app = max((a[1] for s in samples for a in s["apps"]), default=None)
    max_used = max((_used(s) for s in samples), default=None)
    nvml = {"engine_pids_psutil": engine_seen, "pids_nvidia_smi": apps_seen,
            "named_engine_pids": sorted(set(engine_seen) & set(apps_seen)),
            "nvidia_smi_pids_unknown_to_psutil": sorted(set(apps_seen) - set(engine_seen) - _api_pids(events)),
            "samples_engine_holding_memory": len(with_mem), "of_which_nvml_named_the_engine": len(named),
            "max_per_process_used_mib": max_app, "max_used_mib": max_used}
    supervisor_view = _supervisor_view(res.get("states", []), engine_seen)
    ok = bool(faults) and all(f["came_back"] and f["overlap_samples"] == 0 and f["old_and_new_named_together"] == 0
                              and f["kill_to_old_memory_free_s"] is not None for f in faults)
    return {"baseline_used_mib": base, "faults": faults, "stop": stop_out, "nvml": nvml,
            "supervisor_nvml_view": supervisor_view,
            "cold_up_to_ready_s": round(ev["ready"]["t"] - up_t, 2) if "ready" in ev else None,
            "samples": len(samples), "median_sample_interval_s": _median([b["t"] - a["t"] for a, b in pairwise(samples)]),
            "ok_no_double_booking_and_all_came_back": ok,
            "ok_stop_at_0_mib": stop_out.get("final_used_mib") == 0}


def _api_pids(events: list[dict[str, Any]]) -> set[int]:
    return {e[k] for e in events for k in ("pid", "old_api") if isinstance(e.get(k), int)}


def _supervisor_view(states: list[dict[str, Any]], engines: list[int]) -> dict[str, Any]:
    """What ``memory_holders`` (the supervisor's NVML question) answered during the run."""
    answers = [s.get("holders") for s in states if "holders" in s]
    unknown = [a for a in answers if isinstance(a, str)]
    named = [a for a in answers if isinstance(a, dict) and {int(p) for p in a} & set(engines)]
    return {"answers": len(answers), "unknown": len(unknown), "named_an_engine": len(named),
            "none": sum(1 for a in answers if a is None)}


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return round(xs[len(xs) // 2], 3) if xs else None


def timeline(res: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The events with the derived ones (old memory free, new engine appears/holds memory) and the
    live-state changes, each with the used MiB and the engine pids of the sample at that time."""
    samples = [s for s in res.get("samples", []) if s.get("used") is not None]
    if not samples:
        return []
    rows = [{"t": e["t"], "what": _label(e)} for e in res.get("events", []) if e["event"] not in ("end",)]
    for f in summary["faults"]:
        for key, text in (("old_memory_free", "old engine's memory free"),
                          ("new_engine_process", f"new engine process appears {f['new_engines']}"),
                          ("new_engine_memory", "new engine holds GPU memory")):
            if f["sample_t"][key] is not None:
                rows.append({"t": f["sample_t"][key], "what": f"  {text} (fault {f['fault']})"})
    last = None
    for s in res.get("states", []):
        if s.get("state") and s["state"] != last:
            rows.append({"t": s["t"], "what": f"  state -> {s['state']}" + (f" (restarts {s.get('restarts')})")})
            last = s["state"]
    stop = summary.get("stop") or {}
    if stop.get("sample_t_0_mib") is not None:
        rows.append({"t": stop["sample_t_0_mib"], "what": "  0 MiB used"})
    rows.sort(key=lambda r: r["t"])
    for r in rows:
        s = _at(samples, r["t"])
        r["used_mib"], r["engines"], r["nvml_pids"] = _used(s), _engine_pids(s), [a[0] for a in s.get("apps", [])]
    return rows


def _label(e: dict[str, Any]) -> str:
    k = e["event"]
    if k == "kill":
        return f"SIGKILL {'API server' if e['kind'] == 'api' else 'EngineCore'} pid {e['target']} (fault {e['fault']})"
    if k == "ready_again":
        return f"ready again, API server pid {e['pid']} (fault {e['fault']})"
    if k == "ready":
        return f"ready, API server pid {e['pid']}"
    if k == "supervisor_ready":
        return "  the supervisor has recorded it ready"
    if k == "stop_done":
        return f"dsagent stop returned (rc {e['rc']})"
    return {"up_call": "dsagent up --restart on-failure", "stop_call": "dsagent stop"}.get(k, k)


def print_report(res: dict[str, Any], summary: dict[str, Any]) -> None:
    m = res.get("meta", {})
    print(f"\n{m.get('gpu', {}).get('name')}, vLLM {m.get('vllm_version')}, {m.get('shape')} TP1 dummy weights; "
          f"baseline {summary['baseline_used_mib']} MiB; {summary['samples']} nvidia-smi samples "
          f"(median every {summary['median_sample_interval_s']} s)\n")
    print(f"{'t (s)':>8}  {'used MiB':>8}  {'engines (psutil)':18} {'nvidia-smi pids':18} event")
    for r in timeline(res, summary):
        print(f"{r['t']:8.2f}  {r['used_mib']:>8}  {r['engines']!s:18} {r['nvml_pids']!s:18} {r['what']}")
    print(f"\ncold up -> ready {summary['cold_up_to_ready_s']} s")
    print("seconds after the kill: old engine's memory free, new engine process, its GPU memory, ready (/health with a "
          "new pid), recorded ready by the supervisor; overlap: samples with a new engine while the old memory was held")
    print(f"{'fault':22} {'old free':>9} {'new proc':>9} {'new mem':>8} {'ready':>7} {'sup rdy':>8} {'overlap':>8}  pids")
    for f in summary["faults"]:
        print(f"{f['fault']}: SIGKILL {f['kind']:11} {_s(f['kill_to_old_memory_free_s']):>9} "
              f"{_s(f['kill_to_new_engine_process_s']):>9} {_s(f['kill_to_new_engine_memory_s']):>8} "
              f"{_s(f['kill_to_ready_s']):>7} {_s(f.get('kill_to_supervisor_ready_s')):>8} {f['overlap_samples']:>8}  "
              f"engine {f['old_engines']} -> "
              f"{f['new_engines']}, API {f['old_api']} -> {f['new_api']}")
    st = summary["stop"]
    print(f"stop -> 0 MiB {st.get('stop_to_0_mib_s')} s (the command {st.get('stop_command_s')} s); final used "
          f"{st.get('final_used_mib')} MiB, engines left {st.get('engines_left')}")
    n = summary["nvml"]
    print(f"NVML per-process list: engine pids psutil saw {n['engine_pids_psutil']}, pids nvidia-smi named "
          f"{n['pids_nvidia_smi']}; named the engine in {n['of_which_nvml_named_the_engine']} of "
          f"{n['samples_engine_holding_memory']} samples where an engine held memory; largest per-process figure "
          f"{n['max_per_process_used_mib']} MiB vs {n['max_used_mib']} MiB used")
    print(f"supervisor's own NVML view (memory_holders): {summary['supervisor_nvml_view']}")
    print(f"\nno double booking and every failure came back: {summary['ok_no_double_booking_and_all_came_back']}; "
          f"stop at 0 MiB: {summary['ok_stop_at_0_mib']}")


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}s"


def trim(res: dict[str, Any], limit: int = 200_000) -> dict[str, Any]:
    """``res`` small enough for docs/: samples where nothing changed are decimated (every change kept)."""
    out = dict(res)
    step = 1
    while len(json.dumps(out, indent=1, default=str)) > limit and step < 64:
        step *= 2
        kept, prev = [], None
        for i, s in enumerate(res.get("samples", [])):
            key = (s.get("used"), str(s.get("apps")), str(s.get("procs")))
            if key != prev or i % step == 0:
                kept.append({k: v for k, v in s.items() if k != "dt"} if step > 1 else s)
            prev = key
        out["samples"] = kept
        out["states"] = res.get("states", [])[::max(1, step // 4)]
        out["trimmed"] = (f"samples kept: every one that differs from the one before, and one in {step}; "
                          f"states: one in {max(1, step // 4)}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", help="tokenizer folder for --dummy-weights (e.g. SmolLM2's)")
    ap.add_argument("--out", help="the JSON: timeline (samples, states, events) + summary")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen1.5b")
    ap.add_argument("--faults", default="api,engine,api", help="comma list of api|engine (default api,engine,api)")
    ap.add_argument("--name", help="deployment name (default sup-SHAPE)")
    ap.add_argument("--models", default="/tmp/sup-models", help="where the config-only model folder is written")
    ap.add_argument("--interval", type=float, default=0.25, help="nvidia-smi sampling period (s)")
    ap.add_argument("--state-interval", type=float, default=1.0, help="dsagent state sampling period (s)")
    ap.add_argument("--budget", type=float, default=540, help="seconds the whole run may take (stop included)")
    ap.add_argument("--need", type=float, default=130, help="seconds of budget a further fault needs")
    ap.add_argument("--analyze", metavar="JSON", help="analyze a saved run instead of running")
    ap.add_argument("--trim", metavar="JSON", help="with --analyze: also write a trimmed copy (docs) here")
    args = ap.parse_args(argv)
    if args.analyze:
        res = json.loads(Path(args.analyze).read_text())
    else:
        if not (args.tokenizer and args.out):
            ap.error("--tokenizer and --out are needed to run")
        res = run(args)
    res["summary"] = summary = analyze(res)
    res["timeline"] = timeline(res, summary)
    if args.out and not args.analyze:
        Path(args.out).write_text(json.dumps(res, default=str))
    if args.trim:
        Path(args.trim).write_text(json.dumps(trim(res), indent=1, default=str) + "\n")
    print_report(res, summary)
    return 0 if summary["ok_no_double_booking_and_all_came_back"] and summary["ok_stop_at_0_mib"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
