"""The ``reclaim`` command: status, sweep, forget, watch, run, acquire, release and demo.

Every command that reports takes ``--json`` for machines; output for people uses rich (tables,
colours on a terminal, plain text elsewhere). Errors name the resource, what happened and what to
do, and exit with status 2; ``sweep``, ``acquire`` and ``release`` exit with 1 when a backend
failed, so scripts and cron can tell the two apart. ``run`` exits with its command's status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from reclaim import __version__, _run
from reclaim import _settings as settings
from reclaim._acquire import acquire_failed, journal_plan
from reclaim._errors import BackendNotFoundError, NotCreatedError, ReclaimError
from reclaim._follow import event_json, event_text, follow
from reclaim._leftovers import (
    DEFAULT_OLDER_THAN,
    LeftoverReport,
    find_leftovers,
    kinds_for,
    parse_duration,
    redact_url,
    release_leftovers,
)
from reclaim._reaper import ReleaseOutcome, is_alive, release_resource
from reclaim._registry import (
    ENV_VAR,
    Registry,
    ResourceRecord,
    ResourceState,
    RunRecord,
    RunState,
    default_location,
    open_registry,
    shown_location,
)
from reclaim._supervise import supervise
from reclaim._sweep import SweepReport, sweep
from reclaim.backends import Backend, load_backend, make_name, redact_text

__all__ = ["main"]

# What is printed comes from users and servers (labels, hosts, paths, names, errors): a string
# is always shown as it is, never read as rich markup (``[/x]`` in a label crashed the sweep
# after it had released) or emoji codes. Styled output is built from Text pieces, see _line.
# Not on a terminal (a pipe, CI logs): wide enough that paths and errors are never cut short.
_console = Console(
    highlight=False,
    markup=False,
    emoji=False,
    soft_wrap=True,
    width=None if sys.stdout.isatty() else 400,
)
# Errors stay on one line each (the terminal wraps them; logs keep them greppable).
_errors = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def _line(*parts: str | tuple[str, str] | Text) -> Text:
    """One line from literal pieces: a string, a (string, style) pair or a Text; no markup."""
    return Text.assemble(*parts)


def _cell(value: object, style: str = "") -> Text:
    """A table cell shown literally (a str cell would be parsed by a markup-enabled console)."""
    return value if isinstance(value, Text) else Text(str(value), style=style)


#: Set when the command line asks for --json: a failure then also prints a JSON object on
#: standard output, so a machine reading it never gets nothing.
_json_errors = False


def _say_error(message: str) -> None:
    _errors.print(Text("reclaim: ", style="bold red") + Text(message))


def _fail(message: str, code: int = 2, *, json_printed: bool = False) -> NoReturn:
    _errors.print(Text("reclaim: ", style="bold red") + Text(message))
    if _json_errors and not json_printed:
        click.echo(json.dumps({"error": message, "exit_status": code}))
    sys.exit(code)


def _shown(location: str) -> str:
    return shown_location(location)


def _open(location: str | None, *, create: bool) -> Registry | None:
    try:
        return open_registry(location, create=create)
    except FileNotFoundError:
        return None
    except ReclaimError as exc:
        _fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reclaim")
@click.option(
    "--registry",
    metavar="PATH",
    envvar=settings.REGISTRY.name,
    help="The registry file [default: $RECLAIM_REGISTRY or the per-user state directory].",
)
@click.pass_context
def cli(ctx: click.Context, registry: str | None) -> None:
    """reclaim: delete what tests created outside their process, even after SIGKILL."""
    ctx.obj = registry or default_location()


# --- status --------------------------------------------------------------------------------


def _describe(resource: ResourceRecord) -> str:
    try:
        return load_backend(resource.kind).describe(resource.record)
    except (BackendNotFoundError, Exception):
        return resource.name


def _condition(resource: ResourceRecord, alive: bool) -> str:
    if resource.state == "failed":
        return "failed"
    return "live" if alive else "orphaned"


def _status_json(
    runs: list[tuple[RunRecord, bool, list[ResourceRecord]]], now: float
) -> dict[str, Any]:
    return {
        "runs": [
            {
                "id": run.id,
                "state": str(run.state),
                "alive": alive,
                "pid": run.owner.pid,
                "host": run.owner.host,
                "label": run.label,
                "parent_id": run.parent_id,
                "started_at": run.started_at,
                "lease_age": round(max(0.0, now - run.heartbeat_at), 3),
                "lease_seconds": run.lease_seconds,
                "resources": [
                    {
                        "id": r.id,
                        "kind": r.kind,
                        "name": r.name,
                        "state": str(r.state),
                        "condition": _condition(r, alive),
                        "attempts": r.attempts,
                        "last_error": r.last_error,
                    }
                    for r in resources
                ],
            }
            for run, alive, resources in runs
        ]
    }


def _ago(then: float, now: float | None = None) -> str:
    seconds = max(0, int((time.time() if now is None else now) - then))
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 5400:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


_STATE_STYLE = {"live": "green", "orphaned": "yellow", "failed": "bold red"}


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def status(location: str, as_json: bool) -> None:
    """Show runs and the resources they hold: live, orphaned (owner dead) or failed."""
    registry = _open(location, create=False)
    runs: list[tuple[RunRecord, bool, list[ResourceRecord]]] = []
    now = time.time()
    if registry is not None:
        now = registry.now()  # leases are judged by the registry's clock, not this host's
        for run in registry.list_runs():
            runs.append((run, is_alive(run, now=now), registry.resources(run.id)))
    if as_json:
        click.echo(json.dumps(_status_json(runs, now)))
        return
    if not runs:
        _console.print(_line("Nothing is held. ", (f"(registry: {_shown(location)})", "dim")))
        return
    width = _wrap_width()
    for run, alive, resources in runs:
        life = ("alive", "green") if alive else ("dead", "yellow")
        _console.print(_line((f"run {run.id}", "bold"), f"  {run.label}  ", life, f"  {run.state}"))
        _console.print(
            _line(
                (
                    f"  pid {run.owner.pid} on {run.owner.host}, started {_ago(run.started_at)},"
                    f" lease renewed {_ago(run.heartbeat_at, now)}",
                    "dim",
                )
            )
        )
        if not resources:
            _console.print(_line("  ", ("holds nothing", "dim")))
            continue
        _print_resources(resources, alive, width)
    _console.print(_line((f"registry: {_shown(location)}", "dim")))


#: The status table's columns; the resource comes last, so that a long name or path runs on
#: to the end of its line instead of pushing the others, and is never cut short.
_STATUS_COLUMNS: Final = ("id", "kind", "state", "tries", "resource")


def _print_resources(resources: list[ResourceRecord], alive: bool, width: int | None) -> None:
    """The resources of one run: one row each, columns as wide as their widest cell, nothing
    elided and no padding after the last column; an error goes on its own lines under its
    row, wrapped to the terminal's width (on a terminal) or left whole on one line (piped)."""
    rows = []
    for r in resources:
        condition = _condition(r, alive)
        cells = (str(r.id), r.kind, f"{r.state} ({condition})", str(r.attempts), _describe(r))
        rows.append((cells, condition, r.last_error))
    widths = [
        max(len(column), *(len(cells[i]) for cells, _, _ in rows))
        for i, column in enumerate(_STATUS_COLUMNS)
    ]

    def line(cells: tuple[str, ...], styles: tuple[str, ...]) -> Text:
        pieces: list[str | tuple[str, str]] = ["  "]
        for i, (cell, style) in enumerate(zip(cells, styles, strict=True)):
            last = i == len(cells) - 1
            text = cell if last else (cell.rjust if i in (0, 3) else cell.ljust)(widths[i])
            pieces.append((text, style))
            if not last:
                pieces.append("  ")
        return _line(*pieces)

    indent = " " * (2 + widths[0] + 2)  # under the kind
    # On a terminal too narrow for a row, each resource goes on a line of its own under its
    # row (where it is easy to copy), rather than wrapping the row.
    stacked = width is not None and 2 + sum(widths) + 2 * (len(widths) - 1) > width
    shown = len(_STATUS_COLUMNS) - 1 if stacked else len(_STATUS_COLUMNS)
    _console.print(line(_STATUS_COLUMNS[:shown], ("dim",) * shown))
    for cells, condition, error in rows:
        _console.print(line(cells[:shown], ("dim", "", _STATE_STYLE[condition], "dim", "")[:shown]))
        if stacked:
            _console.print(Text(indent + cells[-1]))
        if error:
            for text in _wrapped(f"error: {error}", indent, width):
                _console.print(Text(text, style="red"))


def _wrapped(text: str, indent: str, width: int | None) -> list[str]:
    """``text`` indented, wrapped at spaces to ``width`` (None: not wrapped); a word longer
    than the line (a path, a URL) is never broken."""
    out: list[str] = []
    for paragraph in text.splitlines() or [""]:
        if width is None:
            out.append(indent + paragraph)
            continue
        out.extend(
            textwrap.wrap(
                paragraph,
                width=max(width, len(indent) + 20),
                initial_indent=indent,
                subsequent_indent=indent + "  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            or [indent]
        )
    return out


def _wrap_width() -> int | None:
    """The width to wrap long text to: the terminal's; None when the output is not a terminal
    (a pipe, a log), where each error stays on one line to grep."""
    return _console.width if _console.is_terminal else None


# --- sweep ---------------------------------------------------------------------------------


def _duration_option(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> float | None:
    """A duration: ``90s``, ``30m``, ``2h``, ``1d``, ``1w``, or plain seconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command(name="sweep")
@click.option("--dry-run", is_flag=True, help="Show what would be released; change nothing.")
@click.option(
    "--grace",
    callback=_duration_option,
    default=None,
    metavar="DURATION",
    help="Leave runs that started less than this long ago (their watchdog may be at work):"
    " 90 (seconds), 90s, 30m, 2h, 1d [default: 5m].",
)
@click.option(
    "--leftovers",
    "leftover_urls",
    metavar="URL",
    multiple=True,
    help="Instead of the registry, ask the server at URL (repeatable; a directory is file://)"
    " what it holds under reclaim's prefix whose run is not alive here. Lists only, unless --yes.",
)
@click.option(
    "--older-than",
    callback=_duration_option,
    default=None,
    metavar="DURATION",
    help="With --leftovers: leave what was created less than this long ago (90s, 30m, 2h, 1d)"
    " [default: 1d].",
)
@click.option("--yes", is_flag=True, help="With --leftovers: release what is listed.")
@click.option(
    "--every",
    callback=_duration_option,
    default=None,
    metavar="DURATION",
    help="Run as a service: sweep, wait this long, sweep again, until SIGTERM or Ctrl-C. Each"
    " pass is logged (a JSON line each with --json); a registry that is away is tried again.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def sweep_command(
    location: str,
    *,
    dry_run: bool,
    grace: float | None,
    leftover_urls: tuple[str, ...],
    older_than: float | None,
    yes: bool,
    every: float | None,
    as_json: bool,
) -> None:
    """Release what dead runs left behind. Never touches a live run's resources.

    With --leftovers URL, find what the registry does not know (it was lost with a machine):
    everything on that server whose name carries reclaim's prefix, whose run is not alive in
    this registry (a run it does not know counts as dead) and which is older than --older-than.
    Names without reclaim's prefix are never touched.
    """
    if every is not None and (leftover_urls or dry_run):
        _fail(
            "--every runs the registry sweep as a service; it goes with neither --leftovers"
            " nor --dry-run"
        )
    if every is not None and every <= 0:
        _fail("--every needs a positive duration, such as 30s or 5m")
    if leftover_urls:
        ctx = click.get_current_context()
        if ctx.get_parameter_source("grace") != click.core.ParameterSource.DEFAULT:
            _fail("--grace is for the registry sweep; with --leftovers, use --older-than")
        if dry_run and yes:
            _fail("--dry-run and --yes contradict each other; --leftovers only lists without --yes")
        _sweep_leftovers(
            location,
            list(leftover_urls),
            DEFAULT_OLDER_THAN if older_than is None else older_than,
            yes,
            as_json,
        )
        return
    if older_than is not None or yes:
        _fail("--older-than and --yes go with --leftovers URL (the registry sweep needs neither)")
    if grace is None:
        grace = settings.DEFAULT_SWEEP_GRACE
    if every is not None:
        _sweep_every(location, every, grace, as_json)
        return
    _sweep_once(location, grace, dry_run, as_json)


def _sweep_once(location: str, grace: float, dry_run: bool, as_json: bool) -> None:
    """One registry sweep (or dry run), reported for people or as one JSON object."""
    registry = _open(location, create=False)
    if registry is None:
        report = SweepReport()
    elif as_json or dry_run:
        report = sweep(registry, grace=grace, dry_run=dry_run)
    else:
        # Each outcome is shown as it happens (over a progress bar on a terminal), not after.
        with _LiveSweep(_console) as live:
            report = sweep(registry, grace=grace, progress=live)
    if as_json:
        data = report.to_json()
        if dry_run:
            data["would_release"] = [
                {"id": r.id, "kind": r.kind, "name": r.name, "exists": exists}
                for r, exists in report.would_release
            ]
        click.echo(json.dumps(data))
    else:
        _print_sweep(report, dry_run, outcomes_shown=not dry_run and registry is not None)
    if report.failed:
        sys.exit(1)


def _sweep_every(location: str, every: float, grace: float, as_json: bool) -> None:
    """``sweep --every``: one pass, then a wait, until SIGTERM, SIGINT or SIGHUP. A signal
    lets the pass at work finish (it may be inside a release) and then stops, exit status 0.
    A pass that fails (the registry is away, say) is logged, and the next one opens the
    registry again."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    shown = _shown(location)
    passes = 0
    try:
        while not stop.is_set():
            passes += 1
            started = time.time()
            entry: dict[str, Any] = {"pass": passes, "at": round(started, 3), "registry": shown}
            try:
                registry = open_registry(location, create=False)
            except FileNotFoundError:
                entry.update(SweepReport().to_json(), note="no registry yet")
            except Exception as exc:  # a service logs and goes on
                entry["error"] = _pass_error(exc, location)
            else:
                try:
                    entry.update(sweep(registry, grace=grace).to_json())
                except Exception as exc:  # a service logs and goes on
                    entry["error"] = _pass_error(exc, location)
                finally:
                    with contextlib.suppress(Exception):
                        registry.close()
            entry["seconds"] = round(time.time() - started, 3)
            _log_pass(entry, as_json, every)
            stop.wait(every)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if as_json:
        click.echo(json.dumps({"stopped": True, "passes": passes}))
    else:
        _console.print(f"Stopped after {passes} passes.")


_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _pass_error(exc: BaseException, location: str) -> str:
    """What went wrong in a pass, without the registry's password (registry errors leave it
    out; this also covers a driver's own text)."""
    text = f"{type(exc).__name__}: {exc}"
    password = urlsplit(location).password if "://" in location else None
    return text.replace(password, "***") if password else text


def _log_pass(entry: dict[str, Any], as_json: bool, every: float) -> None:
    if as_json:
        click.echo(json.dumps(entry))
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
    if "error" in entry:
        _errors.print(
            _line((f"{when} pass {entry['pass']} failed: ", "bold red"), str(entry["error"]))
        )
        _errors.print(_line((f"  next pass in {every:g}s", "dim")))
        return
    _console.print(
        _line(
            f"{when} pass {entry['pass']}: released {entry['released']}, failed"
            f" {entry['failed']}, left alone {entry['skipped_live']} live,"
            f" {entry['skipped_grace']} in grace, {entry['skipped_busy']} busy"
            f" ({entry['seconds']:.2f}s)"
        )
    )


def _outcome_lines(outcome: ReleaseOutcome) -> list[Text]:
    """How one release's outcome is told (nothing for one another process held): the one
    format of ``reclaim sweep``'s outcome lines, shown live or after the sweep. The error is
    the journaled one, already redacted (I7)."""
    r = outcome.resource
    if r is None:
        return []
    if outcome.released:
        return [_line(("released", "green"), f"  {r.kind}  {_describe(r)}")]
    if outcome.error is None:
        return []
    return [
        _line(("failed", "bold red"), f"    {r.kind}  {_describe(r)}"),
        _line("          ", (str(outcome.error), "red")),
    ]


class _LiveSweep:
    """The CLI's ``SweepProgress`` (``_sweep.py``): each outcome's lines as soon as it is journaled.

    On a terminal they are printed above a progress bar (entries done / total) that goes away
    once the sweep is over; elsewhere (a pipe, CI logs, cron) they are plain lines, each
    flushed as it is written, with no bar and no escape codes. Use it as a context manager, so
    that the bar is taken down however the sweep ends."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _LiveSweep:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def begin(self, total: int) -> None:
        if total == 0 or not self._console.is_terminal:
            return
        self._progress = Progress(
            TextColumn("sweeping"),
            BarColumn(),
            MofNCompleteColumn(),
            console=self._console,  # the literal console: no markup, no highlighting
            transient=True,
            # What a backend writes to standard error goes above the bar too, unless standard
            # error is not the terminal (`2>log`): then it stays where it was sent.
            redirect_stderr=sys.stderr.isatty(),
        )
        self._task = self._progress.add_task("sweep", total=total)
        self._progress.start()

    def outcome(self, outcome: ReleaseOutcome) -> None:
        self._advance(1)
        for line in _outcome_lines(outcome):
            # While the bar is up, the console prints above it (it is the bar's live console).
            self._console.print(line)
        self._console.file.flush()

    def busy(self, count: int) -> None:
        self._advance(count)

    def _advance(self, count: int) -> None:
        if self._progress is not None and self._task is not None:
            # Redrawn now, so that the lines printed next come with the bar's new count.
            self._progress.update(self._task, advance=count, refresh=True)


def _print_sweep(report: SweepReport, dry_run: bool, *, outcomes_shown: bool = False) -> None:
    """The end of ``reclaim sweep``: what a dry run would release, the outcomes unless
    ``outcomes_shown`` (they were printed as they happened), and the summary line."""
    if dry_run:
        if not report.would_release:
            _console.print("Nothing to release.")
        for resource, exists in report.would_release:
            there = {True: "exists", False: "already gone", None: "unknown"}[exists]
            _console.print(
                _line(
                    f"would release  {resource.kind}  {_describe(resource)}  ",
                    (f"({there})", "dim"),
                )
            )
    if not outcomes_shown:
        for outcome in report.outcomes:
            for text in _outcome_lines(outcome):
                _console.print(text)
    skipped = []
    if report.skipped_live:
        skipped.append(f"{report.skipped_live} held by live runs")
    if report.skipped_grace:
        skipped.append(f"{report.skipped_grace} younger than the grace period")
    if report.skipped_busy:
        skipped.append(f"{report.skipped_busy} being reaped by another process")
    verb = "Would release" if dry_run else "Released"
    count = len(report.would_release) if dry_run else report.released
    line = f"{verb} {count}, failed {report.failed}"
    if skipped:
        line += "; left alone: " + ", ".join(skipped)
    _console.print(_line((f"{line}.", "bold")))


def _sweep_leftovers(
    location: str, urls: list[str], older_than: float, yes: bool, as_json: bool
) -> None:
    registry = _open(location, create=False)
    try:
        try:
            report = find_leftovers(registry, urls, older_than=older_than)
        except LookupError as exc:
            _fail(str(exc))
        if yes:
            release_leftovers(report, registry)
    finally:
        if registry is not None:
            registry.close()
    not_asked = _not_asked(report, urls)
    if as_json:
        data = report.to_json()
        data["not_asked"] = [redact_url(u) for u in not_asked]
        click.echo(json.dumps(data))
    else:
        _print_leftovers(report)
    if not_asked:
        # Nothing was listed, so "would release 0" says nothing: a failure of its own (exit
        # status 2, as for any sweep that could not be done), not a clean bill.
        _fail(
            f"nobody asked the server at {', '.join(redact_url(u) for u in not_asked)}: no"
            " kind that lists it could be used here (each says why under 'not asked'), so"
            " nothing there was looked at",
            2,
            json_printed=True,
        )
    if report.failed:
        sys.exit(1)


def _not_asked(report: LeftoverReport, urls: list[str]) -> list[str]:
    """The URLs that no kind could ask: every kind listing its scheme was unusable here (its
    driver is not installed). A kind that asked and failed is a failure, not this."""
    unusable = {p.kind for p in report.problems if p.importable and not p.fatal}
    asked_by = {url: [kind for kind, _backend in kinds_for(url)[0]] for url in urls}
    return [url for url, kinds in asked_by.items() if all(k in unusable for k in kinds)]


_ACTION_STYLE: Final = {
    "release": ("would release", "yellow"),
    "released": ("released", "green"),
    "failed": ("failed", "bold red"),
    "keep-live": ("kept: run alive", "dim"),
    "keep-young": ("kept: too young", "dim"),
}


def _print_leftovers(report: LeftoverReport) -> None:
    where = ", ".join(redact_url(u) for u in report.urls)
    _console.print(
        _line(
            f"Leftovers under reclaim's prefix at {where} ",
            (
                f"(kinds: {', '.join(report.kinds) or 'none'};"
                f" older than {_duration(report.older_than)} may go)",
                "dim",
            ),
        )
    )
    _print_problems(report)
    if report.items:
        table = Table(box=None, padding=(0, 2), show_edge=False, pad_edge=False)
        for column in ("kind", "resource", "run", "created", "action"):
            table.add_column(column, style="dim" if column == "created" else None)
        for item in report.items:
            label, style = _ACTION_STYLE[item.action]
            table.add_row(
                _cell(item.kind),
                _cell(item.describe()),
                _cell(f"{item.leftover.run_id} ({item.run_state})"),
                _cell(_ago(item.leftover.created_at)),
                _cell(label, style),
            )
        _console.print(table)
        for item in report.items:
            if item.error is not None:
                _console.print(Text(f"{item.describe()}: {item.error}", style="red"))
    _console.print(_line((f"{_leftovers_summary(report)}.", "bold")))
    if report.dry_run and report.count("release"):
        _console.print("Nothing was changed: run again with --yes to release them.")


def _print_problems(report: LeftoverReport) -> None:
    for problem in report.problems:
        if problem.importable:
            style = "bold red" if problem.fatal else "yellow"
            label = "failed" if problem.fatal else "not asked"
            _console.print(Text(f"  {label}: {problem.kind}: {problem.error}", style=style))
    broken = [p.kind for p in report.problems if not p.importable]
    if broken:
        _console.print(
            Text(
                f"  not asked (their backends cannot be imported; --json says why):"
                f" {', '.join(broken)}",
                style="dim",
            )
        )


def _leftovers_summary(report: LeftoverReport) -> str:
    if report.dry_run:
        line = f"Would release {report.count('release')}"
    else:
        line = f"Released {report.count('released')}, failed {report.count('failed')}"
    kept = []
    if report.count("keep-live"):
        kept.append(f"{report.count('keep-live')} of live runs")
    if report.count("keep-young"):
        kept.append(f"{report.count('keep-young')} younger than {_duration(report.older_than)}")
    if kept:
        line += "; kept " + ", ".join(kept)
    return line


def _duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- forget --------------------------------------------------------------------------------


@cli.command()
@click.argument("resource_ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--run", "run_id", metavar="RUN", help="Every entry of this run.")
@click.option("--failed", is_flag=True, help="Entries whose release failed.")
@click.option(
    "--never-acquired",
    is_flag=True,
    help="Failed or planned entries never journaled as acquired (they may never have existed).",
)
@click.option("--yes", is_flag=True, help="Do it: without --yes, only say what would go.")
@click.option("--force", is_flag=True, help="Also entries of live runs, or being released.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def forget(location: str, /, resource_ids: tuple[int, ...], **options: Any) -> None:
    """Drop registry entries WITHOUT releasing them (what was deleted by hand, a kind that will
    never be installed again, entries of acquires that never created anything). The resources
    themselves are left as they are. Name entries by ID, or select them with --run, --failed and
    --never-acquired (they combine). A dry run unless --yes; entries of a live run, or being
    released now, are kept unless --force."""
    query = _ForgetQuery(
        ids=resource_ids,
        run_id=options["run_id"],
        failed=options["failed"],
        never_acquired=options["never_acquired"],
        force=options["force"],
    )
    yes, as_json = bool(options["yes"]), bool(options["as_json"])
    if not (query.ids or query.run_id or query.failed or query.never_acquired):
        _fail("say what to forget: entry IDs, or --run RUN, --failed, --never-acquired")
    registry = _open(location, create=False)
    if registry is None:
        if query.ids:
            _fail(f"there is no resource {_ids(query.ids)} in the registry {_shown(location)}")
        _fail(f"there is no registry at {_shown(location)}, so there is nothing to forget")
    try:
        chosen, kept, missing = query.select(registry)
        if missing:  # a typo must not forget the rest
            _fail(f"there is no resource {_ids(missing)} in the registry {_shown(location)}")
        if yes:
            chosen = [r for r in chosen if registry.forget(r.id, actor="user") is not None]
    finally:
        registry.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "dry_run": not yes,
                    "forgotten" if yes else "would_forget": [
                        {"id": r.id, "kind": r.kind, "name": r.name, "state": r.state}
                        for r in chosen
                    ],
                    "kept": [{"id": r.id, "why": why} for r, why in kept],
                }
            )
        )
    else:
        _print_forget(chosen, kept, yes=yes)
    if kept and not chosen:
        sys.exit(1)


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids)


def _print_forget(
    chosen: list[ResourceRecord],
    kept: list[tuple[ResourceRecord, str]],
    *,
    yes: bool,
) -> None:
    verb = "forgot" if yes else "would forget"
    for r in chosen:
        _console.print(f"{verb} {r.id}  {r.kind}  {r.name}  ({r.state})")
    for r, why in kept:
        _console.print(_line((f"kept {r.id}  {r.kind}  {r.name}: {why}", "yellow")))
    if yes:
        _console.print(f"Forgot {len(chosen)}; none of them was released.")
    elif chosen:
        _console.print(
            "Nothing was changed: run again with --yes to drop these entries without"
            " releasing them."
        )
    else:
        _console.print("Nothing to forget.")


@dataclasses.dataclass(frozen=True)
class _ForgetQuery:
    """Which entries ``reclaim forget`` takes: by id, or every one that fits all the filters."""

    ids: tuple[int, ...]
    run_id: str | None
    failed: bool
    never_acquired: bool
    force: bool

    def select(
        self, registry: Registry
    ) -> tuple[list[ResourceRecord], list[tuple[ResourceRecord, str]], list[int]]:
        """(the entries to forget, those kept and why, the ids not in the registry)."""
        missing = [rid for rid in self.ids if registry.get_resource(rid) is None]
        if self.ids:
            found = (registry.get_resource(rid) for rid in self.ids)
            candidates = [r for r in found if r is not None]
        else:
            candidates = registry.resources(self.run_id)
        candidates = [r for r in candidates if self._fits(r)]
        chosen: list[ResourceRecord] = []
        kept: list[tuple[ResourceRecord, str]] = []
        alive: dict[str, bool] = {}
        for resource in candidates:
            if resource.run_id not in alive:
                run = registry.get_run(resource.run_id)
                alive[resource.run_id] = run is not None and is_alive(run, now=registry.now())
            why = self._keep_reason(resource, alive[resource.run_id])
            if why is None:
                chosen.append(resource)
            else:
                kept.append((resource, why))
        return chosen, kept, missing

    def _fits(self, r: ResourceRecord) -> bool:
        if self.run_id is not None and r.run_id != self.run_id:
            return False
        if self.failed and r.state != ResourceState.FAILED:
            return False
        return not self.never_acquired or (
            r.acquired_at is None and r.state in (ResourceState.FAILED, ResourceState.PLANNED)
        )

    def _keep_reason(self, r: ResourceRecord, run_alive: bool) -> str | None:
        if self.force:
            return None
        if run_alive:
            return "its run is alive and may still use it (--force to forget)"
        if r.state == ResourceState.RELEASING:
            return "it is being released now (--force to forget)"
        return None


# --- watch ---------------------------------------------------------------------------------


class _Stop(BaseException):
    """SIGTERM or SIGHUP asked ``watch`` to end (a BaseException: nothing on the way catches
    it)."""


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


@cli.command()
@click.option("--from-start", is_flag=True, help="Print the events already in the log first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@click.pass_obj
def watch(location: str, from_start: bool, as_json: bool) -> None:
    """Follow the event log as it is written: acquired, released, reaped, failed. Ctrl-C ends.

    Starts after the newest event unless --from-start; waits for a registry that does not
    exist yet.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)

    def waiting() -> None:
        _errors.print(
            _line((f"Waiting for the registry {_shown(location)} to be created...", "dim"))
        )

    def ready(registry: Registry) -> None:
        _errors.print(_line((f"Watching {registry.location}; Ctrl-C to stop.", "dim")))

    try:
        for event in follow(location, from_start=from_start, on_waiting=waiting, on_ready=ready):
            if as_json:
                sys.stdout.write(json.dumps(event_json(event)) + "\n")
                sys.stdout.flush()
            else:
                _console.print(event_text(event))
    except (KeyboardInterrupt, _Stop):
        pass
    except BrokenPipeError:
        # The reader went away (`reclaim watch | head`): end quietly, and keep Python from
        # complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except ReclaimError as exc:
        _fail(str(exc))


# --- run -----------------------------------------------------------------------------------

#: Environment variable naming the run of the command under ``reclaim run``.
RUN_ENV: Final = settings.RUN.name


@cli.command(
    name="run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--label",
    metavar="TEXT",
    help="A name for the run in status and events [default: the command's program name].",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="After the command, one JSON object (run, exit code, releases) as the last line.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit with status 1 when a release failed, also when COMMAND succeeded (a failed"
    " COMMAND's own status is kept).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def run_command(
    location: str, label: str | None, as_json: bool, strict: bool, command: tuple[str, ...]
) -> None:
    """Run COMMAND as one run: what it acquires with `reclaim acquire` is released when it
    ends, and by the watchdog or the next sweep if reclaim itself is killed.

    The command gets RECLAIM_RUN and RECLAIM_REGISTRY in its environment; SIGINT, SIGTERM and
    SIGHUP sent to reclaim are passed on to it. Exits with the command's status (128+N when it
    died of signal N); with --strict, a release that failed makes a successful command's run
    exit with 1.
    """
    if "://" not in location:
        location = os.path.abspath(location)  # the command may change directory
    run = _open_run(location, label or os.path.basename(command[0]) or "run")
    env = dict(os.environ)
    env[RUN_ENV] = run.id
    env[ENV_VAR] = location
    env[settings.PARENT_RUN.name] = run.id  # runs the command opens record this one as parent
    code = supervise(list(command), env, say=_say_error)
    try:
        held = len(run.registry.resources(run.id))
        _run.end_run(location)
    except KeyboardInterrupt as exc:  # Ctrl-C, or reclaim.Terminated (SIGTERM, SIGHUP)
        signum = getattr(exc, "signum", signal.SIGINT)
        _fail(
            f"interrupted while releasing what run {run.id} held; its watchdog (or the next"
            " `reclaim sweep`) releases the rest, and `reclaim status` shows what is left",
            128 + signum,
        )
    except ReclaimError as exc:
        _fail(f"closing run {run.id} failed: {exc}; `reclaim sweep` releases what it held", code)
    left = _still_held(location, run.id)
    for resource in left:
        _errors.print(
            Text("reclaim: ", style="bold red")
            + Text(
                f"{resource.kind} {_describe(resource)!r} of run {run.id} could not be released:"
                f" {resource.last_error}; it stays in state failed and the next `reclaim sweep`"
                " retries it"
            )
        )
    status = 1 if strict and left and code == 0 else code
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run": run.id,
                    "exit_code": code,
                    "exit_status": status,
                    "released": held - len(left),
                    "failed": [
                        {"id": r.id, "kind": r.kind, "name": r.name, "last_error": r.last_error}
                        for r in left
                    ],
                }
            )
        )
    sys.exit(status)


def _open_run(location: str, label: str) -> _run.Run:
    try:
        return _run.current_run(location, label=label)
    except ReclaimError as exc:
        _fail(str(exc))


def _still_held(location: str, run_id: str) -> list[ResourceRecord]:
    registry = _open(location, create=False)
    if registry is None:
        return []
    try:
        return registry.resources(run_id)
    finally:
        registry.close()


# --- kinds ---------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
def kinds(as_json: bool) -> None:
    """List the kinds of resource installed here (entry points and RECLAIM_BACKENDS), with the
    module that provides each and the arguments its constructor takes (what `reclaim acquire
    KIND --json-args` passes)."""
    found = [_kind_info(kind, target, source) for kind, (target, source) in _kinds().items()]
    if as_json:
        click.echo(json.dumps({"kinds": found}))
        return
    if not found:
        _console.print("No kinds are installed.")
        return
    for n, info in enumerate(found):
        if n:
            _console.print()
        _console.print(_line((info["kind"], "bold"), "  ", (info["class"], "dim")))
        if info["error"] is not None:
            _console.print(Text(f"  cannot be used here: {info['error']}", style="yellow"))
            continue
        if info["summary"]:
            _console.print(Text(f"  {info['summary']}", style="dim"))
        if not info["arguments"]:
            _console.print(_line("  ", ("no arguments", "dim")))
        for arg in info["arguments"]:
            _console.print(Text(f"    {_argument_text(arg)}"))


def _kinds() -> dict[str, tuple[str, str]]:
    """kind -> (module:Class, where it is registered), as load_backend finds them."""
    from importlib.metadata import entry_points  # noqa: PLC0415  (only this command needs it)

    from reclaim.backends import ENTRY_POINT_GROUP  # noqa: PLC0415
    from reclaim.backends._base import (  # noqa: PLC0415
        _configured,  # the RECLAIM_BACKENDS kinds, read exactly as load_backend reads them
    )

    out = {ep.name: (ep.value, "entry point") for ep in entry_points(group=ENTRY_POINT_GROUP)}
    out.update({k: (v, settings.BACKENDS.name) for k, v in _configured().items()})
    return dict(sorted(out.items()))


#: Argument names whose default is never shown, whatever the backend declares secret.
_SECRET_WORDS: Final = ("password", "token", "secret", "key")


def _kind_info(kind: str, target: str, source: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kind": kind,
        "class": target,
        "module": target.partition(":")[0],
        "source": source,
        "summary": "",
        "arguments": [],
        "url_schemes": [],
        "error": None,
    }
    try:
        backend = load_backend(kind)
        signature = inspect.signature(backend)
    except (BackendNotFoundError, ValueError, TypeError) as exc:
        info["error"] = str(exc)
        return info
    doc = inspect.cleandoc(backend.__dict__.get("__doc__") or "")  # its own, not inherited
    info["summary"] = doc.split("\n\n")[0].replace("\n", " ").replace("``", "`")
    info["url_schemes"] = list(backend.url_schemes)
    secret = set(backend.secret_fields)
    for param in signature.parameters.values():
        named_secret = param.name in secret or any(w in param.name.lower() for w in _SECRET_WORDS)
        has_default = param.default is not inspect.Parameter.empty
        # A default that could be a credential (text, a mapping of headers) is never shown.
        hidden = named_secret and bool(param.default) and not isinstance(param.default, int)
        annotation = param.annotation
        info["arguments"].append(
            {
                "name": param.name,
                "kind": _PARAM_KINDS[param.kind],
                "required": not has_default
                and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD),
                "default": None if not has_default else "***" if hidden else repr(param.default),
                "annotation": None
                if annotation is inspect.Parameter.empty
                else annotation
                if isinstance(annotation, str)
                else inspect.formatannotation(annotation),
            }
        )
    return info


_PARAM_KINDS: Final = {
    inspect.Parameter.POSITIONAL_ONLY: "positional",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional or keyword",
    inspect.Parameter.VAR_POSITIONAL: "*args",
    inspect.Parameter.KEYWORD_ONLY: "keyword",
    inspect.Parameter.VAR_KEYWORD: "**kwargs",
}


def _argument_text(arg: dict[str, Any]) -> str:
    """One argument as Python writes it: ``name: type = default``, ``*args``, ``**kwargs``."""
    star = {"*args": "*", "**kwargs": "**"}.get(arg["kind"], "")
    text = f"{star}{arg['name']}"
    if arg["annotation"]:
        text += f": {arg['annotation']}"
    if arg["default"] is not None:
        text += f" = {arg['default']}"
    if arg["kind"] == "keyword":
        text += "  (keyword only)"
    elif arg["required"]:
        text += "  (required)"
    return text


# --- acquire and release -------------------------------------------------------------------


@cli.command()
@click.argument("kind")
@click.option(
    "--json-args",
    "json_args",
    metavar="JSON",
    default="{}",
    help='The backend\'s arguments as one JSON object, e.g. \'{"parent": "/tmp"}\'.',
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def acquire(location: str, kind: str, json_args: str, as_json: bool) -> None:
    """Create a resource of KIND for the run of `reclaim run` (for shell scripts and other
    languages). Prints its value (a path, a pid); it is released when the run ends.

    `reclaim kinds` lists the installed kinds and the arguments each takes in --json-args."""
    run_id = settings.RUN.get()
    if not run_id:
        _fail(
            f"reclaim acquire needs a run to own the {kind} resource, and {RUN_ENV} is not set:"
            " use it inside `reclaim run -- COMMAND ...`"
        )
    try:
        args = json.loads(json_args)
    except ValueError as exc:
        _fail(f"--json-args for {kind} is not valid JSON ({exc}); pass one object, e.g. '{{}}'")
    if not isinstance(args, dict):
        _fail(f"--json-args for {kind} must be a JSON object of keyword arguments, e.g. '{{}}'")
    try:
        backend_class = load_backend(kind)
    except BackendNotFoundError as exc:
        _fail(str(exc))
    try:
        backend = backend_class(**args)
    except (TypeError, ValueError) as exc:
        # The message may quote a value; values may be credentials (I7).
        reason = redact_text(f"{type(exc).__name__}: {exc}", args, backend_class.secret_fields)
        names = ", ".join(sorted(args)) or "none"
        _fail(
            f"the {kind} backend does not accept these arguments (given: {names}): {reason};"
            f" see help({backend_class.__module__}.{backend_class.__qualname__})"
        )
    registry = _open(location, create=False)
    if registry is None:
        _fail(
            f"there is no registry at {_shown(location)}, so run {run_id} ({RUN_ENV}) cannot be"
            " in it:"
            f" use reclaim acquire inside `reclaim run`, with the same {ENV_VAR}"
        )
    try:
        _check_run(registry, run_id, kind)
        _acquire(registry, run_id, backend, args, as_json)
    finally:
        registry.close()


def _check_run(registry: Registry, run_id: str, kind: str) -> None:
    run = registry.get_run(run_id)
    if run is None:
        _fail(
            f"run {run_id} ({RUN_ENV}) is not in the registry {registry.location}: it has ended,"
            f" or {ENV_VAR} names another registry; nothing was acquired for {kind}"
        )
    living = is_alive(run, now=registry.now())
    if run.state != RunState.OPEN or not living:
        owner = "alive" if living else "dead"
        _fail(
            f"run {run_id} is {run.state} and its owner (pid {run.owner.pid}) is {owner}:"
            f" it takes no new resources; nothing was acquired for {kind}"
        )


def _acquire(
    registry: Registry, run_id: str, backend: Backend[Any], args: dict[str, Any], as_json: bool
) -> None:
    kind = backend.kind
    taken = {r.name for r in registry.resources(run_id)}
    while True:
        # Many `reclaim acquire` processes share the run: a random sequence number (ten digits,
        # apart from the owner's own 1, 2, 3...) keeps their names apart.
        name = backend.adapt_name(make_name(run_id, 10**9 + secrets.randbelow(9 * 10**9)))
        if name not in taken:
            break
    # I1: the name is journaled before the backend creates anything (one copy: _acquire.py).
    # If this process dies from here on, the run's end, the watchdog or the sweeper releases it.
    try:
        resource_id, record = journal_plan(registry, run_id, "cli", backend, name)
    except Exception as exc:
        if registry.get_run(run_id) is None:  # the run ended between the check and now
            _fail(f"run {run_id} ended before {kind} {name!r} could be planned")
        if isinstance(exc, NotCreatedError):  # the registry could not journal it: says so
            _fail(str(exc), 1)
        reason = redact_text(f"{type(exc).__name__}: {exc}", args, backend.secret_fields)
        _fail(f"{kind} {name!r} could not be planned: {reason}; nothing was created", 1)
    try:
        with _stdout_to_stderr():
            value, record = backend.acquire(name)
    except Exception as exc:
        error = acquire_failed(
            registry, resource_id, backend, record, exc, run_id=run_id, actor="cli"
        )
        _fail(str(error), 1)
    registry.mark_acquired(resource_id, record)
    now = registry.get_resource(resource_id)
    if now is None or now.state != ResourceState.ACQUIRED:
        # The run ended (and released our planned entry) while the backend was creating it:
        # what was just created belongs to nobody now, so it goes at once.
        type(backend).release(record)
        _fail(f"run {run_id} ended while {kind} {name!r} was being created; it was released", 1)
    if isinstance(value, subprocess.Popen):
        # The child is the run's now, not this short-lived process's: do not warn that it is
        # still running when Python drops the Popen object at exit.
        warnings.filterwarnings("ignore", "subprocess .* is still running", ResourceWarning)
        shown: Any = value.pid
    else:
        shown = str(value)
    if as_json:
        click.echo(json.dumps({"id": resource_id, "kind": kind, "name": name, "value": shown}))
        return
    click.echo(shown)
    _errors.print(
        _line(
            (
                f"reclaim: acquired {kind} {name} as resource {resource_id} of run {run_id}"
                f" (release it early with `reclaim release {resource_id}`)",
                "dim",
            )
        )
    )


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """While a backend creates a resource, whatever it starts writes to stderr, not stdout.

    A process started by ``acquire`` (the ``process`` kind) would otherwise inherit the pipe of a
    shell's ``$(reclaim acquire ...)``, and the shell would wait for it to end.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@cli.command()
@click.argument("resource_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def release(location: str, resource_id: int, as_json: bool) -> None:
    """Release one resource now, by its id (as `reclaim status` and `reclaim acquire` show)."""
    registry = _open(location, create=False)
    resource = None if registry is None else registry.get_resource(resource_id)
    if registry is None or resource is None:
        _fail(f"there is no resource {resource_id} in the registry {_shown(location)}")
    try:
        outcome = release_resource(
            registry,
            resource_id,
            actor="cli",
            states=(ResourceState.PLANNED, ResourceState.ACQUIRED, ResourceState.FAILED),
        )
    finally:
        registry.close()
    data: dict[str, Any] = {
        "id": resource_id,
        "kind": resource.kind,
        "name": resource.name,
        "released": outcome.released,
    }
    if outcome.released:
        if as_json:
            click.echo(json.dumps(data))
        else:
            _console.print(f"released {resource.kind} {_describe(resource)}")
        return
    if outcome.skipped:
        message = (
            f"{resource.kind} {resource.name!r} (resource {resource_id}) is being released by"
            " another process (a watchdog, a sweep or its owner) right now; see `reclaim status`"
        )
    else:
        message = str(outcome.error)
    if as_json:
        click.echo(json.dumps({**data, "error": message}))
    _fail(message, 1, json_printed=as_json)


# --- demo ----------------------------------------------------------------------------------


@cli.command()
@click.pass_obj
def demo(location: str) -> None:
    """Watch reclaim clean up after a process killed with SIGKILL (no server needed)."""
    from reclaim._demo import run_demo  # noqa: PLC0415  (only this command needs it)

    # A registry that cannot be used is said here in one line, not in the child's traceback.
    registry = _open(location, create=True)
    if registry is not None:
        registry.close()
    try:
        ok = run_demo(location, _console)
    except ReclaimError as exc:
        _fail(str(exc))
    sys.exit(0 if ok else 1)


def main(argv: list[str] | None = None) -> None:
    """The console script's entry point."""
    global _json_errors  # noqa: PLW0603  (one process, one command line)
    args = sys.argv[1:] if argv is None else argv
    own = args[: args.index("--")] if "--" in args else args  # not the command of `run`
    _json_errors = "--json" in own
    try:
        result = cli.main(args=args, prog_name="reclaim", standalone_mode=False)
    except click.ClickException as exc:  # a usage error: the message, and JSON with --json
        exc.show()
        if _json_errors:
            click.echo(json.dumps({"error": exc.format_message(), "exit_status": exc.exit_code}))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _errors.print(Text("Aborted."))
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
