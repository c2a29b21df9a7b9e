"""The registry: the durable journal of runs, resources and events.

SQLite (WAL) is the embedded default; a PostgreSQL registry (``postgresql://...?schema=NAME``)
shares one journal between many machines through the same :class:`Registry` interface. Nothing
here knows of backends, fixtures or the reaper.
"""

from __future__ import annotations

from reclaim import _settings as settings
from reclaim._registry._base import Registry
from reclaim._registry._model import (
    EventRecord,
    ResourceRecord,
    ResourceState,
    RunRecord,
    RunState,
)
from reclaim._settings import default_location

__all__ = [
    "EventRecord",
    "Registry",
    "ResourceRecord",
    "ResourceState",
    "RunRecord",
    "RunState",
    "default_location",
    "open_registry",
    "shown_location",
]

ENV_VAR = settings.REGISTRY.name


def shown_location(location: str) -> str:
    """A registry's location as the user gave it, fit to show: a URL's password masked."""
    from reclaim.backends import redact_url  # noqa: PLC0415  (only where a location is shown)

    return redact_url(location) if "://" in location else location


def open_registry(location: str | None = None, *, create: bool = True) -> Registry:
    """Open the registry at ``location``, by default :func:`default_location`: a file path, or a
    ``postgresql://`` (``postgres://``) URL whose optional ``schema=NAME`` query parameter names
    the schema that holds its tables (default ``reclaim``).

    With ``create=False`` a registry that does not exist yet raises FileNotFoundError instead of
    being created (read-only commands use this to cost nothing).
    """
    location = location or default_location()
    if location.startswith(("postgres://", "postgresql://")):
        # psycopg loads only when a PostgreSQL registry is opened.
        from reclaim._registry._postgres import (  # noqa: PLC0415
            PostgresRegistry,
            with_configured_password,
        )

        # A registry's shown location never carries its password: the configured URL of the
        # same registry lends it.
        location = with_configured_password(location, settings.REGISTRY.get())
        return PostgresRegistry(location, create=create)
    from reclaim._registry._sqlite import SQLiteRegistry  # noqa: PLC0415  (sqlite3 loads only when a registry is opened)

    return SQLiteRegistry(location, create=create)
