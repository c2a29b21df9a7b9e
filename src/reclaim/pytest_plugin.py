"""reclaim's pytest plugin, loaded through the ``pytest11`` entry point: installing is enough.

Fixtures:

- ``reclaim``: a :class:`reclaim.Fixture` bound to the test (``reclaim.acquire(TempDir())``),
  released at the test's teardown.
- ``reclaim_session``: the same for the whole session (per xdist worker).
- :func:`reclaim_fixture` makes one for any other scope (module, class, package).

At session start the controller sweeps dead runs of the registry, if the registry exists (a
suite that acquires nothing creates no registry and starts no watchdog). Each process that
acquires (each xdist worker) is its own run whose parent is the session, so that the summary
covers them all, a crashed worker included: its watchdog releases what it held. The summary's
counts are read from the registry's event log for those runs, once each process has ended its
run (so a release that a timeout interrupted, retried at the run's end, is counted as it ended).

A release that fails at teardown does not change the test's outcome: it is a
:class:`reclaim.ReclaimWarning` naming the test, the resource and the error, counted in the
summary, and the entry stays in the registry for the next sweep. ``--reclaim-strict`` makes it a
teardown error, and checks with ``exists`` that each released resource is really gone.

Options (command line, or ini options in ``pyproject.toml``'s ``[tool.pytest.ini_options]``):

=========================  ====================  ===========================================
command line               ini option            meaning
=========================  ====================  ===========================================
``--reclaim-registry P``   ``reclaim_registry``  the registry file (default: RECLAIM_REGISTRY
                                                 or the per-user registry)
``--reclaim-grace D``      ``reclaim_grace``     leave dead runs younger than D (default 10s)
``--no-reclaim-sweep``     ``reclaim_sweep``     switch the start-up sweep off (default on)
``--reclaim-strict``       ``reclaim_strict``    failed or incomplete releases are errors
=========================  ====================  ===========================================
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import pytest

from reclaim import _settings as settings

if TYPE_CHECKING:
    from reclaim._fixture import Fixture, _Held
    from reclaim._persona import Persona

    class _PluginFixture(Fixture):
        def __init__(self, name: str, *, state: _Session) -> None: ...

    from reclaim._registry import Registry

__all__ = ["persona", "reclaim", "reclaim_fixture", "reclaim_session"]

# From reclaim._settings, which imports nothing heavy (loading the plugin must stay cheap).
_PARENT_ENV: Final = settings.PARENT_RUN.name
_LABEL_ENV: Final = settings.LABEL.name
_REGISTRY_ENV: Final = settings.REGISTRY.name

#: The default grace of the start-up sweep: a run that died this young may still have a statement
#: in flight on a server (a CREATE the server finishes after the client is gone), and its
#: watchdog is at work on it anyway.
DEFAULT_GRACE: Final = f"{settings.DEFAULT_PYTEST_GRACE:g}s"

_MAX_LISTED: Final = 20

Scope = Literal["session", "package", "module", "class", "function"]


# The plugin's state is plain classes, not dataclasses: a dataclass costs about 0.4 ms to
# define (its methods are compiled from source), and the plugin is loaded by every pytest run
# of the environment, most of which acquire nothing (issue 15).


class _Stats:
    """What only the process knows (strict mode's ``exists`` checks after release); everything
    else in the summary comes from the registry's event log."""

    __slots__ = ("failures", "leaked")

    def __init__(self) -> None:
        self.leaked = 0
        self.failures: list[str] = []

    def to_json(self) -> dict[str, Any]:
        """For the xdist controller (``workeroutput``): :meth:`add` reads it."""
        return {"leaked": self.leaked, "failures": list(self.failures)}

    def add(self, other: dict[str, Any]) -> None:
        self.leaked += int(other.get("leaked", 0))
        self.failures += [str(f) for f in other.get("failures", [])]


class _Crashed:
    """An xdist worker that went down without reporting: its id, and its pid when xdist knew it
    (execnet's remote info), to tell its own run from those of processes its tests started."""

    __slots__ = ("pid", "worker")

    def __init__(self, worker: str, pid: int | None) -> None:
        self.worker = worker
        self.pid = pid


class _Session:
    """The plugin's state for one pytest process (controller, worker, or a plain run)."""

    __slots__ = (
        "crashed",
        "end_error",
        "first_event",
        "grace",
        "session_id",
        "stats",
        "strict",
        "sweep",
        "sweep_error",
        "swept_failed",
        "swept_released",
        "swept_runs",
        "worker",
    )

    def __init__(
        self, *, session_id: str, worker: str | None, strict: bool, sweep: bool, grace: float
    ) -> None:
        self.session_id = session_id
        self.worker = worker
        self.strict = strict
        self.sweep = sweep
        self.grace = grace
        self.stats = _Stats()
        self.swept_released = 0
        self.swept_failed = 0
        self.swept_runs = 0
        self.sweep_error: str | None = None
        self.end_error: str | None = None
        self.first_event = 0  # events after this id belong to this session
        self.crashed: list[_Crashed] = []


_STATE: Final = pytest.StashKey[_Session]()


# --- options --------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reclaim", "reclaim: external resources that are always released")
    group.addoption(
        "--reclaim-registry",
        dest="reclaim_registry",
        metavar="PATH",
        default=None,
        help="the registry file (default: $RECLAIM_REGISTRY, else the per-user registry).",
    )
    group.addoption(
        "--reclaim-grace",
        dest="reclaim_grace",
        metavar="DURATION",
        default=None,
        help="start-up sweep: leave dead runs younger than this (90s, 5m;"
        f" default {DEFAULT_GRACE}).",
    )
    group.addoption(
        "--reclaim-sweep",
        dest="reclaim_sweep",
        action="store_true",
        default=None,
        help="sweep dead runs at session start (the default).",
    )
    group.addoption(
        "--no-reclaim-sweep",
        dest="reclaim_sweep",
        action="store_false",
        default=None,
        help="do not sweep at session start.",
    )
    group.addoption(
        "--reclaim-strict",
        dest="reclaim_strict",
        action="store_true",
        default=None,
        help="a failed release, or a resource that still exists after release, is a teardown"
        " error instead of a warning.",
    )
    parser.addini("reclaim_registry", "reclaim's registry file (relative to the ini file)")
    parser.addini(
        "reclaim_grace", "start-up sweep: leave dead runs younger than this", default=DEFAULT_GRACE
    )
    parser.addini("reclaim_sweep", "sweep dead runs at session start", type="bool", default=True)
    parser.addini(
        "reclaim_strict", "failed or incomplete releases are errors", type="bool", default=False
    )


def pytest_configure(config: pytest.Config) -> None:
    from reclaim._duration import parse_duration  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    _load_without_rewriting(config)

    grace_text = config.getoption("reclaim_grace") or config.getini("reclaim_grace")
    try:
        grace = parse_duration(str(grace_text))
    except ValueError as exc:
        raise pytest.UsageError(f"reclaim_grace: {exc}") from None
    sweep = config.getoption("reclaim_sweep")
    strict = config.getoption("reclaim_strict")

    registry = config.getoption("reclaim_registry")
    if registry:
        registry = os.path.abspath(registry)
    elif config.getini("reclaim_registry"):
        base = config.inipath.parent if config.inipath else config.rootpath
        registry = str(base / str(config.getini("reclaim_registry")))
    if registry:
        # Through the environment, so that watchdogs, xdist workers and the commands the tests
        # run (``reclaim status``, a subprocess that acquires) all use the same registry.
        os.environ[_REGISTRY_ENV] = registry

    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        session_id = str(workerinput.get("reclaim_session") or secrets.token_hex(4))
        worker: str | None = str(workerinput.get("workerid", "gw?"))
    else:
        session_id, worker = secrets.token_hex(4), None
    # Every run of this session (the controller's, each worker's) records the session as its
    # parent in the registry's parent_id column; the summary finds crashed workers' runs by it.
    # The label is for people.
    os.environ[_PARENT_ENV] = _parent(session_id)
    os.environ[_LABEL_ENV] = _label(worker, session_id)
    config.stash[_STATE] = _Session(
        session_id=session_id,
        worker=worker,
        strict=bool(config.getini("reclaim_strict") if strict is None else strict),
        sweep=bool(config.getini("reclaim_sweep") if sweep is None else sweep),
        grace=grace,
    )


#: The one module of reclaim whose asserts are meant for users: the kits' checks.
_REWRITTEN: Final = "reclaim.testing"


def _load_without_rewriting(config: pytest.Config) -> None:
    """pytest marks the whole package of every plugin for assertion rewriting, so each module
    of reclaim a session imports would be loaded through pytest's import hook (a pyc of its
    own, read object by object from the file): 67M instructions a session, about a third of
    what reclaim costs a suite beside its tests (issue 15). Only :mod:`reclaim.testing` has
    asserts meant for users, the conformance and crash kits' checks: it stays rewritten, and
    the rest load as Python loads them. The marks are the hook's private set; where a pytest
    has none, nothing changes but the speed."""
    hook = getattr(config.pluginmanager, "rewrite_hook", None)
    marks = getattr(hook, "_must_rewrite", None)
    if not isinstance(marks, set) or "reclaim" not in marks:
        return
    marks.discard("reclaim")
    marks.add(_REWRITTEN)
    cache = getattr(hook, "_marked_for_rewrite_cache", None)
    if isinstance(cache, dict):
        cache.clear()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the session's id to each worker (its run's label carries it)."""
    state = node.config.stash[_STATE]
    node.workerinput["reclaim_session"] = state.session_id


# --- the start-up sweep ---------------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash[_STATE]
    if state.worker is not None:
        return  # only the controller sweeps
    location = settings.default_location()
    if not _registry_exists(location):
        return  # nothing was ever acquired here: nothing to sweep, and nothing is created
    try:
        registry = _open(location)
    except FileNotFoundError:
        return  # a shared registry whose tables were never made: nothing to sweep
    except Exception as exc:
        state.sweep_error = f"cannot open the registry {_shown(location)}: {exc}"
        return
    try:
        state.first_event = registry.last_event_id()
        if state.sweep:
            from reclaim._sweep import sweep  # noqa: PLC0415  (loading the plugin imports nothing heavy)

            report = sweep(registry, grace=state.grace)
            state.swept_released = report.released
            state.swept_failed = report.failed
            state.swept_runs = len(report.runs_reaped)
    except Exception as exc:
        state.sweep_error = f"the start-up sweep of {_shown(location)} failed: {exc}"
    finally:
        registry.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[_STATE]
    if state.sweep_error:
        return [f"reclaim: {state.sweep_error}"]
    if state.swept_released or state.swept_failed:
        failed = f"; {state.swept_failed} failed (`reclaim status`)" if state.swept_failed else ""
        return [
            f"reclaim: reclaimed {state.swept_released} resources of {state.swept_runs} dead"
            f" runs from {_shown(settings.default_location())}{failed}"
        ]
    return []


# --- fixtures -------------------------------------------------------------------------------


#: The tests running now, the innermost last (pytester runs a session inside a test): their
#: plugin states and node ids, for the ``reclaim`` fixture.
_running: list[tuple[_Session, str]] = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Note the test that runs now: the ``reclaim`` fixture names itself by it. (The fixture
    asks for no other fixture: pytest makes the ``request`` fixture's definition anew, with a
    signature to inspect, each time a fixture that depends on it, ``pytestconfig`` included,
    is set up, which would cost more than all of reclaim's own work for a test.)"""
    _running.append((item.config.stash[_STATE], item.nodeid))
    try:
        return (yield)
    finally:
        _running.pop()


def _provide(state: _Session, label: str) -> Iterator[Fixture]:
    fixture = _fixture_class()(label, state=state)
    fixture.__enter__()
    yield fixture
    _finish(fixture, state, label)


@pytest.fixture
def reclaim() -> Iterator[Fixture]:
    """A :class:`reclaim.Fixture` for this test: what it acquires is released at teardown."""
    if not _running:
        raise RuntimeError("the reclaim fixture is for tests that pytest runs")
    state, test = _running[-1]
    yield from _provide(state, test)


@pytest.fixture(scope="session")
def reclaim_session(pytestconfig: pytest.Config) -> Iterator[Fixture]:
    """A :class:`reclaim.Fixture` for the whole session (per xdist worker): for expensive
    infrastructure created once, released when the session ends."""
    yield from _provide(pytestconfig.stash[_STATE], "session")


@pytest.fixture
def persona(reclaim: Fixture) -> Callable[..., Persona]:
    """A factory of :class:`reclaim.Persona`: ``sarah = persona("novice_sarah")`` gives an open
    persona, released at the test's teardown with everything else the test acquired."""
    from reclaim._persona import Persona  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    def make(name: str, **options: Any) -> Persona:
        return reclaim.use(Persona(name, **options))

    return make


def reclaim_fixture(
    scope: Scope = "function", *, name: str | None = None
) -> Callable[..., Iterator[Fixture]]:
    """Make a reclaim fixture of any scope; assign it in a ``conftest.py`` or test module::

        from reclaim.pytest_plugin import reclaim_fixture

        reclaim_module = reclaim_fixture("module")  # a fixture named "reclaim_module"
        reclaim_class = reclaim_fixture("class", name="per_class")

    Args:
        scope: a pytest scope.
        name: the fixture's name; by default ``reclaim_<scope>``.
    """

    def _scoped(request: pytest.FixtureRequest) -> Iterator[Fixture]:
        yield from _provide(request.config.stash[_STATE], request.node.nodeid or scope)

    _scoped.__name__ = name or f"reclaim_{scope}"
    return pytest.fixture(scope=scope, name=_scoped.__name__)(_scoped)


def _finish(fixture: Fixture, state: _Session, label: str) -> None:
    """Exit the fixture; release failures become warnings unless strict."""
    try:
        fixture.__exit__(None, None, None)
    except BaseExceptionGroup as group:
        if state.strict:
            raise
        from reclaim._errors import ReclaimWarning, ReleaseError  # noqa: PLC0415  (loading the plugin imports nothing heavy)

        failed, rest = group.split(ReleaseError)
        for exc in _leaves(failed):
            warnings.warn(
                ReclaimWarning(
                    f"{label}: {exc}. The entry stays in the registry and the next sweep retries"
                    " it (`reclaim status` shows it; --reclaim-strict makes this an error)."
                ),
                stacklevel=1,
            )
        if rest is not None:
            raise rest from None


def _leaves(group: BaseExceptionGroup[BaseException] | None) -> Iterator[BaseException]:
    if group is None:
        return
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


_cls: type[_PluginFixture] | None = None


def _fixture_class() -> type[_PluginFixture]:
    """The Fixture subclass the plugin hands out; built on first use, so that a suite that never
    asks for a reclaim fixture never imports the fixture machinery."""
    global _cls  # noqa: PLW0603
    if _cls is None:
        _cls = _make_fixture_class()
    return _cls


def _make_fixture_class() -> type[_PluginFixture]:
    from reclaim._errors import ReleaseError  # noqa: PLC0415  (loading the plugin imports nothing heavy)
    from reclaim._fixture import Fixture  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    class PytestFixture(Fixture):
        """A Fixture that, when strict, checks with ``exists`` that each release deleted."""

        def __init__(self, name: str, *, state: _Session) -> None:
            super().__init__(name)
            self._plugin = state

        def _release_held(self, held: _Held) -> bool:
            stats = self._plugin.stats
            released = super()._release_held(held)
            if not released:
                return False
            if self._plugin.strict and type(held.backend).exists(held.record):
                stats.leaked += 1
                message = (
                    f"{held.backend.kind} {held.record.get('name')!r} still exists after its"
                    " release: the backend's release() did not delete it"
                )
                stats.failures.append(f"{self.name}: {message}")
                raise ReleaseError(
                    message,
                    kind=held.backend.kind,
                    resource=str(held.record.get("name")),
                    run_id=held.run.id,
                    resource_id=held.resource_id,
                )
            return True

    return cast("type[_PluginFixture]", PytestFixture)  # the same shape, declared for mypy


# --- the end of the session -----------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After session fixtures are torn down: end this process's run, so that what is still
    held (a release a timeout interrupted, a fixture never exited) is released before the
    summary counts it; then hand the strict checks' counts to the xdist controller."""
    state = session.config.stash[_STATE]
    if "reclaim._run" in sys.modules:
        from reclaim._errors import ReclaimError  # noqa: PLC0415  (loading the plugin imports nothing heavy)
        from reclaim._run import end_run  # noqa: PLC0415  (loading the plugin imports nothing heavy)

        try:
            end_run(settings.default_location())
        except ReclaimError as exc:
            state.end_error = f"ending this session's run failed: {exc}"
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reclaim"] = state.stats.to_json()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: add a finished worker's strict counts; note a worker that crashed."""
    state = node.config.stash[_STATE]
    output = getattr(node, "workeroutput", None) or {}
    if "reclaim" in output:
        state.stats.add(output["reclaim"])
    elif error:
        # xdist asked the worker for its remote info when it started, and keeps the answer.
        info = getattr(node.gateway, "_cache_rinfo", None)
        pid = getattr(info, "pid", None)
        state.crashed.append(_Crashed(str(node.gateway.id), pid if isinstance(pid, int) else None))


def pytest_unconfigure(config: pytest.Config) -> None:
    """End this process's run if the session did not (as a clean exit would): release what is
    still held and stop the watchdog, rather than at interpreter exit."""
    if "reclaim._run" in sys.modules:
        from reclaim._run import end_run  # noqa: PLC0415  (loading the plugin imports nothing heavy)

        end_run(settings.default_location())


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash[_STATE]
    if state.worker is not None:
        return
    counts, error = _counts(state)
    swept = state.swept_released or state.swept_failed
    problems = (state.sweep_error, state.end_error, error)
    if not (counts.planned or swept or state.crashed or state.stats.leaked or any(problems)):
        return
    tr = terminalreporter
    tr.section("reclaim", sep="-", bold=True)
    parts = [
        f"{counts.acquired} acquired",
        f"{counts.released} released",
        f"{len(counts.failed)} failed",
    ]
    if counts.never_acquired:
        parts.append(f"{counts.never_acquired} failed acquisitions cleaned up")
    if state.stats.leaked:
        parts.append(f"{state.stats.leaked} still existed after release")
    parts.append(f"{state.swept_released} reclaimed from earlier runs")
    tr.write_line("reclaim: " + ", ".join(parts), red=bool(counts.failed or state.stats.leaked))
    if state.swept_failed:
        tr.write_line(
            f"reclaim: the start-up sweep failed to release {state.swept_failed} resources of"
            " earlier runs; they stay in the registry (`reclaim status`)",
            yellow=True,
        )
    if state.crashed:
        held = sum(counts.crashed_held.values())
        reclaimed = sum(counts.crashed_reclaimed.values())
        tr.write_line(
            f"reclaim: crashed workers {', '.join(c.worker for c in state.crashed)} held {held}"
            f" resources; their watchdogs released {reclaimed}"
            + ("" if reclaimed >= held else " so far (the rest: `reclaim status`)"),
            yellow=True,
        )
    for problem in problems:
        if problem:
            tr.write_line(f"reclaim: {problem}", red=True)
    failures = counts.failed + state.stats.failures
    for failure in failures[:_MAX_LISTED]:
        tr.write_line(f"  failed: {failure}", red=True)
    if len(failures) > _MAX_LISTED:
        tr.write_line(f"  ... and {len(failures) - _MAX_LISTED} more (`reclaim status`)")


class _Counts:
    """What the event log says of this session's runs (those whose parent is the session: the
    controller's, every xdist worker's, and those of processes the tests started)."""

    __slots__ = (
        "acquired",
        "crashed_held",
        "crashed_reclaimed",
        "failed",
        "never_acquired",
        "planned",
        "released",
    )

    def __init__(self) -> None:
        self.planned = 0
        self.acquired = 0
        self.released = 0  # of the acquired: released, by anyone (fixture, exit, watchdog, cli)
        self.never_acquired = 0  # planned, never acquired (a failed acquisition), released
        self.failed: list[str] = []  # still failed, and why
        self.crashed_held: dict[str, int] = {}
        self.crashed_reclaimed: dict[str, int] = {}


class _Entry:
    """One resource of the session, as its events tell it."""

    __slots__ = ("acquired", "by", "error", "kind", "name", "outcome", "run_id")

    def __init__(
        self,
        run_id: str,
        kind: str,
        name: str,
        *,
        acquired: bool,
        outcome: str | None,  # the last of released, failed, not_created, forgotten
        detail: dict[str, Any],  # its event's
    ) -> None:
        self.run_id = run_id
        self.kind = kind
        self.name = name
        self.acquired = acquired
        self.outcome = outcome
        self.by: str | None = detail.get("by")
        self.error: str | None = detail.get("error")


#: The actors that release for a dead owner: what they did, its process had not.
_REAPERS: Final = frozenset({"watchdog", "sweeper"})


def _counts(state: _Session) -> tuple[_Counts, str | None]:
    """The summary's counts, read from the registry's event log; and what went wrong reading
    it, if anything."""
    counts = _Counts()
    location = settings.default_location()
    if not _registry_exists(location):
        return counts, None  # nothing was acquired: no registry was created
    try:
        registry = _open(location)
    except FileNotFoundError:
        return counts, None  # a shared registry whose tables were never made
    except Exception as exc:
        return counts, f"cannot read the event log of {_shown(location)}: {exc}"
    try:
        runs, entries = _session_events(registry, _parent(state.session_id), state.first_event)
        failed_rows = {r.id: r for r in registry.resources() if r.run_id in runs}
    except Exception as exc:
        return counts, f"cannot read the event log of {_shown(location)}: {exc}"
    finally:
        registry.close()
    for resource_id, entry in entries.items():
        counts.planned += 1
        if entry.acquired:
            counts.acquired += 1
            counts.released += entry.outcome == "released"
        elif entry.outcome == "released":
            counts.never_acquired += 1
        if entry.outcome == "failed":
            row = failed_rows.get(resource_id)
            label = f"{row.fixture}: " if row is not None else ""
            counts.failed.append(f"{label}{entry.kind} {entry.name!r}: {entry.error}")
    for crashed in state.crashed:
        label = _label(crashed.worker, state.session_id)
        own = {
            run_id
            for run_id, opened in runs.items()
            if opened.get("label") == label and crashed.pid in (None, opened.get("pid"))
        }
        held = [
            e
            for e in entries.values()
            if e.run_id in own
            and not (e.outcome in ("released", "not_created", "forgotten") and e.by not in _REAPERS)
        ]
        counts.crashed_held[crashed.worker] = len(held)
        counts.crashed_reclaimed[crashed.worker] = sum(
            1 for e in held if e.outcome == "released" and e.by == "watchdog"
        )
    return counts, None


def _session_events(
    registry: Registry, parent: str, after: int
) -> tuple[dict[str, dict[str, Any]], dict[int, _Entry]]:
    """(the session's runs, each with its ``run.opened`` detail; their resources' histories).
    The registry groups a resource's events itself (three a test): a detail is decoded only
    where a resource ended, once per text (most say the same)."""
    runs: dict[str, dict[str, Any]] = {}
    for run_id, text in registry.run_openings(after):
        detail = json.loads(text)
        if detail.get("parent") == parent and run_id is not None:
            runs[run_id] = detail
    entries: dict[int, _Entry] = {}
    details: dict[str, dict[str, Any]] = {}
    for resource_id, run_id, kind, name, acquired, outcome, said in registry.resource_histories(
        after
    ):
        if run_id not in runs:
            continue
        ended: dict[str, Any] = {}  # the outcome's detail, once it ended
        if said is not None:
            cached = details.get(said)
            ended = cached if cached is not None else details.setdefault(said, json.loads(said))
        entries[resource_id] = _Entry(
            str(run_id),
            str(kind),
            str(name),
            acquired=bool(acquired),
            outcome=None if outcome is None else outcome.removeprefix("resource."),
            detail=ended,  # only read, never changed
        )
    return runs, entries


# --- small helpers --------------------------------------------------------------------------


def _label(worker: str | None, session_id: str) -> str:
    """The label of the runs of a pytest process (for people, and for the summary to find a
    crashed worker's run)."""
    return f"pytest {worker or 'main'} session {session_id}"


def _parent(session_id: str) -> str:
    """What the runs of a pytest session record as their parent."""
    return f"pytest-session:{session_id}"


def _shown(location: str) -> str:
    from reclaim._registry import shown_location  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    return shown_location(location)


def _registry_exists(location: str) -> bool:
    return "://" in location or os.path.exists(location)


def _open(location: str) -> Registry:
    from reclaim._registry import open_registry  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    return open_registry(location, create=False)
