"""Layer 4 of the crash model, the registry sweep: release everything of runs whose owner is
dead (``reclaim sweep``, a cron job, the start of the next pytest session).

It finds dead runs in the registry and hands each to :func:`reclaim._reaper.reap_run`, which
claims it first (I6), never a live run's (I4). The registry-less pass, for a registry that was
lost with its machine, is ``_leftovers.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final, Protocol

from reclaim import _settings as settings
from reclaim._reaper import ReleaseOutcome, RetryPolicy, is_alive, reap_run
from reclaim._registry import Registry, ResourceRecord, RunRecord
from reclaim.backends import load_backend, secret_record

__all__ = ["EVENT_RETENTION", "SweepProgress", "SweepReport", "sweep"]

#: Events older than this are pruned by a sweep.
EVENT_RETENTION: Final = 7 * 24 * 3600.0


@dataclasses.dataclass
class SweepReport:
    """What a sweep did (or, with ``dry_run``, would do)."""

    released: int = 0
    failed: int = 0
    skipped_live: int = 0
    skipped_grace: int = 0
    skipped_busy: int = 0
    runs_reaped: list[str] = dataclasses.field(default_factory=list)
    outcomes: list[ReleaseOutcome] = dataclasses.field(default_factory=list)
    would_release: list[tuple[ResourceRecord, bool | None]] = dataclasses.field(
        default_factory=list
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "released": self.released,
            "failed": self.failed,
            "skipped_live": self.skipped_live,
            "skipped_grace": self.skipped_grace,
            "skipped_busy": self.skipped_busy,
            "runs_reaped": list(self.runs_reaped),
        }


class SweepProgress(Protocol):
    """What a sweep tells as it goes (the CLI draws a progress bar and prints each outcome)."""

    def begin(self, total: int) -> None:
        """``total`` entries of dead runs are about to be released (some may turn out busy)."""

    def outcome(self, outcome: ReleaseOutcome) -> None:
        """One entry's outcome, as soon as it is journaled."""

    def busy(self, count: int) -> None:
        """``count`` entries were passed over: another reaper holds their run."""


def sweep(
    registry: Registry,
    *,
    grace: float = settings.DEFAULT_SWEEP_GRACE,
    dry_run: bool = False,
    policy: RetryPolicy | None = None,
    now: float | None = None,
    progress: SweepProgress | None = None,
) -> SweepReport:
    """Release everything of runs whose owner is dead and which started more than ``grace``
    seconds ago. Never a live run's (I4); each run claimed first (I6)."""
    now = registry.now() if now is None else now  # leases are judged by the registry's clock
    report = SweepReport()
    dead: list[tuple[RunRecord, int]] = []
    for run in registry.list_runs():
        resources = registry.resources(run.id)
        if is_alive(run, now=now):
            report.skipped_live += len(resources)
            continue
        if now - run.started_at < grace:
            report.skipped_grace += len(resources)
            continue
        if dry_run:
            for resource in reversed(resources):
                report.would_release.append((resource, _exists(resource)))
            continue
        dead.append((run, len(resources)))
    if progress is not None:
        progress.begin(sum(count for _, count in dead))
    for run, count in dead:
        on_outcome = _counted(report, progress.outcome if progress is not None else None)
        outcomes = reap_run(registry, run, actor="sweeper", policy=policy, on_outcome=on_outcome)
        if outcomes is None:
            report.skipped_busy += count
            if progress is not None:
                progress.busy(count)
            continue
        report.runs_reaped.append(run.id)
    if not dry_run:
        registry.prune_events(now - EVENT_RETENTION)
    return report


def _counted(
    report: SweepReport, tell: Callable[[ReleaseOutcome], None] | None
) -> Callable[[ReleaseOutcome], None]:
    """Count each outcome in the report as it comes, then pass it on."""

    def counted(outcome: ReleaseOutcome) -> None:
        report.outcomes.append(outcome)
        if outcome.released:
            report.released += 1
        elif not outcome.skipped:
            report.failed += 1
        if tell is not None:
            tell(outcome)

    return counted


def _exists(resource: ResourceRecord) -> bool | None:
    try:
        backend = load_backend(resource.kind)
        return backend.exists(secret_record(backend, resource.record))
    except Exception:
        return None
