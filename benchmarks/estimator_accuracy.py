"""Run the estimator over every calibration row of ../shared/docs/vllm-memory-accounting.md.

Prints, per row, predicted vs logged weights / activation / non-torch / KV cache / tokens /
concurrency / verdict, then the mean absolute percentage errors. Rows whose GPU total was not
logged are checked for what does not depend on it (weights, and the block arithmetic from the
logged token count). Run: ``python3 benchmarks/estimator_accuracy.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsagent.plan.catalog import resolve  # noqa: E402
from dsagent.plan.budget import plan_gpu  # noqa: E402

H100 = 79.19


def llama(hidden, layers, heads, kv, inter, vocab, max_pos, **kw):
    cfg = dict(model_type="llama", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab, torch_dtype="bfloat16",
               tie_word_embeddings=False, max_position_embeddings=max_pos)
    cfg.update(kw)
    return cfg


LLAMA31_8B = llama(4096, 32, 32, 8, 14336, 128256, 131072)
LLAMA3_8B = llama(4096, 32, 32, 8, 14336, 128256, 8192)
QWEN25_7B = llama(3584, 28, 28, 4, 18944, 152064, 32768, model_type="qwen2")
LLAMA33_70B_FP8 = llama(8192, 80, 64, 8, 28672, 128256, 131072,
                        quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"})
QWEN25_15B = llama(1536, 28, 12, 2, 8960, 151936, 32768, model_type="qwen2", tie_word_embeddings=True)
QWEN25_05B = llama(896, 24, 14, 2, 4864, 151936, 32768, model_type="qwen2", tie_word_embeddings=True)
Q15 = dict(resolve("deepseek-r1-distill-qwen-1.5b").config)
Q7 = dict(resolve("deepseek-r1-distill-qwen-7b").config)
V2LITE = dict(resolve("deepseek-v2-lite-chat").config)
V3_6L = {**resolve("deepseek-v3").config, "num_hidden_layers": 6}  # the real V3 (FP8, 256 experts) cut to 6 layers
H200 = 139.8007

# (label, config, gpu GiB or None, tp, pp, util, max_len, version, logged dict, kv dtype, plan_gpu options)
ROWS = [
    ("Llama-3.1-8B TP2 v0.19", LLAMA31_8B, H100, 2, 1, 0.95, 8192, "0.19.0",
     dict(weights=7.51, activation=1.89, non_torch=2.07, kv=63.8, fits=True)),
    ("Llama-3.1-8B TP4 v0.19", LLAMA31_8B, H100, 4, 1, 0.95, 8192, "0.19.0",
     dict(weights=3.77, activation=1.89, non_torch=2.13, fits=True)),
    ("Llama-3.1-8B PP2 v0.19", LLAMA31_8B, H100, 1, 2, 0.95, 8192, "0.19.0",
     dict(weights=7.51, activation=1.10, non_torch=0.07, fits=True)),
    ("Llama-3.1-8B PP4 v0.19", LLAMA31_8B, H100, 1, 4, 0.95, 8192, "0.19.0",
     dict(weights=4.26, activation=1.05, non_torch=0.07, fits=True)),
    ("Qwen2.5-7B TP1 v0.19", QWEN25_7B, H100, 1, 1, 0.95, 32768, "0.19.0",
     dict(weights=14.25, activation=2.21, non_torch=0.24, kv=58.53, tokens=1_096_000, fits=True)),
    ("Qwen2.5-7B TP1 fp8 KV v0.19", QWEN25_7B, H100, 1, 1, 0.95, 32768, "0.19.0",
     dict(tokens=2_192_000, fits=True), "fp8"),
    ("Qwen2.5-7B TP2 v0.19", QWEN25_7B, H100, 2, 1, 0.95, 32768, "0.19.0",
     dict(weights=7.12, non_torch=2.06, fits=True)),
    ("Qwen2.5-7B TP4 v0.19", QWEN25_7B, H100, 4, 1, 0.95, 32768, "0.19.0",
     dict(weights=3.55, non_torch=2.13, fits=True)),
    ("Llama-3.3-70B FP8 TP2 v0.11", LLAMA33_70B_FP8, 79.18, 2, 1, 0.9, 16000, "0.11.0",
     dict(weights=33.88, activation=4.84, non_torch=0.55, kv=32.0, fits=True)),
    ("Llama-3.3-70B FP8 TP1 v0.11", LLAMA33_70B_FP8, 79.18, 1, 1, 0.9, 16000, "0.11.0",
     dict(weights=67.72, kv=-1.44, fits=False)),
    ("Meta-Llama-3-8B TP1 V0", LLAMA3_8B, 79.22, 1, 1, 0.9, 8192, "0.6.4",
     dict(weights=14.96, activation=1.26, non_torch=1.79, kv=53.29, fits=True)),
    ("R1-Distill-Qwen-1.5B TP1 v0.8.1", Q15, None, 1, 1, 0.9, 131072, "0.8.1",
     dict(weights=3.3465, tokens=525_520, concurrency=4.01, fits=True)),
    ("R1-Distill-Qwen-7B TP2 v0.8.4", Q7, None, 2, 1, 0.8, 4096, "0.8.4",
     dict(weights=7.1441, tokens=367_968, concurrency=89.84, fits=True)),
    # V0 on small cards (docs/estimate.md, "V0 and small cards": sources). fit: used to set the V0
    # constants; the others are held out.
    ("fit: R1-Qwen-7B V100 V0 0.7", Q7, 31.74, 1, 1, 0.9, 2048, "0.7.2",
     dict(weights=14.27, activation=1.40, non_torch=0.09, kv=12.80, tokens=14984 * 16, fits=True)),
    ("fit: Qwen2.5-7B V100 V0 0.8.5", QWEN25_7B, 31.74, 1, 1, 0.9, 32768, "0.7.3",
     dict(weights=14.25, activation=4.35, non_torch=0.09, kv=9.88, fits=True)),
    ("fit: Llama-3-8B TP2 H100 V0", LLAMA3_8B, 79.22, 2, 1, 0.9, 8192, "0.6.4",
     dict(weights=7.48, activation=1.26, non_torch=3.58, fits=True)),
    ("held: Qwen2.5-1.5B T4 V0 0.7", QWEN25_15B, 14.56, 1, 1, 0.5, 32768, "0.7.3",
     dict(weights=2.89, activation=2.02, non_torch=0.01, kv=2.36, tokens=5517 * 16, fits=True)),
    ("held: Qwen2.5-0.5B T4 V0 0.6.6", QWEN25_05B, 14.56, 1, 1, 0.9, 32768, "0.6.6",
     dict(weights=0.93, activation=1.44, non_torch=0.11, kv=10.63, tokens=58059 * 16, fits=True)),
    ("held: Qwen2.5-7B 4090 V0", QWEN25_7B, 23.57, 1, 1, 0.9, 8192, "0.7.3",
     dict(weights=14.25, activation=1.09, non_torch=0.10, kv=5.77, tokens=6749 * 16, fits=True)),
    # DeepSeek MLA/MoE on 2 x H200, vLLM 0.26.0, random weights (docs/gpu-rehearsal-deepseek.json).
    # V2-Lite runs model runner V2, whose constants were fitted on other models: out of sample.
    # "fit:" V3 rows set the 0.26 model-runner-V1 constants (sampler copies, non-torch, CUDA-graph
    # estimate; dsagent/plan/profiles.py): in sample.
    ("V2-Lite TP1 H200 v0.26", V2LITE, H200, 1, 1, 0.92, 8192, "0.26.0",
     dict(weights=29.34, activation=1.09, non_torch=0.22, kv=97.96, tokens=3_381_536, fits=True)),
    ("V2-Lite TP2 H200 v0.26", V2LITE, H200, 2, 1, 0.92, 8192, "0.26.0",
     dict(weights=14.75, activation=0.93, non_torch=0.07, kv=112.87, tokens=3_896_304, fits=True)),
    ("fit: V3-6L FP8 TP2 H200 v0.26", V3_6L, H200, 2, 1, 0.92, 8192, "0.26.0",
     dict(weights=18.79, activation=5.43, non_torch=0.15, kv=102.07, tokens=15_856_192, fits=True)),
    ("fit: V3-6L FP8 TP2 EP H200 v0.26", V3_6L, H200, 2, 1, 0.92, 8192, "0.26.0",
     dict(weights=18.79, activation=5.43, non_torch=0.15, kv=102.05, tokens=15_853_168, fits=True), None,
     {"expert_parallel": True}),
]


def pct(pred: float, real: float) -> float:
    return abs(pred - real) / abs(real) * 100


def main() -> int:
    errs: dict[str, list[float]] = {k: [] for k in ("weights", "kv", "tokens", "concurrency")}
    held: dict[str, list[float]] = {"kv": [], "tokens": []}
    verdicts = []
    head = f"{'row':32} {'weights':>15} {'activ.':>11} {'non-torch':>11} {'KV GiB':>13} {'tokens':>19} {'conc.':>13} fit"
    print(head)
    for row in ROWS:
        label, cfg, gpu, tp, pp, util, length, version, real = row[:9]
        kv_dtype = row[9] if len(row) > 9 else None
        options = row[10] if len(row) > 10 else {}
        p = plan_gpu(cfg, gpu_memory_gib=gpu or 80.0, tp=tp, pp=pp, gpus=tp * pp, gpu_memory_utilization=util,
                     max_model_len=length, vllm_version=version, kv_cache_dtype=kv_dtype, **options)
        w0 = p.workers[0]
        cells = [f"{label:32}"]
        cells.append(f"{w0.weights_gib:6.2f}/{real['weights']:<6.2f}" + f"{pct(w0.weights_gib, real['weights']):4.1f}%"
                     if "weights" in real else f"{w0.weights_gib:6.2f}/-" + " " * 7)
        if "weights" in real:
            errs["weights"].append(pct(w0.weights_gib, real["weights"]))
        for key, val in (("activation", w0.activation_gib), ("non_torch", w0.non_torch_gib)):
            cells.append(f"{val:5.2f}/{real[key]:<5.2f}" if key in real and gpu else f"{val:5.2f}/-    ")
        if gpu and "kv" in real:
            cells.append(f"{p.kv_cache_gib:6.2f}/{real['kv']:<6.2f}")
            if real["kv"] > 0:
                errs["kv"].append(pct(p.kv_cache_gib, real["kv"]))
                if label.startswith("held"):
                    held["kv"].append(pct(p.kv_cache_gib, real["kv"]))
        else:
            cells.append(f"{p.kv_cache_gib if gpu else float('nan'):6.2f}/-     ")
        if "tokens" in real:
            if gpu:
                errs["tokens"].append(pct(p.kv_cache_tokens, real["tokens"]))
                if label.startswith("held"):
                    held["tokens"].append(pct(p.kv_cache_tokens, real["tokens"]))
                cells.append(f"{p.kv_cache_tokens:>9,}/{real['tokens']:<9,}")
            else:  # GPU total not logged: only the block arithmetic below can be checked
                cells.append(f"{'?':>9}/{real['tokens']:<9,}")
        else:
            cells.append(f"{p.kv_cache_tokens:>9,}/-" + " " * 8)
        if "concurrency" in real:
            conc = (real["tokens"] // p.block_size) / -(-length // p.block_size)
            errs["concurrency"].append(pct(conc, real["concurrency"]))
            cells.append(f"{conc:6.2f}/{real['concurrency']:<6.2f}")
        else:
            cells.append(f"{p.max_concurrency:6.2f}/-     ")
        ok = p.fits == real["fits"]
        verdicts.append(ok)
        cells.append(("ok" if ok else "WRONG") + f" ({'fits' if p.fits else 'refused'})")
        print(" ".join(cells))
    print()
    for key in ("kv", "tokens"):
        vals = held[key]
        if vals:
            print(f"held-out V0 {key:12}: {sum(vals) / len(vals):5.2f}%  over {len(vals)} rows (max {max(vals):.2f}%)")
    for key, vals in errs.items():
        if vals:
            print(f"mean abs error {key:12}: {sum(vals) / len(vals):5.2f}%  over {len(vals)} rows "
                  f"(max {max(vals):.2f}%)")
    print(f"fit verdicts right   : {sum(verdicts)}/{len(verdicts)}")
    print("rows with an unknown GPU total check tokens/concurrency from the logged token count only.")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
