#!/usr/bin/env python3
"""Rehearse dsagent's GPU path with real vLLM and random weights of the real shapes.

Run on a GPU machine (see docs/gpu-rehearsal.md). Every server is started with dsagent itself
(``dsagent up --dummy-weights``), never with a hand-typed vLLM command. For each shape:

- the estimate dsagent made before launch (from the deployment record) next to what vLLM
  measured (its per-worker "Actual usage ..." line, "Available KV cache memory", "GPU KV cache
  size", "Maximum concurrency"), and the time to ready;
- decode throughput, one stream and 64 concurrent, each request ``ignore_eos`` with a fixed
  ``max_tokens``: through dsagent's client (``local_deepseek()``) and through raw httpx;
- GPU memory (NVML) before ``up`` and after ``dsagent stop``; once, after SIGKILL of the API
  server followed by ``dsagent stop``; once, ``up`` refused on a busy GPU
  (``CUDA_VISIBLE_DEVICES``).

    python benchmarks/gpu_rehearsal.py run --tokenizer DIR --shapes qwen7b-tp1,qwen14b-tp2 --out r.json
    python benchmarks/gpu_rehearsal.py report r1.json r2.json   # writes docs/gpu-rehearsal.{md,json}
    python benchmarks/gpu_rehearsal.py run --tokenizer DIR --shapes v2lite-tp1,v2lite-tp2,v3-6l-tp2,v3-6l-tp2-ep \\
        --out deepseek.json   # DeepSeek MLA/MoE/FP8 shapes on 2 GPUs (issue 15)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_TOKENS = 256
CONCURRENT = 64
PROMPT = "Write a long story about a lighthouse keeper and the sea."

# Fields the real checkpoints' config.json carry besides what the catalog keeps (no effect on
# memory; vLLM reads them).
_QWEN = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "bos_token_id": 151643,
         "eos_token_id": 151643, "sliding_window": 4096, "use_sliding_window": False, "attention_dropout": 0.0,
         "initializer_range": 0.02, "use_cache": True}
_LLAMA = {"hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "bos_token_id": 128000,
          "eos_token_id": 128001, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
          "initializer_range": 0.02, "use_cache": True, "pretraining_tp": 1,
          "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"}}

SHAPES: dict[str, dict[str, Any]] = {
    "qwen7b-tp1": {"model": "deepseek-r1-distill-qwen-7b", "tp": 1, "pp": 1, "dtype": "auto", "extra": _QWEN},
    "qwen14b-tp2": {"model": "deepseek-r1-distill-qwen-14b", "tp": 2, "pp": 1, "dtype": "auto",
                    "extra": {**_QWEN, "rope_theta": 1000000.0, "rms_norm_eps": 1e-5}},
    "llama70b-tp2pp2": {"model": "deepseek-r1-distill-llama-70b", "tp": 2, "pp": 2, "dtype": "auto",
                        "extra": _LLAMA},
    "qwen1.5b-fp32-tp2pp2": {"model": "deepseek-r1-distill-qwen-1.5b", "tp": 2, "pp": 2, "dtype": "float32",
                             "extra": _QWEN},
    # Out of sample for the fitted vLLM 0.26 constants: other models, another card (one H200).
    "llama8b-tp1": {"model": "deepseek-r1-distill-llama-8b", "tp": 1, "pp": 1, "dtype": "auto", "extra": _LLAMA},
    "qwen32b-tp1": {"model": "deepseek-r1-distill-qwen-32b", "tp": 1, "pp": 1, "dtype": "auto",
                    "extra": {**_QWEN, "rope_theta": 1000000.0, "rms_norm_eps": 1e-5}},
}
# DeepSeek MLA/MoE shapes (issue 15). V2-Lite: the catalog config (bf16, 64 experts, MLA). V3: the
# real architecture (FP8 128x128 block quantisation, 256 experts, MLA, YaRN) cut to 6 layers (3 dense
# + 3 MoE) so that TP2 fits two GPUs; "ep" adds --enable-expert-parallel. No DeepGEMM, no FlashInfer.
_V3_CUT = {"num_hidden_layers": 6}
_FP8_ENV = {"VLLM_USE_DEEP_GEMM": "0", "VLLM_MOE_USE_DEEP_GEMM": "0", "VLLM_USE_FLASHINFER_MOE_FP8": "0"}
SHAPES.update({
    "v2lite-tp1": {"model": "deepseek-v2-lite-chat", "tp": 1, "pp": 1, "dtype": "auto", "extra": {}, "mla": True},
    "v2lite-tp2": {"model": "deepseek-v2-lite-chat", "tp": 2, "pp": 1, "dtype": "auto", "extra": {}, "mla": True},
    "v3-6l-tp2": {"model": "deepseek-v3", "tp": 2, "pp": 1, "dtype": "auto", "extra": _V3_CUT, "mla": True,
                  "env": _FP8_ENV},
    "v3-6l-tp2-ep": {"model": "deepseek-v3", "tp": 2, "pp": 1, "dtype": "auto", "extra": _V3_CUT, "mla": True,
                     "env": _FP8_ENV, "ep": True},
})
DEEPSEEK_SHAPES = "v2lite-tp1,v2lite-tp2,v3-6l-tp2,v3-6l-tp2-ep"
MLA_BACKENDS = "FLASHMLA,TRITON_MLA"
"""MLA attention backends tried in turn (``--mla-backends``): FlashMLA ships in the vLLM wheel
(``vllm._flashmla_C``, SM90) and is vLLM's default on Hopper; Triton MLA needs only triton.
CUTLASS_MLA is SM100-only and FLASHINFER_MLA needs FlashInfer, which the bundle lacks."""
MAX_MODEL_LEN = 8192

_ACTUAL = re.compile(r"Actual usage is ([\d.]+) GiB for weight, ([\d.]+) GiB for peak activation, "
                     r"([\d.]+) GiB for non-torch memory, and ([\d.]+) GiB for CUDAGraph memory")
_REQUESTED = re.compile(r"Desired GPU memory utilization is \(([\d.]+), ([\d.]+) GiB\)")
_KV_IN_USE = re.compile(r"Current kv cache memory in use is ([\d.]+) GiB")
_AVAILABLE = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
_LOADING = re.compile(r"Model loading took ([\d.]+) GiB")
_KV_TOKENS = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
_CONC = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
_WORKER_PP = re.compile(r"\bWorker\w*?_PP(\d+)")
_WORKER_TP = re.compile(r"\bWorker\w*?_TP(\d+)")


# ---------------------------------------------------------------- log parsing (pure)

def _rank(line: str) -> tuple[int, int]:
    pp, tp = _WORKER_PP.search(line), _WORKER_TP.search(line)
    return (int(pp.group(1)) if pp else 0, int(tp.group(1)) if tp else 0)


def parse_vllm_log(text: str) -> dict[str, Any]:
    """Per-worker budgets and the engine's KV capacity from a vLLM 0.26 log.

    >>> log = ("(Worker_PP1_TP0 pid=9) INFO [gpu_worker.py:1] Available KV cache memory: 30.5 GiB\\n"
    ...        "(Worker_PP1_TP0 pid=9) INFO Actual usage is 16.5 GiB for weight, 2.0 GiB for peak activation,"
    ...        " 1.1 GiB for non-torch memory, and 0.7 GiB for CUDAGraph memory.\\n"
    ...        "INFO GPU KV cache size: 1,000 tokens\\nINFO Maximum concurrency for 8,192 tokens per request: 0.12x")
    >>> p = parse_vllm_log(log)
    >>> p["workers"]["pp1_tp0"]["weights_gib"], p["kv_cache_tokens"], p["max_concurrency"]
    (16.5, 1000, 0.12)
    """
    workers: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {"workers": workers}
    for line in text.splitlines():
        pp, tp = _rank(line)
        key = f"pp{pp}_tp{tp}"
        if m := _ACTUAL.search(line):
            workers.setdefault(key, {}).update(weights_gib=float(m.group(1)), activation_gib=float(m.group(2)),
                                               non_torch_gib=float(m.group(3)), cuda_graph_gib=float(m.group(4)))
            if r := _REQUESTED.search(line):
                workers[key]["requested_gib"] = float(r.group(2))
            if k := _KV_IN_USE.search(line):
                workers[key]["kv_cache_gib"] = float(k.group(1))
        elif m := _AVAILABLE.search(line):
            workers.setdefault(key, {})["kv_cache_gib"] = float(m.group(1))
        elif m := _LOADING.search(line):
            workers.setdefault(key, {})["loading_gib"] = float(m.group(1))
        elif m := _KV_TOKENS.search(line):
            out.setdefault("kv_cache_tokens_lines", []).append(int(m.group(1).replace(",", "")))
            out["kv_cache_tokens"] = min(out["kv_cache_tokens_lines"])
        elif m := _CONC.search(line):
            out.setdefault("max_concurrency_lines", []).append(float(m.group(2)))
            out["max_concurrency"] = min(out["max_concurrency_lines"])
    return out


# ---------------------------------------------------------------- GPU memory (NVML)

def gpu_memory() -> list[dict[str, Any]]:
    """Used MiB and compute processes of every GPU of the machine (all of them, not only visible)."""
    try:
        import pynvml as nv
    except ImportError:
        return []
    nv.nvmlInit()
    try:
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                procs = [{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) // 2**20}
                         for p in nv.nvmlDeviceGetComputeRunningProcesses(h)]
            except nv.NVMLError:
                procs = []
            out.append({"index": i, "used_mib": mem.used // 2**20, "total_mib": mem.total // 2**20, "procs": procs})
        return out
    finally:
        nv.nvmlShutdown()


def gpu_info() -> dict[str, Any]:
    try:
        import pynvml as nv

        nv.nvmlInit()
        h = nv.nvmlDeviceGetHandleByIndex(0)
        name = nv.nvmlDeviceGetName(h)
        info = {"name": name.decode() if isinstance(name, bytes) else name, "count": nv.nvmlDeviceGetCount(),
                "driver": str(nv.nvmlSystemGetDriverVersion())}
        nv.nvmlShutdown()
        return info
    except Exception as exc:  # noqa: BLE001 - report, do not fail the run
        return {"error": repr(exc)}


# ---------------------------------------------------------------- dsagent calls

def dsagent(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dsagent.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def model_dir(shape: str, base: Path) -> Path:
    """A config-only model folder for ``shape`` (catalog config + the fields vLLM reads)."""
    from dsagent.plan.catalog import resolve

    s = SHAPES[shape]
    cfg = {**dict(resolve(s["model"]).config), **s["extra"]}
    folder = s["model"].replace("deepseek-r1-distill-", "") + ("-6l" if s["extra"].get("num_hidden_layers") else "")
    d = base / ("shape-" + folder)  # no "deepseek-r1" in the name: no R1 reasoning parser
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


# ---------------------------------------------------------------- throughput

async def _raw(base_url: str, key: str, name: str, n: int) -> dict[str, Any]:
    import httpx

    body = {"model": name, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "temperature": 0.0}
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600,
                                 limits=httpx.Limits(max_connections=n + 4)) as client:
        async def one() -> int:
            r = await client.post("/chat/completions", json=body)
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        t0 = time.perf_counter()
        toks = await asyncio.gather(*(one() for _ in range(n)))
        dt = time.perf_counter() - t0
    return {"requests": n, "tokens": sum(toks), "seconds": round(dt, 3), "tokens_per_s": round(sum(toks) / dt, 1)}


async def _client(name: str, n: int) -> dict[str, Any]:
    from dsagent.clients.chat import local_deepseek

    llm = local_deepseek(name, max_tokens=MAX_TOKENS, temperature=0.0, extra_body={"ignore_eos": True})
    t0 = time.perf_counter()
    replies = await llm.abatch([PROMPT] * n, config={"max_concurrency": n})
    dt = time.perf_counter() - t0
    toks = sum(int((r.usage_metadata or {}).get("output_tokens") or 0) for r in replies)
    return {"requests": n, "tokens": toks, "seconds": round(dt, 3), "tokens_per_s": round(toks / dt, 1)}


def throughput(dep: dict[str, Any]) -> dict[str, Any]:
    key = Path(dep["api_key_file"]).read_text().strip()
    base = f"http://{dep['host']}:{dep['port']}/v1"
    out: dict[str, Any] = {"max_tokens": MAX_TOKENS}
    asyncio.run(_raw(base, key, dep["name"], 2))  # warm-up
    for n, label in ((1, "one_stream"), (CONCURRENT, f"concurrent_{CONCURRENT}")):
        try:
            out[f"raw_{label}"] = asyncio.run(_raw(base, key, dep["name"], n))
        except Exception as exc:  # noqa: BLE001
            out[f"raw_{label}"] = {"error": repr(exc)[:400]}
        try:
            out[f"client_{label}"] = asyncio.run(_client(dep["name"], n))
        except Exception as exc:  # noqa: BLE001
            out[f"client_{label}"] = {"error": repr(exc)[:400]}
    return out


# ---------------------------------------------------------------- one rehearsal

def _held(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[int]:
    return [a["used_mib"] - b["used_mib"] for a, b in zip(after, before)]


def _up(shape: str, mdir: Path, name: str, tokenizer: str, res: dict[str, Any],
        mla_backends: list[str]) -> subprocess.CompletedProcess:
    """``dsagent up`` for ``shape``; an MLA shape tries each MLA backend until one starts."""
    s = SHAPES[shape]
    args = ["up", str(mdir), "--name", name, "--device", "gpu", "--dummy-weights", "--tp", str(s["tp"]),
            "--pp", str(s["pp"]), "--max-model-len", str(MAX_MODEL_LEN), "--port", "auto", "--timeout", "600",
            "--vllm-arg=--tokenizer", f"--vllm-arg={tokenizer}", "--json"]
    if s["dtype"] != "auto":
        args += ["--dtype", s["dtype"]]
    if s.get("ep"):
        args += ["--vllm-arg=--enable-expert-parallel"]
    tries: list[dict[str, Any]] = []
    for backend in (mla_backends if s.get("mla") else [None]):
        env = {**s.get("env", {}), **({"VLLM_ATTENTION_BACKEND": backend} if backend else {})}
        t0 = time.time()
        up = dsagent(*args, env=env)
        tries.append({"backend": backend, "rc": up.returncode, "wall_s": round(time.time() - t0, 1),
                      "stderr_tail": up.stderr[-1500:]})
        res.update(up_wall_s=tries[-1]["wall_s"], up_rc=up.returncode, up_stderr_tail=up.stderr[-3000:],
                   attention_backend=backend, up_tries=tries)
        if up.returncode == 0:
            break
        dsagent("stop", name)
    return up


def local_estimate(shape: str, mdir: Path) -> dict[str, Any]:
    """The plan of this shape by this checkout's planner, on the visible GPU, with the shape's EP flag
    (``dsagent up`` records its own plan, which does not know --enable-expert-parallel)."""
    from dsagent.plan.estimate import estimate
    from dsagent.settings import Settings
    from dsagent.system.gpus import visible_gpus

    s = SHAPES[shape]
    try:
        import vllm

        version = vllm.__version__
    except Exception:  # noqa: BLE001
        version = None
    seen = visible_gpus(settings=Settings.load())
    if not seen:
        return {"error": "no GPU visible"}
    plan = estimate(str(mdir), gpu_memory_gib=min(g.total_gib for g in seen), gpus=s["tp"] * s["pp"], tp=s["tp"],
                    pp=s["pp"], max_model_len=MAX_MODEL_LEN, vllm_version=version,
                    expert_parallel=bool(s.get("ep")), **({"dtype": s["dtype"]} if s["dtype"] != "auto" else {}))
    return plan.to_dict()


def compare_line(res: dict[str, Any]) -> str:
    """One line: estimate vs measured weights (rank 0) and KV tokens."""
    est = res.get("local_estimate") or {}
    log = res.get("vllm_log") or {}
    w = (log.get("workers") or {}).get("pp0_tp0", {})
    measured_w = w.get("weights_gib") or w.get("loading_gib")
    est_w = ((est.get("detail") or {}).get("workers") or [{}])[0].get("weights_gib")
    return (f"   weights GiB/GPU est {est_w} vs measured {measured_w} ({_pct(est_w, measured_w)}); "
            f"KV tokens est {est.get('kv_cache_tokens')} vs measured {log.get('kv_cache_tokens')} "
            f"({_pct(est.get('kv_cache_tokens'), log.get('kv_cache_tokens'))})")


def rehearse(shape: str, tokenizer: str, base: Path, *, sigkill: bool = False, busy_check: bool = False,
             save: Any = lambda _r: None, mla_backends: str = MLA_BACKENDS) -> dict[str, Any]:
    s = SHAPES[shape]
    mdir = model_dir(shape, base)
    name = "dummy-" + shape.replace(".", "_")
    res: dict[str, Any] = {"shape": shape, "model": s["model"], "tp": s["tp"], "pp": s["pp"], "dtype": s["dtype"],
                           "expert_parallel": bool(s.get("ep")), "max_model_len": MAX_MODEL_LEN,
                           "gpu_before": gpu_memory()}
    try:
        res["local_estimate"] = local_estimate(shape, mdir)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the run
        res["local_estimate"] = {"error": repr(exc)[:400]}
    save(res)
    up = _up(shape, mdir, name, tokenizer, res, [b for b in mla_backends.split(",") if b])
    try:
        dep = json.loads(up.stdout)
    except json.JSONDecodeError:
        dep = None
    home = Path(os.environ["DSAGENT_HOME"])
    log = home / "logs" / f"{name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    res["vllm_log"] = parse_vllm_log(text)
    res["log_lines"] = [ln[-400:] for ln in text.splitlines()
                        if any(k in ln for k in ("Actual usage", "KV cache", "concurrency", "Model loading took",
                                                 "Error", "error:", "non-default args", "CUDA graph"))][-60:]
    if dep is None or up.returncode != 0:
        res["failed"] = True
        res["log_tail"] = text.splitlines()[-60:]
        dsagent("stop", name)
        res["gpu_after_stop"] = gpu_memory()
        save(res)
        return res
    res["record"] = {k: dep.get(k) for k in ("estimate", "measured", "argv", "vllm_version", "pid")}
    save(res)
    if busy_check:
        res["busy_check"] = busy(mdir, tokenizer)
        save(res)
    res["throughput"] = throughput(dep)
    save(res)
    if sigkill:
        res["sigkill"] = kill_then_stop(dep, name)
    else:
        t0 = time.time()
        st = dsagent("stop", name)
        res["stop"] = {"rc": st.returncode, "seconds": round(time.time() - t0, 1), "out": (st.stdout + st.stderr)[-800:]}
    time.sleep(2)
    res["gpu_after_stop"] = gpu_memory()
    res["held_after_stop_mib"] = _held(res["gpu_before"], res["gpu_after_stop"])
    save(res)
    return res


def kill_then_stop(dep: dict[str, Any], name: str) -> dict[str, Any]:
    """SIGKILL the API server only (its pid), then see what is left, then `dsagent stop`."""
    out: dict[str, Any] = {"killed_pid": dep["pid"]}
    os.kill(int(dep["pid"]), signal.SIGKILL)
    time.sleep(10)
    out["gpu_10s_after_kill"] = gpu_memory()
    ps = dsagent("ps", "--json")
    st = dsagent("status", name, "--json")
    out["ps_after_kill"] = ps.stdout[-2000:]
    out["status_after_kill"] = st.stdout[-1500:]
    t0 = time.time()
    stop = dsagent("stop", name)
    out["stop"] = {"rc": stop.returncode, "seconds": round(time.time() - t0, 1),
                   "out": (stop.stdout + stop.stderr)[-800:]}
    return out


def busy(mdir: Path, tokenizer: str) -> dict[str, Any]:
    """While GPU 0 is taken: `up` on CUDA_VISIBLE_DEVICES=0 must refuse; the plan on GPU 1 must fit."""
    t0 = time.time()
    r = dsagent("up", str(mdir), "--name", "busy-check", "--device", "gpu", "--dummy-weights", "--port", "auto",
                "--max-model-len", str(MAX_MODEL_LEN), "--vllm-arg=--tokenizer", f"--vllm-arg={tokenizer}",
                "--no-wait", env={"CUDA_VISIBLE_DEVICES": "0"}, timeout=120)
    out: dict[str, Any] = {"gpu0_rc": r.returncode, "gpu0_seconds": round(time.time() - t0, 1),
                           "gpu0_stderr": r.stderr[-1200:]}
    code = ("import json; from dsagent.system.gpus import visible_gpus; from dsagent.deploy.up import _preflight; "
            "from dsagent.settings import Settings; "
            "from dsagent.plan.catalog import resolve; from dsagent.deploy.launch.options import ServeOptions; "
            f"spec = resolve({str(mdir)!r}); g = visible_gpus(settings=Settings.load()); "
            f"o, est = _preflight(spec, ServeOptions(device='gpu', max_model_len={MAX_MODEL_LEN}), lambda: '0.26.0'); "
            "print(json.dumps({'visible': [x.__dict__ for x in g], 'fits': est.get('fits'), "
            "'kv_cache_tokens': est.get('kv_cache_tokens')}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"})
    out["gpu1_plan"] = p.stdout.strip()[-1500:] or p.stderr[-1500:]
    dsagent("stop", "busy-check")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    out_path = Path(args.out)
    results: dict[str, Any] = {"gpu": gpu_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    try:
        import vllm

        results["vllm_version"] = vllm.__version__
    except Exception as exc:  # noqa: BLE001
        results["vllm_version"] = f"unavailable: {exc!r}"

    def save(run: dict[str, Any]) -> None:
        if run not in results["runs"]:
            results["runs"].append(run)
        out_path.write_text(json.dumps(results, indent=1, default=str))

    base = Path(args.models)
    for shape in args.shapes.split(","):
        print(f"== {shape}", flush=True)
        r = rehearse(shape, args.tokenizer, base, sigkill=shape in (args.sigkill or "").split(","),
                     busy_check=shape in (args.busy or "").split(","), save=save, mla_backends=args.mla_backends)
        print(json.dumps({k: r.get(k) for k in ("up_rc", "up_wall_s", "held_after_stop_mib", "attention_backend")}),
              flush=True)
        print(compare_line(r), flush=True)
        rec = (r.get("record") or {}).get("measured")
        print(f"   measured {rec}  vllm {r['vllm_log'].get('kv_cache_tokens')} tokens", flush=True)
        print(f"   throughput {json.dumps(r.get('throughput'))}", flush=True)
    return 0


# ---------------------------------------------------------------- report (runs here, no GPU)

def _pct(est: float | None, meas: float | None) -> str:
    if est is None or not meas:
        return "n/a"
    return f"{(est - meas) / meas * 100:+.1f}%"


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Estimate vs measured for the widest-loaded worker, plus the figures of the table."""
    local = run.get("local_estimate") or {}
    est = local if "detail" in local else ((run.get("record") or {}).get("estimate") or {})
    detail = est.get("detail") or {}
    log = run.get("vllm_log") or {}
    workers = log.get("workers") or {}
    est_workers = detail.get("workers") or []
    rows = []
    for key, w in sorted(workers.items()):
        pp = int(key.split("_")[0][2:])
        e = next((x for x in est_workers if x["stage"] == pp), None)
        if e is None or "weights_gib" not in w:
            continue
        rows.append({"worker": key, "est_weights_gib": e["weights_gib"], "weights_gib": w["weights_gib"],
                     "est_activation_gib": e["activation_gib"], "activation_gib": w.get("activation_gib"),
                     "est_non_torch_gib": e["non_torch_gib"], "non_torch_gib": w.get("non_torch_gib"),
                     "est_cuda_graph_gib": e["cuda_graph_gib"], "cuda_graph_gib": w.get("cuda_graph_gib"),
                     "est_kv_cache_gib": e["kv_cache_gib"], "kv_cache_gib": w.get("kv_cache_gib")})
    tp = run.get("throughput") or {}
    measured = (run.get("record") or {}).get("measured") or {}
    return {
        "shape": run["shape"], "ok": not run.get("failed"), "workers": rows,
        "est_kv_tokens": est.get("kv_cache_tokens"), "kv_tokens": log.get("kv_cache_tokens"),
        "est_concurrency": est.get("max_concurrency"), "concurrency": log.get("max_concurrency"),
        "seconds_to_ready": measured.get("seconds_to_ready"),
        "raw_1": (tp.get("raw_one_stream") or {}).get("tokens_per_s"),
        "client_1": (tp.get("client_one_stream") or {}).get("tokens_per_s"),
        "raw_64": (tp.get(f"raw_concurrent_{CONCURRENT}") or {}).get("tokens_per_s"),
        "client_64": (tp.get(f"client_concurrent_{CONCURRENT}") or {}).get("tokens_per_s"),
        "held_after_stop_mib": run.get("held_after_stop_mib"),
    }


def estimate_now(run: dict[str, Any]) -> dict[str, Any]:
    """The same shape through the estimator of this checkout (the run recorded the one it ran with)."""
    from dsagent.plan.budget import plan_gpu
    from dsagent.plan.catalog import resolve

    shape, detail = SHAPES.get(run["shape"]), ((run.get("local_estimate") or {}).get("detail") or {})
    if not shape or not detail:
        return {}
    plan = plan_gpu({**resolve(shape["model"]).config, **shape["extra"]}, gpu_memory_gib=detail["gpu_memory_gib"],
                    tp=run["tp"], pp=run["pp"], gpus=run["tp"] * run["pp"], max_model_len=run["max_model_len"],
                    vllm_version=detail["vllm_version"], dtype=run.get("dtype"),
                    expert_parallel=bool(run.get("expert_parallel")))
    w = plan.workers[-1]
    return {"now_activation_gib": round(w.activation_gib, 4), "now_non_torch_gib": round(w.non_torch_gib, 4),
            "now_cuda_graph_gib": round(w.cuda_graph_gib, 4), "now_kv_cache_gib": round(w.kv_cache_gib, 4),
            "now_kv_tokens": plan.kv_cache_tokens}


_BULKY = ("log_lines", "up_stderr_tail", "stderr_tail")


def _trim(obj: Any) -> Any:
    """The run records without the copied log lines and stderr tails (the logs themselves are kept apart)."""
    if isinstance(obj, dict):
        return {k: _trim(v) for k, v in obj.items() if k not in _BULKY}
    if isinstance(obj, list):
        return [_trim(v) for v in obj]
    return obj


def cmd_report(args: argparse.Namespace) -> int:
    files = [json.loads(Path(f).read_text()) for f in args.files]
    runs = [r for f in files for r in f["runs"]]
    summary = [{**summarize(r), **estimate_now(r)} for r in runs]
    Path(args.json).write_text(json.dumps({"sources": _trim(files), "summary": summary}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    for s in summary:
        now = f", now {_pct(s['now_kv_tokens'], s['kv_tokens'])}" if "now_kv_tokens" in s else ""
        print(f"{s['shape']:24} KV tokens est {_pct(s['est_kv_tokens'], s['kv_tokens'])} (as run){now}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(required=True)
    r = sub.add_parser("run")
    r.add_argument("--tokenizer", required=True)
    r.add_argument("--shapes", default=",".join(SHAPES))
    r.add_argument("--models", default="/tmp/rehearsal-models")
    r.add_argument("--sigkill", default="", help="shapes whose API server is SIGKILLed before stop")
    r.add_argument("--busy", default="", help="shapes during which `up` on the busy GPU 0 is tried")
    r.add_argument("--mla-backends", default=MLA_BACKENDS, help="MLA shapes: VLLM_ATTENTION_BACKEND values tried in turn")
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", default=str(ROOT / "docs" / "gpu-rehearsal.json"))
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
