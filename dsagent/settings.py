"""Where dsagent keeps its state, and which interpreter runs vLLM.

Every value is resolved as: explicit argument, then a ``DSAGENT_*`` environment variable, then
the default.

================  =====================  ==========================================
attribute         environment variable   default
================  =====================  ==========================================
home              DSAGENT_HOME           ``~/.dsagent``
engine_python     DSAGENT_PYTHON         the interpreter running dsagent
================  =====================  ==========================================

Layout of ``home``::

    models/<name>/            converted or local models (the model store)
    deployments/<name>.json   one state record per deployment
    logs/<name>.log           the vLLM log of that deployment
    api_key                   the API key, mode 0600, made on first use
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Resolved paths and the engine interpreter; ``Settings.load()`` reads the environment."""

    home: Path
    engine_python: str

    @classmethod
    def load(cls, home: str | os.PathLike[str] | None = None, engine_python: str | None = None) -> Settings:
        home = home or os.environ.get("DSAGENT_HOME") or Path.home() / ".dsagent"
        engine = engine_python or os.environ.get("DSAGENT_PYTHON") or sys.executable
        return cls(home=Path(home).expanduser().resolve(), engine_python=engine)

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

    def api_key(self) -> str:
        """The deployment API key, generated and stored with mode 0600 on first use."""
        path = self.api_key_file
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = "dsa-" + secrets.token_urlsafe(24)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.replace(path.with_suffix(".tmp"), path)
        return key
