"""The backend contract (``Backend``, ``Leftover``, the record), the guard in front of every
subclass (I8), finding a kind by its name, and the redaction of records (I7).

Imported through :mod:`reclaim.backends`, never from here.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, Generic, TypeVar

from reclaim._errors import (
    BackendNotFoundError,
    ForeignNameError,
)
from reclaim.backends._guard import check_record
from reclaim.backends._names import (
    NAMES,
    NameStyle,
    ReclaimName,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "Leftover",
    "Record",
    "SecretRecord",
    "load_backend",
    "redact_record",
    "redact_text",
    "release_batch",
    "secret_record",
]

#: A resource's JSON record: what release needs to find and delete it, and nothing live.
Record = dict[str, Any]

#: The entry-point group that maps kinds to backend classes.
ENTRY_POINT_GROUP: Final = "reclaim.backends"

ValueT = TypeVar("ValueT")

_REDACTED: Final = "***"

#: The methods that take a record and reach a server: each is wrapped so that the record passes
#: the guard first (I8, see _guard.py).
_GUARDED: Final = ("release", "arelease", "exists")


class Leftover:
    """Something found on a server under reclaim's prefix (for the registry-less sweep)."""

    __slots__ = ("created_at", "record", "run_id")

    def __init__(self, record: Record, run_id: str, created_at: float) -> None:
        self.record = record
        self.run_id = run_id
        self.created_at = created_at

    def __repr__(self) -> str:
        return f"Leftover({self.record.get('name')!r}, run_id={self.run_id!r})"

    @classmethod
    def of(cls, record: Record, name: ReclaimName) -> Leftover:
        """The leftover whose record is ``record`` and whose name is ``name`` (run id, time)."""
        return cls(record, name.run_id, name.created_at)


class Backend(Generic[ValueT]):
    """Base class of every kind of resource.

    Required: the class attribute :attr:`kind`, and :meth:`acquire`, :meth:`release` and
    :meth:`exists`. Everything else has a working default.

    Invariants a backend must keep (``reclaim.testing.check_backend`` checks them):

    - :meth:`plan` returns, *before anything is created*, a record from which :meth:`release`
      can find and delete what :meth:`acquire` will create (I1). Releasing a planned record whose
      resource was never created is a no-op.
    - :meth:`release` is a class method that needs only the record (I2): no live object, no
      state of the instance. It succeeds when the resource is already gone (I3).
    """

    #: The registry name of this kind, ``"<family>.<thing>"`` (e.g. ``"postgres.schema"``).
    kind: ClassVar[str] = ""

    #: Record fields that hold credentials: redacted in every output, never logged (I7).
    secret_fields: ClassVar[frozenset[str]] = frozenset()

    #: How this kind's server spells reclaim names (separator, an allowed user prefix, length).
    #: The guard accepts a record only when its ``name`` is, whole, a name of this style (I8).
    name_style: ClassVar[NameStyle] = NAMES

    #: Kinds that own everything under a prefix (Redis keys, PostgreSQL tables): the one
    #: separator that follows the reclaim name in that prefix. None: the kind owns exactly the
    #: one object of that name.
    prefix_separator: ClassVar[str | None] = None

    #: URL schemes of the servers this kind lives on (``("redis", "rediss")``): which kinds
    #: ``reclaim sweep --leftovers URL`` asks. Empty: the kind does not list leftovers.
    url_schemes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only our own (I8): every release/exists a subclass defines checks the record first.
        for attr in _GUARDED:
            raw = cls.__dict__.get(attr)
            if isinstance(raw, classmethod) and not getattr(raw.__func__, "_guarded", False):
                setattr(cls, attr, classmethod(_guard(raw.__func__)))

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The record's fields, besides ``name``, that reach the server as an object's identity,
        each as ``(field, what the record holds, exactly what it must hold)``.

        The guard refuses the record unless each matches exactly (I8). Override it when
        release acts on something other than ``name`` (a path, a key prefix); the default
        checks the ``prefix`` field of prefix-style kinds: the name plus
        :attr:`prefix_separator`.
        """
        if cls.prefix_separator is None:
            return ()
        return (("prefix", record.get("prefix"), name.text + cls.prefix_separator),)

    @classmethod
    def owned_prefix(cls, record: Mapping[str, Any]) -> str:
        """For prefix-style kinds: the record's prefix, once the guard has accepted it."""
        if cls.prefix_separator is None:
            raise TypeError(f"{cls.kind} owns one object, not a prefix")
        return check_record(cls, record).text + cls.prefix_separator

    def adapt_name(self, proposed: str) -> str:
        """Turn the name reclaim proposes into one that fits this kind's naming rules."""
        return proposed

    def plan(self, name: str) -> Record:
        """The record journaled before the resource is created: enough to release it (I1).

        The default, ``{"name": name}``, suits backends whose release needs nothing else. A
        backend that talks to a server adds the connection details release will need.
        """
        return {"name": name}

    def acquire(self, name: str) -> tuple[ValueT, Record]:
        """Create the resource called ``name``; return the value the user gets and its record."""
        raise NotImplementedError(f"the {type(self).__name__} backend must implement acquire()")

    async def aacquire(self, name: str) -> tuple[ValueT, Record]:
        """Async twin of :meth:`acquire`; by default runs it in a worker thread of the running
        async library (trio, or asyncio; anyio runs on either)."""
        return await in_worker_thread(self.acquire, name)

    @classmethod
    def release(cls, record: Record) -> None:
        """Delete the resource the record describes. Already gone: succeed, do nothing (I3)."""
        raise NotImplementedError(f"the {cls.__name__} backend must implement release()")

    #: Up to how many entries of one run a reaper (the watchdog, the sweeper) hands to
    #: :meth:`release_many` at once. 1, the default: each goes to :meth:`release` on its own.
    #: A batch is one critical section (a signal waits for its end, I9): keep it well under a
    #: second.
    batch_size: ClassVar[int] = 1

    @classmethod
    def release_many(cls, records: Sequence[Record]) -> Sequence[Exception | None]:
        """Release several entries of one run in one go (one ``SCAN`` for many Redis
        namespaces, one ``DROP SCHEMA a, b, c``): one outcome per record, in order, None for
        each that is gone now, else what went wrong. Raising fails them all.

        Every record has passed the guard (I8) before. A record that fails here is released
        once more on its own, with retries, before it is kept as failed (I5): a batch is a fast
        way to succeed, never a way to give up. The default releases each in turn.
        """
        outcomes: list[Exception | None] = []
        for record in records:
            try:
                cls.release(record)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    @classmethod
    async def arelease(cls, record: Record) -> None:
        """Async twin of :meth:`release`; by default runs it in a worker thread of the running
        async library."""
        await in_worker_thread(cls.release, record)

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Is the resource still there? For leak checks and ``reclaim sweep --dry-run``."""
        raise NotImplementedError(f"the {cls.__name__} backend must implement exists()")

    @classmethod
    def describe(cls, record: Record) -> str:
        """One line for people (status tables): by default the record's name."""
        return str(record.get("name", "?"))

    @classmethod
    def list_leftovers(cls, target: str) -> Iterable[Leftover]:
        """What exists at ``target`` (a URL or path) under reclaim's prefix. Optional.

        Each :class:`Leftover` carries a record :meth:`release` accepts, the run id and creation
        time parsed from the name (:meth:`NameStyle.parse` of :attr:`name_style`,
        :meth:`Leftover.of`). Must yield only objects whose whole name is a reclaim name:
        ``reclaim sweep --leftovers URL --yes`` releases what this yields whose run is not
        alive, after checking each with the same guard as release (I8).
        """
        raise NotImplementedError(f"the {cls.__name__} backend cannot list leftovers")

    def discard(self, value: ValueT) -> None:
        """Drop in-process handles after a successful in-process release (reap a child, close a
        connection). Never called by the watchdog or the sweeper, which have no value."""


# --- the running async library (for the default aacquire and arelease) -----------------------
# reclaim depends on neither trio nor anyio: trio is used only when the calling task runs under
# it (directly, or as anyio's trio backend), which it can only do if trio is imported already.

ResultT = TypeVar("ResultT")


def running_trio() -> Any:
    """The ``trio`` module when the calling task runs under trio, else None (asyncio)."""
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_task()  # raises RuntimeError outside trio
    except RuntimeError:
        return None
    return trio


async def in_worker_thread(func: Callable[..., ResultT], *args: Any) -> ResultT:
    """``func(*args)`` in a worker thread of the running library, without blocking its loop.

    Under trio the call cannot be cancelled (``trio.to_thread.run_sync``'s default: a thread
    cannot be stopped, so the cancellation arrives once it is done). Under asyncio a
    cancellation leaves the thread running to its end, as ``asyncio.to_thread`` does; a
    :class:`reclaim.Fixture` waits for it.
    """
    trio = running_trio()
    if trio is not None:
        result: ResultT = await trio.to_thread.run_sync(func, *args)
        return result
    import asyncio  # noqa: PLC0415  (kept out of the watchdog's imports)

    return await asyncio.to_thread(func, *args)


def _guard(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a classmethod's function taking a record) with the I8 guard in front."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def guarded_async(cls: type[Backend[Any]], record: Record, *a: Any, **k: Any) -> Any:
            check_record(cls, record)
            return await func(cls, record, *a, **k)

        guarded_async._guarded = True  # type: ignore[attr-defined]
        return guarded_async

    @functools.wraps(func)
    def guarded(cls: type[Backend[Any]], record: Record, *a: Any, **k: Any) -> Any:
        check_record(cls, record)
        return func(cls, record, *a, **k)

    guarded._guarded = True  # type: ignore[attr-defined]
    return guarded


def release_batch(backend: type[Backend[Any]], records: Sequence[Record]) -> list[Exception | None]:
    """``backend.release_many(records)`` behind the same guard as every release (I8): a record
    that is not, whole, our own gets its refusal as its outcome and never reaches the backend;
    a batch that raises gives every record it held that error."""
    outcomes: list[Exception | None] = [None] * len(records)
    accepted: list[int] = []
    for i, record in enumerate(records):
        try:
            check_record(backend, record)
        except ForeignNameError as exc:
            outcomes[i] = exc
        else:
            accepted.append(i)
    if not accepted:
        return outcomes
    try:
        results = list(backend.release_many([records[i] for i in accepted]))
    except Exception as exc:
        results = [exc] * len(accepted)
    if len(results) != len(accepted):
        wrong = TypeError(
            f"{backend.kind}: release_many returned {len(results)} outcomes for"
            f" {len(accepted)} records"
        )
        results = [wrong] * len(accepted)
    for i, result in zip(accepted, results, strict=True):
        outcomes[i] = result
    return outcomes


# --- finding a backend by its kind ---------------------------------------------------------

_cache: dict[str, type[Backend[Any]]] = {}


def load_backend(kind: str) -> type[Backend[Any]]:
    """The backend class registered for ``kind``.

    Looks in ``RECLAIM_BACKENDS`` (``kind=module:Class`` pairs separated by commas, for backends
    that are not packaged) and then in the entry-point group ``reclaim.backends``, where the
    built-ins are registered too.

    Raises:
        BackendNotFoundError: nothing provides ``kind``, or its module failed to import.
    """
    found = _cache.get(kind)
    if found is not None:
        return found
    target = _configured().get(kind)
    if target is None:
        from importlib.metadata import entry_points  # noqa: PLC0415  (25 ms; only when needed)

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == kind:
                target = ep.value
                break
    if target is None:
        raise BackendNotFoundError(kind)
    module_name, _, qualname = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise BackendNotFoundError(kind, f"{target} failed to import: {exc}") from exc
    except AttributeError as exc:
        raise BackendNotFoundError(kind, f"{target} does not exist") from exc
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise BackendNotFoundError(kind, f"{target} is not a reclaim.backends.Backend")
    _cache[kind] = obj
    return obj


def _configured() -> dict[str, str]:
    out: dict[str, str] = {}
    for item in os.environ.get("RECLAIM_BACKENDS", "").split(","):
        name, sep, target = item.strip().partition("=")
        if sep and name and ":" in target:
            out[name.strip()] = target.strip()
    return out


# --- secrets (I7) ----------------------------------------------------------------------------


class SecretRecord(dict[str, Any]):
    """A record whose ``repr`` shows its secret fields as ``***`` (I7).

    It is a plain dict in every other way (JSON, equality, ``record["password"]``). reclaim hands
    records to backends in this form, so that a traceback printed with its frames' arguments
    (pytest's long format, ``--showlocals``) never shows a password.
    """

    __slots__ = ("_secret_fields",)

    def __init__(self, record: Mapping[str, Any], secret_fields: Iterable[str]) -> None:
        super().__init__(record)
        self._secret_fields = frozenset(secret_fields)

    def __repr__(self) -> str:
        return repr(redact_record(self, self._secret_fields))

    __str__ = __repr__


def secret_record(backend: type[Backend[Any]] | Backend[Any], record: Mapping[str, Any]) -> Record:
    """``record`` as a :class:`SecretRecord` of ``backend``'s secret fields."""
    if isinstance(record, SecretRecord):
        return record
    return SecretRecord(record, backend.secret_fields)


def redact_record(record: Mapping[str, Any], secret_fields: Iterable[str]) -> dict[str, Any]:
    """A copy of the record with every secret field replaced by ``***``."""
    secrets = set(secret_fields)
    return {k: (_REDACTED if k in secrets and v else v) for k, v in record.items()}


def redact_text(text: str, record: Mapping[str, Any], secret_fields: Iterable[str]) -> str:
    """``text`` with every secret value of the record replaced by ``***``.

    Error messages of drivers sometimes quote a DSN or a token; they pass through here before
    they are stored or shown.
    """
    for field in secret_fields:
        value = record.get(field)
        for secret in _strings(value):
            if len(secret) >= 3:
                text = text.replace(secret, _REDACTED)
    return text


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
