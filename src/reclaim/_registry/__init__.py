"""The registry: the durable journal of runs, resources and events.

SQLite (WAL) is the embedded default; a PostgreSQL registry to share one journal between many
machines can implement the same :class:`Registry` interface. Nothing here knows of backends,
fixtures or the reaper.
"""

from __future__ import annotations

import os
from pathlib import Path

from reclaim import _settings as settings
from reclaim._registry._base import Registry
from reclaim._registry._model import (
    EventRecord,
    ResourceRecord,
    ResourceState,
    RunRecord,
    RunState,
)

__all__ = [
    "EventRecord",
    "Registry",
    "ResourceRecord",
    "ResourceState",
    "RunRecord",
    "RunState",
    "default_location",
    "open_registry",
]

ENV_VAR = settings.REGISTRY.name


def default_location() -> str:
    """``$RECLAIM_REGISTRY``, else ``$XDG_STATE_HOME/reclaim/registry.sqlite3`` (by default under
    ``~/.local/state``)."""
    configured = settings.REGISTRY.get()
    if configured:
        return configured
    state_home = os.environ.get("XDG_STATE_HOME", "").strip()
    base = Path(state_home) if state_home else Path.home() / ".local" / "state"
    return str(base / "reclaim" / "registry.sqlite3")


def open_registry(location: str | None = None, *, create: bool = True) -> Registry:
    """Open the registry at ``location`` (a file path), by default :func:`default_location`.

    With ``create=False`` a registry that does not exist yet raises FileNotFoundError instead of
    being created (read-only commands use this to cost nothing).
    """
    location = location or default_location()
    if location.startswith(("postgres://", "postgresql://")):
        raise NotImplementedError(
            "a PostgreSQL registry is not available in this version of reclaim;"
            " set RECLAIM_REGISTRY to a file path"
        )
    from reclaim._registry._sqlite import SQLiteRegistry  # noqa: PLC0415  (sqlite3 loads only when a registry is opened)

    return SQLiteRegistry(location, create=create)
