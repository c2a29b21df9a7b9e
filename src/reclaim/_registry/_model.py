"""What the registry stores: runs, resources and events, and their lifecycles."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from reclaim._identity import Identity

__all__ = ["EventRecord", "ResourceRecord", "ResourceState", "RunRecord", "RunState"]


class RunState(enum.StrEnum):
    """Where a run is in its life."""

    #: The owner opened it and, as far as the registry knows, still works in it.
    OPEN = "open"
    #: The owner ended cleanly; anything still listed under it failed to release.
    CLOSED = "closed"
    #: A reaper (watchdog, sweeper) claimed it and is releasing what it left (I6).
    REAPING = "reaping"
    #: A reaper finished; anything still listed under it failed and waits for the next sweep.
    REAPED = "reaped"


class ResourceState(enum.StrEnum):
    """Where a resource is in its life. A released resource's row is deleted; its history stays
    in the event log."""

    #: The name is journaled; the backend may or may not have created it yet (I1).
    PLANNED = "planned"
    #: The backend created it and its full record is journaled.
    ACQUIRED = "acquired"
    #: Somebody claimed it for release and is deleting it now.
    RELEASING = "releasing"
    #: Release failed after its retries; ``last_error`` says why; the next sweep retries (I5).
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceRecord:
    """One resource as the registry holds it.

    Its ``repr`` leaves the record out: records may hold credentials (I7), and only backends
    know which fields are secret.
    """

    id: int
    run_id: str
    fixture: str
    kind: str
    name: str
    record: dict[str, Any] = dataclasses.field(repr=False)
    state: ResourceState
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    #: When it was journaled as acquired; None: never, so it may never have existed (an
    #: acquire that failed, a crash between the create and the journal).
    acquired_at: float | None = None
    #: Set when the row could not be read whole (its record is not valid JSON, its state is
    #: unknown): what is wrong. ``record`` is then empty and ``state`` reads as ``failed``, so
    #: every command shows it by its id; nothing is ever released from it, and ``reclaim
    #: forget ID`` removes it.
    damaged: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RunRecord:
    """One run: a process (or a command under ``reclaim run``) that owns resources."""

    id: str
    parent_id: str | None
    label: str
    owner: Identity
    state: RunState
    started_at: float
    heartbeat_at: float
    lease_seconds: float
    closed_at: float | None
    claimed_by: str | None
    claimed_at: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class EventRecord:
    """One line of the append-only event log."""

    id: int
    at: float
    event: str
    run_id: str | None
    resource_id: int | None
    kind: str | None
    name: str | None
    detail: dict[str, Any]


#: An event as the log stores it: ``(id, at, event, run_id, resource_id, kind, name, detail as
#: JSON text)`` (:meth:`Registry.event_rows`).
EventRow = tuple[int, float, str, str | None, int | None, str | None, str | None, str]

#: A resource's life in the log, as :meth:`Registry.resource_histories` gives it:
#: ``(resource_id, run_id, kind, name, acquired 0/1, outcome event or None, its detail as JSON
#: text or None)``.
HistoryRow = tuple[int, str, str, str, int, str | None, str | None]
