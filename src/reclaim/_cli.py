"""The ``reclaim`` command: status, sweep, forget and demo.

Every command takes ``--json`` for machines; output for people uses rich (tables, colours on a
terminal, plain text elsewhere). Errors name the resource, what happened and what to do, and exit
with status 2; ``sweep`` exits with 1 when some release failed, so cron can alert.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from reclaim import __version__
from reclaim._errors import BackendNotFoundError, ReclaimError
from reclaim._reaper import SweepReport, is_alive, sweep
from reclaim._registry import Registry, ResourceRecord, RunRecord, default_location, open_registry
from reclaim.backends import load_backend

__all__ = ["main"]

# Not on a terminal (a pipe, CI logs): wide enough that paths and errors are never cut short.
_console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 400)
_errors = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 2) -> NoReturn:
    _errors.print(Text("reclaim: ", style="bold red") + Text(message))
    sys.exit(code)


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
    envvar="RECLAIM_REGISTRY",
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


def _status_json(runs: list[tuple[RunRecord, bool, list[ResourceRecord]]]) -> dict[str, Any]:
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


def _ago(then: float) -> str:
    seconds = max(0, int(time.time() - then))
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
    if registry is not None:
        for run in registry.list_runs():
            runs.append((run, is_alive(run), registry.resources(run.id)))
    if as_json:
        click.echo(json.dumps(_status_json(runs)))
        return
    if not runs:
        _console.print(f"Nothing is held. [dim](registry: {location})[/dim]")
        return
    for run, alive, resources in runs:
        life = "[green]alive[/green]" if alive else "[yellow]dead[/yellow]"
        _console.print(
            f"[bold]run {run.id}[/bold]  {run.label}  pid {run.owner.pid} on {run.owner.host}"
            f"  {life}  {run.state}  started {_ago(run.started_at)}"
        )
        if not resources:
            _console.print("  [dim]holds nothing[/dim]")
            continue
        table = Table(box=None, padding=(0, 2), show_edge=False, pad_edge=False)
        for column in ("id", "kind", "resource", "state", "tries", "last error"):
            table.add_column(column, style="dim" if column in ("id", "tries") else None)
        for r in resources:
            condition = _condition(r, alive)
            table.add_row(
                str(r.id),
                r.kind,
                _describe(r),
                Text(f"{r.state} ({condition})", style=_STATE_STYLE[condition]),
                str(r.attempts),
                r.last_error or "",
            )
        _console.print(table)
    _console.print(f"[dim]registry: {location}[/dim]")


# --- sweep ---------------------------------------------------------------------------------


@cli.command(name="sweep")
@click.option("--dry-run", is_flag=True, help="Show what would be released; change nothing.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Leave runs that started less than this long ago (their watchdog may be at work).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on standard output.")
@click.pass_obj
def sweep_command(location: str, dry_run: bool, grace: float, as_json: bool) -> None:
    """Release what dead runs left behind. Never touches a live run's resources."""
    registry = _open(location, create=False)
    report = SweepReport() if registry is None else sweep(registry, grace=grace, dry_run=dry_run)
    if as_json:
        data = report.to_json()
        if dry_run:
            data["would_release"] = [
                {"id": r.id, "kind": r.kind, "name": r.name, "exists": exists}
                for r, exists in report.would_release
            ]
        click.echo(json.dumps(data))
    else:
        _print_sweep(report, dry_run)
    if report.failed:
        sys.exit(1)


def _print_sweep(report: SweepReport, dry_run: bool) -> None:
    if dry_run:
        if not report.would_release:
            _console.print("Nothing to release.")
        for resource, exists in report.would_release:
            there = {True: "exists", False: "already gone", None: "unknown"}[exists]
            _console.print(
                f"would release  {resource.kind}  {_describe(resource)}  [dim]({there})[/dim]"
            )
    for outcome in report.outcomes:
        r = outcome.resource
        if r is None:
            continue
        if outcome.released:
            _console.print(f"[green]released[/green]  {r.kind}  {_describe(r)}")
        elif outcome.error is not None:
            _console.print(f"[bold red]failed[/bold red]    {r.kind}  {_describe(r)}")
            _console.print(f"          [red]{outcome.error}[/red]")
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
    _console.print(f"[bold]{line}.[/bold]")


# --- forget --------------------------------------------------------------------------------


@cli.command()
@click.argument("resource_id", type=int)
@click.option("--yes", is_flag=True, help="Do it: without --yes, only say what would go.")
@click.pass_obj
def forget(location: str, resource_id: int, yes: bool) -> None:
    """Drop a registry entry WITHOUT releasing it (for what was deleted by hand, or a kind that
    will never be installed again). The resource itself is left as it is."""
    registry = _open(location, create=False)
    resource = None if registry is None else registry.get_resource(resource_id)
    if registry is None or resource is None:
        _fail(f"there is no resource {resource_id} in the registry {location}")
    if not yes:
        _console.print(
            f"would forget {resource.kind} {resource.name!r} (state {resource.state});"
            " run again with --yes to drop the entry without releasing it"
        )
        return
    registry.forget(resource_id, actor="user")
    _console.print(f"forgot {resource.kind} {resource.name!r}; it was not released")


# --- demo ----------------------------------------------------------------------------------


@cli.command()
@click.pass_obj
def demo(location: str) -> None:
    """Watch reclaim clean up after a process killed with SIGKILL (no server needed)."""
    from reclaim._demo import run_demo  # noqa: PLC0415  (only this command needs it)

    try:
        ok = run_demo(location, _console)
    except ReclaimError as exc:
        _fail(str(exc))
    sys.exit(0 if ok else 1)


def main() -> None:
    """The console script's entry point."""
    cli(prog_name="reclaim")
