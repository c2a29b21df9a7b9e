"""The journal steps of an acquisition, one copy for :class:`Fixture` and ``reclaim acquire``.

1. :func:`journal_plan`: the name and the planned record are journaled *before* the backend
   creates anything (I1). A crash from here on leaves a planned entry that the run's end, the
   watchdog or the sweeper releases (a no-op when nothing was made).
2. The backend creates the resource; the caller journals ``acquired`` with its full record.
3. :func:`acquire_failed` when the backend failed: the error the user sees is the creation's
   (an :class:`AcquireError` naming the resource and the cause), never the clean-up's. A backend
   that raised :class:`NotCreatedError` proved nothing was made: the planned entry is closed as
   never created. Otherwise what it may have made is released from the planned record; if that
   fails too, the entry stays failed for the sweeper (I1, I5), the error says it may never have
   existed and which command clears such entries, and the release's failure is attached.
"""

from __future__ import annotations

from typing import Any

from reclaim._errors import AcquireError, NotCreatedError, ReclaimError, RegistryError
from reclaim._reaper import (
    NEVER_ACQUIRED_HINT,
    RetryPolicy,
    add_redacted_cause,
    release_resource,
)
from reclaim._registry import Registry, ResourceState
from reclaim.backends import Backend, Record, redact_text, secret_record

__all__ = ["NEVER_ACQUIRED_HINT", "acquire_failed", "journal_plan", "unjournaled"]


def journal_plan(
    registry: Registry,
    run_id: str,
    fixture: str,
    backend: Backend[Any],
    name: str,
    *,
    defer: bool = False,
) -> tuple[int, Record]:
    """Journal the planned record of ``name`` (I1); return its entry id and the record.
    ``defer`` only for the owner of the live run (see :meth:`Registry.plan`).

    Raises:
        NotCreatedError: the registry could not journal it (see :func:`unjournaled`).
    """
    record = secret_record(backend, backend.plan(name))  # its repr hides credentials (I7)
    try:
        return registry.plan(run_id, fixture, backend.kind, name, record, defer=defer), record
    except RegistryError as exc:
        raise unjournaled(backend.kind, name, exc) from None


def unjournaled(kind: str, name: str | None, exc: RegistryError) -> NotCreatedError:
    """The error of an acquisition the registry could not journal (or open a run for): nothing
    was created, since a backend creates nothing that is not journaled first (I1)."""
    shown = name or "(no name drawn yet)"
    return NotCreatedError(
        f"{kind} {shown}: not created, because the registry cannot journal it: {exc}."
        " Nothing was created; fix the registry (RECLAIM_REGISTRY) and try again",
        kind=kind,
        resource=shown,
    )


def acquire_failed(
    registry: Registry,
    resource_id: int,
    backend: Backend[Any],
    record: Record,
    exc: Exception,
    *,
    run_id: str,
    actor: str,
    policy: RetryPolicy | None = None,
) -> AcquireError:
    """Settle the planned entry of a failed acquisition; return the error to raise."""
    kind = backend.kind
    name = str(record.get("name", "?"))
    if isinstance(exc, ReclaimError):  # says what it is already, often naming the resource
        reason = str(exc).removeprefix(f"{kind} {name!r}: ")
    else:
        reason = f"{type(exc).__name__}: {exc}"
    reason = redact_text(reason, record, backend.secret_fields)
    note = None
    if isinstance(exc, NotCreatedError):
        registry.close_planned(resource_id, reason, actor=actor)
        message = (
            f"{kind} {name!r} could not be created: {reason}; nothing was created, and its"
            " planned entry is closed"
        )
    else:
        outcome = release_resource(
            registry,
            resource_id,
            actor=actor,
            states=(ResourceState.PLANNED,),
            policy=policy,
            backend=type(backend),
        )
        message = f"{kind} {name!r} could not be created: {reason}"
        if outcome.error is None:
            message += "; nothing of it is held"
        else:
            message += (
                f". What it may have left could not be released either, so entry {resource_id}"
                f" stays failed and the next `reclaim sweep` retries it; {NEVER_ACQUIRED_HINT}"
            )
            note = f"reclaim: the release of what it may have left failed too: {outcome.error}"
    error = AcquireError(message, kind=kind, resource=name, run_id=run_id, resource_id=resource_id)
    if note is not None:
        error.add_note(note)
    add_redacted_cause(error, exc, record, backend.secret_fields)
    return error
