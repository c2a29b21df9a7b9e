"""RabbitMQ: queues, exchanges and throwaway vhosts.

Three kinds, each released from its JSON record alone (I2):

- :class:`RabbitQueue` (``rabbitmq.queue``) declares a queue and gives its name; release deletes
  it with ``queue.delete``, messages, bindings and consumers included.
- :class:`RabbitExchange` (``rabbitmq.exchange``) declares an exchange and gives its name;
  release deletes it with ``exchange.delete``, bindings included.
- :class:`RabbitVhost` (``rabbitmq.vhost``) creates a vhost through the management HTTP API,
  grants a user every permission on it and gives an AMQP URL for it; release deletes the vhost
  and with it everything inside.

Queues and exchanges keep reclaim's name unchanged (``rc_<run>_<time>_<seq>``): it is a valid
AMQP name and never starts with the reserved ``amq.``. What is already gone counts as released
(I3): ``queue.delete`` and ``exchange.delete`` of a missing name succeed on RabbitMQ, a
``404 NOT_FOUND`` that closes the channel (older brokers) is taken as "gone", and so is a vhost
that no longer exists, since nothing can live in a vhost that is not there.

Credentials (I7): the password is taken out of every URL before it reaches a record. The record
keeps the URL without it (shown by ``reclaim status``) and the password in a field of its own,
listed in ``secret_fields``; no error message carries it.

The registry-less sweep (:meth:`RabbitQueue.list_leftovers` and its siblings) takes the broker's
AMQP URL. AMQP cannot list anything, so the listing asks the management plugin: by default at
``http://<host>:15672`` (``https://<host>:15671`` for ``amqps``) with the AMQP URL's user, or
wherever the URL's ``management_url`` query parameter says. Only names of exactly reclaim's
shape are ever listed.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final, NoReturn
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from reclaim._errors import AcquireError, BackendError, MissingExtraError, ReleaseError
from reclaim.backends import Backend, Leftover, Record, parse_name, redact_text

try:
    import pika  # type: ignore[import-untyped]  # pika ships no type information
    import pika.exceptions  # type: ignore[import-untyped]

    _HAVE_PIKA = True
except ImportError:  # the module imports without its driver; using it raises MissingExtraError
    _HAVE_PIKA = False

try:
    import httpx

    _HAVE_HTTPX = True
except ImportError:  # as above
    _HAVE_HTTPX = False

__all__ = ["RabbitExchange", "RabbitQueue", "RabbitVhost"]

_EXTRA: Final = "rabbitmq"

#: AMQP 0-9-1 names (queues, exchanges) are short strings: at most 255 bytes of UTF-8.
_MAX_NAME_BYTES: Final = 255

#: Exactly the names reclaim makes; the only ones a leftover listing may yield.
_RECLAIM_NAME: Final = re.compile(r"rc_[0-9a-f]{8}_[0-9a-z]{1,8}_[0-9]+")

#: Vhost names this backend creates or deletes: they go into management API paths (quoted as
#: well), and a record can never name the default vhost ``/`` or anything with a ``/`` or ``%``.
_VHOST_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,254}")

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
        _require_pika(self.kind)
        self.url, self.password = _split_password(_check_amqp_url(url, self.kind))
        self.arguments = _check_arguments(arguments, self.kind)

    def plan(self, name: str) -> Record:
        return {"name": _check_name(name, self.kind), "url": self.url, "password": self.password}

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        try:
            with _connection(record, self.kind) as conn:
                self._declare(conn.channel(), name)
        except Exception as exc:
            _fail(AcquireError, type(self), record, f"declare the {self._noun}", exc)
        return name, record

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
        name = _check_name(record["name"], cls.kind)
        try:
            with _connection(record, cls.kind) as conn:
                cls._delete(conn.channel(), name)
        except _VhostGone:
            return
        except Exception as exc:
            if _reply_code(exc) == 404:  # NOT_FOUND closes the channel: it is gone
                return
            _fail(ReleaseError, cls, record, f"delete the {cls._noun}", exc)

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Ask the broker with a passive declare (a ``404`` closes that channel: not there)."""
        name = _check_name(record["name"], cls.kind)
        try:
            with _connection(record, cls.kind) as conn:
                cls._declare_passive(conn.channel(), name)
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
        amqp_url, api_url = _management_for(target, cls.kind)
        url, password = _split_password(amqp_url)
        vhost = _vhost_of(amqp_url)
        api = _Api(api_url, cls.kind)
        for name in api.names(f"{cls._noun}s", vhost):
            parsed = parse_name(name)
            if parsed is not None and _RECLAIM_NAME.fullmatch(name):
                record = {"name": name, "url": url, "password": password}
                yield Leftover(record, parsed.run_id, parsed.created_at)


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


class RabbitVhost(Backend[str]):
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

    def __init__(self, api_url: str, *, amqp_url: str | None = None) -> None:
        _require_httpx(self.kind)
        self.api_url, self.password = _split_password(_check_api_url(api_url, self.kind))
        if amqp_url is None:
            amqp_url = _amqp_for(api_url)
        self.amqp_url = _check_amqp_url(amqp_url, self.kind)
        self.user = unquote(urlsplit(self.amqp_url).username or "guest")

    def plan(self, name: str) -> Record:
        return {
            "name": _check_vhost_name(name, self.kind),
            "api_url": self.api_url,
            "password": self.password,
        }

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        api = _Api(_with_password(self.api_url, self.password), self.kind, record)
        description = f"made by reclaim ({self.kind}); deleted when the test is done"
        api.expect(
            AcquireError,
            "create the vhost",
            {201, 204},
            "PUT",
            ("vhosts", name),
            body={"description": description},
        )
        api.expect(
            AcquireError,
            f"grant user {self.user!r} its permissions",
            {201, 204},
            "PUT",
            ("permissions", name, self.user),
            body={"configure": ".*", "write": ".*", "read": ".*"},
        )
        parts = urlsplit(self.amqp_url)
        return urlunsplit(parts._replace(path="/" + quote(name, safe=""))), record

    @classmethod
    def release(cls, record: Record) -> None:
        """Delete the vhost (``404``: already gone, success; I3)."""
        name = _check_vhost_name(record["name"], cls.kind)
        api = _Api(_record_api_url(record), cls.kind, record)
        api.expect(ReleaseError, "delete the vhost", {200, 204, 404}, "DELETE", ("vhosts", name))

    @classmethod
    def exists(cls, record: Record) -> bool:
        name = _check_vhost_name(record["name"], cls.kind)
        api = _Api(_record_api_url(record), cls.kind, record)
        status = api.expect(BackendError, "look for the vhost", {200, 404}, "GET", ("vhosts", name))
        return status == 200

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"vhost {record.get('name', '?')} at {record.get('api_url', '?')}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """The vhosts with a reclaim name on the broker of ``target``.

        ``target`` is the broker's AMQP URL (the management API found as for
        :meth:`RabbitQueue.list_leftovers`) or the management API's own ``http(s)://`` URL.
        """
        if urlsplit(target).scheme in ("http", "https"):
            api_url = _check_api_url(target, cls.kind)
        else:
            _, api_url = _management_for(target, cls.kind)
        url, password = _split_password(api_url)
        for name in _Api(api_url, cls.kind).names("vhosts", None):
            parsed = parse_name(name)
            if parsed is not None and _RECLAIM_NAME.fullmatch(name):
                record = {"name": name, "api_url": url, "password": password}
                yield Leftover(record, parsed.run_id, parsed.created_at)


# --- checking what users and records hand us ---------------------------------------------------


def _check_name(name: object, kind: str) -> str:
    """A queue or exchange name that is safe to send: a string of at most 255 bytes, without
    control characters, not a dot path, never ``amq.*`` (RabbitMQ reserves it)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name {name!r} must be a non-empty string")
    size = len(name.encode())
    if size > _MAX_NAME_BYTES:
        raise ValueError(
            f"{kind} name {name[:40]!r}... is {size} bytes; RabbitMQ allows at most"
            f" {_MAX_NAME_BYTES}"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name) or name in (".", ".."):
        raise ValueError(f"{kind} name {name!r} contains control characters or is a dot path")
    if name.startswith("amq."):
        raise ValueError(f"{kind} name {name!r} starts with 'amq.', which RabbitMQ reserves")
    return name


def _check_vhost_name(name: object, kind: str) -> str:
    """A vhost name: letters, digits and ``_ . : -``, at most 255 characters. Reclaim's names
    always pass; ``/`` (the default vhost), ``%``, ``?`` or ``..`` never reach the API."""
    if not isinstance(name, str) or not _VHOST_NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} is not one reclaim makes or deletes: use letters, digits and"
            " '_', '.', ':', '-' (never the default vhost '/')"
        )
    return name


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


def _check_amqp_url(url: str, kind: str) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in _MANAGEMENT_DEFAULTS:
        raise ValueError(
            f"{kind}: {_without_password(url)!r} is not an AMQP URL; give"
            " amqp://user:password@host:5672/<vhost> (or amqps://)"
        )
    _split_url(url, kind)
    return url


def _check_api_url(url: str, kind: str) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(
            f"{kind}: {_without_password(url)!r} is not a management API URL; give"
            " http://user:password@host:15672 (or https://)"
        )
    parts = _split_url(url, kind)
    if parts.username is None:
        raise ValueError(
            f"{kind}: the management API URL {_without_password(url)!r} names no user; give"
            " http://user:password@host:15672"
        )
    return url


def _split_url(url: str, kind: str) -> SplitResult:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (parsing the port is the check: "host:abc" raises here)
    except ValueError:
        raise ValueError(
            f"{kind}: the port of {_without_password(url)!r} is not a number"
        ) from None
    if not parts.hostname:
        raise ValueError(f"{kind}: {_without_password(url)!r} names no host")
    return parts


# --- URLs and their passwords (I7) --------------------------------------------------------------


def _split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (decoded), or None when it has none."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon):
        return url, None
    return urlunsplit(parts._replace(netloc=f"{user}@{hostport}")), unquote(password)


def _with_password(url: str, password: str | None) -> str:
    """The inverse of :func:`_split_password`."""
    if password is None:
        return url
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hostport}"))


def _without_password(url: object) -> str:
    return _split_password(url)[0] if isinstance(url, str) else repr(url)


def _record_api_url(record: Record) -> str:
    return _with_password(str(record["api_url"]), record.get("password"))


def _vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names, read as pika reads it (no path: ``/``)."""
    path = urlsplit(amqp_url).path
    return unquote(path.split("/")[1]) if len(path) > 1 else "/"


def _host(parts: SplitResult) -> str:
    """The URL's host as it goes into a netloc (an IPv6 address in brackets)."""
    host = parts.hostname or ""
    return f"[{host}]" if ":" in host else host


def _amqp_for(api_url: str) -> str:
    """The AMQP URL of the broker behind a management API URL: same host and user, port 5672
    (5671 for ``https``)."""
    parts = urlsplit(api_url)
    scheme, port = ("amqps", 5671) if parts.scheme == "https" else ("amqp", 5672)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit((scheme, f"{userinfo}{at}{_host(parts)}:{port}", "", "", ""))


def _management_for(target: str, kind: str) -> tuple[str, str]:
    """Split an AMQP leftover target into (the AMQP URL pika takes, the management API URL)."""
    parts = _split_url(_check_amqp_url(target, kind), kind)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = [v for k, v in query if k == _MANAGEMENT_PARAM]
    amqp_url = target
    if given:  # pika refuses query parameters it does not know: take ours out
        rest = urlencode([(k, v) for k, v in query if k != _MANAGEMENT_PARAM])
        amqp_url = urlunsplit(parts._replace(query=rest))
    # Without a user in the URL pika logs in as guest/guest; the API needs a user too.
    userinfo = parts.netloc.rpartition("@")[0] or "guest:guest"
    if given:
        api = _split_url(given[-1], kind)
        netloc = api.netloc if api.username is not None else f"{userinfo}@{api.netloc}"
        api_url = api._replace(netloc=netloc).geturl()
    else:
        scheme, port = _MANAGEMENT_DEFAULTS[parts.scheme]
        api_url = urlunsplit((scheme, f"{userinfo}@{_host(parts)}:{port}", "", "", ""))
    return amqp_url, _check_api_url(api_url, kind)


# --- talking AMQP --------------------------------------------------------------------------------


class _VhostGone(Exception):
    """The URL's vhost does not exist, so nothing in it does either."""


@contextlib.contextmanager
def _connection(record: Record, kind: str) -> Iterator[Any]:
    """A blocking connection for one operation, closed afterwards whatever happened."""
    _require_pika(kind)
    url = _with_password(str(record["url"]), record.get("password"))
    params = pika.URLParameters(url)
    if "heartbeat" not in dict(parse_qsl(urlsplit(url).query)):
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
    if isinstance(exc, BackendError):
        raise exc
    where = record.get("url") or record.get("api_url") or "?"
    message = f"{cls.kind} {record.get('name')!r}: could not {doing} at {where}: {_reason(exc)}"
    raise error(
        redact_text(message, record, cls.secret_fields),
        kind=cls.kind,
        resource=str(record.get("name")),
    ) from exc


# --- talking to the management API ----------------------------------------------------------------


class _Api:
    """The management HTTP API behind ``api_url`` (credentials in it), one request at a time.

    Every identifier goes into the path percent-encoded as one segment (``/`` too), so a name
    can never reach another endpoint.
    """

    def __init__(self, api_url: str, kind: str, record: Record | None = None) -> None:
        parts = urlsplit(api_url)
        port = f":{parts.port}" if parts.port is not None else ""
        prefix = parts.path.rstrip("/").removesuffix("/api")
        self.base = urlunsplit((parts.scheme, f"{_host(parts)}{port}", prefix, "", ""))
        self.auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        self.kind = kind
        self.record: Record = record or {"name": None, "api_url": self.base}
        self.secrets = {"password": self.auth[1]}

    def request(
        self,
        method: str,
        segments: tuple[str, ...],
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        _require_httpx(self.kind)
        url = self.base + "/api/" + "/".join(quote(s, safe="") for s in segments)
        return httpx.request(
            method, url, params=params, json=body, auth=self.auth, timeout=_HTTP_TIMEOUT
        )

    def expect(
        self,
        error: type[BackendError],
        doing: str,
        statuses: set[int],
        method: str,
        segments: tuple[str, ...],
        *,
        body: Mapping[str, Any] | None = None,
    ) -> int:
        """Send one request; return its status if it is one of ``statuses``, else raise
        ``error`` with what happened and what to do."""
        try:
            response = self.request(method, segments, body=body)
        except httpx.HTTPError as exc:
            self._fail(error, doing, f"{type(exc).__name__}: {exc}{_MANAGEMENT_HINT}", exc)
        if response.status_code not in statuses:
            self._fail(error, doing, _http_reason(response), None)
        return response.status_code

    def names(self, collection: str, vhost: str | None) -> Iterator[str]:
        """Names of the ``queues``/``exchanges`` in ``vhost``, or of all ``vhosts``, whose name
        starts with ``rc_``, page by page."""
        segments = (collection,) if vhost is None else (collection, vhost)
        page = 1
        while True:
            params: dict[str, str | int] = {
                "page": page,
                "page_size": _PAGE_SIZE,
                "name": "^rc_",
                "use_regex": "true",
                "columns": "name",
                "disable_stats": "true",
            }
            doing = f"list the {collection}"
            try:
                response = self.request("GET", segments, params=params)
            except httpx.HTTPError as exc:
                self._fail(
                    BackendError, doing, f"{type(exc).__name__}: {exc}{_MANAGEMENT_HINT}", exc
                )
            if response.status_code != 200:
                self._fail(BackendError, doing, _http_reason(response), None)
            data = response.json()
            for item in data.get("items", []):
                name = item.get("name")
                if isinstance(name, str):
                    yield name
            if page >= int(data.get("page_count", 0)):
                return
            page += 1

    def _fail(
        self, error: type[BackendError], doing: str, reason: str, exc: BaseException | None
    ) -> NoReturn:
        name = self.record.get("name")
        what = f"{self.kind} {name!r}" if name else self.kind
        message = f"{what}: could not {doing} through the management API at {self.base}: {reason}"
        message = redact_text(message, self.secrets, ("password",))
        raise error(message, kind=self.kind, resource=str(name or self.base)) from exc


_MANAGEMENT_HINT: Final = (
    "; is the management plugin enabled (rabbitmq-plugins enable rabbitmq_management) and"
    " listening there?"
)


def _http_reason(response: httpx.Response) -> str:
    hints = {
        401: "; the API refused the user and password",
        403: "; the API's user needs the administrator tag",
        404: "; is this the management API's address, and does the vhost exist?",
    }
    body = response.text.strip().replace("\n", " ")[:300]
    return (
        f"HTTP {response.status_code} {response.reason_phrase} ({body or 'no body'})"
        f"{hints.get(response.status_code, '')}"
    )


# --- drivers -----------------------------------------------------------------------------------


def _require_pika(kind: str) -> None:
    if not _HAVE_PIKA:
        raise MissingExtraError(kind, _EXTRA, "pika")


def _require_httpx(kind: str) -> None:
    if not _HAVE_HTTPX:
        raise MissingExtraError(kind, _EXTRA, "httpx")
