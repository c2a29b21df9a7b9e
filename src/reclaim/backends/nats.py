"""NATS JetStream: ``NatsStream(url)`` gives a stream of its own, ``NatsKeyValue(url)`` a KV
bucket of its own.

Both keep reclaim's name unchanged (``rc_<run>_<time>_<seq>``: no ``.``, ``*``, ``>``, spaces
or path separators, so a valid stream and bucket name). The name is journaled before the stream
is created (I1); release deletes the stream through the JetStream API (``$JS.API.STREAM.DELETE``),
and a stream that is gone already counts as released (I3). A KV bucket is the stream
``KV_<bucket>``; deleting it deletes the bucket with every key and revision.

Deleting a stream deletes its consumers too. For durable consumers the test creates elsewhere
(on a stream reclaim does not own), :func:`durable_consumer` builds a ``ConsumerConfig`` with an
``inactive_threshold``: the server deletes the consumer by itself after that long without
activity (nats-server 2.9+), even if no release ever runs.

nats-py is asyncio-only. ``aacquire``/``arelease`` run on the caller's event loop; the sync
``acquire``/``release`` (and the watchdog and sweeper, which are sync) run a private event loop
with ``asyncio.run``, in a worker thread when the calling thread already runs a loop. Each call
opens its own connection and closes it.

Records keep the server URL without credentials; a password or token goes in the secret fields
``password`` and ``token`` (I7).

Needs the ``nats`` extra (nats-py): ``pip install 'reclaim[nats]'``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import re
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn, TypeVar

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    NotCreatedError,
    ReclaimName,
    Record,
    ReleaseError,
    backend_error,
    require_extra,
    split_url,
)

try:
    import nats
    import nats.aio.client
    import nats.errors
    import nats.js.api
    import nats.js.errors
except ImportError:  # the extra is not installed: MissingExtraError when the backend is used
    _HAVE_DRIVER = False
else:
    _HAVE_DRIVER = True

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext
    from nats.js.api import ConsumerConfig

__all__ = ["NatsKeyValue", "NatsStream", "durable_consumer"]

_STREAM: Final = "nats.stream"
_KV: Final = "nats.kv"
_SCHEMES: Final = ("nats", "tls")

#: The stream behind a KV bucket (nats-py's and the server's convention).
_KV_STREAM: Final = "KV_"

#: One token of a subject: no wildcard inside, no ``.`` or whitespace, no ``$`` (the server's
#: own ``$JS``, ``$SYS``, ``$KV`` subjects are never a test's to capture).
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_\-:=~@#%+!]+")

#: Consumer names: what the server accepts in a path and an API subject.
_CONSUMER_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,255}")

#: Seconds: to connect; for each JetStream API request.
_CONNECT_TIMEOUT: Final = 5
_API_TIMEOUT: Final = 10.0

#: The default ``inactive_threshold`` of :func:`durable_consumer`, in seconds.
DEFAULT_INACTIVE_THRESHOLD: Final = 3600.0

T = TypeVar("T")


def durable_consumer(
    durable_name: str, *, inactive_threshold: float = DEFAULT_INACTIVE_THRESHOLD, **config: Any
) -> ConsumerConfig:
    """A ``ConsumerConfig`` for a durable consumer with a server-side safety net.

    The server deletes the consumer once it has had no activity (no subscriber, no fetch) for
    ``inactive_threshold`` seconds, durable or not (nats-server 2.9+), so a consumer a killed
    test created on a shared stream does not live for ever::

        await js.add_consumer("ORDERS", config=durable_consumer("worker-1", inactive_threshold=600))
        sub = await js.pull_subscribe_bind("worker-1", stream="ORDERS")

    Consumers on a stream that reclaim owns (:class:`NatsStream`) go with the stream anyway.

    Args:
        durable_name: letters, digits, ``_`` and ``-``.
        inactive_threshold: seconds without activity before the server deletes it.
        **config: any other ``nats.js.api.ConsumerConfig`` field (``ack_policy``,
            ``filter_subject``, ...).
    """
    require_extra(_HAVE_DRIVER, _STREAM, "nats", "nats-py")
    if not isinstance(durable_name, str) or not _CONSUMER_RE.fullmatch(durable_name):
        raise ValueError(
            f"durable consumer name {durable_name!r} must be letters, digits, '_' and '-'"
        )
    if not inactive_threshold > 0:
        raise ValueError(f"inactive_threshold must be positive seconds, not {inactive_threshold!r}")
    _check_fields(
        nats.js.api.ConsumerConfig, config, ("durable_name", "inactive_threshold", "name")
    )
    return nats.js.api.ConsumerConfig(
        durable_name=durable_name, inactive_threshold=float(inactive_threshold), **config
    )


class _JetStreamBackend(Backend[str]):
    """What streams and KV buckets share: the server URL, credentials, the event loops."""

    secret_fields = frozenset({"password", "token"})
    url_schemes = _SCHEMES

    #: "stream" or "KV bucket", for messages.
    _noun: ClassVar[str] = ""

    def __init__(self, url: str) -> None:
        require_extra(_HAVE_DRIVER, self.kind, "nats", "nats-py")
        self._server = _parse_url(url, self.kind)

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The stream release deletes is derived from the name (``KV_<name>`` for a bucket);
        the record's ``stream``, when it holds one, must be exactly that (I8). Records written
        before the field existed derive it."""
        expected = cls._stream_of(name.text)
        return (("stream", record.get("stream", expected), expected),)

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything that is not one (it would reach an API subject)."""
        return self.name_style.spell(proposed)

    def plan(self, name: str) -> Record:
        self.name_style.spell(name)
        return {"name": name, "stream": self._stream_of(name), **self._server}

    def acquire(self, name: str) -> tuple[str, Record]:
        return _run_sync(lambda: self.aacquire(name))

    async def aacquire(self, name: str) -> tuple[str, Record]:
        """Create it with one JetStream API request. Raises :class:`NotCreatedError` when
        nothing was created: the connection never opened (down, wrong port, credentials
        refused), nats-py refused the request before sending it, no JetStream received it, or
        the API answered it with a 4xx (a stream of that name exists with another configuration:
        somebody else's, never released on our behalf)."""
        record = self.plan(name)
        doing = f"create the {self._noun}"
        async with _jetstream(record, self.kind, doing, AcquireError, NotCreatedError) as js:
            try:
                await self._create(js, name)
            except Exception as exc:
                _fail(_create_failure(exc), self.kind, record, doing, exc)
        return name, record

    async def _create(self, js: JetStreamContext, name: str) -> None:
        raise NotImplementedError

    @classmethod
    def _stream_of(cls, name: str) -> str:
        return name

    @classmethod
    def release(cls, record: Record) -> None:
        """Delete the stream through the JetStream API; not found counts as done."""
        _run_sync(lambda: cls.arelease(record))

    @classmethod
    async def arelease(cls, record: Record) -> None:
        """Async twin of :meth:`release`, on the caller's event loop."""
        stream = cls._stream_of(record["name"])  # the guard checked the name, and the stream
        doing = f"delete the {cls._noun}"
        async with _jetstream(record, cls.kind, doing, ReleaseError) as js:
            try:
                await js.delete_stream(stream)
            except nats.js.errors.NotFoundError:
                return  # gone already (I3)
            except Exception as exc:
                _fail(ReleaseError, cls.kind, record, doing, exc)

    @classmethod
    def exists(cls, record: Record) -> bool:
        return _run_sync(lambda: cls._aexists(record))

    @classmethod
    async def _aexists(cls, record: Record) -> bool:
        stream = cls._stream_of(record["name"])
        doing = f"look up the {cls._noun}"
        async with _jetstream(record, cls.kind, doing, BackendError) as js:
            try:
                await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return False
            except Exception as exc:
                _fail(BackendError, cls.kind, record, doing, exc)
        return True

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"{record.get('url')} {cls._noun} {record.get('name')}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Streams (or buckets) on the server at ``target`` (a NATS URL) whose whole name is a
        reclaim name. Asks ``$JS.API.STREAM.NAMES``, page by page."""
        require_extra(_HAVE_DRIVER, cls.kind, "nats", "nats-py")
        server = _parse_url(target, cls.kind)
        names = _run_sync(lambda: _stream_names({"name": "", **server}, cls.kind))
        for stream in sorted(names):
            name = cls._name_of(stream)
            parsed = cls.name_style.parse(name)
            if name is None or parsed is None:
                continue  # not a name reclaim made, whole: never touched
            yield Leftover.of({"name": name, "stream": stream, **server}, parsed)

    @classmethod
    def _name_of(cls, stream: str) -> str | None:
        """The reclaim name behind a stream's name, or None when it is not this kind's."""
        return stream


class NatsStream(_JetStreamBackend):
    """A JetStream stream of its own, deleted (with its messages and consumers) at release.

    The value is the stream's name.

    Args:
        url: the server, ``nats://[user:password@]host:4222`` (``nats://token@host`` for a
            token) or ``tls://...``.
        subjects: the subjects the stream captures; ``{name}`` in a subject is replaced by the
            stream's name, so concurrent runs never capture each other's messages. By default
            the stream's name and everything under it: ``["{name}", "{name}.>"]``. Tokens are
            letters, digits and ``_-:=~@#%+!``, or the wildcards ``*`` and (last) ``>``; a
            subject starting with ``$`` (the server's own) is refused.
        **config: any other ``nats.js.api.StreamConfig`` field: ``max_age`` (seconds),
            ``storage`` (``StorageType.MEMORY``), ``max_msgs``, ``retention``, ...

    Raises:
        ValueError: the URL, a subject or a config field cannot be used.
        MissingExtraError: nats-py is not installed.
    """

    kind = _STREAM
    _noun = "stream"

    def __init__(self, url: str, *, subjects: Sequence[str] | None = None, **config: Any) -> None:
        super().__init__(url)
        if isinstance(subjects, str):
            raise TypeError("NatsStream subjects must be a list of subjects, not one string")
        self.subjects = list(subjects) if subjects is not None else ["{name}", "{name}.>"]
        if not self.subjects:
            raise ValueError("NatsStream subjects is empty: give at least one subject")
        for subject in self.subjects:
            _check_subject(subject.replace("{name}", "rc_00000000_0_0"))
        _check_fields(nats.js.api.StreamConfig, config, ("name", "subjects"))
        self.config = config

    def subjects_for(self, name: str) -> list[str]:
        """The subjects the stream called ``name`` captures."""
        return [subject.replace("{name}", name) for subject in self.subjects]

    async def _create(self, js: JetStreamContext, name: str) -> None:
        config = nats.js.api.StreamConfig(
            name=name, subjects=self.subjects_for(name), **self.config
        )
        await js.add_stream(config)


class NatsKeyValue(_JetStreamBackend):
    """A JetStream key-value bucket of its own, deleted with every key at release.

    The value is the bucket's name (``await js.key_value(name)`` opens it).

    Args:
        url: the server, as for :class:`NatsStream`.
        **config: any other ``nats.js.api.KeyValueConfig`` field: ``history``, ``ttl``
            (seconds), ``max_bytes``, ``storage``, ``description``, ...

    Raises:
        ValueError: the URL or a config field cannot be used.
        MissingExtraError: nats-py is not installed.
    """

    kind = _KV
    _noun = "KV bucket"

    def __init__(self, url: str, **config: Any) -> None:
        super().__init__(url)
        _check_fields(nats.js.api.KeyValueConfig, config, ("bucket",))
        self.config = config

    async def _create(self, js: JetStreamContext, name: str) -> None:
        await js.create_key_value(bucket=name, **self.config)

    @classmethod
    def _stream_of(cls, name: str) -> str:
        return _KV_STREAM + name

    @classmethod
    def _name_of(cls, stream: str) -> str | None:
        return stream[len(_KV_STREAM) :] if stream.startswith(_KV_STREAM) else None


# --- event loops ----------------------------------------------------------------------------


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from sync code, on a private event loop.

    From a thread that runs a loop already (a sync acquire inside an async test), that loop
    cannot be re-entered: the private loop runs in a worker thread, and this thread waits.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reclaim-nats") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


# --- connections and the JetStream API ------------------------------------------------------


@contextlib.asynccontextmanager
async def _jetstream(
    record: Record,
    kind: str,
    doing: str,
    error: type[BackendError],
    connect_error: type[BackendError] | None = None,
) -> AsyncIterator[JetStreamContext]:
    """A connection for one operation, closed after it. Fails fast: two connection attempts,
    no reconnects (the reaper has its own back-off). A connection that does not open raises
    ``connect_error`` (``error`` by default)."""
    async with _connected(record, kind, doing, error, connect_error) as nc:
        yield nc.jetstream(timeout=_API_TIMEOUT)


@contextlib.asynccontextmanager
async def _connected(
    record: Record,
    kind: str,
    doing: str,
    error: type[BackendError],
    connect_error: type[BackendError] | None = None,
) -> AsyncIterator[NATS]:
    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        seen.append(exc)  # nats-py would log each one; the last one goes in our message

    # nats.connect() leaves the socket of a refused connection (wrong password) open: our own
    # client, closed whatever happened.
    nc = nats.aio.client.Client()
    try:
        await nc.connect(
            servers=[record["url"]],
            user=record.get("user") or None,
            password=record.get("password") or None,
            token=record.get("token") or None,
            name="reclaim",
            connect_timeout=_CONNECT_TIMEOUT,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,  # type: ignore[arg-type]  # seconds: a float works
            error_cb=on_error,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        _fail(connect_error or error, kind, record, doing, seen[-1] if seen else exc, cause=exc)
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _stream_names(record: Record, kind: str) -> list[str]:
    names: list[str] = []
    doing = "list the streams"
    async with _connected(record, kind, doing, BackendError) as nc:
        offset = 0
        while True:
            try:
                reply = await nc.request(
                    "$JS.API.STREAM.NAMES",
                    json.dumps({"offset": offset}).encode(),
                    timeout=_API_TIMEOUT,
                )
                page = json.loads(reply.data)
            except Exception as exc:
                _fail(BackendError, kind, record, doing, exc)
            if "error" in page:
                error = page["error"]
                raise BackendError(
                    f"{kind}: could not {doing} at {record['url']}: the JetStream API answered"
                    f" {error.get('code')} {error.get('description')!r}",
                    kind=kind,
                    resource="",
                )
            batch = [str(n) for n in page.get("streams") or []]
            names += batch
            offset += len(batch)
            if not batch or offset >= int(page.get("total", 0)):
                return names


# --- names, URLs, errors --------------------------------------------------------------------


def _check_subject(subject: object) -> None:
    if not isinstance(subject, str):
        raise TypeError(f"a NATS subject must be a str, not {type(subject).__name__}")
    parts = subject.split(".")
    for i, part in enumerate(parts):
        if part == "*" or (part == ">" and i == len(parts) - 1):
            continue
        if not _TOKEN_RE.fullmatch(part):
            raise ValueError(
                f"NATS subject {subject!r} is not allowed: tokens are letters, digits and"
                " _-:=~@#%+!, or the wildcards * and (last) >, separated by single dots;"
                " subjects of the server's own ($JS, $SYS, ...) are refused"
            )


def _check_fields(config_type: type[Any], given: dict[str, Any], reclaims: Sequence[str]) -> None:
    known = {f.name for f in dataclasses.fields(config_type)}
    for key in given:
        if key in reclaims:
            raise ValueError(f"{key!r} is reclaim's to set, not a {config_type.__name__} option")
        if key not in known:
            raise ValueError(
                f"{key!r} is not a {config_type.__name__} field; known: {', '.join(sorted(known))}"
            )


def _parse_url(url: object, kind: str) -> dict[str, str]:
    """The server URL without credentials, and the credentials, as record fields.

    ``nats://TOKEN@host`` (a user part without ``:``) is a token, as nats-py reads it: it is
    handed to the toolkit as a password, so that no message ever quotes it."""
    if isinstance(url, str):
        scheme, sep, rest = url.partition("://")
        ends = [i for i in (rest.find(stop) for stop in "/?#") if i >= 0]
        authority = rest[: min(ends, default=len(rest))]
        userinfo, at, _hostport = authority.rpartition("@")
        if sep and at and ":" not in userinfo:
            url = f"{scheme}://:{rest}"
    server = split_url(url, kind=kind, schemes=_SCHEMES)
    token = server.password if not server.username else ""
    password = server.password if server.username else ""
    host = f"[{server.host}]" if ":" in server.host else server.host
    public = f"{server.scheme}://{host}" + (f":{server.port}" if server.port is not None else "")
    return {"url": public, "user": server.username, "password": password, "token": token}


def _create_failure(exc: BaseException) -> type[BackendError]:
    """:class:`NotCreatedError` when ``exc`` proves that the create request made nothing, else
    :class:`AcquireError` (a timeout, a lost connection or a 5xx: it may have been made)."""
    if isinstance(
        exc,
        # nats-py's own checks, before the request is sent (the TTL check only reads).
        nats.js.errors.InvalidBucketNameError
        | nats.js.errors.KeyHistoryTooLargeError
        | nats.js.errors.KeyValueLimitMarkerTTLNotSupportedError,
    ):
        return NotCreatedError
    if isinstance(exc, nats.js.errors.ServiceUnavailableError) and exc.code is None:
        return NotCreatedError  # no responders: nobody received the request
    refused = (  # the API answered the create with a 4xx: nothing was made
        isinstance(exc, nats.js.errors.APIError)
        and isinstance(exc.code, int)
        and 400 <= exc.code < 500
    )
    return NotCreatedError if refused else AcquireError


def _reason(exc: BaseException) -> str:  # noqa: PLR0911  (one answer per kind of failure)
    """What a driver error means for the user, with the advice that fits it."""
    if isinstance(exc, nats.errors.AuthorizationError) or (
        # nats-py raises the server's -ERR at connect as a plain nats.errors.Error.
        isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower()
    ):
        return "the server refused the credentials; check the URL's user and password or token"
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError):
        return "no JetStream answered; is JetStream enabled (nats-server -js) for this account?"
    if isinstance(exc, nats.js.errors.KeyHistoryTooLargeError):
        return "a KV bucket keeps at most 64 values per key (history=64 or less)"
    if isinstance(exc, nats.js.errors.APIError):
        return f"the JetStream API answered {exc.code} (error {exc.err_code}): {exc.description}"
    if isinstance(exc, OSError | nats.errors.NoServersError):
        return f"cannot reach the server ({type(exc).__name__}: {exc}); is it up?"
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time; is the server overloaded, or JetStream disabled?"
    return f"{type(exc).__name__}: {exc}"


def _fail(
    error: type[BackendError],
    kind: str,
    record: Record,
    doing: str,
    exc: BaseException,
    *,
    cause: BaseException | None = None,
) -> NoReturn:
    raise backend_error(
        error,
        kind,
        record,
        doing,
        exc,
        where=str(record.get("url") or "?"),
        reason=_reason,
        secret_fields=("password", "token"),
    ) from (cause or exc)
