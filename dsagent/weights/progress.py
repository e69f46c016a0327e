"""progress: the one progress display of a download, owned by dsagent.

The hub clients' own bars are silenced (``hub``); this one tqdm bar on stderr counts the bytes
that reach the disk: files written since the download began, partial files included, polled a
few times a second. It reads the same whatever moves the bytes (HTTP, Xet, ModelScope), and it is
closed, left at its final count, before the caller prints its summary line::

    with DiskProgress([cache / "models--org--name"], total=plan.to_download, desc="org/name from hub") as bar:
        transfer()
        bar.note("verifying sha256")
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

__all__ = ["DiskProgress", "written_since"]


def written_since(roots: Sequence[Path], since: float) -> int:
    """Bytes of the regular files under ``roots`` modified at or after ``since`` (links not followed).

    >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "a.incomplete").write_bytes(b"x" * 10)
    >>> written_since([d], 0), written_since([d], time.time() + 60)
    (10, 0)
    """
    total = 0
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:  # moved into place while we looked
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_mtime >= since:
                    total += st.st_size
    return total


class DiskProgress:
    """A bytes bar over ``total`` fed by what appears under ``roots``; silent when not ``enabled``."""

    def __init__(self, roots: Sequence[Path], *, total: int, desc: str, enabled: bool = True,
                 interval: float = 0.25, stream: Any = None) -> None:
        self.roots, self.total, self.desc, self.enabled = list(roots), total, desc, enabled
        self.interval, self.stream = interval, stream or sys.stderr
        self.since = time.time() - 1.0  # mtimes may be rounded down to the second
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        if self.enabled:
            from tqdm import tqdm  # huggingface_hub's own dependency

            self._bar = tqdm(total=self.total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024,
                             file=self.stream, leave=True, dynamic_ncols=True)
            self._thread = threading.Thread(target=self._poll, daemon=True, name="dsagent-progress")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _update(self) -> None:
        done = min(written_since(self.roots, self.since), self.total)
        if done != self._bar.n:
            self._bar.n = done
            self._bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def note(self, text: str) -> None:
        """A word after the bar (``verifying sha256``)."""
        if self._bar is not None:
            self._update()
            self._bar.set_postfix_str(text)

    def grow(self, more: int) -> None:
        """``more`` bytes to come (files fetched again)."""
        self.total += more
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def log(self, log: Callable[[str], None], message: str) -> None:
        """``log(message)`` above the bar, which is cleared and drawn again around it."""
        if self._bar is None:
            log(message)
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            log(message)

    def close(self) -> None:
        """Stop polling, show the final count, close the bar (idempotent)."""
        if self._bar is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._bar.set_postfix_str("", refresh=False)
        self._update()
        self._bar.close()
        self._bar = None
