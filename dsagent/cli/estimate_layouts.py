"""The view of ``dsagent estimate --goal``: layouts ranked for latency or throughput, then the pick's plan.

All logic lives in :mod:`dsagent.plan.layouts`; this module only prints.
"""

from __future__ import annotations

from ..plan.layouts import LayoutChoice

__all__ = ["render_choice"]

SHOWN = 8
_WHY = {
    "latency": "one stream: fewest GiB read per decoded token (TP splits the read; PP and DP do not shorten it)",
    "throughput": "many streams: most requests of max_model_len held at once over all replicas (dp x "
                  "concurrency); within 10 % of the most, the fastest per stream",
}


def render_choice(choice: LayoutChoice, name: str = "", plan_view: str = "") -> str:
    """Options table (best first), the nodes needed when nothing fits, and the pick's per-GPU plan."""
    where = f"{choice.nodes} node(s) x {choice.gpus} GPUs"
    lines = [f"{name}  goal: {choice.goal} on {where} ({_WHY[choice.goal]})", "",
             (f"{'layout':46} {'fits':>4} {'weights/GPU':>11} {'KV tokens/replica':>17} {'concurrency':>11} "
              f"{'GiB/token':>9} {'speed':>6}")]
    for o in choice.options[:SHOWN]:
        lines.append(f"{o.flags:46} {'yes' if o.fits else 'no':>4} {o.weights_gib:11.2f} {o.kv_cache_tokens:17,} "
                     f"{o.total_concurrency:11.2f} {o.token_read_gib:9.2f} {o.relative_speed:5.2f}x")
    if len(choice.options) > SHOWN:
        lines.append(f"... {len(choice.options) - SHOWN} more layouts (--json lists all)")
    lines.append("")
    if choice.pick is None:
        more = (f"{choice.nodes_needed} nodes of {choice.gpus} GPUs hold it (--nodes {choice.nodes_needed})"
                if choice.nodes_needed else "no number of nodes up to 8 holds it; try --kv-cache-dtype fp8 or a "
                "shorter --max-model-len")
        lines.append(f"verdict: DOES NOT FIT on {where}; {more}")
        return "\n".join(lines)
    best = choice.options[0]
    lines.append(f"pick: {best.flags}" + (f" --nodes {choice.nodes}" if choice.nodes > 1 else ""))
    if plan_view:
        lines += ["", plan_view]
    return "\n".join(lines)
