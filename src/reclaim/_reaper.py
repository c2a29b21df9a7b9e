"""Releasing what the registry holds: one resource, or everything of one run.

The same code serves every layer of the crash model: a Fixture's exit (layer 1), the watchdog
(layer 3) and the sweeper (layer 4, in ``_sweep.py`` and ``_leftovers.py``). It needs only the
registry and the backends' class-level ``release(record)`` (I2): no live object, no test code.

Three rules live here:

- I4, never a live run: a run is swept only when its owner is dead, told by host + boot id +
  pid namespace + pid + start time, or, for an owner this process cannot check, an expired lease.
- I5, nothing is forgotten silently: a release that fails is retried with back-off, then kept as
  ``failed`` with its (redacted) error. A kind whose backend cannot be imported is kept too.
- I6, one reaper at a time: a run is claimed with a compare-and-set before anything of it is
  released; a claim whose holder died can be taken over.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from reclaim._errors import BackendNotFoundError, ForeignNameError, ReleaseError
from reclaim._identity import Identity, current_identity
from reclaim._registry import Registry, ResourceRecord, ResourceState, RunRecord, RunState
from reclaim._signals import critical
from reclaim.backends import (
    Backend,
    Record,
    load_backend,
    redact_text,
    release_batch,
    secret_record,
)

__all__ = [
    "ReleaseOutcome",
    "RetryPolicy",
    "claim_for_reaping",
    "is_alive",
    "reap_run",
    "release_held",
    "release_resource",
]

#: Every state a reaper that holds the run's claim may release from.
ALL_STATES: Final = (
    ResourceState.PLANNED,
    ResourceState.ACQUIRED,
    ResourceState.RELEASING,
    ResourceState.FAILED,
)

#: A claim held this long by a holder we cannot check is considered abandoned.
CLAIM_STALE_AFTER: Final = 600.0


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off for releases (I5).

    ``attempts`` tries in all; the waits between them are ``first_delay``, then multiplied by
    ``factor`` each time, never above ``max_delay``.
    """

    attempts: int = 3
    first_delay: float = 0.2
    factor: float = 4.0
    max_delay: float = 5.0

    def delays(self) -> Iterator[float]:
        """The wait before each attempt: 0 first, then the back-off."""
        delay = self.first_delay
        for n in range(self.attempts):
            yield 0.0 if n == 0 else min(delay, self.max_delay)
            if n:
                delay *= self.factor


class ReleaseOutcome:
    """What happened to one resource (``resource`` is None when it was skipped: somebody else
    holds it, or it is gone)."""

    # A plain class: a dataclass costs about 0.4 ms to define, on the path of every process
    # that acquires (issue 15).
    __slots__ = ("error", "released", "resource", "skipped")

    def __init__(
        self,
        resource: ResourceRecord | None,
        *,
        released: bool,
        error: BaseException | None = None,
        skipped: bool = False,  # somebody else holds it
    ) -> None:
        self.resource = resource
        self.released = released
        self.error = error
        self.skipped = skipped

    def __repr__(self) -> str:  # the resource's repr leaves its record out (I7)
        what = "skipped" if self.skipped else "released" if self.released else "failed"
        return f"<ReleaseOutcome {what} {self.resource!r} error={self.error!r}>"


def release_resource(
    registry: Registry,
    resource: ResourceRecord | int,
    *,
    actor: str,
    states: tuple[ResourceState, ...],
    policy: RetryPolicy | None = None,
    backend: type[Backend[Any]] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReleaseOutcome:
    """Release one resource: claim it, call its backend with retries, journal the outcome.
    (A Fixture releasing what it holds goes without the claim: :func:`release_held`.)

    Args:
        actor: who releases ("fixture", "exit", "watchdog", "sweeper"), for the event log.
        states: the states it may be taken from; a resource in another state is left alone.
        backend: the class, when the caller has it; otherwise found by kind (entry points).

    Returns the outcome; the error in it is a :class:`ReleaseError` (or the
    :class:`BackendNotFoundError`), already journaled as ``failed``.

    From the claim to the journaled outcome this is a critical section (I9): a signal that
    arrives meanwhile is raised once the outcome is journaled, so a release is never left
    ``releasing`` by Ctrl-C or SIGTERM, and the resource is never left behind half-deleted.
    """
    with critical():
        return _release_resource(
            registry, resource, actor=actor, states=states, policy=policy, backend=backend,
            sleep=sleep,
        )  # fmt: skip


def _release_resource(
    registry: Registry,
    resource: ResourceRecord | int,
    *,
    actor: str,
    states: tuple[ResourceState, ...],
    policy: RetryPolicy | None,
    backend: type[Backend[Any]] | None,
    sleep: Callable[[float], None],
) -> ReleaseOutcome:
    policy = policy or RetryPolicy()
    resource_id = resource if isinstance(resource, int) else resource.id
    claimed = registry.begin_release(resource_id, states=states)
    if claimed is None:
        return ReleaseOutcome(None, released=False, skipped=True)
    if claimed.damaged is not None:
        # Nobody knows what a damaged row names (I8): kept, reported by id, never released.
        assert claimed.last_error is not None
        registry.mark_failed(claimed.id, claimed.last_error, attempts=1, actor=actor)
        return ReleaseOutcome(claimed, released=False, error=_damaged_error(claimed))
    if backend is None:
        try:
            backend = load_backend(claimed.kind)
        except BackendNotFoundError as exc:
            # Kept and reported, never dropped (I5): a later sweep with the package installed
            # releases it, or the user forgets it explicitly.
            registry.mark_failed(claimed.id, str(exc), attempts=1, actor=actor)
            return ReleaseOutcome(claimed, released=False, error=exc)
    record = secret_record(backend, claimed.record)
    last, attempts = _attempt(
        registry, claimed.id, record, backend, actor=actor, policy=policy, sleep=sleep, defer=False
    )
    if last is None:
        return ReleaseOutcome(claimed, released=True)
    error = _failed(registry, claimed, last, attempts, backend, actor=actor)
    return ReleaseOutcome(claimed, released=False, error=error)


def release_held(
    registry: Registry,
    resource_id: int,
    record: Record,
    backend: type[Backend[Any]],
    *,
    entry: Callable[[], ResourceRecord],
    actor: str,
    policy: RetryPolicy,
    defer: bool,
) -> BaseException | None:
    """The owner's release of an entry of its live run that it holds (a Fixture's): the
    attempts and outcomes of :func:`release_resource`, without the claim's transaction.
    Nobody else releases a live run's entries (I4), and a reaper that judged the run dead
    takes over a ``releasing`` entry all the same, so the claim would not keep the two apart;
    a double release is a no-op (I3). The entry's :class:`ResourceRecord` is built only for
    an error (``entry`` makes it). ``record`` is the held record, a :class:`SecretRecord` of
    ``backend``.

    With ``defer`` a success may be journaled with the owner's next write (see
    :meth:`Registry.mark_released`); a crash meanwhile leaves an entry that a reaper releases
    again, a no-op. Returns None when it is released, else the error, already journaled as
    ``failed``. One critical section (I9), as there."""
    with critical():
        last, attempts = _attempt(
            registry, resource_id, record, backend, actor=actor, policy=policy,
            sleep=time.sleep, defer=defer,
        )  # fmt: skip
        if last is None:
            return None
        return _failed(registry, entry(), last, attempts, backend, actor=actor)


def _attempt(
    registry: Registry,
    resource_id: int,
    record: Record,
    backend: type[Backend[Any]],
    *,
    actor: str,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    defer: bool,
) -> tuple[Exception | None, int]:
    """Call the backend's release with the policy's retries and journal a success: (None, the
    attempts) once released, else (the last error, the attempts), not journaled yet."""
    last: Exception | None = None
    attempts = 0
    try:
        for delay in policy.delays():
            if delay:
                sleep(delay)
            attempts += 1
            try:
                backend.release(record)
            except ForeignNameError as exc:
                # Not ours (I8): no retry can make it ours. Kept as failed, with the reason.
                return exc, attempts
            except Exception as exc:
                last = exc
                continue
            registry.mark_released(resource_id, actor=actor, defer=defer)
            return None, attempts
    except BaseException:
        # Interrupted by something other than a signal (signals wait for the section's end):
        # a backend that raised KeyboardInterrupt or SystemExit. Keep the entry for the next
        # reaper.
        registry.mark_failed(
            resource_id, "interrupted while releasing", attempts=attempts, actor=actor
        )
        raise
    assert last is not None
    return last, attempts


def _failed(
    registry: Registry,
    claimed: ResourceRecord,
    last: Exception,
    attempts: int,
    backend: type[Backend[Any]],
    *,
    actor: str,
) -> BaseException:
    """Journal a release that failed after its attempts as ``failed`` (I5); its error."""
    reason = redact_text(f"{type(last).__name__}: {last}", claimed.record, backend.secret_fields)
    registry.mark_failed(claimed.id, reason, attempts=attempts, actor=actor)
    error = (
        _refusal(claimed, last)
        if isinstance(last, ForeignNameError)
        else _release_error(claimed, reason, attempts)
    )
    add_redacted_cause(error, last, claimed.record, backend.secret_fields)
    return error


def add_redacted_cause(
    error: BaseException, cause: BaseException, record: Record, secret_fields: Iterable[str]
) -> None:
    """Attach ``cause``'s traceback to ``error`` as a note, with the record's secrets redacted.

    Not as ``__cause__``: a driver's exception often quotes a DSN or a token, and pytest, logging
    and the interpreter all print the cause chain verbatim (I7).
    """
    text = "".join(traceback.format_exception(cause)).rstrip()
    error.add_note("caused by:\n" + redact_text(text, record, secret_fields))


def _damaged_error(resource: ResourceRecord) -> ReleaseError:
    return ReleaseError(
        f"entry {resource.id} ({resource.kind} {resource.name!r}) was not released:"
        f" {resource.last_error}",
        kind=resource.kind,
        resource=resource.name,
        run_id=resource.run_id,
        resource_id=resource.id,
    )


def _refusal(resource: ResourceRecord, refused: ForeignNameError) -> ForeignNameError:
    error = ForeignNameError(
        f"entry {resource.id} ({resource.kind} {resource.name!r}) was not released: {refused}."
        " It stays failed and is never retried; if the record was damaged or written by hand,"
        f" remove it with `reclaim forget {resource.id}`",
        kind=resource.kind,
        resource=resource.name,
        field=refused.field,
        value=refused.value,
        run_id=resource.run_id,
    )
    error.resource_id = resource.id
    return error


#: What clears entries that may never have existed, said wherever one is reported.
NEVER_ACQUIRED_HINT: Final = (
    "it was never journaled as acquired, so it may never have existed: once you know it does"
    " not, `reclaim forget --never-acquired --yes` clears every such entry"
)


def _release_error(resource: ResourceRecord, reason: str, attempts: int) -> ReleaseError:
    message = (
        f"{resource.kind} {resource.name!r} could not be released after {attempts} attempt"
        f"{'s' if attempts != 1 else ''}: {reason}; it stays in state failed and the next"
        " `reclaim sweep` retries it"
    )
    if resource.acquired_at is None:
        message += f" ({NEVER_ACQUIRED_HINT})"
    return ReleaseError(
        message,
        kind=resource.kind,
        resource=resource.name,
        run_id=resource.run_id,
        resource_id=resource.id,
    )


# --- liveness and claims -------------------------------------------------------------------


def is_alive(run: RunRecord, *, now: float | None = None) -> bool:
    """Is the run's owner alive (I4)? Checked by pid and start time where this process can,
    else by the run's lease."""
    verdict = run.owner.local_verdict()
    if verdict is not None:
        return verdict
    now = time.time() if now is None else now
    return now - run.heartbeat_at < run.lease_seconds


def claim_for_reaping(
    registry: Registry, run: RunRecord, claimer: Identity | None = None
) -> str | None:
    """Become the run's only reaper (I6). Returns the claim token, or None when somebody alive
    holds it already (or the run changed under us)."""
    if (
        run.state == RunState.REAPING
        and run.claimed_by is not None
        and not _claim_abandoned(run, registry.now())
    ):
        return None
    me = claimer or current_identity()
    token = json.dumps(me.to_json(), sort_keys=True)
    # A run judged dead by its lease is claimed only if the lease is still the one seen
    # expired: an owner on another host that renewed meanwhile is alive.
    by_lease = run.owner.local_verdict() is None
    won = registry.claim_run(
        run.id,
        token,
        expect_state=run.state,
        expect_claimer=run.claimed_by,
        expect_heartbeat=run.heartbeat_at if by_lease else None,
    )
    return token if won else None


def _claim_abandoned(run: RunRecord, now: float) -> bool:
    assert run.claimed_by is not None
    try:
        holder = Identity.from_json(json.loads(run.claimed_by))
    except (ValueError, KeyError, TypeError):
        return True
    verdict = holder.local_verdict()
    if verdict is not None:
        return not verdict
    return now - (run.claimed_at or 0.0) > CLAIM_STALE_AFTER  # the registry's clock


def reap_run(
    registry: Registry,
    run: RunRecord,
    *,
    actor: str,
    policy: RetryPolicy | None = None,
    claimer: Identity | None = None,
    on_outcome: Callable[[ReleaseOutcome], None] | None = None,
) -> list[ReleaseOutcome] | None:
    """Claim a dead run and release everything it holds, last in first out: first what is
    healthy, then what already failed to release (so that a server that is away, with its
    retries and back-off, does not hold up the releases that can succeed now).

    Returns the outcomes, or None when another reaper holds the run. ``on_outcome`` is told
    each outcome as soon as it is journaled.
    """
    token = claim_for_reaping(registry, run, claimer)
    if token is None:
        return None
    outcomes: list[ReleaseOutcome] = []

    def tell(outcome: ReleaseOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    held = list(reversed(registry.resources(run.id)))
    healthy = [r for r in held if r.state != ResourceState.FAILED]
    failed = [r for r in held if r.state == ResourceState.FAILED]
    try:
        # What is healthy goes in batches where its kind takes them (still last in first out:
        # a batch is a stretch of one kind in that order); what failed before, one at a time.
        for backend, batch in [*_batches(healthy), *((None, [r]) for r in failed)]:
            if backend is None or len(batch) == 1:
                tell(release_resource(registry, batch[0], actor=actor, states=ALL_STATES,
                                      policy=policy, backend=backend))  # fmt: skip
            else:
                release_batch_of(registry, backend, batch, actor=actor, policy=policy, tell=tell)
    finally:
        registry.finish_reap(run.id, token, actor=actor)
    return outcomes


def _batches(
    resources: list[ResourceRecord],
) -> Iterator[tuple[type[Backend[Any]] | None, list[ResourceRecord]]]:
    """``resources`` in order, cut into stretches of one kind of at most its ``batch_size``
    (a kind that cannot be loaded: one at a time, for release_resource to report it)."""
    i = 0
    while i < len(resources):
        kind = resources[i].kind
        try:
            backend: type[Backend[Any]] | None = load_backend(kind)
        except BackendNotFoundError:
            backend = None
        size = max(1, backend.batch_size) if backend is not None else 1
        end = i + 1
        while end < len(resources) and end - i < size and resources[end].kind == kind:
            end += 1
        yield backend, resources[i:end]
        i = end


def release_batch_of(
    registry: Registry,
    backend: type[Backend[Any]],
    resources: list[ResourceRecord],
    *,
    actor: str,
    policy: RetryPolicy | None,
    tell: Callable[[ReleaseOutcome], None],
) -> None:
    """Release entries of one kind of a claimed run in one go: their claims in one registry
    transaction, one ``release_many``, the outcomes of those released in one transaction (an
    event each, I5). What the batch did not release goes through :func:`release_resource`
    one by one (its retries, then ``failed`` with the reason): a batch only ever succeeds
    faster. One critical section (I9), as a single release is."""
    with critical():
        claimed = registry.begin_release_many([r.id for r in resources], states=ALL_STATES)
        mine = {r.id for r in claimed}
        sound = [r for r in claimed if r.damaged is None]
        try:
            results = release_batch(backend, [secret_record(backend, r.record) for r in sound])
        except BaseException:
            for r in sound:  # interrupted: kept for the next reaper
                registry.mark_failed(r.id, "interrupted while releasing", attempts=1, actor=actor)
            raise
        released = [r for r, result in zip(sound, results, strict=True) if result is None]
        registry.mark_released_many([r.id for r in released], actor=actor)
    done = {r.id for r in released}
    for resource in resources:
        if resource.id not in mine:
            tell(ReleaseOutcome(None, released=False, skipped=True))
    for resource in claimed:
        if resource.id in done:
            tell(ReleaseOutcome(resource, released=True))
        else:  # damaged, refused or failed in the batch: on its own, as any release
            tell(release_resource(registry, resource, actor=actor, states=ALL_STATES,
                                  policy=policy, backend=backend))  # fmt: skip
