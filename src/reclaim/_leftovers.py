"""The registry-less sweep: what a server holds under reclaim's prefix that no live run owns.

The registry may be lost with the machine that wrote it (a CI runner thrown away), yet every name
reclaim proposes carries its run's id and its creation time (``rc_<run>_<time>_<seq>``). So a
backend that can list what exists (:meth:`Backend.list_leftovers`) lets ``reclaim sweep
--leftovers URL`` find what was left behind, and release it from the record that listing built
(I2), without any journal.

Two rules keep this from touching what is still in use (I4):

- a leftover whose run is alive in the registry is kept; a run the registry does not know is
  taken for dead (its registry is gone, which is what this pass is for);
- a leftover younger than ``older_than`` is kept whatever the registry says, because a run on
  another machine, journaled in another registry, looks unknown here. The default, a day, is
  longer than any CI job is allowed to run.

Only objects a backend yields are ever touched, and each is checked by the same guard as every
release (I8): its whole name must be a reclaim name of the run it is listed under.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from reclaim._duration import parse_duration
from reclaim._errors import BackendNotFoundError, ForeignNameError, MissingExtraError
from reclaim._reaper import is_alive
from reclaim._registry import Registry
from reclaim.backends import (
    ENTRY_POINT_GROUP,
    Backend,
    Leftover,
    check_leftover,
    load_backend,
    redact_record,
    redact_text,
    redact_url,
    secret_record,
)
from reclaim.backends._base import (
    _configured,  # the RECLAIM_BACKENDS kinds, read exactly as load_backend reads them
)

__all__ = [
    "DEFAULT_OLDER_THAN",
    "LeftoverItem",
    "LeftoverReport",
    "find_leftovers",
    "kinds_for",
    "parse_duration",
    "redact_url",
    "release_leftovers",
]

#: Leftovers younger than this are kept by default (seconds): one day.
DEFAULT_OLDER_THAN: Final = 24 * 3600.0


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    # A bare path (``/tmp``) is a directory: the file scheme.
    return scheme if "://" in url else "file"


@dataclasses.dataclass
class KindProblem:
    """A kind that could not be asked: not importable, driver missing, or listing failed."""

    kind: str
    error: str
    #: True when the server could not be asked (a failure of the sweep, exit status 1); False
    #: when the kind is merely not usable here (its extra is not installed).
    fatal: bool
    #: False when the kind's backend could not even be imported, so nobody knows whether it
    #: lists leftovers at this URL's scheme at all.
    importable: bool = True


@dataclasses.dataclass
class LeftoverItem:
    """One thing found under reclaim's prefix, and what happens (or happened) to it."""

    kind: str
    backend: type[Backend[Any]]
    leftover: Leftover
    #: What the registry says of its run: "alive", "dead", or "unknown" (not in it: dead).
    run_state: str
    #: "keep-live", "keep-young", "release" (dry run), "released" or "failed".
    action: str
    error: str | None = None

    @property
    def name(self) -> str:
        return str(self.leftover.record.get("name", "?"))

    def describe(self) -> str:
        """The backend's one line for people (never a secret: describe shows no credentials)."""
        try:
            return self.backend.describe(self.leftover.record)
        except Exception:
            return self.name

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "resource": self.describe(),
            "run_id": self.leftover.run_id,
            "run": self.run_state,
            "created_at": self.leftover.created_at,
            "age_seconds": round(max(0.0, now - self.leftover.created_at), 3),
            "action": self.action,
            "error": self.error,
            "record": redact_record(self.leftover.record, self.backend.secret_fields),
        }


@dataclasses.dataclass
class LeftoverReport:
    """What ``reclaim sweep --leftovers`` found and did."""

    urls: list[str]
    older_than: float
    dry_run: bool
    now: float
    kinds: list[str] = dataclasses.field(default_factory=list)
    items: list[LeftoverItem] = dataclasses.field(default_factory=list)
    problems: list[KindProblem] = dataclasses.field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for item in self.items if item.action == action)

    @property
    def failed(self) -> bool:
        """Anything failed: a release, or asking a server (exit status 1)."""
        return self.count("failed") > 0 or any(p.fatal for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "urls": [redact_url(u) for u in self.urls],
            "older_than": self.older_than,
            "dry_run": self.dry_run,
            "kinds": list(self.kinds),
            "leftovers": [item.to_json(self.now) for item in self.items],
            "would_release": self.count("release"),
            "released": self.count("released"),
            "failed": self.count("failed"),
            "kept_live": self.count("keep-live"),
            "kept_young": self.count("keep-young"),
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }


def _all_kinds() -> list[str]:
    # The configured kinds (RECLAIM_BACKENDS) as well as the installed ones, as load_backend
    # sees them.
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    names.update(_configured())
    return sorted(names)


def _loaded() -> tuple[list[tuple[str, type[Backend[Any]]]], list[KindProblem]]:
    """Every kind that loads, and a note for each that does not."""
    loaded: list[tuple[str, type[Backend[Any]]]] = []
    problems: list[KindProblem] = []
    for kind in _all_kinds():
        try:
            loaded.append((kind, load_backend(kind)))
        except Exception as exc:  # not installed, or its module is broken: a note, not a stop
            reason = str(exc) if isinstance(exc, BackendNotFoundError) else repr(exc)
            problems.append(KindProblem(kind, reason, fatal=False, importable=False))
    return loaded, problems


def kinds_for(url: str) -> tuple[list[tuple[str, type[Backend[Any]]]], list[KindProblem]]:
    """The kinds whose backends list leftovers at servers of ``url``'s scheme.

    A kind that cannot be imported is reported (not fatal): nobody can tell whether it would
    have listed anything.
    """
    scheme = _scheme(url)
    loaded, problems = _loaded()
    return [(k, b) for k, b in loaded if scheme in b.url_schemes], problems


def find_leftovers(
    registry: Registry | None,
    urls: Iterable[str],
    *,
    older_than: float = DEFAULT_OLDER_THAN,
    now: float | None = None,
    kinds: Callable[[str], tuple[list[tuple[str, type[Backend[Any]]]], list[KindProblem]]]
    | None = None,
) -> LeftoverReport:
    """List what the servers at ``urls`` hold under reclaim's prefix, and decide for each item.

    Nothing is released here: every item's action is ``keep-live``, ``keep-young`` or
    ``release``. ``registry`` None means there is none: every run is unknown, so dead.

    Raises:
        LookupError: no installed kind lists leftovers for one of the URLs' schemes.
    """
    urls = list(urls)
    now = time.time() if now is None else now
    report = LeftoverReport(urls=urls, older_than=older_than, dry_run=True, now=now)
    lookup = kinds or kinds_for
    runs: dict[str, str] = {}

    def run_state(run_id: str) -> str:
        if run_id not in runs:
            run = registry.get_run(run_id) if registry is not None else None
            if run is None:
                runs[run_id] = "unknown"
            else:
                # Leases by the registry's clock; the objects' ages by this host's (``now``).
                alive = is_alive(run, now=registry.now()) if registry is not None else False
                runs[run_id] = "alive" if alive else "dead"
        return runs[run_id]

    for url in urls:
        found, problems = lookup(url)
        if not found:
            raise LookupError(
                f"no installed reclaim backend lists leftovers at {_scheme(url)}:// URLs"
                f" ({redact_url(url)}); the schemes that can be swept are: "
                + (", ".join(sorted(_known_schemes())) or "none")
            )
        report.problems.extend(p for p in problems if p not in report.problems)
        for kind, backend in found:
            if kind not in report.kinds:
                report.kinds.append(kind)
            try:
                leftovers = list(backend.list_leftovers(url))
            except MissingExtraError as exc:
                report.problems.append(KindProblem(kind, str(exc), fatal=False))
                continue
            except Exception as exc:
                reason = _redact_url_secrets(f"{type(exc).__name__}: {exc}", url)
                report.problems.append(
                    KindProblem(kind, f"listing {redact_url(url)} failed: {reason}", fatal=True)
                )
                continue
            for leftover in leftovers:
                try:
                    check_leftover(backend, leftover)
                except ForeignNameError as exc:
                    # A backend's bug: what it yields must be, whole, a reclaim name of that
                    # run (I8). Never touched; reported, so that the bug is seen.
                    report.problems.append(
                        KindProblem(kind, f"listed {leftover!r}: {exc}; it was left alone", True)
                    )
                    continue
                state = run_state(leftover.run_id)
                if state == "alive":
                    action = "keep-live"
                elif now - leftover.created_at < older_than:
                    action = "keep-young"
                else:
                    action = "release"
                report.items.append(LeftoverItem(kind, backend, leftover, state, action))
    return report


def release_leftovers(report: LeftoverReport, registry: Registry | None) -> LeftoverReport:
    """Release every item whose action is ``release``; record each outcome in the report (and,
    when there is a registry, in its event log: ``leftover.released`` / ``leftover.failed``)."""
    report.dry_run = False
    for item in report.items:
        if item.action != "release":
            continue
        try:
            item.backend.release(secret_record(item.backend, item.leftover.record))
        except Exception as exc:
            item.action = "failed"
            item.error = redact_text(
                f"{type(exc).__name__}: {exc}", item.leftover.record, item.backend.secret_fields
            )
        else:
            item.action = "released"
        if registry is not None:
            detail: dict[str, Any] = {"by": "sweep --leftovers"}
            if item.error is not None:
                detail["error"] = item.error
            registry.add_event(
                f"leftover.{item.action}",
                run_id=item.leftover.run_id,
                kind=item.kind,
                name=item.name,
                detail=detail,
            )
    return report


def _known_schemes() -> set[str]:
    return {scheme for _kind, backend in _loaded()[0] for scheme in backend.url_schemes}


def _redact_url_secrets(text: str, url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if not password:
        return text
    # Drivers may quote the password as given (percent-encoded) or decoded.
    return redact_text(text, {"password": [password, unquote(password)]}, ("password",))
