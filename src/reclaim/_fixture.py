"""The user's API: a Fixture acquires resources and releases them, last in first out.

Layer 1 of the crash model. Everything a Fixture acquires is journaled in the registry before the
backend creates it (I1), so the layers below (watchdog, sweeper) can finish the job if this
process dies before its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Final, Protocol, TypeGuard, TypeVar

from reclaim._acquire import acquire_failed, journal_plan, unjournaled
from reclaim._errors import AcquireError, FixtureStateError, RegistryError
from reclaim._reaper import RetryPolicy, release_held
from reclaim._registry import Registry, ResourceRecord, ResourceState
from reclaim._run import Run, current_run
from reclaim._signals import critical, protected
from reclaim.backends import Backend, Record, secret_record
from reclaim.backends._base import in_worker_thread, running_trio

__all__ = ["Fixture"]

T = TypeVar("T")
F = TypeVar("F", bound="Fixture")
U = TypeVar("U")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class ContentLike(Protocol):
    """A testtools content object (``testtools.content.Content``), as the fixtures library
    passes details around."""

    content_type: Any

    def iter_bytes(self) -> Iterable[bytes]: ...


#: A detail for whoever reports a failure: text, bytes, a callable read when it is asked for,
#: or a testtools content object.
Detail = str | bytes | Callable[[], str | bytes] | ContentLike

#: The name of the detail in which a Fixture says what it acquired and released (getDetails).
LOG_DETAIL: Final = "reclaim"

#: In-process releases retry quickly: a test suite should not stall; the sweeper retries later.
IN_PROCESS_POLICY: Final = RetryPolicy(attempts=3, first_delay=0.05, factor=4.0, max_delay=1.0)


class _State(enum.Enum):
    #: Made, never entered (or entered and left: it may be entered again).
    IDLE = "idle"
    #: Inside its ``with`` block: acquisitions are allowed.
    OPEN = "open"
    #: Releasing what it holds.
    CLOSING = "closing"


class _Held:
    """One resource on the fixture's stack."""

    __slots__ = ("acquired_at", "backend", "fixture", "record", "resource_id", "run", "value")

    def __init__(
        self, backend: Backend[Any], run: Run, fixture: str, resource_id: int, record: Record
    ) -> None:
        self.backend = backend
        self.run = run
        self.fixture = fixture
        self.resource_id = resource_id
        self.record = record
        self.value: Any = _NOTHING
        self.acquired_at: float | None = None

    def entry(self) -> ResourceRecord:
        """The registry entry as this owner holds it (for a release without a claim)."""
        return ResourceRecord(
            id=self.resource_id,
            run_id=self.run.id,
            fixture=self.fixture,
            kind=self.backend.kind,
            name=str(self.record.get("name")),
            record=self.record,
            state=ResourceState.ACQUIRED if self.acquired_at else ResourceState.PLANNED,
            attempts=0,
            last_error=None,
            created_at=self.acquired_at or 0.0,
            updated_at=self.acquired_at or 0.0,
            acquired_at=self.acquired_at,
        )

    def __repr__(self) -> str:  # no record: it may hold credentials (I7)
        return f"<held {self.backend.kind} entry {self.resource_id}>"


class _Cleanup:
    __slots__ = ("args", "fn", "kwargs")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs


class _Child:
    __slots__ = ("fixture",)

    def __init__(self, fixture: Fixture) -> None:
        self.fixture = fixture


_NOTHING: Final = object()
_Entry = _Held | _Cleanup | _Child

_ACQUIRED: Final = "acquired"
_RELEASED: Final = "released"
#: A line of the "reclaim" detail: text, or an acquisition or release said when it is read
#: (what, the backend, the record, the entry, the run): not the held object, whose value the
#: log must not keep alive.
_LogLine = str | tuple[str, type[Backend[Any]], Record, int, str]


class Fixture:
    """A context manager (sync and async) that owns resources for the length of a block.

    ::

        with reclaim.Fixture("novice_sarah") as persona:
            workdir = persona.acquire(TempDir())
            server = persona.acquire(Process(["python", "-m", "http.server", "0"]))
        # both released here, last in first out, whether the block failed or not

    Subclasses acquire what they need in :meth:`setup` (or :meth:`asetup`). When set-up raises
    half-way, what it had acquired is released before the error propagates: ``with`` never calls
    ``__exit__`` when ``__enter__`` fails, so the Fixture does it itself.

    It also speaks the ``fixtures`` library's protocol (:meth:`setUp`, :meth:`cleanUp`,
    :meth:`getDetails`, :meth:`addDetail`, :meth:`useFixture`), for ``useFixture`` under
    testtools and ``fixtures.TestWithFixtures``, and its async face runs under asyncio, trio
    and anyio (see docs/unittest.md and the README).

    Errors: when releases fail, every failure is raised together in one ``ExceptionGroup`` at
    exit, with the block's own error first if it had one. A ``KeyboardInterrupt`` or
    ``SystemExit`` from the block propagates unchanged (release failures are added to it as
    notes), so that Ctrl-C keeps meaning Ctrl-C. Failed releases stay in the registry as
    ``failed``; the next ``reclaim sweep`` retries them.

    Args:
        name: a name for people (status, events): a persona, a test, a role.
        registry: where to journal; by default ``RECLAIM_REGISTRY`` or the per-user registry.
    """

    def __init__(self, name: str = "fixture", *, registry: Registry | str | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(
                f"a Fixture's name is a str (a persona, a test, a role), not"
                f" {type(name).__name__} {name!r}: the registry journals it as text"
            )
        self.name = name
        self._registry = registry
        self._state = _State.IDLE
        self._stack: list[_Entry] = []
        self._details: dict[str, Detail] = {}
        self._children: list[Fixture] = []
        self._foreign: list[Any] = []  # fixtures-library fixtures used through useFixture
        self._log: list[_LogLine] = []  # what it acquired and released: the "reclaim" detail
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._state.value}, holds {len(self)}>"

    def __len__(self) -> int:
        return sum(1 for e in self._stack if isinstance(e, _Held))

    # --- the parts a subclass overrides ----------------------------------------------------

    def setup(self) -> None:
        """Acquire what the fixture provides. Released again if this raises half-way."""

    async def asetup(self) -> None:
        """Async set-up, used by ``async with``; runs :meth:`setup` by default."""
        self.setup()

    # --- entering and leaving --------------------------------------------------------------

    def _open(self) -> None:
        if self._state is not _State.IDLE:
            raise FixtureStateError(
                f"Fixture {self.name!r} is already open: a Fixture cannot be entered again until"
                " it has exited; use another Fixture (or fixture.use(...)) to nest"
            )
        self._state = _State.OPEN
        self._pid = os.getpid()
        self._details = {}
        self._children = []
        self._foreign = []
        self._log = []

    def __enter__(self: F) -> F:
        self._open()
        try:
            self.setup()
        except BaseException as exc:
            self._snapshot_details()
            self._raise_after(exc, self._release_all(), f"set-up of fixture {self.name!r} failed")
        return self

    async def __aenter__(self: F) -> F:
        self._open()
        try:
            await self.asetup()
        except BaseException as exc:
            self._snapshot_details()
            errors = await self._arelease_all()
            self._raise_after(exc, errors, f"set-up of fixture {self.name!r} failed")
        return self

    # Leaving a fixture is one critical section (I9), from its first bytecode: a Ctrl-C or
    # SIGTERM that arrives meanwhile (a second one while unwinding from the first, too) waits
    # until everything is released, then unwinds from here. Never swallowed, never a split.

    @protected
    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        errors = self._release_all()
        if errors:
            self._raise_after(exc, errors, f"releasing fixture {self.name!r} failed")

    @protected
    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        errors = await self._arelease_all()
        if errors:
            self._raise_after(exc, errors, f"releasing fixture {self.name!r} failed")

    @staticmethod
    def _raise_after(exc: BaseException | None, errors: list[BaseException], message: str) -> None:
        if exc is None or isinstance(exc, Exception):
            # A signal that arrived while releasing (raised once its release was done) unwinds
            # the stack itself, with the other failures as notes: Ctrl-C keeps meaning Ctrl-C.
            signalled = next((e for e in errors if isinstance(e, KeyboardInterrupt)), None)
            if signalled is not None:
                if exc is not None:
                    signalled.add_note(f"reclaim: while unwinding: {exc!r}")
                errors = [e for e in errors if e is not signalled]
                exc = signalled
        if exc is not None and not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit, cancellation: propagate it as it is.
            for error in errors:
                exc.add_note(f"reclaim: {error}")
            raise exc
        if exc is not None and not errors:
            raise exc
        group = [exc, *errors] if exc is not None else errors
        raise BaseExceptionGroup(message, group)

    # --- acquiring -------------------------------------------------------------------------

    def _plan(self, backend: Backend[Any]) -> _Held:
        if self._state is not _State.OPEN:
            raise FixtureStateError(
                f"Fixture {self.name!r} is not open: acquire inside `with {type(self).__name__}"
                "(...)` (or in its setup())"
            )
        if not backend.kind:
            raise TypeError(f"{type(backend).__name__} has no `kind`: every backend needs one")
        try:
            run = current_run(self._registry)
        except RegistryError as exc:
            raise unjournaled(backend.kind, None, exc) from None
        name = backend.adapt_name(run.next_name())
        # I1: the name is journaled before the backend creates anything (see _acquire.py).
        # Journaled and put on the stack as one step (I9): the caller's critical section
        # holds back a signal that would leave an entry this fixture does not know it holds.
        resource_id, record = journal_plan(
            run.registry, run.id, self.name, backend, name, defer=run.defers_marks
        )
        held = _Held(backend, run, self.name, resource_id, record)
        with self._lock:
            self._stack.append(held)
        return held

    def _acquired(self, held: _Held, value: Any, record: Record) -> None:
        # Inside the caller's critical section (acquire, aacquire), as _plan is.
        same = held.run.defers_marks and _same_record(record, held.record)
        try:
            # A record that adds nothing to the planned one is journaled with the next write:
            # a crash meanwhile leaves the planned entry, which every reaper releases all the
            # same (I1). One that adds (an id the server chose, a token) is journaled before
            # the test sees the resource.
            held.run.registry.mark_acquired(held.resource_id, record, defer=same)
        except RegistryError as exc:
            # Made, and journaled as planned (I1): it stays on the stack, and the exit (or the
            # watchdog, or a sweep) releases it from the planned record.
            name = str(held.record.get("name"))
            raise AcquireError(
                f"{held.backend.kind} {name!r} was created, but the registry could not"
                f" journal it as acquired: {exc}. It stays held under its planned entry"
                f" {held.resource_id} and is released when the fixture exits",
                kind=held.backend.kind,
                resource=name,
                run_id=held.run.id,
                resource_id=held.resource_id,
            ) from None
        if not same:  # the planned record is a SecretRecord of the backend already
            held.record = secret_record(held.backend, record)
        held.value = value
        held.acquired_at = time.time()
        self._log.append(_logged(_ACQUIRED, held))

    def _acquire_failed(self, held: _Held, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            return  # stays on the stack; released at exit like everything else
        # The backend may have created part of it: settle the planned entry now (_acquire.py).
        with self._lock:
            self._stack.remove(held)
        error = acquire_failed(
            held.run.registry,
            held.resource_id,
            held.backend,
            held.record,
            exc,
            run_id=held.run.id,
            actor="fixture",
            policy=IN_PROCESS_POLICY,
        )
        self._note(f"acquire failed: {error}")
        raise error from None

    def acquire(self, backend: Backend[T]) -> T:
        """Create a resource through ``backend`` and own it until the fixture exits.

        Raises:
            AcquireError: the backend failed; whatever it had created is released again.
            FixtureStateError: the fixture is not open.
        """
        # Journal, create, journal again: one critical section (I9). A signal meanwhile is
        # raised once the outcome is journaled: a backend interrupted half-way could leave a
        # lock of its driver held or an object made but never journaled as acquired.
        with critical():
            held = self._plan(backend)
            try:
                value, record = backend.acquire(str(held.record["name"]))
            except BaseException as exc:
                self._acquire_failed(held, exc)
                raise
            self._acquired(held, value, record)
        return value

    async def aacquire(self, backend: Backend[T]) -> T:
        """Async twin of :meth:`acquire`, under asyncio, trio or anyio.

        An acquisition once begun runs to its end and is journaled, even if the task is
        cancelled meanwhile (a backend's create cannot be taken back half-way, and a worker
        thread cannot be stopped); the cancellation is raised after that, and what was
        created is held by the fixture and released at its exit like everything else.
        """
        with critical():
            held = self._plan(backend)
            made, error, cancelled = await _run_to_end(
                backend.aacquire(str(held.record["name"])), running_trio()
            )
            if error is not None:
                try:
                    self._acquire_failed(held, error)
                    raise error
                except BaseException as exc:
                    if cancelled is None or exc is cancelled:
                        raise
                    cancelled.add_note(f"reclaim: while cancelled: {exc}")
                    raise cancelled from exc
            assert made is not None
            value, record = made
            self._acquired(held, value, record)
        if cancelled is not None:
            raise cancelled
        await _deliver_cancellation(running_trio())  # a checkpoint, as trio expects of it
        return value

    def add_cleanup(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, **kwargs)`` at exit, in last-in-first-out order with everything else.

        An async function is awaited when the fixture is left with ``async with``. Cleanups live
        in this process only: unlike acquired resources, the watchdog cannot run them.
        """
        if self._state is not _State.OPEN:
            raise FixtureStateError(f"Fixture {self.name!r} is not open: add cleanups inside it")
        with self._lock:
            self._stack.append(_Cleanup(fn, args, kwargs))

    def use(self, other: F) -> F:
        """Enter another fixture now and exit it with this one (composition)."""
        if self._state is not _State.OPEN:
            raise FixtureStateError(f"Fixture {self.name!r} is not open: use() it inside")
        other.__enter__()
        with self._lock:
            self._stack.append(_Child(other))
            self._children.append(other)
        return other

    async def ause(self, other: F) -> F:
        """Async twin of :meth:`use`."""
        if self._state is not _State.OPEN:
            raise FixtureStateError(f"Fixture {self.name!r} is not open: ause() it inside")
        await other.__aenter__()
        with self._lock:
            self._stack.append(_Child(other))
            self._children.append(other)
        return other

    # --- details ---------------------------------------------------------------------------

    def add_detail(self, name: str, content: Detail) -> None:
        """Attach something (a log, a URL, a callable that reads a file) for whoever reports a
        failure. Callables are read when details are asked for, or when set-up fails."""
        self._details[name] = content

    def get_details(self) -> dict[str, str | bytes]:
        """This fixture's details and those of the fixtures it uses; clashing names of children
        get ``-1``, ``-2``... suffixes."""
        out: dict[str, str | bytes] = {k: _read(v) for k, v in self._details.items()}
        for child in self._children:
            for key, value in child.get_details().items():
                _merge(out, key, value)
        for foreign in self._foreign_details():
            for key, content in foreign.items():
                _merge(out, key, _read(content))
        return out

    def _foreign_details(self) -> list[dict[str, Any]]:
        found = []
        for foreign in self._foreign:
            try:  # a fixtures-library fixture that was cleaned up has no details any more
                found.append(dict(foreign.getDetails()))
            except Exception:  # noqa: S112  (nothing to report from it, then)
                continue
        return found

    def _note(self, line: str) -> None:
        self._log.append(line)  # acquisitions and releases go as tuples: see _log_line

    def _snapshot_details(self) -> None:
        # Set-up failed: read callables now, before releasing destroys what they read.
        for key, value in list(self._details.items()):
            try:
                self._details[key] = _read(value)
            except Exception as exc:
                self._details[key] = f"<detail could not be read: {exc!r}>"

    # --- the fixtures / testtools protocol --------------------------------------------------
    # The ``fixtures`` library's protocol (setUp, cleanUp, getDetails, addDetail), so that
    # ``self.useFixture(reclaim.Fixture(...))`` works under testtools.TestCase and
    # fixtures.TestWithFixtures, and details reach testtools' reports. The same Fixture, the
    # same crash model: these are other names for entering and leaving it.

    def setUp(self) -> None:
        """Enter the fixture (the ``fixtures`` protocol): run :meth:`setup`. When it fails
        half-way, what it had acquired is released before the error propagates, and
        :meth:`getDetails` still says what was acquired and released, for the report.
        Subclasses override :meth:`setup`, not this."""
        self.__enter__()

    @protected
    def cleanUp(self, raise_first: bool = True) -> list[ExcInfo] | None:
        """Leave the fixture (the ``fixtures`` protocol): release everything, last in first
        out. Release failures are raised together as one ``ExceptionGroup``; with
        ``raise_first=False`` they are returned as ``sys.exc_info()`` tuples instead."""
        errors = self._release_all()
        if not raise_first:
            return [(type(e), e, e.__traceback__) for e in errors]
        if errors:
            self._raise_after(None, errors, f"releasing fixture {self.name!r} failed")
        return None

    def reset(self) -> None:
        """Release everything and set up again (the ``fixtures`` protocol)."""
        self.cleanUp()
        self.setUp()

    def addCleanup(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """:meth:`add_cleanup`, by its ``fixtures`` name."""
        self.add_cleanup(fn, *args, **kwargs)

    def addDetail(self, name: str, content_object: Detail) -> None:
        """:meth:`add_detail`, by its ``fixtures`` name: a testtools content object, text,
        bytes, or a callable read when the details are asked for."""
        self.add_detail(name, content_object)

    def useFixture(self, fixture: U) -> U:
        """Set up another fixture now and clean it up with this one: a reclaim Fixture (as
        :meth:`use`) or any object of the ``fixtures`` protocol (``fixtures.TempDir()``,
        ``fixtures.MonkeyPatch(...)``), whose details join this one's."""
        if isinstance(fixture, Fixture):
            return self.use(fixture)
        if self._state is not _State.OPEN:
            raise FixtureStateError(f"Fixture {self.name!r} is not open: useFixture() inside")
        setup: Callable[[], object] = getattr(fixture, "setUp")  # noqa: B009  (any protocol object)
        setup()
        with self._lock:
            self._stack.append(_Cleanup(getattr(fixture, "cleanUp"), (), {}))  # noqa: B009
            self._foreign.append(fixture)
        return fixture

    def getDetails(self) -> dict[str, Any]:
        """The details for testtools (the ``fixtures`` protocol): :meth:`get_details` as
        ``testtools.content.Content`` objects, read when the report asks for them, and the
        ``"reclaim"`` detail: what this fixture acquired and released, and what failed.
        Without testtools installed, a plain dict of text and bytes."""
        log = self._log  # this entry's log, even if the fixture is entered again later
        try:
            from testtools.content import Content  # noqa: PLC0415  (optional: only for testtools)
            from testtools.content_type import ContentType  # noqa: PLC0415
        except ImportError:
            plain: dict[str, Any] = {LOG_DETAIL: _log_text(log)}
            for key, read in self.get_details().items():
                _merge(plain, key, read)
            return plain
        text = ContentType("text", "plain", {"charset": "utf8"})
        binary = ContentType("application", "octet-stream")
        out: dict[str, Any] = {LOG_DETAIL: Content(text, lambda: [_log_text(log).encode()])}
        for key, value in self._details.items():
            if _is_content(value):
                _merge(out, key, value)
            else:
                kind = binary if isinstance(value, bytes) else text
                _merge(out, key, Content(kind, functools.partial(_read_chunks, value)))
        for child in self._children:
            for key, value in child.getDetails().items():
                _merge(out, key, value)
        for foreign in self._foreign_details():
            for key, value in foreign.items():
                _merge(out, key, value)
        return out

    # --- releasing -------------------------------------------------------------------------

    def _pop(self) -> _Entry | None:
        with self._lock:
            return self._stack.pop() if self._stack else None

    def _begin_release(self) -> bool:
        if self._state is _State.IDLE:
            return False  # exiting twice, or never entered: nothing to do (I3)
        self._state = _State.CLOSING
        if os.getpid() != self._pid:
            # A forked child leaving a block it inherited: the resources are the parent's.
            with self._lock:
                self._stack.clear()
            self._state = _State.IDLE
            return False
        return True

    def _release_all(self) -> list[BaseException]:
        """Release everything, last in first out; keep going after any error (a second Ctrl-C
        included); return the errors."""
        errors: list[BaseException] = []
        if not self._begin_release():
            return errors
        try:
            while self._stack:  # nothing else takes from it, and nothing adds while closing
                try:
                    # Taken off the stack and run as one step (I9): a signal in between would
                    # lose the entry. The signal is raised after it, and the rest still runs.
                    with critical():
                        entry = self._pop()
                        if entry is None:
                            break
                        self._run_entry(entry)
                except BaseException as exc:
                    errors.append(exc)
        finally:
            self._state = _State.IDLE
        return errors

    def _run_entry(self, entry: _Held | _Cleanup | _Child) -> None:
        if isinstance(entry, _Held):
            self._release_held(entry)
        elif isinstance(entry, _Cleanup):
            try:
                result = entry.fn(*entry.args, **entry.kwargs)
            except BaseException as exc:
                self._note(f"cleanup {entry.fn!r} failed: {exc!r}")
                raise
            if inspect.isawaitable(result):
                _close_awaitable(result)
                raise TypeError(
                    f"cleanup {entry.fn!r} is async: leave the fixture with `async with` to run it"
                )
        else:
            entry.fixture.__exit__(None, None, None)

    async def _arelease_all(self) -> list[BaseException]:
        errors: list[BaseException] = []
        if not self._begin_release():
            return errors
        trio = running_trio()
        cancelled: BaseException | None = None
        try:
            # Shielded from the cancellation of the library that runs us: trio's (and anyio's)
            # cancel scopes do not reach in; a native asyncio cancel is caught and kept.
            with _shielded(trio):
                while True:
                    try:
                        with critical():
                            entry = self._pop()
                            if entry is None:
                                break
                            cancelled = await self._arun_entry(entry, cancelled, trio)
                    except BaseException as exc:
                        errors.append(exc)
        finally:
            self._state = _State.IDLE
        if cancelled is not None:
            # Everything is released; now let the cancellation go on its way, unchanged.
            for error in errors:
                cancelled.add_note(f"reclaim: {error}")
            raise cancelled
        if not errors:
            # A trio or anyio cancellation that came meanwhile: raised now, all released.
            await _deliver_cancellation(trio)
        return errors

    async def _arun_entry(
        self, entry: _Held | _Cleanup | _Child, cancelled: BaseException | None, trio: Any
    ) -> BaseException | None:
        """Run one entry to its end even if the task is cancelled meanwhile; return the
        cancellation to re-raise once everything is released."""
        if isinstance(entry, _Held):
            work: Awaitable[Any] = in_worker_thread(self._release_held, entry)
        elif isinstance(entry, _Cleanup):
            try:
                result = entry.fn(*entry.args, **entry.kwargs)
                if not inspect.isawaitable(result):
                    return cancelled
                return await _to_the_end(result, cancelled, trio)
            except BaseException as exc:
                if not _is_cancellation(exc):
                    self._note(f"cleanup {entry.fn!r} failed: {exc!r}")
                raise
        else:
            work = entry.fixture.__aexit__(None, None, None)
        return await _to_the_end(work, cancelled, trio)

    def _release_held(self, held: _Held) -> bool:
        """Release one resource it holds (True: released; the error is raised otherwise)."""
        error = release_held(
            held.run.registry,
            held.resource_id,
            held.record,
            type(held.backend),
            entry=held.entry,
            actor="fixture",
            policy=IN_PROCESS_POLICY,
            defer=held.run.defers_marks,  # journaled with the next write, or flushed
        )
        if error is not None:
            self._note(f"release failed: {error}")
            raise error
        self._log.append(_logged(_RELEASED, held))
        if held.value is not _NOTHING:
            held.backend.discard(held.value)
        return True


async def _run_to_end(
    awaitable: Awaitable[T], trio: Any
) -> tuple[T | None, BaseException | None, BaseException | None]:
    """Await to the end despite cancellation: (its result, its error, the cancellation that
    arrived meanwhile, to be raised by the caller once it has journaled the outcome)."""
    result: T | None = None
    error: BaseException | None = None
    cancelled: BaseException | None = None

    async def run() -> None:
        nonlocal result, error
        try:
            result = await awaitable
        except BaseException as exc:
            error = exc

    with _shielded(trio):
        cancelled = await _to_the_end(run(), None, trio)
    return result, error, cancelled


async def _to_the_end(
    awaitable: Awaitable[Any], cancelled: BaseException | None, trio: Any
) -> BaseException | None:
    """Await to the end; the caller has shielded it (:func:`_shielded`) from trio's and anyio's
    cancellation. Under asyncio a cancellation is kept and returned instead."""
    if trio is not None:
        await awaitable
        return cancelled
    return await _despite_cancel(awaitable, cancelled)


def _shielded(trio: Any) -> contextlib.AbstractContextManager[Any]:
    """A cancel scope that shields what runs inside from trio's cancel scopes (under trio) or
    anyio's (under asyncio where anyio is imported: anyio re-cancels a task on every turn of the
    loop until it leaves the cancelled scope, which would spin :func:`_despite_cancel`), or
    nothing (plain asyncio, where :func:`_despite_cancel` keeps ``Task.cancel`` out)."""
    if trio is not None:
        return trio.CancelScope(shield=True)  # type: ignore[no-any-return]
    anyio: Any = sys.modules.get("anyio")
    if anyio is not None:
        return anyio.CancelScope(shield=True)  # type: ignore[no-any-return]
    return contextlib.nullcontext()


async def _deliver_cancellation(trio: Any) -> None:
    """Raise the cancellation that a shielded section held back, if there is one (trio's or
    anyio's; a native asyncio one was kept and is raised by the caller)."""
    if trio is not None:
        await trio.lowlevel.checkpoint_if_cancelled()
        return
    anyio: Any = sys.modules.get("anyio")
    if anyio is not None:
        await anyio.lowlevel.checkpoint_if_cancelled()


def _is_cancellation(exc: BaseException) -> bool:
    # asyncio is imported only by a program that uses it (16 ms with ssl, which a sync suite
    # would pay for nothing): without it, no asyncio cancellation can exist.
    if type(exc).__name__ == "Cancelled":  # trio's
        return True
    asyncio: Any = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


async def _despite_cancel(
    awaitable: Awaitable[Any], cancelled: BaseException | None
) -> BaseException | None:
    """Await to the end even if the task is cancelled meanwhile (releases must not be skipped);
    return the cancellation to re-raise once everything is released."""
    import asyncio  # noqa: PLC0415  (running under asyncio: imported already)

    task = asyncio.ensure_future(awaitable)
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise
            cancelled = exc
            continue
        return cancelled


def _read(value: Detail) -> str | bytes:
    if _is_content(value):  # a testtools content object: its text, or its bytes
        data = b"".join(value.iter_bytes())
        if getattr(value.content_type, "type", "") != "text":
            return data
        charset = getattr(value.content_type, "parameters", {}).get("charset", "utf8")
        return data.decode(charset, "replace")
    result: object = value() if callable(value) else value
    if not isinstance(result, str | bytes):
        raise TypeError(f"a detail must be text or bytes, not {type(result).__name__}")
    return result


def _read_chunks(value: Detail) -> list[bytes]:
    """A detail as testtools reads content: a list of byte chunks. A detail that cannot be read
    says so instead of failing the report."""
    try:
        data = _read(value)
    except Exception as exc:
        data = f"<detail could not be read: {exc!r}>"
    return [data.encode() if isinstance(data, str) else data]


def _log_text(log: list[_LogLine]) -> str:
    return "".join(f"{_log_line(line)}\n" for line in log) if log else "nothing acquired\n"


def _logged(what: str, held: _Held) -> _LogLine:
    return (what, type(held.backend), held.record, held.resource_id, held.run.id)


def _log_line(line: _LogLine) -> str:
    """A line of the "reclaim" detail. Acquisitions and releases, on the path of every test,
    are kept as tuples and said only here, when the detail is read."""
    if isinstance(line, str):
        return line
    what, backend, record, resource_id, run_id = line
    shown = _shown(backend, record)
    if what == _ACQUIRED:
        return f"acquired {shown} (entry {resource_id} of run {run_id})"
    return f"released {shown}"


def _merge(out: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` in ``out`` under ``key``, or ``key-1``, ``key-2``... if it is taken."""
    new, n = key, 0
    while new in out:
        n += 1
        new = f"{key}-{n}"
    out[new] = value


def _is_content(value: object) -> TypeGuard[ContentLike]:
    return hasattr(value, "iter_bytes") and hasattr(value, "content_type")


def _same_record(record: Record, planned: Record) -> bool:
    try:
        return dict(record) == dict(planned)
    except Exception:  # a record whose values do not compare: journal it at once
        return False


def _shown(backend: type[Backend[Any]], record: Record) -> str:
    """A held resource for people (the details' log): its kind and what it is."""
    try:
        what = backend.describe(record)
    except Exception:
        what = str(record.get("name", "?"))
    return f"{backend.kind} {what!r}"


def _close_awaitable(result: object) -> None:
    close = getattr(result, "close", None)
    if callable(close):
        close()
