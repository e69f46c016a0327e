"""The options of a deployment, in one typed object, and the exact launch built from them.

``ServeOptions`` is what a user chooses (``dsagent up``'s flags, the library's arguments) and what
the record keeps: a relaunch, the supervisor, the systemd unit and the nodes' join command are built
from it, never from argv. ``ServePlan`` is the launch ``argv.plan_serve`` makes of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ServeOptions", "ServePlan"]


@dataclass(frozen=True)
class ServeOptions:
    """What a user chooses for a deployment; ``None`` means "dsagent decides"."""

    host: str = "127.0.0.1"
    port: int = 8000
    tp: int = 1
    pp: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    device: str = "cpu"
    kv_cache_gib: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    dummy_weights: bool = False
    tokenizer: str | None = None
    extra_args: tuple[str, ...] = ()
    nodes: int = 1
    node_rank: int = 0
    node_ip: str | None = None
    master_addr: str | None = None
    master_port: int = 29501
    dp: int = 1
    cpus: tuple[int, ...] | None = None
    backend: str = "mp"
    """``mp``: vLLM's multi-node multiprocessing engine (``dsagent join`` on the other nodes);
    ``ray``: vLLM's Ray executor on the Ray cluster of ``RAY_ADDRESS`` (GPUs only)."""
    gpus: tuple[int, ...] | None = None
    """The GPUs (indices as ``nvidia-smi`` numbers them) this deployment may use
    (``CUDA_VISIBLE_DEVICES``); ``None``: the ones this process sees."""
    sleep_mode: bool = False
    """vLLM's sleep mode (``--enable-sleep-mode``): the router can put the model to sleep and wake it
    (GPUs only; the endpoints stay behind the deployment key)."""

    @property
    def world(self) -> int:
        """Ranks in all: TP x PP x DP."""
        return self.tp * self.pp * self.dp

    @property
    def multi(self) -> bool:
        """Launched through vLLM's CLI entry: several nodes or data-parallel replicas."""
        return self.backend == "mp" and (self.nodes > 1 or self.dp > 1)

    def to_dict(self) -> dict[str, Any]:
        """The options as the record keeps them (JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeOptions:
        """Options from ``to_dict``'s JSON (lists back to tuples; unknown keys ignored).

        >>> o = ServeOptions(port=9000, cpus=(0, 1), extra_args=("--x",))
        >>> ServeOptions.from_dict(o.to_dict()) == o
        True
        """
        names = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        return cls(**values)

    def up_flags(self) -> list[str]:
        """The ``dsagent up`` flags that give these options on one node (what a systemd unit runs).

        >>> ServeOptions(port=0, cpus=(0, 1), extra_args=("--enforce-eager",), dummy_weights=True).up_flags()
        ['--port', 'auto', '--dummy-weights', '--vllm-arg=--enforce-eager', '--cpus', '0,1']
        """
        d = ServeOptions()
        out: list[str] = []
        for name, flag in (("host", "--host"), ("port", "--port"), ("tp", "--tp"), ("pp", "--pp"), ("dtype", "--dtype"),
                           ("max_model_len", "--max-model-len"), ("device", "--device"),
                           ("kv_cache_gib", "--kv-cache-gib"), ("gpu_memory_utilization", "--gpu-memory-utilization"),
                           ("tokenizer", "--tokenizer")):
            value = getattr(self, name)
            if value != getattr(d, name) and value is not None:
                out += [flag, "auto" if name == "port" and value == 0 else str(value)]
        out += ["--enforce-eager"] if self.enforce_eager else []
        out += ["--dummy-weights"] if self.dummy_weights else []
        out += [f"--vllm-arg={a}" for a in self.extra_args]  # = keeps a value that looks like a flag a value
        out += ["--cpus", ",".join(map(str, self.cpus))] if self.cpus else []
        out += ["--gpus", ",".join(map(str, self.gpus))] if self.gpus else []
        out += ["--sleep-mode"] if self.sleep_mode else []
        return out


@dataclass(frozen=True)
class ServePlan:
    """The exact launch: argv, environment overrides, where it listens and logs."""

    name: str
    model_path: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    host: str
    port: int
    log_file: Path
    options: ServeOptions
    reasoning: bool = False
    notes: tuple[str, ...] = field(default=())
