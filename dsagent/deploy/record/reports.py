"""What the nodes of a multi-node deployment last reported, kept beside the record (``<name>.nodes``).

The head's roll call (``nodes.rollcall``) writes here; status, the launcher and the head's watcher
read. Not the record itself, which the launcher rewrites while the deployment starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ...files import write_private
from ...settings import Settings

__all__ = ["NodeReport", "failed_node", "load_reports", "store_report"]


@dataclass(frozen=True)
class NodeReport:
    """What one node says of itself."""

    rank: int
    ip: str
    state: str
    reason: str = ""
    log_tail: str = ""
    kv_tokens: int | None = None
    kv_cache_gib: float | None = None
    gpus: str = ""
    at: float = 0.0



def _path(settings: Settings, name: str) -> Path:
    return settings.deployments_dir / f"{name}.nodes"


def load_reports(settings: Settings, name: str) -> dict[int, NodeReport]:
    """The newest report of each node of deployment ``name`` (none before any arrived)."""
    try:
        data = json.loads(_path(settings, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {int(rank): NodeReport(**r) for rank, r in data.items()}


def failed_node(settings: Settings, name: str) -> NodeReport | None:
    """The first node that reported its engine gone, if any."""
    return next((r for _, r in sorted(load_reports(settings, name).items()) if r.state == "failed"), None)


def store_report(settings: Settings, name: str, report: NodeReport) -> None:
    reports = load_reports(settings, name)
    if reports.get(report.rank) and reports[report.rank].state == "failed":
        return  # a node's failure stays on record
    reports[report.rank] = report
    write_private(_path(settings, name), json.dumps({str(k): asdict(v) for k, v in reports.items()}, indent=2))
