"""The router's catalogue: the models one address serves, by name, in ``<home>/router.toml``.

Each entry is a name (the ``model`` clients send), what ``dsagent up`` would be given (a catalog
name, hub id or folder, and ``up``'s options), and the router's policy for it::

    [models.chat]
    model = "deepseek-r1-distill-qwen-7b"
    device = "gpu"
    max_model_len = 8192
    gpus = [0]            # optional: pinned GPUs
    ttl = 300             # seconds idle before it sleeps (or stops); 0: never
    always_on = false     # loaded at the router's start, never evicted
    sleep = true          # may sleep (vLLM's sleep mode, GPU) instead of stopping

``dsagent models add/remove`` edit it (under a lock, replaced atomically, mode 0600); the router
reads it at its start. The option names are ``up``'s (``ServeOptions``): nothing new to learn.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..deploy.launch.options import ServeOptions
from ..deploy.record.names import check_name
from ..errors import InvalidOptionError
from ..files import locked, write_private
from ..settings import Settings

__all__ = ["Entry", "add", "catalogue_file", "load", "remove"]

OPTION_KEYS = ("tp", "pp", "dtype", "max_model_len", "device", "kv_cache_gib", "gpu_memory_utilization",
               "enforce_eager", "dummy_weights", "tokenizer", "extra_args", "gpus", "cpus")
"""The ``up`` options an entry may set; where it listens is the router's choice."""
POLICY_KEYS = ("ttl", "always_on", "sleep")


@dataclass(frozen=True)
class Entry:
    """One served model: its name, what ``up`` is given, and the router's policy for it."""

    name: str
    model: str
    options: ServeOptions = field(default_factory=ServeOptions)
    ttl: float = 300.0
    """Seconds without a request before the model sleeps or stops; 0 keeps it loaded."""
    always_on: bool = False
    sleep: bool = True
    """Sleep (GPU, vLLM's sleep mode) rather than stop when idle or evicted."""

    @property
    def can_sleep(self) -> bool:
        """Whether this model is put to sleep rather than stopped (vLLM sleeps on GPUs only)."""
        return self.sleep and self.options.device != "cpu"

    def to_table(self) -> dict[str, Any]:
        """The entry as its TOML table (defaults left out)."""
        out: dict[str, Any] = {"model": self.model}
        d = ServeOptions()
        for key in OPTION_KEYS:
            value = getattr(self.options, key)
            if value != getattr(d, key) and value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        for key in POLICY_KEYS:
            if getattr(self, key) != getattr(Entry, key):
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any], where: str = "router.toml") -> Entry:
        """An entry from its TOML table; an unknown key or a wrong type is refused naming the key."""
        check_name(name)
        unknown = sorted(set(table) - {"model", *OPTION_KEYS, *POLICY_KEYS})
        if unknown:
            raise InvalidOptionError(f"{where}: model {name!r} has unknown key(s) {', '.join(unknown)}",
                                     f"use only: model, {', '.join(OPTION_KEYS + POLICY_KEYS)}",
                                     option=unknown[0], value=table[unknown[0]])
        if not isinstance(table.get("model"), str) or not table["model"]:
            raise InvalidOptionError(f"{where}: model {name!r} has no `model` (a catalog name, hub id or folder)",
                                     f'add model = "..." to [models.{name}]', option="model")
        types = {f.name: f.type for f in fields(ServeOptions)}
        opts: dict[str, Any] = {}
        for key in OPTION_KEYS:
            if key in table:
                value = table[key]
                opts[key] = tuple(value) if isinstance(value, list) else value
                _check_type(name, key, opts[key], str(types[key]), where)
        entry = cls(name=name, model=table["model"], options=replace(ServeOptions(port=0), **opts))
        policy = {k: table[k] for k in POLICY_KEYS if k in table}
        if "ttl" in policy and (not isinstance(policy["ttl"], (int, float)) or policy["ttl"] < 0):
            raise InvalidOptionError(f"{where}: model {name!r} has ttl {policy['ttl']!r}",
                                     "ttl is seconds, 0 or more (0: never unload)", option="ttl", value=policy["ttl"])
        for key in ("always_on", "sleep"):
            if key in policy and not isinstance(policy[key], bool):
                raise InvalidOptionError(f"{where}: model {name!r} has {key} = {policy[key]!r}",
                                         f"{key} is true or false", option=key, value=policy[key])
        return replace(entry, **policy)


def _check_type(name: str, key: str, value: Any, typ: str, where: str) -> None:
    ok = {"tuple": lambda v: isinstance(v, tuple),  # first: "tuple[int, ...]" names int too
          "bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}
    for word, check in ok.items():
        if word in typ:
            if check(value) or (value is None and "None" in typ):
                return
            raise InvalidOptionError(f"{where}: model {name!r} has {key} = {value!r}",
                                     f"{key} takes a {word.replace('tuple', 'list')}", option=key, value=value)


def catalogue_file(settings: Settings) -> Path:
    """Where the catalogue lives: ``<home>/router.toml``."""
    return settings.home / "router.toml"


def load(settings: Settings, path: Path | None = None) -> list[Entry]:
    """The catalogue's entries in file order (none when there is no file)."""
    path = path or catalogue_file(settings)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return []
    except tomllib.TOMLDecodeError as exc:
        raise InvalidOptionError(f"{path} is not valid TOML: {exc}", "fix the file, or remove it and use "
                                 "`dsagent models add`", option="router.toml") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise InvalidOptionError(f"{path}: `models` must be a table of [models.NAME] tables",
                                 "see `dsagent models add --help`", option="models")
    return [Entry.from_table(name, table, str(path)) for name, table in models.items()]


def _toml_value(value: Any) -> str:
    """A TOML literal (the values an entry holds: strings, numbers, booleans, lists of those).

    >>> _toml_value(["a\\"b", 1, True])
    '["a\\\\"b", 1, true]'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _dump(entries: list[Entry]) -> str:
    lines = ["# dsagent router catalogue: `dsagent models add/remove` edit it; `dsagent router` serves it", ""]
    for e in entries:
        lines.append(f'[models."{e.name}"]')
        lines += [f"{k} = {_toml_value(v)}" for k, v in e.to_table().items()]
        lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def _edit(settings: Settings) -> Iterator[list[Entry]]:
    """Yield the entries to change in place, under the catalogue's lock; then write them."""
    path = catalogue_file(settings)
    with locked(path.with_suffix(".lock")):
        entries = load(settings, path)
        yield entries
        write_private(path, _dump(entries))


def add(settings: Settings, entry: Entry, *, replace_existing: bool = False) -> list[Entry]:
    """Add ``entry`` (or replace the one of its name with ``replace_existing``); the new catalogue."""
    Entry.from_table(entry.name, entry.to_table())  # what is written is what will be read
    with _edit(settings) as entries:
        names = [e.name for e in entries]
        if entry.name in names:
            if not replace_existing:
                raise InvalidOptionError(f"the catalogue already has a model named {entry.name!r}",
                                         f"choose another name, or `dsagent models remove {entry.name}` first "
                                         "(or pass --replace)", option="name", value=entry.name)
            entries[names.index(entry.name)] = entry
        else:
            entries.append(entry)
        return list(entries)


def remove(settings: Settings, name: str) -> list[Entry]:
    """Remove model ``name`` from the catalogue; the new catalogue."""
    with _edit(settings) as entries:
        kept = [e for e in entries if e.name != name]
        if len(kept) == len(entries):
            raise InvalidOptionError(f"the catalogue has no model named {name!r}",
                                     f"it has: {', '.join(e.name for e in entries) or 'nothing yet'}",
                                     option="name", value=name)
        entries[:] = kept
        return list(entries)
