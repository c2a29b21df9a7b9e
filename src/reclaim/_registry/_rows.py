"""What both registries read from a row and write into an event: one copy, so the SQLite and
the PostgreSQL registry cannot drift apart in what a record means."""

from __future__ import annotations

import json
from typing import Any, Final

from reclaim._identity import Identity
from reclaim._registry._model import (
    EventRecord,
    ResourceRecord,
    ResourceState,
    RunRecord,
    RunState,
)

__all__ = [
    "HISTORIES_SQL",
    "OPENINGS_SQL",
    "OUTCOME_EVENTS",
    "RESOURCE_COLUMNS",
    "RUN_COLUMNS",
    "opened_detail",
    "opened_run",
    "resource_from_row",
    "run_from_row",
]

RUN_COLUMNS: Final = (
    "id, parent_id, label, owner, state, started_at, heartbeat_at, lease_seconds, closed_at,"
    " claimed_by, claimed_at"
)
RESOURCE_COLUMNS: Final = (
    "id, run_id, fixture, kind, name, record, state, attempts, last_error, created_at,"
    " updated_at, acquired_at"
)

#: The events that end a resource's life in the log; the last of them is where it ended.
OUTCOME_EVENTS: Final = (
    "resource.released",
    "resource.failed",
    "resource.not_created",
    "resource.forgotten",
)

# The queries of a reader that needs every resource of a stretch of the log, not its events
# (the pytest summary, three events a test): the database does the per-event work. The same
# SQL for both registries, with ``{p}`` for the parameter mark. Events have no index but their
# id: the ids after ``{p}`` are a range of it, and the grouping is the database's own.

#: ``(run_id, detail as JSON text)`` of every ``run.opened`` event after an id, oldest first.
OPENINGS_SQL: Final = (
    "SELECT run_id, detail FROM events WHERE id > {p} AND event = 'run.opened' ORDER BY id"
)

#: ``(resource_id, run_id, kind, name, acquired 0/1, outcome event or NULL, its detail)``
#: of every resource planned after an id, in the order of their plans: grouped by resource
#: and run, as every event of a resource carries the run of its row.
HISTORIES_SQL: Final = (  # noqa: S608  (constants only)
    "SELECT g.resource_id, g.run_id, p.kind, p.name, g.acquired, o.event, o.detail FROM ("
    " SELECT resource_id, run_id,"
    " min(CASE WHEN event = 'resource.planned' THEN id END) AS planned,"
    " max(CASE WHEN event = 'resource.acquired' THEN 1 ELSE 0 END) AS acquired,"
    " max(CASE WHEN event IN ({outcomes}) THEN id END) AS outcome"
    " FROM events WHERE id > {{p}} AND resource_id IS NOT NULL AND run_id IS NOT NULL"
    " GROUP BY resource_id, run_id"
    ") AS g JOIN events AS p ON p.id = g.planned LEFT JOIN events AS o ON o.id = g.outcome"
    " ORDER BY g.planned"
).format(outcomes=", ".join(f"'{e}'" for e in OUTCOME_EVENTS))


def _owner(text: Any) -> Identity:
    try:
        return Identity.from_json(json.loads(text))
    except (TypeError, ValueError, KeyError):
        # A damaged owner: nobody can tell by pid whether it lives, so it is judged like a run
        # of another host, by its lease (heartbeat_at), which is a column of its own.
        return Identity(host="<damaged owner>", boot_id="", pidns="", pid=-1, start_time=-1)


def run_from_row(r: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        id=r[0],
        parent_id=r[1],
        label=str(r[2]),
        owner=_owner(r[3]),
        state=RunState(r[4]),
        started_at=r[5],
        heartbeat_at=r[6],
        lease_seconds=r[7],
        closed_at=r[8],
        claimed_by=r[9],
        claimed_at=r[10],
    )


def resource_from_row(r: tuple[Any, ...]) -> ResourceRecord:
    damaged: str | None = None
    try:
        record = json.loads(r[5])
        if not isinstance(record, dict):
            raise ValueError(f"it is a JSON {type(record).__name__}, not an object")
        state = ResourceState(r[6])
    except (TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        # One damaged row must not make the registry unusable: it is shown by its id, never
        # released from (nobody knows what it names), and `reclaim forget ID` removes it.
        damaged = f"its row in the registry is damaged ({type(exc).__name__}: {exc})"
        record, state = {}, ResourceState.FAILED
    return ResourceRecord(
        id=r[0],
        run_id=r[1],
        fixture=str(r[2]),
        kind=str(r[3]),
        name=str(r[4]),
        record=record,
        state=state,
        attempts=int(r[7] or 0),
        last_error=(
            f"{damaged}; nothing can be released from it: look at it with `reclaim status"
            f" --json`, then remove it with `reclaim forget {r[0]}`"
            if damaged
            else r[8]
        ),
        created_at=r[9],
        updated_at=r[10],
        acquired_at=r[11],
        damaged=damaged,
    )


def opened_run(
    run_id: str,
    owner: Identity,
    *,
    label: str,
    parent_id: str | None,
    lease_seconds: float,
    now: float,
) -> RunRecord:
    """The record of a run just opened at ``now``."""
    return RunRecord(
        id=run_id,
        parent_id=parent_id,
        label=label,
        owner=owner,
        state=RunState.OPEN,
        started_at=now,
        heartbeat_at=now,
        lease_seconds=lease_seconds,
        closed_at=None,
        claimed_by=None,
        claimed_at=None,
    )


def opened_detail(owner: Identity, label: str, parent_id: str | None) -> dict[str, Any]:
    """The detail of a ``run.opened`` event."""
    return {
        "pid": owner.pid,
        "host": owner.host,
        "label": label,
        **({"parent": parent_id} if parent_id else {}),
    }


def events_from_rows(rows: list[tuple[Any, ...]]) -> list[EventRecord]:
    """Rows of ``id, at, event, run_id, resource_id, kind, name, detail`` (as text) as
    events. A page of the log holds few distinct details (``{}``, who released it): each is
    decoded once per page, and every event gets a copy of its own."""
    decoded: dict[str, dict[str, Any]] = {}
    out = []
    for r in rows:
        text = r[7]
        detail = decoded.get(text)
        if detail is None:
            detail = decoded[text] = json.loads(text)
        resource_id = r[4]
        out.append(
            EventRecord(
                int(r[0]), r[1], r[2], r[3], None if resource_id is None else int(resource_id),
                r[5], r[6], dict(detail),
            )
        )  # fmt: skip
    return out
