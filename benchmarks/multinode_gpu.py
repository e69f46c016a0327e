"""Two "nodes" of one GPU each on a lent 2-GPU machine (GPU 0 = rank 0 at 127.0.0.1, GPU 1 = rank 1 at
127.0.0.2, a home each): DeepSeek-R1-Distill-Llama-8B's shape with random weights at PP=2 through
`dsagent up --nodes 2` + the printed `dsagent join`.

    python3 benchmarks/multinode_gpu.py --tokenizer TOK --out OUT.json [--rounds stop,kill] [--by-hand]

Per round: seconds to ready, the head's `status` (every node's state and KV tokens), estimate vs
vLLM's KV tokens, one-stream and 64-stream decode (raw HTTP, 256 tokens each), then either
`dsagent stop` on the head (round "stop") or SIGKILL of the head's API server (round "kill"): how
long the other node outlives its head, and NVML memory per GPU after. `--by-hand` adds the same
launch typed as raw vLLM commands, for the time to ready. Run by benchmarks/gpu_device.sh mnode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from gpu_rehearsal import _raw, gpu_memory, model_dir, parse_vllm_log  # noqa: E402
from multinode import free_port, group_gone, wait_health  # noqa: E402

SHAPE = "llama8b-tp1"
LEN = 8192


def dsagent(home: Path, gpu: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "DSAGENT_HOME": str(home), "CUDA_VISIBLE_DEVICES": gpu}
    return subprocess.run([sys.executable, "-m", "dsagent.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _decode(base: str, key: str, name: str) -> dict[str, Any]:
    out = {}
    asyncio.run(_raw(base, key, name, 2))  # warm-up
    for n in (1, 64):
        try:
            out[f"streams_{n}"] = asyncio.run(_raw(base, key, name, n))
        except Exception as exc:  # noqa: BLE001 - report, go on
            out[f"streams_{n}"] = {"error": repr(exc)[:300]}
    return out


def dsagent_round(tmp: Path, mdir: Path, tok: str, end: str) -> dict[str, Any]:
    head, node = tmp / f"head-{end}", tmp / f"node-{end}"
    port, master = free_port(), free_port()
    res: dict[str, Any] = {"round": end}
    t0 = time.monotonic()
    up = dsagent(head, "0", "up", str(mdir), "--device", "gpu", "--dummy-weights", "--tokenizer", tok, "--nodes", "2",
                 "--pp", "2", "--node-ip", "127.0.0.1", "--peers", "127.0.0.2", "--master-port", str(master),
                 "--port", str(port), "--max-model-len", str(LEN), "--no-wait", "--name", "mn")
    res["up_rc"], res["up_tail"] = up.returncode, up.stderr[-2000:]
    if up.returncode != 0:
        return res
    join = next(ln.split("run: ", 1)[1] for ln in up.stderr.splitlines() if "run: dsagent join" in ln)
    res["join_command"] = join
    jn = dsagent(node, "1", *shlex.split(join)[1:])
    res["join_rc"], res["join_tail"] = jn.returncode, jn.stderr[-2000:]
    if jn.returncode != 0:
        dsagent(head, "0", "stop", "mn")
        return res
    try:
        wait_health(f"http://127.0.0.1:{port}", timeout=600)
    except TimeoutError:
        res["ready_s"] = None
        res["head_log"] = Path(json.loads((head / "deployments" / "mn.json").read_text())["log_file"]).read_text()[-3000:]
        dsagent(head, "0", "stop", "mn")
        return res
    res["ready_s"] = round(time.monotonic() - t0, 1)
    time.sleep(6)  # one report from the node to the head's roll call
    st = json.loads(dsagent(head, "0", "status", "mn", "--json").stdout)
    rec = json.loads((head / "deployments" / "mn.json").read_text())
    wrec = json.loads((node / "deployments" / "mn.json").read_text())
    res["status_nodes"] = st.get("nodes")
    res["estimate"] = {k: rec["estimate"].get(k) for k in ("kv_cache_tokens", "weights_gib", "per_gpu", "fits")
                       if k in rec["estimate"]} or rec["estimate"]
    res["head_log"] = parse_vllm_log(Path(rec["log_file"]).read_text())
    res["node_log"] = parse_vllm_log(Path(wrec["log_file"]).read_text())
    res["memory_ready"] = gpu_memory()
    res["decode"] = _decode(f"http://127.0.0.1:{port}/v1", Path(rec["api_key_file"]).read_text().strip(), "mn")
    t1 = time.monotonic()
    if end == "stop":
        res["stop_rc"] = dsagent(head, "0", "stop", "mn").returncode
        res["head_stop_s"] = round(time.monotonic() - t1, 1)
        res["node_outlives_head_s"] = round(group_gone(wrec["pgid"], cap=120), 1)
        time.sleep(3)
        res["memory_after_stop"] = gpu_memory()
    else:
        os.kill(rec["pid"], signal.SIGKILL)
        res["node_outlives_head_s"] = round(group_gone(wrec["pgid"], cap=120), 1)
        time.sleep(3)
        res["memory_after_kill"] = gpu_memory()
        res["node_record"] = {k: json.loads((node / "deployments" / "mn.json").read_text())[k] for k in ("state", "reason")}
        res["stop_rc"] = dsagent(head, "0", "stop", "mn").returncode
        time.sleep(3)
        res["memory_after_stop"] = gpu_memory()
    return res


def by_hand_round(mdir: Path, tok: str) -> dict[str, Any]:
    port, master = free_port(), free_port()
    common = ["serve", str(mdir), "--served-model-name", "mn", "--load-format", "dummy", "--tokenizer", tok,
              "--max-model-len", str(LEN), "--pipeline-parallel-size", "2", "--nnodes", "2", "--master-addr",
              "127.0.0.1", "--master-port", str(master)]
    log = open(tempfile.mktemp(suffix=".log"), "w")
    t0 = time.monotonic()
    head = subprocess.Popen([sys.executable, "-m", "dsagent.deploy.launch.vllm_cli", *common, "--node-rank", "0", "--port",
                             str(port)], env={**os.environ, "VLLM_HOST_IP": "127.0.0.1", "CUDA_VISIBLE_DEVICES": "0"},
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    node = subprocess.Popen([sys.executable, "-m", "dsagent.deploy.launch.vllm_cli", *common, "--node-rank", "1", "--headless"],
                            env={**os.environ, "VLLM_HOST_IP": "127.0.0.2", "CUDA_VISIBLE_DEVICES": "1"},
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_health(f"http://127.0.0.1:{port}", timeout=600)
        ready = round(time.monotonic() - t0, 1)
    except TimeoutError:
        ready = None
    for p in (head, node):
        os.killpg(p.pid, signal.SIGKILL)
    group_gone(head.pid, cap=30)
    group_gone(node.pid, cap=30)
    return {"round": "by_hand", "ready_s": ready}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", default="stop,kill")
    ap.add_argument("--by-hand", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mn-"))
    mdir = model_dir(SHAPE, tmp)
    runs: list[dict[str, Any]] = [{"memory_before": gpu_memory()}]

    def save() -> None:
        Path(args.out).write_text(json.dumps(runs, indent=2))

    for end in filter(None, args.rounds.split(",")):
        runs.append(dsagent_round(tmp, mdir, args.tokenizer, end))
        save()
        print(json.dumps({k: v for k, v in runs[-1].items() if "memory" not in k and "log" not in k})[:3000], flush=True)
    if args.by_hand:
        runs.append(by_hand_round(mdir, args.tokenizer))
        save()
        print(json.dumps(runs[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
