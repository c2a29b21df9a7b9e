"""reclaim's pytest plugin, loaded through the ``pytest11`` entry point: installing is enough.

Fixtures:

- ``reclaim``: a :class:`reclaim.Fixture` bound to the test (``reclaim.acquire(TempDir())``),
  released at the test's teardown.
- ``reclaim_session``: the same for the whole session (per xdist worker).
- :func:`reclaim_fixture` makes one for any other scope (module, class, package).

At session start the controller sweeps dead runs of the registry, if the registry exists (a
suite that acquires nothing creates no registry and starts no watchdog). Each process that
acquires (each xdist worker) is its own run, labelled with the session's id so that the summary
covers them all, a crashed worker included: its watchdog releases what it held.

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

import dataclasses
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
    from reclaim.backends import Record

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


@dataclasses.dataclass
class _Stats:
    """What the fixtures of one process did."""

    acquired: int = 0
    released: int = 0
    failed: int = 0
    leaked: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    runs: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: dict[str, Any]) -> None:
        self.acquired += int(other.get("acquired", 0))
        self.released += int(other.get("released", 0))
        self.failed += int(other.get("failed", 0))
        self.leaked += int(other.get("leaked", 0))
        self.failures += [str(f) for f in other.get("failures", [])]
        self.runs += [str(r) for r in other.get("runs", [])]


@dataclasses.dataclass
class _Session:
    """The plugin's state for one pytest process (controller, worker, or a plain run)."""

    session_id: str
    worker: str | None
    strict: bool
    sweep: bool
    grace: float
    stats: _Stats = dataclasses.field(default_factory=_Stats)
    swept_released: int = 0
    swept_failed: int = 0
    swept_runs: int = 0
    sweep_error: str | None = None
    first_event: int = 0  # events after this id belong to this session
    crashed: list[str] = dataclasses.field(default_factory=list)


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
    os.environ[_LABEL_ENV] = f"pytest {worker or 'main'} session {session_id}"
    config.stash[_STATE] = _Session(
        session_id=session_id,
        worker=worker,
        strict=bool(config.getini("reclaim_strict") if strict is None else strict),
        sweep=bool(config.getini("reclaim_sweep") if sweep is None else sweep),
        grace=grace,
    )


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
    location = _location()
    if not _registry_exists(location):
        return  # nothing was ever acquired here: nothing to sweep, and nothing is created
    try:
        registry = _open(location)
    except Exception as exc:
        state.sweep_error = f"cannot open the registry {location}: {exc}"
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
        state.sweep_error = f"the start-up sweep of {location} failed: {exc}"
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
            f" runs from {_location()}{failed}"
        ]
    return []


# --- fixtures -------------------------------------------------------------------------------


def _provide(request: pytest.FixtureRequest, label: str) -> Iterator[Fixture]:
    state = request.config.stash[_STATE]
    fixture = _fixture_class()(label, state=state)
    fixture.__enter__()
    yield fixture
    _finish(fixture, state, label)


@pytest.fixture
def reclaim(request: pytest.FixtureRequest) -> Iterator[Fixture]:
    """A :class:`reclaim.Fixture` for this test: what it acquires is released at teardown."""
    yield from _provide(request, request.node.nodeid)


@pytest.fixture(scope="session")
def reclaim_session(request: pytest.FixtureRequest) -> Iterator[Fixture]:
    """A :class:`reclaim.Fixture` for the whole session (per xdist worker): for expensive
    infrastructure created once, released when the session ends."""
    yield from _provide(request, "session")


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
        yield from _provide(request, request.node.nodeid or scope)

    _scoped.__name__ = name or f"reclaim_{scope}"
    return pytest.fixture(scope=scope, name=_scoped.__name__)(_scoped)


def _finish(fixture: Fixture, state: _Session, label: str) -> None:
    """Exit the fixture; release failures become warnings unless strict."""
    from reclaim._errors import ReclaimWarning, ReleaseError  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    try:
        fixture.__exit__(None, None, None)
    except BaseExceptionGroup as group:
        if state.strict:
            raise
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
        """A Fixture that counts for the summary and, when strict, checks releases."""

        def __init__(self, name: str, *, state: _Session) -> None:
            super().__init__(name)
            self._plugin = state

        def _acquired(self, held: _Held, value: Any, record: Record) -> None:
            super()._acquired(held, value, record)
            self._plugin.stats.acquired += 1

        def _release_held(self, held: _Held) -> bool:
            stats = self._plugin.stats
            try:
                released = super()._release_held(held)
            except BaseException as exc:
                stats.failed += 1
                stats.failures.append(f"{self.name}: {exc}")
                raise
            if not released:
                return False
            stats.released += 1
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
    """After session fixtures are torn down: note this process's run, and hand the counts to
    the xdist controller."""
    state = session.config.stash[_STATE]
    run = _existing_run()
    if run is not None:
        state.stats.runs.append(run.id)
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reclaim"] = dataclasses.asdict(state.stats)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: add a finished worker's counts; note a worker that crashed."""
    state = node.config.stash[_STATE]
    output = getattr(node, "workeroutput", None) or {}
    if "reclaim" in output:
        state.stats.add(output["reclaim"])
    elif error:
        state.crashed.append(str(node.gateway.id))


def pytest_unconfigure(config: pytest.Config) -> None:
    """End this process's run now (as a clean exit would): release what is still held and stop
    the watchdog, rather than at interpreter exit."""
    if "reclaim._run" in sys.modules:
        from reclaim._run import end_run  # noqa: PLC0415  (loading the plugin imports nothing heavy)

        end_run(_location())


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash[_STATE]
    if state.worker is not None:
        return
    stats = state.stats
    crashed = _crashed_counts(state) if state.crashed else None
    swept = state.swept_released or state.swept_failed
    if not (stats.acquired or stats.failed or swept or crashed or state.sweep_error):
        return
    tr = terminalreporter
    tr.section("reclaim", sep="-", bold=True)
    parts = [
        f"{stats.acquired} acquired",
        f"{stats.released} released",
        f"{stats.failed} failed",
    ]
    if stats.leaked:
        parts.append(f"{stats.leaked} still existed after release")
    parts.append(f"{state.swept_released} reclaimed from earlier runs")
    tr.write_line("reclaim: " + ", ".join(parts), red=bool(stats.failed or stats.leaked))
    if state.swept_failed:
        tr.write_line(
            f"reclaim: the start-up sweep failed to release {state.swept_failed} resources of"
            " earlier runs; they stay in the registry (`reclaim status`)",
            yellow=True,
        )
    if crashed is not None:
        held, reclaimed = crashed
        tr.write_line(
            f"reclaim: crashed workers {', '.join(state.crashed)} held {held} resources; their"
            f" watchdogs released {reclaimed}"
            + ("" if reclaimed >= held else " so far (the rest: `reclaim status`)"),
            yellow=True,
        )
    if state.sweep_error:
        tr.write_line(f"reclaim: {state.sweep_error}", red=True)
    for failure in stats.failures[:_MAX_LISTED]:
        tr.write_line(f"  failed: {failure}", red=True)
    if len(stats.failures) > _MAX_LISTED:
        tr.write_line(f"  ... and {len(stats.failures) - _MAX_LISTED} more (`reclaim status`)")


def _crashed_counts(state: _Session) -> tuple[int, int] | None:
    """(resources the crashed workers' runs held, how many of them are released), read from the
    registry's events of this session."""
    location = _location()
    if not _registry_exists(location):
        return None
    try:
        registry = _open(location)
    except Exception:
        return None
    try:
        runs: set[str] = set()
        held: set[int] = set()
        released: set[int] = set()
        parent = _parent(state.session_id)
        reported = set(state.stats.runs)
        after = state.first_event
        while page := registry.events(after_id=after, limit=5000):
            after = page[-1].id
            for event in page:
                if event.event == "run.opened":
                    if event.detail.get("parent") == parent:
                        runs.add(str(event.run_id))
                elif event.run_id in runs and event.run_id not in reported:
                    if event.event == "resource.planned" and event.resource_id is not None:
                        held.add(event.resource_id)
                    elif event.event == "resource.released" and event.resource_id is not None:
                        released.add(event.resource_id)
        return len(held), len(released & held)
    finally:
        registry.close()


# --- small helpers --------------------------------------------------------------------------


def _parent(session_id: str) -> str:
    """What the runs of a pytest session record as their parent."""
    return f"pytest-session:{session_id}"


def _location() -> str:
    from reclaim._registry import default_location  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    return default_location()


def _registry_exists(location: str) -> bool:
    return "://" in location or os.path.exists(location)


def _open(location: str) -> Registry:
    from reclaim._registry import open_registry  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    return open_registry(location, create=False)


def _existing_run() -> Any:
    if "reclaim._run" not in sys.modules:
        return None
    from reclaim._run import existing_run  # noqa: PLC0415  (loading the plugin imports nothing heavy)

    return existing_run(_location())
