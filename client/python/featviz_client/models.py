"""What the server says of its models' memory: `Client.models()` returns one
`ModelStatus` per served model version, with where each device's copy is.

A server with `--model_memory_bytes` keeps only some models in memory: the
others are "unloaded" (served, and loaded again on their next use, which may
unload the least recently used idle model). `print(fv.models_table())` shows
them as `featviz models` does.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Optional

_STATES = {0: "unspecified", 1: "unloaded", 2: "loading", 3: "loaded", 4: "failed"}


def state_name(state: int) -> str:
    """"loaded", "unloaded", "loading" or "failed" for a featviz.v1.ModelState."""
    return _STATES.get(int(state), f"unknown({int(state)})")


def _time(stamp, present: bool) -> Optional[datetime.datetime]:
    if not present:
        return None
    return datetime.datetime.fromtimestamp(
        stamp.seconds + stamp.nanos / 1e9, tz=datetime.timezone.utc)


@dataclass(frozen=True)
class ModelCopy:
    """One device's copy of a model version."""

    device: str
    state: str
    """"loaded", "unloaded", "loading" or "failed"."""
    bytes: int
    """What it takes in memory (its file's size until first loaded)."""
    users: int
    """Jobs and analyses holding it now; a copy in use is never unloaded."""
    last_used: Optional[datetime.datetime]
    """When it was last taken or let go (UTC); None when never used."""
    error: str = ""
    """Why its last load failed, when state is "failed"."""


@dataclass(frozen=True)
class ModelStatus:
    """A served model version and whether it is in memory."""

    name: str
    version: str
    state: str
    """The first device's copy: "loaded", "unloaded", "loading" or "failed"."""
    memory_bytes: int
    """Bytes of its parameters and buffers per device copy: what a loaded
    copy counts against the server's --model_memory_bytes."""
    last_used: Optional[datetime.datetime]
    """When any device's copy was last used (UTC); None when never."""
    activation_bytes: int = 0
    """Bytes of every layer's output for one image (not counted)."""
    copies: list[ModelCopy] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """"name@version", as renders name it."""
        return f"{self.name}@{self.version}"


def model_status(m) -> ModelStatus:
    """A featviz.v1.Model as a ModelStatus."""
    copies = [ModelCopy(c.device, state_name(c.state), c.bytes, c.users,
                        _time(c.last_used_time, c.HasField("last_used_time")), c.error)
              for c in m.copies]
    return ModelStatus(m.name, m.version, state_name(m.state), m.memory_bytes,
                       _time(m.last_used_time, m.HasField("last_used_time")),
                       m.activation_bytes, copies)


def ago(when: Optional[datetime.datetime],
        now: Optional[datetime.datetime] = None) -> str:
    """"12s", "4m", "3h", "2d" since `when`; "never" for None."""
    if when is None:
        return "never"
    now = now or datetime.datetime.now(tz=datetime.timezone.utc)
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(models: list[ModelStatus]) -> str:
    """One line per model version: name, version, state (per device when the
    server has several), bytes and last use, aligned."""
    rows = [("NAME", "VERSION", "STATE", "BYTES", "LAST USED")]
    for m in models:
        state = m.state if len(m.copies) <= 1 else ",".join(
            f"{c.device}:{c.state}" for c in m.copies)
        rows.append((m.name, m.version, state, str(m.memory_bytes), ago(m.last_used)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows) + "\n"
