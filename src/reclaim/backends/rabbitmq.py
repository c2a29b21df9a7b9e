"""RabbitMQ: queues, exchanges and throwaway vhosts.

Three kinds, each released from its JSON record alone (I2):

- :class:`RabbitQueue` (``rabbitmq.queue``) declares a queue and gives its name; release deletes
  it with ``queue.delete``, messages, bindings and consumers included.
- :class:`RabbitExchange` (``rabbitmq.exchange``) declares an exchange and gives its name;
  release deletes it with ``exchange.delete``, bindings included.
- :class:`RabbitVhost` (``rabbitmq.vhost``) creates a vhost through the management HTTP API,
  grants a user every permission on it and gives an AMQP URL for it; release deletes the vhost
  and with it everything inside.

Queues, exchanges and vhosts keep reclaim's name unchanged (``rc_<run>_<time>_<seq>``, the
default :data:`~reclaim.backends.NAMES` style): a valid AMQP name that never starts with the
reserved ``amq.``. Release and ``exists`` act only on a record whose ``name`` is, whole, such a
name (I8): never ``orders``, ``amq.direct``, the default vhost ``/`` or a user's vhost. A queue's
or exchange's record also holds its ``vhost``, which must be exactly the vhost its URL connects
to. What is already gone counts as released
(I3): ``queue.delete`` and ``exchange.delete`` of a missing name succeed on RabbitMQ, a
``404 NOT_FOUND`` that closes the channel (older brokers) is taken as "gone", and so is a vhost
that no longer exists, since nothing can live in a vhost that is not there.

Credentials (I7): the password is taken out of every URL before it reaches a record. The record
keeps the URL without it (shown by ``reclaim status``) and the password in a field of its own,
listed in ``secret_fields``; no error message carries it.

The registry-less sweep (:meth:`RabbitQueue.list_leftovers` and its siblings) takes the broker's
AMQP URL. AMQP cannot list anything, so the listing asks the management plugin: by default at
``http://<host>:15672`` (``https://<host>:15671`` for ``amqps``) with the AMQP URL's user, or
wherever the URL's ``management_url`` query parameter says. Only whole reclaim names are ever
listed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final, NoReturn
from urllib.parse import quote, unquote, urlencode, urlparse

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    MissingExtraError,
    NotCreatedError,
    ReclaimName,
    Record,
    ReleaseError,
    ServerURL,
    raise_backend_error,
    require_extra,
    split_url,
)
from reclaim.backends._http import (
    Context,
    Flow,
    FlowBackend,
    NothingMade,
    ProtocolError,
    Request,
    need_httpx,
    send,
    send_json,
    send_or_gone,
)

try:
    import pika  # type: ignore[import-untyped]  # pika ships no type information
    import pika.exceptions  # type: ignore[import-untyped]

    _HAVE_PIKA = True
except ImportError:  # the module imports without its driver; using it raises MissingExtraError
    _HAVE_PIKA = False

__all__ = ["RabbitExchange", "RabbitQueue", "RabbitVhost"]

_EXTRA: Final = "rabbitmq"

#: AMQP 0-9-1 short strings (argument names): at most 255 bytes of UTF-8.
_MAX_NAME_BYTES: Final = 255

#: The schemes of the broker's and of the management API's URLs.
_AMQP_SCHEMES: Final = ("amqp", "amqps")
_HTTP_SCHEMES: Final = ("http", "https")

#: Exchange types: the built-ins and plugin types (``x-delayed-message``, ``x-consistent-hash``).
_EXCHANGE_TYPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

#: The broker arms an Erlang timer with ``x-expires``; Erlang timers stop at 2**32 - 1 ms.
_MAX_EXPIRES_MS: Final = 2**32 - 1

#: RabbitMQ's answer when a connection names a vhost that does not exist (3.x and 4.x).
_VHOST_GONE: Final = re.compile(r"vhost .* not found")

#: The AMQP heartbeat timeout in seconds unless the URL sets ``heartbeat``: pika closes a
#: connection that stays silent this long plus 5 s, so a broker that stops answering in the
#: middle of a release fails it within about half a minute instead of hanging a watchdog.
_HEARTBEAT: Final = 10

#: Seconds for each management API request (connect, read, write).
_HTTP_TIMEOUT: Final = 10.0

#: The largest page the management API hands out.
_PAGE_SIZE: Final = 500

#: Defaults the management plugin listens on, by AMQP scheme.
_MANAGEMENT_DEFAULTS: Final = {"amqp": ("http", 15672), "amqps": ("https", 15671)}

#: The query parameter of an AMQP target URL that says where the management API is.
_MANAGEMENT_PARAM: Final = "management_url"

ArgumentValue = str | int | float | bool
"""What an ``x-`` argument may hold here: a scalar (AMQP tables allow more; reclaim needs none)."""


# --- the two backends that speak AMQP -----------------------------------------------------------


class _AmqpBackend(Backend[str]):
    """What queues and exchanges share: a broker URL, a record without the password, and the
    AMQP connection each operation opens and closes."""

    secret_fields = frozenset({"password"})
    url_schemes = ("amqp", "amqps")

    #: ``"queue"`` or ``"exchange"``: for messages and the management API's paths.
    _noun: str = ""

    def __init__(self, url: str, arguments: Mapping[str, ArgumentValue] | None) -> None:
        require_extra(_HAVE_PIKA, self.kind, _EXTRA, "pika")
        server = _amqp_url(url, self.kind)
        self.url, self.password = server.public, server.password
        self.arguments = _check_arguments(arguments, self.kind)

    def plan(self, name: str) -> Record:
        """The record: the name (a whole reclaim name, else ValueError), the URL without its
        password, the vhost that URL connects to, and the password."""
        return {
            "name": self.name_style.spell(name),
            "url": self.url,
            "vhost": _vhost_of(self.url),
            "password": self.password,
        }

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The vhost is part of a queue's or an exchange's identity: the record's ``vhost`` must
        be exactly the one its ``url`` connects to, as pika reads it (records of versions that
        kept no ``vhost`` have the URL's)."""
        url = record.get("url")
        if not isinstance(url, str):
            return (("url", url, "an amqp:// or amqps:// URL"),)
        vhost = _vhost_of(url)
        return (("vhost", record.get("vhost", vhost), vhost),)

    def acquire(self, name: str) -> tuple[str, Record]:
        """Declare it on a connection of its own. Raises :class:`NotCreatedError` when nothing
        was made: the connection or its channel never opened (broker down, wrong port, wrong
        password, no access to the vhost, the vhost missing), so the declare was never sent; or
        the broker refused the declare itself (a channel closed with ``403``/``405``/``406``:
        no permission, another connection's exclusive queue, one of that name with other
        arguments, which is somebody else's and never deleted on our behalf)."""
        record = self.plan(name)
        sent = False
        try:
            with _connection(record, self.kind) as conn:
                channel = conn.channel()
                sent = True
                self._declare(channel, name)
        except Exception as exc:
            made = sent and not _refused(exc)
            error = AcquireError if made else NotCreatedError
            _fail(error, type(self), record, f"declare the {self._noun}", exc)
        return record["name"], record

    def _declare(self, channel: Any, name: str) -> None:
        raise NotImplementedError

    @classmethod
    def _delete(cls, channel: Any, name: str) -> None:
        raise NotImplementedError

    @classmethod
    def _declare_passive(cls, channel: Any, name: str) -> None:
        raise NotImplementedError

    @classmethod
    def release(cls, record: Record) -> None:
        """Delete it. Already gone, or its vhost gone: succeed (I3)."""
        try:
            with _connection(record, cls.kind) as conn:
                cls._delete(conn.channel(), record["name"])
        except _VhostGone:
            return
        except Exception as exc:
            if _reply_code(exc) == 404:  # NOT_FOUND closes the channel: it is gone
                return
            _fail(ReleaseError, cls, record, f"delete the {cls._noun}", exc)

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Ask the broker with a passive declare (a ``404`` closes that channel: not there)."""
        try:
            with _connection(record, cls.kind) as conn:
                cls._declare_passive(conn.channel(), record["name"])
        except _VhostGone:
            return False
        except Exception as exc:
            code = _reply_code(exc)
            if code == 404:
                return False
            if code == 405:  # RESOURCE_LOCKED: another connection's exclusive queue
                return True
            _fail(BackendError, cls, record, f"look for the {cls._noun}", exc)
        return True

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"{cls._noun} {record.get('name', '?')} at {record.get('url', '?')}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """The queues (or exchanges) with a reclaim name in the vhost of ``target``, an AMQP URL.

        Listing needs the management plugin (AMQP cannot list): at ``http://<host>:15672``
        (``https://<host>:15671`` for ``amqps``) as the URL's user, or at the URL given in the
        query parameter ``management_url`` (``amqp://u:p@mq/%2F?management_url=http://mq:8080``).
        Each leftover's record holds ``target`` without that parameter, so release goes
        through AMQP as for anything acquired.
        """
        amqp, api = _management_for(target, cls.kind)
        vhost = _vhost_of(amqp.public)
        for name in _list_names(cls, api, f"{cls._noun}s", vhost):
            parsed = cls.name_style.parse(name)
            if parsed is not None:
                record = {
                    "name": parsed.text,
                    "url": amqp.public,
                    "vhost": vhost,
                    "password": amqp.password,
                }
                yield Leftover.of(record, parsed)


class RabbitQueue(_AmqpBackend):
    """A queue of its own, deleted at release with its messages, bindings and consumers.

    The value is the queue's name; publish to it through the default exchange (routing key =
    name) or bind it to an exchange.

    Args:
        url: the broker, ``amqp://user:password@host:5672/<vhost>`` (``%2F`` is the vhost
            ``/``) or ``amqps://...``; pika's query parameters (``heartbeat``, ...) are kept.
        durable: survive a broker restart. The default, True, also keeps it working on
            RabbitMQ 4.3+, which refuses transient queues that are not exclusive.
        expires: a safety net in **seconds** (a float; the broker counts milliseconds): the
            broker itself deletes the queue once it has been unused that long (no consumer, no
            ``basic.get``, no redeclare), even if reclaim never gets to. Sets ``x-expires``.
            Off by default: a test that idles longer than this would lose its queue.
        arguments: more ``x-`` arguments for ``queue.declare`` (``{"x-queue-type": "quorum"}``,
            ``{"x-max-length": 10}``), scalar values only.

    Note that :meth:`exists` (a passive declare) counts as a use and restarts the ``expires``
    clock, as any redeclare does.
    """

    kind = "rabbitmq.queue"
    _noun = "queue"

    def __init__(
        self,
        url: str,
        *,
        durable: bool = True,
        expires: float | None = None,
        arguments: Mapping[str, ArgumentValue] | None = None,
    ) -> None:
        super().__init__(url, arguments)
        self.durable = bool(durable)
        self.expires = expires
        if expires is not None:
            if "x-expires" in self.arguments:
                raise ValueError("RabbitQueue takes expires= or arguments['x-expires'], not both")
            self.arguments["x-expires"] = _expires_ms(expires)

    def _declare(self, channel: Any, name: str) -> None:
        channel.queue_declare(queue=name, durable=self.durable, arguments=self.arguments or None)

    @classmethod
    def _delete(cls, channel: Any, name: str) -> None:
        channel.queue_delete(queue=name)

    @classmethod
    def _declare_passive(cls, channel: Any, name: str) -> None:
        channel.queue_declare(queue=name, passive=True)


class RabbitExchange(_AmqpBackend):
    """An exchange of its own, deleted at release with its bindings.

    The value is the exchange's name.

    Args:
        url: the broker, as for :class:`RabbitQueue`.
        type: ``"topic"`` (default), ``"direct"``, ``"fanout"``, ``"headers"`` or a plugin's
            type such as ``"x-delayed-message"``.
        durable: survive a broker restart.
        auto_delete: let the broker delete it when its last binding goes (after it had one).
        internal: only other exchanges may publish to it.
        arguments: more arguments for ``exchange.declare`` (``{"alternate-exchange": "ae"}``),
            scalar values only.
    """

    kind = "rabbitmq.exchange"
    _noun = "exchange"

    def __init__(
        self,
        url: str,
        type: str = "topic",  # the AMQP field's own name, though it shadows the builtin
        *,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, ArgumentValue] | None = None,
    ) -> None:
        super().__init__(url, arguments)
        if not isinstance(type, str) or not _EXCHANGE_TYPE.fullmatch(type):
            raise ValueError(
                f"RabbitExchange type {type!r} is not an exchange type: use letters, digits and"
                " '.', '_', ':', '-' (e.g. 'topic', 'direct', 'fanout', 'x-delayed-message')"
            )
        self.exchange_type = type
        self.durable = bool(durable)
        self.auto_delete = bool(auto_delete)
        self.internal = bool(internal)

    def _declare(self, channel: Any, name: str) -> None:
        channel.exchange_declare(
            exchange=name,
            exchange_type=self.exchange_type,
            durable=self.durable,
            auto_delete=self.auto_delete,
            internal=self.internal,
            arguments=self.arguments or None,
        )

    @classmethod
    def _delete(cls, channel: Any, name: str) -> None:
        channel.exchange_delete(exchange=name)

    @classmethod
    def _declare_passive(cls, channel: Any, name: str) -> None:
        channel.exchange_declare(exchange=name, passive=True)


# --- the vhost, through the management API -----------------------------------------------------


class RabbitVhost(FlowBackend[str]):
    """A vhost of its own, with every permission for one user; deleted at release with all it
    holds (queues, exchanges, bindings, policies, connections).

    The value is an AMQP URL for the new vhost, with the user's credentials: hand it to the code
    under test as its broker URL.

    Args:
        api_url: the management HTTP API, ``http://admin:password@host:15672`` (a path prefix
            such as ``http://host/rabbitmq`` is kept; a trailing ``/api`` is optional). Its user
            needs the ``administrator`` tag to create and delete vhosts.
        amqp_url: the broker's AMQP URL for the user who gets the permissions (any vhost in it
            is replaced). By default the API's host on port 5672 (5671 with ``https``) and the
            API's user: ``amqp://admin:password@host:5672``.

    Only the API URL (without password) and the password go to the record: release needs
    nothing else. The user's AMQP password is in the value, never in the record.
    """

    kind = "rabbitmq.vhost"
    secret_fields = frozenset({"password"})
    url_schemes = ("amqp", "amqps")
    _creating = "create the vhost"
    _releasing = "delete the vhost"
    _looking = "look for the vhost"

    def __init__(self, api_url: str, *, amqp_url: str | None = None) -> None:
        need_httpx(self.kind, _EXTRA)
        api = _api_url(api_url, self.kind)
        self.api_url, self.password = api.public, api.password
        if amqp_url is None:
            amqp_url = _amqp_for(api)
        self._amqp = _amqp_url(amqp_url, self.kind)
        self.amqp_url = amqp_url
        self.user = self._amqp.username or "guest"

    def plan(self, name: str) -> Record:
        """The record: the name (a whole reclaim name, else ValueError; never ``/`` nor a
        user's vhost), the API URL without its password, and the password."""
        return {
            "name": self.name_style.spell(name),
            "api_url": self.api_url,
            "password": self.password,
        }

    @classmethod
    def _context(cls, record: Record) -> Context:
        return _management(cls, record, _record_api(record, cls.kind))

    def _create_flow(self, record: Record) -> Flow[None]:
        """Create the vhost and grant the user its permissions.

        Fails with :class:`NotCreatedError` when nothing was made: the API could not be
        reached, or refused the credentials, before the vhost was created; a vhost of that name
        exists already (somebody else's: a ``PUT`` would update it, and release would delete
        it); or the API answered the create with a ``4xx``. A failure after the vhost was
        created (the permissions) is :class:`AcquireError`: the vhost is released again.
        """
        api, name = _record_api(record, self.kind), record["name"]
        if (yield from _vhost_flow(api, name)) is not None:
            raise NothingMade(
                ProtocolError(
                    f"a vhost of that name exists already at {record['api_url']}: it is not"
                    " this run's; refusing to take it over"
                )
            )
        description = f"made by reclaim ({self.kind}); deleted when the test is done"
        create = _api_request(api, "PUT", ("vhosts", name), json={"description": description})
        yield from send(create, 201, 204, proof=True)
        grant = _api_request(
            api,
            "PUT",
            ("permissions", name, self.user),
            f"grant user {self.user!r} its permissions",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield from send(grant, 201, 204)

    def _acquired(self, record: Record, _made: None) -> tuple[str, Record]:
        path = "/" + quote(record["name"], safe="")
        return _compose(self._amqp, path=path), record

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        """Delete the vhost (``404``: already gone, success; I3)."""
        api, name = _record_api(record, cls.kind), record["name"]
        yield from send(_api_request(api, "DELETE", ("vhosts", name)), 200, 204, 404)

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        return (yield from _vhost_flow(_record_api(record, cls.kind), record["name"])) is not None

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"vhost {record.get('name', '?')} at {record.get('api_url', '?')}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """The vhosts with a reclaim name on the broker of ``target``.

        ``target`` is the broker's AMQP URL (the management API found as for
        :meth:`RabbitQueue.list_leftovers`) or the management API's own ``http(s)://`` URL.
        """
        given = split_url(target, kind=cls.kind, schemes=(*_HTTP_SCHEMES, *_AMQP_SCHEMES))
        if given.scheme in _HTTP_SCHEMES:
            api = _api_url(target, cls.kind)
        else:
            _, api = _management_for(target, cls.kind)
        for name in _list_names(cls, api, "vhosts", None):
            parsed = cls.name_style.parse(name)
            if parsed is not None:
                record = {"name": parsed.text, "api_url": api.public, "password": api.password}
                yield Leftover.of(record, parsed)


# --- checking what users and records hand us ---------------------------------------------------


def _check_arguments(arguments: Mapping[str, object] | None, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (arguments or {}).items():
        if not isinstance(key, str) or not key or len(key.encode()) > _MAX_NAME_BYTES:
            raise ValueError(f"{kind} argument name {key!r} must be a string of 1-255 bytes")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise ValueError(f"{kind} argument name {key!r} contains control characters")
        if not isinstance(value, str | int | float | bool) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise TypeError(
                f"{kind} argument {key!r} = {value!r}: only strings, integers, finite floats"
                " and booleans are accepted"
            )
        out[key] = value
    return out


def _expires_ms(expires: float) -> int:
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise TypeError(f"RabbitQueue expires must be a number of seconds, not {expires!r}")
    ms = round(expires * 1000) if math.isfinite(expires) else 0
    if not 1 <= ms <= _MAX_EXPIRES_MS:
        raise ValueError(
            f"RabbitQueue expires={expires!r} seconds is out of range: give between 0.001 and"
            f" {_MAX_EXPIRES_MS // 1000} seconds (the broker counts whole milliseconds)"
        )
    return ms


# --- URLs and their passwords (I7) --------------------------------------------------------------


def _amqp_url(url: str, kind: str) -> ServerURL:
    """A broker's URL, its password taken out (``ValueError`` unless ``amqp(s)://host``)."""
    return split_url(url, kind=kind, schemes=_AMQP_SCHEMES)


def _api_url(url: str, kind: str) -> ServerURL:
    """A management API URL with a user, its password taken out."""
    server = split_url(url, kind=kind, schemes=_HTTP_SCHEMES)
    if not server.username:
        raise ValueError(
            f"{kind}: the management API URL {server.public!r} names no user; give"
            " http://user:password@host:15672"
        )
    return server


def _with_secret(
    public: object, password: object, kind: str, schemes: tuple[str, ...]
) -> ServerURL:
    """A record's URL (without password) and its password field, together again."""
    server = split_url(public, kind=kind, schemes=schemes)
    secret = password if isinstance(password, str) and password else server.password
    return dataclasses.replace(server, password=secret)


def _record_api(record: Mapping[str, Any], kind: str) -> ServerURL:
    return _with_secret(record.get("api_url"), record.get("password"), kind, _HTTP_SCHEMES)


def _compose(
    server: ServerURL,
    *,
    scheme: str | None = None,
    user: tuple[str, str] | None = None,
    port: int | None = None,
    path: str | None = None,
    query: Iterable[tuple[str, str]] | None = None,
) -> str:
    """``server``'s URL, password included, with some of its parts replaced."""
    username, password = user if user is not None else (server.username, server.password)
    userinfo = ""
    if username:
        secret = f":{quote(password, safe='')}" if password else ""
        userinfo = f"{quote(username, safe='')}{secret}@"
    host = f"[{server.host}]" if ":" in server.host else server.host
    port = server.port if port is None else port
    hostport = f"{host}:{port}" if port is not None else host
    rest = list(server.query if query is None else query)
    tail = f"?{urlencode(rest)}" if rest else ""
    path = server.path if path is None else path
    return f"{scheme or server.scheme}://{userinfo}{hostport}{path}{tail}"


def _vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names, read exactly as pika reads it (no path: ``/``)."""
    path = urlparse(amqp_url).path
    return unquote(path.split("/")[1]) if len(path) > 1 else "/"


def _amqp_for(api: ServerURL) -> str:
    """The AMQP URL of the broker behind a management API URL: same host and user, port 5672
    (5671 for ``https``)."""
    scheme, port = ("amqps", 5671) if api.scheme == "https" else ("amqp", 5672)
    return _compose(api, scheme=scheme, port=port, path="", query=())


def _management_for(target: str, kind: str) -> tuple[ServerURL, ServerURL]:
    """Split an AMQP leftover target into (the AMQP URL pika takes, the management API URL)."""
    amqp = _amqp_url(target, kind)
    given = [v for k, v in amqp.query if k == _MANAGEMENT_PARAM]
    if given:  # pika refuses query parameters it does not know: take ours out
        rest = [(k, v) for k, v in amqp.query if k != _MANAGEMENT_PARAM]
        amqp = _amqp_url(_compose(amqp, query=rest), kind)
    # Without a user in the URL pika logs in as guest/guest; the API needs a user too.
    user = (amqp.username, amqp.password) if amqp.username else ("guest", "guest")
    if given:
        api = split_url(given[-1], kind=kind, schemes=_HTTP_SCHEMES)
        api_url = given[-1] if api.username else _compose(api, user=user)
    else:
        scheme, port = _MANAGEMENT_DEFAULTS[amqp.scheme]
        api_url = _compose(amqp, scheme=scheme, user=user, port=port, path="", query=())
    return amqp, _api_url(api_url, kind)


# --- talking AMQP --------------------------------------------------------------------------------


class _VhostGone(Exception):
    """The URL's vhost does not exist, so nothing in it does either."""


@contextlib.contextmanager
def _connection(record: Record, kind: str) -> Iterator[Any]:
    """A blocking connection for one operation, closed afterwards whatever happened."""
    require_extra(_HAVE_PIKA, kind, _EXTRA, "pika")
    server = _with_secret(record.get("url"), record.get("password"), kind, _AMQP_SCHEMES)
    params = pika.URLParameters(server.with_password())
    if "heartbeat" not in dict(server.query):
        params.heartbeat = _HEARTBEAT
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAccessDeniedError as exc:
        if _VHOST_GONE.search(str(exc)):
            raise _VhostGone(str(exc)) from exc
        raise
    try:
        yield conn
    finally:
        if conn.is_open:
            with contextlib.suppress(Exception):  # it may be closing under us already
                conn.close()


def _reply_code(exc: BaseException) -> int | None:
    """The AMQP reply code of a channel the broker closed (404 NOT_FOUND, 405 ...), if any."""
    if _HAVE_PIKA and isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return int(exc.reply_code)
    return None


def _refused(exc: BaseException) -> bool:
    """Did the broker answer the declare with a definite refusal (nothing was made)?

    A channel closed with a ``4xx`` (403 ACCESS_REFUSED, 405 RESOURCE_LOCKED, 406
    PRECONDITION_FAILED...) answers the one method sent on it; a connection closed with 503
    COMMAND_INVALID (an unknown exchange type) or 540 NOT_IMPLEMENTED refuses the method too.
    """
    if not _HAVE_PIKA:
        return False
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return 400 <= int(exc.reply_code) < 500
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return int(exc.reply_code) in (503, 540)
    return False


def _reason(exc: BaseException) -> str:
    """What went wrong, in words, with a hint for the common cases."""
    if isinstance(exc, _VhostGone):
        return f"{exc}; the URL's vhost does not exist (create it, or use RabbitVhost)"
    text = f"{type(exc).__name__}: {exc}"
    hint = ""
    if _HAVE_PIKA:
        if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
            hint = "; the broker refused the URL's user and password"
        elif isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
            hint = "; the URL's user may not use that vhost"
        elif isinstance(exc, pika.exceptions.AMQPConnectionError):
            hint = "; is the broker up, and are the URL's host and port right?"
            text = repr(exc)  # str() of a refused connection is empty; pika's repr() says why
        elif _reply_code(exc) == 403:
            hint = "; the URL's user lacks the configure permission on that vhost"
    return f"{text}{hint}"


def _fail(
    error: type[BackendError], cls: type[Backend[Any]], record: Record, doing: str, exc: Exception
) -> NoReturn:
    if isinstance(exc, BackendError | MissingExtraError):
        raise exc
    raise_backend_error(
        error,
        cls.kind,
        record,
        doing,
        exc,
        where=str(record.get("url") or record.get("api_url") or "?"),
        reason=_reason,
        secret_fields=cls.secret_fields,
    )


# --- talking to the management API ----------------------------------------------------------------


#: What the path segments after each collection of the management API are, for messages.
_SEGMENTS: Final = {
    "vhosts": ("name",),
    "permissions": ("vhost", "user"),
    "queues": ("vhost",),
    "exchanges": ("vhost",),
}


class _Management(Context):
    """The management HTTP API, as reclaim talks to it: its answers' advice, and what to check
    when it cannot be reached."""

    hints: ClassVar[Mapping[int, str]] = {
        401: "the API refused the user and password",
        403: "the API's user needs the administrator tag",
        404: "is this the management API's address, and does the vhost exist?",
    }
    unreachable = (
        "is the management plugin enabled (rabbitmq-plugins enable rabbitmq_management) and"
        " listening there?"
    )
    extra = _EXTRA


def _api_base(server: ServerURL) -> str:
    """The management API's base URL, without credentials (nor a trailing ``/api``)."""
    prefix = server.path.rstrip("/").removesuffix("/api")
    return _compose(server, user=("", ""), path=prefix, query=())


def _management(backend: type[Backend[Any]], record: Record, server: ServerURL) -> Context:
    """The context of the management API at ``server``, for ``backend``'s ``record``: errors
    name it, and are redacted of the record's secrets and the API's password (I7)."""
    return _Management(
        backend,
        {**record, "password": server.password},
        where=f"{_api_base(server)} (the management API)",
        timeout=_HTTP_TIMEOUT,
    )


def _api_request(
    server: ServerURL, method: str, segments: tuple[str, ...], note: str = "", **options: Any
) -> Request:
    """A request of the management API at ``server`` (its credentials included). Every
    identifier goes into the path percent-encoded as one segment (``/`` too), so a name can
    never reach another endpoint."""
    url = _api_base(server) + "/api/" + "/".join(quote(s, safe="") for s in segments)
    pair = f"{server.username}:{server.password}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    labels = _SEGMENTS[segments[0]][: len(segments) - 1]
    path = "/".join((segments[0], *(f"{{{label}}}" for label in labels)))
    what = f"{method} /api/{path}" + (f" ({note})" if note else "")
    return Request(method, url, what, headers=headers, **options)


def _vhost_flow(server: ServerURL, name: str) -> Flow[Any]:
    """The vhost called ``name``, or None when there is none."""
    req = _api_request(server, "GET", ("vhosts", name), creates=False)
    return (yield from send_or_gone(req, gone=(404,)))


def _names_flow(server: ServerURL, collection: str, vhost: str | None) -> Flow[list[str]]:
    """Names of the ``queues``/``exchanges`` in ``vhost``, or of all ``vhosts``, whose name
    starts with ``rc_``, page by page."""
    segments = (collection,) if vhost is None else (collection, vhost)
    names: list[str] = []
    page = 1
    while True:
        params = {
            "page": str(page),
            "page_size": str(_PAGE_SIZE),
            "name": "^rc_",
            "use_regex": "true",
            "columns": "name",
            "disable_stats": "true",
        }
        req = _api_request(server, "GET", segments, params=params, creates=False)
        data = yield from send_json(req)
        if not isinstance(data, dict):
            raise ProtocolError(f"the list of {collection} is not a JSON object")
        names.extend(i["name"] for i in data.get("items", []) if isinstance(i.get("name"), str))
        if page >= int(data.get("page_count", 0)):
            return names
        page += 1


def _list_names(
    backend: type[Backend[Any]], server: ServerURL, collection: str, vhost: str | None
) -> list[str]:
    record: Record = {"name": None, "api_url": _api_base(server)}
    context = _management(backend, record, server)
    return context.run(
        _names_flow(server, collection, vhost), BackendError, f"list the {collection}"
    )
