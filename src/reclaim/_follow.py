"""Following the registry's event log as it is written (``reclaim watch``).

The log is append-only with increasing ids, so following it is reading ``events(after_id=...)``
with the last id seen, each time the registry says there is more: SQLite is polled, PostgreSQL
wakes the follower through LISTEN/NOTIFY. Events carry names and redacted errors, never a
resource's record (I7): what is printed here is safe to show.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from rich.text import Text

from reclaim._registry import EventRecord, Registry, open_registry

__all__ = ["event_json", "event_text", "follow"]

#: How often the log is read again when nothing new was there (seconds).
POLL_INTERVAL: Final = 0.075
#: With a registry that notifies (PostgreSQL's LISTEN), the longest wait between two reads.
NOTIFIED_WAIT: Final = 5.0

_PAGE: Final = 500

_EVENT_STYLE: Final = {
    "run.opened": "bold",
    "run.closed": "bold",
    "run.claimed": "yellow",
    "run.reaped": "yellow",
    "resource.planned": "dim",
    "resource.acquired": "green",
    "resource.released": "cyan",
    "resource.failed": "bold red",
    "resource.forgotten": "magenta",
}


def follow(
    location: str,
    *,
    from_start: bool = False,
    poll_interval: float = POLL_INTERVAL,
    on_waiting: Callable[[], None] | None = None,
    on_ready: Callable[[Registry], None] | None = None,
) -> Iterator[EventRecord]:
    """Yield the events of the registry at ``location`` as they are written, forever.

    By default only events written after the call; with ``from_start`` the existing ones first.
    A registry that does not exist yet is waited for (``on_waiting`` is called once); when it
    appears every event in it is new, so all of them are yielded. ``on_ready`` is called once the
    starting point is fixed: from then on nothing written is missed.
    """
    registry: Registry | None = None
    waited = False
    while registry is None:
        try:
            registry = open_registry(location, create=False)
        except FileNotFoundError:
            if not waited and on_waiting is not None:
                on_waiting()
            waited = True
            time.sleep(poll_interval)
    try:
        after = 0 if from_start or waited else registry.last_event_id()
        if on_ready is not None:
            on_ready(registry)
        while True:
            page = registry.events(after_id=after, limit=_PAGE)
            for event in page:
                after = event.id
                yield event
            if len(page) < _PAGE:
                # A registry that notifies wakes this at once; the timeout is a backstop.
                registry.wait_for_events(NOTIFIED_WAIT if registry.notifies else poll_interval)
    finally:
        registry.close()


def event_json(event: EventRecord) -> dict[str, Any]:
    """The event as ``reclaim watch --json`` prints it."""
    return {
        "id": event.id,
        "at": event.at,
        "event": event.event,
        "run_id": event.run_id,
        "resource_id": event.resource_id,
        "kind": event.kind,
        "name": event.name,
        "detail": event.detail,
    }


def event_text(event: EventRecord) -> Text:
    """One line for people: time, event, run, resource (id, kind, name), detail."""
    at = datetime.datetime.fromtimestamp(event.at).strftime("%H:%M:%S.%f")[:-3]
    line = Text(f"{at}  ", style="dim")
    line.append(f"{event.event:<18}", style=_EVENT_STYLE.get(event.event, ""))
    line.append(f"  {event.run_id or '-':<8}")
    if event.resource_id is not None:
        line.append(f"  #{event.resource_id:<4}", style="dim")
    if event.kind is not None:
        line.append(f"  {event.kind:<12}")
    if event.name is not None:
        line.append(f"  {event.name}")
    detail = describe_detail(event)
    if detail:
        style = "red" if event.event == "resource.failed" else "dim"
        line.append(f"  {detail}", style=style)
    return line


def describe_detail(event: EventRecord) -> str:
    """The event's detail in words ("by watchdog", "attempt 3: PermissionError: ...")."""
    detail = dict(event.detail)
    parts: list[str] = []
    if event.event == "run.opened":
        pid, host = detail.pop("pid", None), detail.pop("host", None)
        label = detail.pop("label", "")
        parts.append(f"pid {pid} on {host}" + (f", label {label!r}" if label else ""))
    if event.event == "run.claimed" and "by" in detail:
        parts.append(f"by {_claimer(detail.pop('by'))}")
    if "by" in detail:
        parts.append(f"by {detail.pop('by')}")
    if "left" in detail:
        left = detail.pop("left")
        parts.append("nothing left" if not left else f"{left} left (failed; see `reclaim status`)")
    if "attempts" in detail:
        n = detail.pop("attempts")
        parts.append(f"after {n} attempt{'s' if n != 1 else ''}")
    error = detail.pop("error", None)
    parts.extend(f"{key}={json.dumps(value)}" for key, value in detail.items())
    text = ", ".join(parts)
    if error is not None:
        text = f"{text}: {error}" if text else str(error)
    return text


def _claimer(token: object) -> str:
    # A claim token is the claimer's identity as JSON (see reclaim._reaper.claim_for_reaping).
    try:
        holder = json.loads(str(token))
        return f"pid {holder['pid']} on {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return str(token)
