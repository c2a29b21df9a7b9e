"""The interface every registry implements."""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from typing import Any

from reclaim._identity import Identity
from reclaim._registry._model import (
    EventRecord,
    EventRow,
    HistoryRow,
    ResourceRecord,
    ResourceState,
    RunRecord,
)
from reclaim._registry._rows import events_from_rows

__all__ = ["Registry"]


class Registry(abc.ABC):
    """A durable journal shared safely by many processes at once.

    Every method is one atomic transaction; a method that changes what exists (a run opened,
    closed, claimed or reaped; a resource planned, acquired, released, failed or forgotten) also
    appends its event in that transaction, so the event log and the tables never disagree. The
    claim of a resource for release (``begin_release``) writes no event: its outcome does.
    Writes are durable once the method returns: a process
    killed right after can rely on them (I1).
    """

    #: Where the registry lives, fit to show (no secrets).
    location: str
    #: Whether :meth:`wait_for_events` is woken by new events (LISTEN/NOTIFY), so a follower
    #: may wait long; otherwise it polls.
    notifies: bool = False

    def now(self) -> float:
        """The registry's clock (epoch seconds): leases are judged by it, so that a host whose
        clock is off cannot make a live run look dead. A shared registry reads its server's."""
        return time.time()

    def wait_for_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for new events. True: look now (this default sleeps
        and says so every time, i.e. polling); False: nothing came. A registry that can be
        notified overrides it."""
        time.sleep(timeout)
        return True

    def reopen_location(self) -> str:
        """What another process passes to ``open_registry`` to open this same registry. It
        may hold a password (a PostgreSQL URL): never show it, never put it on a command line."""
        return self.location

    # --- runs ------------------------------------------------------------------------------

    @abc.abstractmethod
    def open_run(
        self,
        run_id: str,
        owner: Identity,
        *,
        label: str,
        parent_id: str | None = None,
        lease_seconds: float = 60.0,
    ) -> RunRecord:
        """Record a new run owned by ``owner``."""

    @abc.abstractmethod
    def close_run(self, run_id: str) -> None:
        """The owner ends cleanly. The row goes when nothing is left under it."""

    @abc.abstractmethod
    def heartbeat(self, run_id: str) -> None:
        """Renew the run's lease (for owners that other machines cannot check by pid)."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    def list_runs(self) -> list[RunRecord]:
        """Every run, oldest first."""

    @abc.abstractmethod
    def claim_run(
        self,
        run_id: str,
        claimer: str,
        *,
        expect_state: str,
        expect_claimer: str | None,
        expect_heartbeat: float | None = None,
    ) -> bool:
        """Compare-and-set: make ``claimer`` the run's only reaper if the run is still in
        ``expect_state`` with ``expect_claimer`` (I6) and, when ``expect_heartbeat`` is given,
        its lease was not renewed since it was seen expired (I4 across hosts: an owner that
        renewed at the last moment is alive). True when this call won."""

    @abc.abstractmethod
    def finish_reap(self, run_id: str, claimer: str, *, actor: str) -> None:
        """The reaper is done: the row goes when nothing is left, else it waits as reaped."""

    # --- resources -------------------------------------------------------------------------

    @abc.abstractmethod
    def plan(
        self,
        run_id: str,
        fixture: str,
        kind: str,
        name: str,
        record: dict[str, Any],
        *,
        defer: bool = False,
    ) -> int:
        """Journal a resource before it is created (I1); returns its id.

        With ``defer`` (only for the owner of the live run ``run_id``) the registry may make the
        entry durable in a cheaper way than its tables, and other processes may see it only
        with this object's next write (or :meth:`flush`); every reaper of the run sees it, and
        anything this object reads includes it. A registry may write it at once."""

    @abc.abstractmethod
    def mark_acquired(
        self, resource_id: int, record: dict[str, Any], *, defer: bool = False
    ) -> None:
        """The backend created it; store its full record.

        With ``defer`` the mark may wait for this object's next write (or :meth:`flush`): only
        for a record that adds nothing to the planned one (the entry keeps the planned record),
        which every reaper releases all the same (I1), so a crash meanwhile loses nothing. A
        registry may write it at once."""

    def postpone_checkpoints(self) -> None:
        """Leave the registry's own housekeeping (SQLite's WAL checkpoints, each with two
        fsyncs) to other connections and to :meth:`close`: for the watchdog, whose releases
        after a death should wait for nothing. A no-op where there is none."""
        return

    def flush(self) -> None:
        """Write the deferred marks now (a no-op for a registry that defers none)."""
        return

    def begin_release(
        self, resource_id: int, *, states: tuple[ResourceState, ...]
    ) -> ResourceRecord | None:
        """Compare-and-set the resource from one of ``states`` to releasing. None when somebody
        else holds it (or it is gone)."""
        claimed = self.begin_release_many((resource_id,), states=states)
        return claimed[0] if claimed else None

    def mark_released(self, resource_id: int, *, actor: str, defer: bool = False) -> None:
        """Released for good: the row goes, the event stays.

        With ``defer`` the mark may wait for this object's next write (or :meth:`flush`), as a
        deferred acquired mark does: only for the owner of a live run releasing its own entry.
        A crash meanwhile leaves the entry, which the watchdog or the sweeper releases again,
        and releasing what is gone is a no-op (I3). A registry may write it at once."""
        self.mark_released_many((resource_id,), actor=actor, defer=defer)

    @abc.abstractmethod
    def begin_release_many(
        self, resource_ids: Sequence[int], *, states: tuple[ResourceState, ...]
    ) -> list[ResourceRecord]:
        """:meth:`begin_release` of each, in one transaction: the entries claimed, in the
        order given; those somebody else holds are left out."""

    @abc.abstractmethod
    def mark_released_many(
        self, resource_ids: Sequence[int], *, actor: str, defer: bool = False
    ) -> None:
        """:meth:`mark_released` of each, in one transaction; each entry's outcome is still an
        event of its own (I5)."""

    @abc.abstractmethod
    def mark_failed(self, resource_id: int, error: str, *, attempts: int, actor: str) -> None:
        """Release failed after its retries: keep it as failed with the error (I5)."""

    @abc.abstractmethod
    def resources(self, run_id: str | None = None) -> list[ResourceRecord]:
        """Resources (of one run, or all), in the order they were planned."""

    @abc.abstractmethod
    def get_resource(self, resource_id: int) -> ResourceRecord | None: ...

    @abc.abstractmethod
    def close_planned(self, resource_id: int, reason: str, *, actor: str) -> bool:
        """Drop a ``planned`` entry whose backend proved that nothing was created (the event
        log says ``resource.not_created`` and why). False when it is no longer planned."""

    @abc.abstractmethod
    def forget(self, resource_id: int, *, actor: str) -> ResourceRecord | None:
        """Drop an entry without releasing it: only ever on a user's explicit command."""

    # --- events ----------------------------------------------------------------------------

    @abc.abstractmethod
    def add_event(
        self,
        event: str,
        *,
        run_id: str | None = None,
        resource_id: int | None = None,
        kind: str | None = None,
        name: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None: ...

    @abc.abstractmethod
    def event_rows(self, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        """:meth:`events` as the log stores them: ``(id, at, event, run_id, resource_id,
        kind, name, detail as JSON text)``, for a reader of many that needs few details (the
        pytest summary)."""

    @abc.abstractmethod
    def run_openings(self, after_id: int) -> list[tuple[str | None, str]]:
        """``(run_id, detail as JSON text)`` of every ``run.opened`` event after ``after_id``,
        oldest first."""

    @abc.abstractmethod
    def resource_histories(self, after_id: int) -> list[HistoryRow]:
        """Every resource planned after the event ``after_id``, in the order of their plans:
        ``(resource_id, run_id, kind, name, acquired, outcome, detail)``. ``acquired`` is 1
        when it was journaled as acquired; ``outcome`` is the last of its ``released``,
        ``failed``, ``not_created`` and ``forgotten`` events (None: none yet), with that
        event's detail. What :meth:`event_rows` would tell of it, read without a row per
        event (the pytest summary; three events a test)."""

    def events(self, after_id: int = 0, limit: int = 1000) -> list[EventRecord]:
        """Events with an id above ``after_id``, oldest first."""
        return events_from_rows(self.event_rows(after_id, limit))

    def last_event_id(self) -> int:
        """The id of the newest event (0 when there is none): where a follower starts."""
        newest = 0
        while page := self.events(after_id=newest, limit=10_000):
            newest = page[-1].id
        return newest

    @abc.abstractmethod
    def prune_events(self, older_than: float) -> int:
        """Delete events before the timestamp ``older_than``; returns how many."""

    @abc.abstractmethod
    def close(self) -> None: ...
