"""Redis: ``RedisNamespace(url)`` gives a key prefix of its own, ``RedisDatabase(url)`` a whole
logical database.

**Namespaces.** The value is a key prefix, ``"rc_<run>_<time>_<seq>:"``; the test writes its keys
under it (``f"{prefix}session:42"``). Acquire writes one marker key, ``<prefix>__reclaim__``,
with ``SET NX``: before it, nothing of the namespace exists on the server, after it,
:meth:`RedisNamespace.exists` is true until release. ``exists`` is true while *any* key under
the prefix exists (the marker is only the fast path), so a namespace whose marker a test deleted
still counts while it holds keys. Release deletes every key under the prefix: ``SCAN MATCH
<prefix>*`` (glob characters of the prefix escaped, so ``a*`` never matches ``ab``) and
``UNLINK`` in batches. SCAN returns every key that exists from the start of the scan to its end,
so nothing written before release began survives it.

**Databases.** For suites that need ``FLUSHDB`` or ``SELECT``, the value is a URL of a logical
database of its own (``redis://host:6379/7``). Claims live in database 0 as keys
``reclaim:db:<n>`` whose value is the reclaim name. One Lua script picks the first database that
is neither claimed nor holds any key, and claims it: scripts run atomically, so two processes
never get the same database, and a database somebody uses without reclaim (it holds keys) is
never taken. Release is another script: when the claim still holds this name, ``FLUSHDB ASYNC``
that database and drop the claim, in one step, so a database is never handed out again before
it is empty, and a stale record can never flush a database somebody else claimed since. A
killed run's claim is released by its watchdog or the next ``reclaim sweep`` (from the registry,
or with ``list_leftovers`` when the registry is gone); until then the next run simply takes
another database.

Records keep the server URL without its password; the password goes in the secret field
``password`` (I7). Redis Cluster is not supported (SCAN sees one node, and a cluster has only
database 0).

Needs the ``redis`` extra (redis-py): ``pip install 'reclaim[redis]'``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final, NoReturn
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from reclaim._errors import AcquireError, BackendError, MissingExtraError, ReleaseError
from reclaim.backends import Backend, Leftover, Record, parse_name, redact_text

try:
    import redis
    import redis.exceptions
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # the extra is not installed: MissingExtraError when the backend is used
    _HAVE_DRIVER = False
else:
    _HAVE_DRIVER = True

if TYPE_CHECKING:
    from redis.commands.core import Script

__all__ = ["MARKER", "RedisDatabase", "RedisNamespace", "glob_escape", "unlink_prefix"]

_NAMESPACE: Final = "redis.namespace"
_DATABASE: Final = "redis.database"
_SCHEMES: Final = ("redis", "rediss", "unix")

#: The names reclaim makes (see reclaim.backends.make_name), whole: nothing before or after.
_NAME_RE: Final = re.compile(r"rc_[0-9a-f]{8}_[0-9a-z]{1,8}_[0-9]{1,20}")

#: A key of a namespace made without a user prefix: the name, then the separator's first
#: character (ASCII punctuation; never a digit, which would continue the sequence number).
_KEY_RE: Final = re.compile(rb"(rc_[0-9a-f]{8}_[0-9a-z]{1,8}_[0-9]{1,20})[!-/:-@\[-`{-~]")

#: Appended to a namespace's prefix: the key acquire creates.
MARKER: Final = "__reclaim__"

#: The claims of :class:`RedisDatabase` live in this database, as ``reclaim:db:<n>``.
_CLAIMS_DB: Final = 0
_CLAIM_PREFIX: Final = "reclaim:db:"

#: Keys per SCAN call (a hint to the server) and per UNLINK.
_SCAN_COUNT: Final = 1000
_UNLINK_BATCH: Final = 1000

#: Seconds: to connect; to wait for an answer.
_CONNECT_TIMEOUT: Final = 5.0
_SOCKET_TIMEOUT: Final = 30.0

#: Clients kept per process (see _client).
_MAX_CLIENTS: Final = 32

_GLOB_SPECIAL: Final = re.compile(rb"([\\*?\[\]])")

# Claim a database: the one already claimed under this name (a retried call after a lost
# answer gets the same one), else the first candidate with no claim and no key. Atomic: Redis
# runs a script alone, so two callers can never claim the same database.
_CLAIM_LUA: Final = """
local name = ARGV[1]
local claims = tonumber(ARGV[2])
for i = 3, #ARGV do
  if redis.call('GET', 'reclaim:db:' .. ARGV[i]) == name then return tonumber(ARGV[i]) end
end
for i = 3, #ARGV do
  local key = 'reclaim:db:' .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then
    redis.call('SELECT', tonumber(ARGV[i]))
    local size = redis.call('DBSIZE')
    redis.call('SELECT', claims)
    if size == 0 then
      redis.call('SET', key, name)
      return tonumber(ARGV[i])
    end
  end
end
return -1
"""

# Release a database: only while the claim still holds this name (a stale record must never
# flush a database claimed since); empty it and drop the claim in one atomic step.
_RELEASE_LUA: Final = """
local key = 'reclaim:db:' .. ARGV[2]
if redis.call('GET', key) ~= ARGV[1] then return 0 end
redis.call('SELECT', tonumber(ARGV[2]))
redis.call('FLUSHDB', 'ASYNC')
redis.call('SELECT', tonumber(ARGV[3]))
redis.call('DEL', key)
return 1
"""


class RedisNamespace(Backend[str]):
    """A key prefix of its own in one Redis database; every key under it is deleted at release.

    The value is the prefix, ``f"{prefix}{name}{separator}"``, e.g. ``"rc_3f2a1b0c_t1a2b3_1:"``.

    Args:
        url: the server and database, ``redis://[[user]:password@]host:port/db``,
            ``rediss://...`` (TLS) or ``unix:///path/to/redis.sock?db=N``.
        prefix: put before reclaim's name, e.g. the ``"myapp:"`` your code adds to every key.
            Any characters; glob characters are escaped when release scans. Namespaces with a
            prefix are not found by the registry-less leftover listing (it looks for keys that
            start with ``rc_``); the registry and the watchdog release them as any other.
        separator: put after reclaim's name; must not start with a digit. Default ``":"``.

    Raises:
        ValueError: the URL, prefix or separator cannot be used.
        MissingExtraError: redis-py is not installed.
    """

    kind = _NAMESPACE
    secret_fields = frozenset({"password"})
    url_schemes = _SCHEMES

    def __init__(self, url: str, *, prefix: str = "", separator: str = ":") -> None:
        _require_driver(_NAMESPACE)
        self.url, self._password = _split_url(url, _NAMESPACE)
        if not isinstance(prefix, str):
            raise TypeError(f"RedisNamespace prefix must be a str, not {type(prefix).__name__}")
        if not isinstance(separator, str) or not separator or separator[0].isdigit():
            raise ValueError(
                f"RedisNamespace separator {separator!r} must be a non-empty string that does"
                " not start with a digit (it would read as part of reclaim's sequence number)"
            )
        self.prefix = prefix
        self.separator = separator

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything that is not one."""
        return _check_name(proposed, _NAMESPACE)

    def plan(self, name: str) -> Record:
        _check_name(name, _NAMESPACE)
        return {
            "name": name,
            "url": self.url,
            "password": self._password,
            "prefix": f"{self.prefix}{name}{self.separator}",
        }

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        try:
            created = _client(record["url"], record["password"]).set(
                _marker(record["prefix"]), name, nx=True
            )
        except redis.RedisError as exc:
            _fail(AcquireError, _NAMESPACE, record, "write the namespace's marker key", exc)
        if not created:
            raise AcquireError(
                f"{_NAMESPACE} {name!r}: the marker key {_marker(record['prefix'])!r} exists"
                f" already at {record['url']}: another namespace uses this prefix; refusing to"
                " share it",
                kind=_NAMESPACE,
                resource=name,
            )
        return record["prefix"], record

    @classmethod
    def release(cls, record: Record) -> None:
        """``SCAN MATCH <prefix>*`` + ``UNLINK`` in batches, the marker with the rest."""
        prefix = _check_prefix(record)
        client = _client(record["url"], record.get("password"))
        try:
            unlink_prefix(client, prefix)
        except redis.RedisError as exc:
            _fail(ReleaseError, _NAMESPACE, record, f"delete the keys under {prefix!r}", exc)

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Is any key under the prefix there (the marker, or anything the test wrote)?"""
        prefix = _check_prefix(record)
        client = _client(record["url"], record.get("password"))
        try:
            if client.exists(_marker(prefix)):
                return True
            return any(True for _ in _scan(client, prefix))
        except redis.RedisError as exc:
            _fail(BackendError, _NAMESPACE, record, f"look for keys under {prefix!r}", exc)

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"{record.get('url')} {record.get('prefix', record.get('name'))}*"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Namespaces in the database at ``target`` (a Redis URL): keys that start with a whole
        reclaim name followed by a separator, grouped by that prefix.

        One ``SCAN MATCH rc_*`` over the database. Namespaces made with a ``prefix`` are not
        listed (their keys do not start with ``rc_``).
        """
        _require_driver(_NAMESPACE)
        url, password = _split_url(target, _NAMESPACE)
        server: Record = {"name": "", "url": url, "password": password}
        client = _client(url, password)
        found: dict[bytes, str] = {}
        try:
            for key in client.scan_iter(match=b"rc_*", count=_SCAN_COUNT):
                match = _KEY_RE.match(key)
                if match is not None:
                    found.setdefault(match.group(0), match.group(1).decode("ascii"))
        except redis.RedisError as exc:
            _fail(BackendError, _NAMESPACE, server, "list the keys under rc_*", exc)
        for prefix, name in sorted(found.items()):
            parsed = parse_name(name)
            if parsed is None:  # pragma: no cover  (the pattern above only takes reclaim names)
                continue
            record = {**server, "name": name, "prefix": prefix.decode("ascii")}
            yield Leftover(record, parsed.run_id, parsed.created_at)


class RedisDatabase(Backend[str]):
    """A whole logical database (``SELECT n``) of its own, flushed at release.

    The value is ``url`` pointing at the claimed database (``redis://...:6379/7``, with the
    URL's credentials). Database 0 holds the claims and is never handed out.

    Args:
        url: the server, ``redis://[[user]:password@]host:port``, ``rediss://...`` or
            ``unix:///path/to/redis.sock`` (a database in it is ignored). The account needs
            ``EVAL``, ``SELECT``, ``FLUSHDB`` and, unless ``databases`` is given,
            ``CONFIG GET databases``.
        databases: the database numbers this backend may claim (never 0). By default 1 to
            ``databases - 1`` of the server's configuration (16 databases by default).

    Raises:
        ValueError: the URL or a database number cannot be used.
        MissingExtraError: redis-py is not installed.
    """

    kind = _DATABASE
    secret_fields = frozenset({"password"})
    url_schemes = _SCHEMES

    def __init__(self, url: str, *, databases: Iterable[int] | None = None) -> None:
        _require_driver(_DATABASE)
        public, self._password = _split_url(url, _DATABASE)
        self.url = _with_db(public, _CLAIMS_DB)
        self._user_url = url
        self.databases: tuple[int, ...] | None = None
        if databases is not None:
            chosen = sorted(set(databases))
            for db in chosen:
                if isinstance(db, bool) or not isinstance(db, int) or db <= _CLAIMS_DB:
                    raise ValueError(
                        f"RedisDatabase databases must be whole numbers above {_CLAIMS_DB}"
                        f" (database {_CLAIMS_DB} holds the claims), not {db!r}"
                    )
            if not chosen:
                raise ValueError("RedisDatabase databases is empty: give at least one number")
            self.databases = tuple(chosen)

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything that is not one."""
        return _check_name(proposed, _DATABASE)

    def plan(self, name: str) -> Record:
        _check_name(name, _DATABASE)
        # The database number is not known yet: release finds the claim by its name (I1).
        return {"name": name, "url": self.url, "password": self._password}

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        client = _client(record["url"], record["password"])
        try:
            candidates = self.databases or tuple(range(1, _database_count(client, record)))
            db = int(_script(client, _CLAIM_LUA)(args=[name, _CLAIMS_DB, *candidates]))
        except redis.RedisError as exc:
            _fail(AcquireError, _DATABASE, record, "claim a database", exc)
        if db < 0:
            raise AcquireError(
                f"{_DATABASE} {name!r}: no free database at {record['url']} among"
                f" {_ranges(candidates)}: {_why_busy(client, candidates)}. Run `reclaim sweep`"
                " to release what dead runs claimed, or give the server more databases"
                " (`databases` in redis.conf)",
                kind=_DATABASE,
                resource=name,
            )
        record["db"] = db
        return _with_db(self._user_url, db), record

    @classmethod
    def release(cls, record: Record) -> None:
        """When the claim still holds this name: ``FLUSHDB ASYNC`` and drop the claim."""
        name = _check_name(record.get("name"), _DATABASE)
        client = _client(record["url"], record.get("password"))
        try:
            for db in _claims_of(client, record):
                _script(client, _RELEASE_LUA)(args=[name, db, _CLAIMS_DB])
        except redis.RedisError as exc:
            _fail(ReleaseError, _DATABASE, record, "flush and unclaim the database", exc)

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Does a claim with this name exist?"""
        _check_name(record.get("name"), _DATABASE)
        client = _client(record["url"], record.get("password"))
        try:
            return bool(_claims_of(client, record))
        except redis.RedisError as exc:
            _fail(BackendError, _DATABASE, record, "look for the claim", exc)

    @classmethod
    def describe(cls, record: Record) -> str:
        db = record.get("db")
        where = _with_db(str(record.get("url")), int(db)) if db is not None else record.get("url")
        return f"{where} ({record.get('name')})"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Claims on the server at ``target`` (a Redis URL) that hold a whole reclaim name."""
        _require_driver(_DATABASE)
        public, password = _split_url(target, _DATABASE)
        server: Record = {"name": "", "url": _with_db(public, _CLAIMS_DB), "password": password}
        client = _client(server["url"], password)
        try:
            claims = _all_claims(client)
        except redis.RedisError as exc:
            _fail(BackendError, _DATABASE, server, "list the database claims", exc)
        for db, name in sorted(claims.items()):
            parsed = parse_name(name)
            if parsed is None or not _NAME_RE.fullmatch(name):
                continue  # not a name reclaim made: never touched
            yield Leftover({**server, "name": name, "db": db}, parsed.run_id, parsed.created_at)


# --- the namespace's keys ----------------------------------------------------------------------


def glob_escape(prefix: bytes) -> bytes:
    """``prefix`` with Redis glob characters (``* ? [ ] \\``) escaped: it matches only itself."""
    return _GLOB_SPECIAL.sub(rb"\\\1", prefix)


def unlink_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key that starts with ``prefix``: SCAN + UNLINK in batches. Returns how many
    keys were deleted.

    Public for benchmarks and for users who clean a prefix by hand.
    """
    deleted = 0
    batch: list[bytes] = []
    for key in _scan(client, prefix):
        batch.append(key)
        if len(batch) >= _UNLINK_BATCH:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def _scan(client: redis.Redis, prefix: str) -> Iterator[bytes]:
    raw = prefix.encode()
    pattern = glob_escape(raw) + b"*"
    for key in client.scan_iter(match=pattern, count=_SCAN_COUNT):
        # Second guard: whatever the pattern matched, only keys that start with the prefix.
        if isinstance(key, bytes) and key.startswith(raw):
            yield key


def _marker(prefix: str) -> str:
    return prefix + MARKER


def _check_prefix(record: Record) -> str:
    """The record's prefix, which must hold its reclaim name followed by a separator: a record
    can never make release scan ``*`` (the whole database) or another namespace."""
    name = _check_name(record.get("name"), _NAMESPACE)
    prefix = record.get("prefix")
    text = prefix if isinstance(prefix, str) else ""
    at = text.rfind(name)
    end = at + len(name)
    if at < 0 or end >= len(text) or text[end].isdigit():
        raise ValueError(
            f"{_NAMESPACE}: the record's prefix {prefix!r} does not end in its name {name!r} and"
            " a separator; refusing to delete keys under it"
        )
    return text


# --- databases ---------------------------------------------------------------------------------


def _database_count(client: redis.Redis, record: Record) -> int:
    try:
        answer = client.config_get("databases")
        return int(str(answer["databases"]))
    except (redis.ResponseError, KeyError, ValueError) as exc:
        raise AcquireError(
            f"{_DATABASE} {record['name']!r}: could not read `CONFIG GET databases` at"
            f" {record['url']} ({type(exc).__name__}: {exc}); pass"
            " RedisDatabase(url, databases=range(1, N)) with the server's database count",
            kind=_DATABASE,
            resource=record["name"],
        ) from exc


def _all_claims(client: redis.Redis) -> dict[int, str]:
    """Every claim: database number -> the name it holds."""
    keys = [
        key
        for key in client.scan_iter(match=_CLAIM_PREFIX.encode() + b"*", count=_SCAN_COUNT)
        if isinstance(key, bytes) and key[len(_CLAIM_PREFIX) :].isdigit()
    ]
    values = client.mget(keys) if keys else []
    claims: dict[int, str] = {}
    for key, value in zip(keys, values, strict=True):
        if isinstance(value, bytes):
            claims[int(key[len(_CLAIM_PREFIX) :])] = value.decode("utf-8", "replace")
    return claims


def _claims_of(client: redis.Redis, record: Record) -> list[int]:
    """The databases claimed under the record's name: the recorded one, or, for a planned
    record (acquire died before the number was journaled), whichever the claims name."""
    name = record["name"]
    db = record.get("db")
    if db is not None:
        return [int(db)] if client.get(f"{_CLAIM_PREFIX}{int(db)}") == name.encode() else []
    return sorted(n for n, holder in _all_claims(client).items() if holder == name)


def _why_busy(client: redis.Redis, candidates: Iterable[int]) -> str:
    try:
        claims = _all_claims(client)
    except redis.RedisError:
        return "each is claimed or holds keys"
    wanted = list(candidates)
    claimed = [f"{db} by {claims[db]!r}" for db in wanted if db in claims]
    used = [db for db in wanted if db not in claims]
    parts = []
    if claimed:
        parts.append("claimed: " + ", ".join(claimed))
    if used:
        parts.append(f"holding keys of somebody else (never flushed): {_ranges(used)}")
    return "; ".join(parts) or "none to choose from"


def _ranges(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in numbers) or "none"


def _script(client: redis.Redis, source: str) -> Script:
    # EVALSHA first, EVAL when the server does not know the script yet (redis-py's Script).
    return client.register_script(source)


# --- URLs, connections, errors -----------------------------------------------------------------


def _require_driver(kind: str) -> None:
    if not _HAVE_DRIVER:
        raise MissingExtraError(kind, "redis", "redis-py")


def _check_name(name: object, kind: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or parse_name(name) is None:
        raise ValueError(
            f"{kind}: {name!r} is not a name reclaim makes (rc_<run>_<time>_<seq>); refusing"
            " to use it in a Redis command"
        )
    return name


def _split_url(url: str, kind: str) -> tuple[str, str]:
    """(the URL without its password, the password or ""). Messages never quote a password."""
    if not isinstance(url, str):
        raise TypeError(f"{kind}: the URL must be a str, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        _ = parts.port  # validates it
    except ValueError as exc:  # urllib's messages quote the port at most, never the password
        raise ValueError(f"{kind}: the URL {_redact_url(url)!r} is not valid: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"{kind}: the URL {_redact_url(url)!r} must start with redis://, rediss:// or unix://"
        )
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, _ = userinfo.partition(":")
    password = unquote(parts.password) if at and parts.password else ""
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            password = password or value
        else:
            query.append((key, value))
    netloc = f"{user}@{hostport}" if user else hostport
    public = _unsplit(parts.scheme, netloc, parts.path, query)
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"{kind}: the URL {public!r} names no socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{kind}: the URL {public!r} names no host")
    db = dict(query).get("db") or (parts.path.strip("/") if parts.scheme != "unix" else "")
    if db and not db.isdigit():
        raise ValueError(f"{kind}: the URL {public!r} names database {db!r}, not a number")
    return public, password


def _redact_url(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.partition("://")
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in userinfo else url


def _with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` (the path for redis://, ``?db=`` for unix://)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "db"]
    if parts.scheme == "unix":
        return _unsplit(parts.scheme, parts.netloc, parts.path, [*query, ("db", str(db))])
    return _unsplit(parts.scheme, parts.netloc, f"/{db}", query)


def _unsplit(scheme: str, netloc: str, path: str, query: list[tuple[str, str]]) -> str:
    # urlunsplit drops the "//" of schemes it does not know (unix:/path); redis-py needs it.
    return f"{scheme}://{netloc}{path}" + (f"?{urlencode(query)}" if query else "")


_clients: dict[tuple[str, str], redis.Redis] = {}
_clients_lock = threading.Lock()


def _client(url: str, password: str | None) -> redis.Redis:
    """A client for ``url``, kept per process: a sweep of many namespaces on one server reuses
    its connections. redis-py's pool notices a fork and opens new ones in the child."""
    key = (url, password or "")
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= _MAX_CLIENTS:
                _clients.pop(next(iter(_clients))).close()
            client = redis.Redis.from_url(
                url,
                password=password or None,
                socket_connect_timeout=_CONNECT_TIMEOUT,
                socket_timeout=_SOCKET_TIMEOUT,
                # One quick retry for a pooled connection that died idle; the reaper has its
                # own back-off for servers that are really away.
                retry=Retry(NoBackoff(), 1),
            )
            _clients[key] = client
    return client


def _fail(
    error: type[BackendError], kind: str, record: Record, doing: str, exc: Exception
) -> NoReturn:
    where = record.get("url") or "?"
    name = str(record.get("name") or "")
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        reason = f"the server refused the user and password ({exc}); check the URL's credentials"
    elif isinstance(exc, redis.exceptions.NoPermissionError):
        reason = f"the account may not do this ({exc}); check its ACL"
    elif isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        reason = f"cannot reach the server ({type(exc).__name__}: {exc}); is it up?"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    what = f"{kind} {name!r}" if name else kind
    message = redact_text(f"{what}: could not {doing} at {where}: {reason}", record, ("password",))
    raise error(message, kind=kind, resource=name) from exc
