"""Redis: ``RedisNamespace(url)`` gives a key prefix of its own, ``RedisDatabase(url)`` a whole
logical database.

**Namespaces.** The value is a key prefix, ``"rc_<run>_<time>_<seq>:"``: a whole reclaim name and
the one separator ``":"`` (after a user prefix, when given); the test writes its keys under it
(``f"{prefix}session:42"``). The guard refuses any record whose prefix is not exactly that (I8).
Acquire writes one marker key, ``<prefix>__reclaim__``, with ``SET NX``: before it, nothing of the
namespace exists on the server, after it, :meth:`RedisNamespace.exists` is true until release.
``exists`` is true while *any* key under the prefix exists (the marker is only the fast path), so a
namespace whose marker a test deleted still counts while it holds keys. Release deletes every key
under the prefix: ``SCAN MATCH <prefix>*`` (glob characters of the prefix escaped, so ``a*`` never
matches ``ab``) and ``UNLINK`` in batches. SCAN returns every key that exists from the start of the
scan to its end, so nothing written before release began survives it.

**Databases.** For suites that need ``FLUSHDB`` or ``SELECT``, the value is a URL of a logical
database of its own (``redis://host:6379/7``). Claims live in database 0 as keys ``reclaim:db:<n>``
whose value is the reclaim name. One Lua script picks the first database that is neither claimed nor
holds any key, and claims it: scripts run atomically, so two processes never get the same database,
and a database somebody uses without reclaim (it holds keys) is never taken. A record's database
number is a number a claim key can name (never 0), and release acts on it only while its claim holds
the record's name; a database that holds keys and no claim is refused (somebody else's). Release is
another script: when the claim still holds this name, ``FLUSHDB ASYNC`` that database and drop the
claim, in one step, so a database is never handed out again before it is empty, and a stale record
can never flush a database somebody else claimed since. A killed run's claim is released by its
watchdog or the next ``reclaim sweep`` (from the registry, or with ``list_leftovers`` when the
registry is gone); until then the next run simply takes another database.

Records keep the server URL without its password; the password goes in the secret field
``password`` (I7). Redis Cluster is not supported (SCAN sees one node, and a cluster has only
database 0).

Needs the ``redis`` extra (redis-py): ``pip install 'reclaim[redis]'``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    NotCreatedError,
    ReclaimName,
    Record,
    ReleaseError,
    ServerURL,
    refuse,
    require_extra,
    split_url,
    translate_errors,
)

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

__all__ = ["MARKER", "SEPARATOR", "RedisDatabase", "RedisNamespace", "glob_escape", "unlink_prefix"]

_NAMESPACE: Final = "redis.namespace"
_DATABASE: Final = "redis.database"
_SCHEMES: Final = ("redis", "rediss", "unix")

#: The one separator after reclaim's name in a namespace's prefix: ``rc_<run>_<time>_<seq>:``.
SEPARATOR: Final = ":"

#: Characters a user prefix may not hold: Redis glob characters (a prefix is matched by SCAN).
_GLOB_CHARS: Final = frozenset("*?[]\\")

#: Appended to a namespace's prefix: the key acquire creates.
MARKER: Final = "__reclaim__"

#: The claims of :class:`RedisDatabase` live in this database, as ``reclaim:db:<n>``.
_CLAIMS_DB: Final = 0
_CLAIM_PREFIX: Final = "reclaim:db:"

#: The highest database number a claim key may name (Redis counts databases in an int).
_MAX_DB: Final = 2**31 - 1

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
redis.call('SELECT', claims)
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
# flush a database claimed since); empty it and drop the claim in one atomic step. Returns 1
# (flushed), 0 (our claim is gone: released already, perhaps claimed by another name since) or
# -1 (no claim at all, yet the database holds keys: somebody else's, never flushed).
_RELEASE_LUA: Final = """
local claims = tonumber(ARGV[3])
local db = tonumber(ARGV[2])
local key = 'reclaim:db:' .. ARGV[2]
redis.call('SELECT', claims)
local holder = redis.call('GET', key)
if holder == ARGV[1] then
  redis.call('SELECT', db)
  redis.call('FLUSHDB', 'ASYNC')
  redis.call('SELECT', claims)
  redis.call('DEL', key)
  return 1
end
if holder then return 0 end
redis.call('SELECT', db)
local size = redis.call('DBSIZE')
redis.call('SELECT', claims)
if size > 0 then return -1 end
return 0
"""

# The number of keys in database ARGV[1], asked from the claims' database ARGV[2].
_DBSIZE_LUA: Final = """
redis.call('SELECT', tonumber(ARGV[1]))
local size = redis.call('DBSIZE')
redis.call('SELECT', tonumber(ARGV[2]))
return size
"""


class RedisNamespace(Backend[str]):
    """A key prefix of its own in one Redis database; every key under it is deleted at release.

    The value is the prefix, ``f"{prefix}{name}:"``, e.g. ``"rc_3f2a1b0c_t1a2b3_1:"``.

    Args:
        url: the server and database, ``redis://[[user]:password@]host:port/db``,
            ``rediss://...`` (TLS) or ``unix:///path/to/redis.sock?db=N``.
        prefix: put before reclaim's name, e.g. the ``"myapp:"`` your code adds to every key.
            Any characters but the glob characters ``* ? [ ] \\``. Namespaces with a prefix are
            not found by the registry-less leftover listing (it looks for keys that start with
            ``rc_``); the registry and the watchdog release them as any other.

    The separator after the name is always ``":"`` (:data:`SEPARATOR`).

    Raises:
        ValueError: the URL or prefix cannot be used.
        MissingExtraError: redis-py is not installed.
    """

    kind = _NAMESPACE
    secret_fields = frozenset({"password"})
    url_schemes = _SCHEMES
    prefix_separator = SEPARATOR

    def __init__(self, url: str, *, prefix: str = "") -> None:
        require_extra(_HAVE_DRIVER, _NAMESPACE, "redis", "redis-py")
        self.url, self._password = _split(url, _NAMESPACE)
        if not isinstance(prefix, str):
            raise TypeError(f"RedisNamespace prefix must be a str, not {type(prefix).__name__}")
        if _GLOB_CHARS & set(prefix):
            raise ValueError(
                f"RedisNamespace prefix {prefix!r} must not hold the glob characters * ? [ ] \\"
                " (release finds the keys with SCAN MATCH)"
            )
        self.prefix = prefix

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The key prefix must be exactly the user's prefix, the name and ``":"``; the user's
        prefix (its own field) holds no glob character. A record can never make release scan
        ``*``, ``user:*`` or ``rc_..._1_backup:*`` (I8)."""
        user = record.get("user_prefix", "")
        if not isinstance(user, str) or _GLOB_CHARS & set(user):
            raise refuse(cls.kind, "user_prefix", user, "a str without * ? [ ] or \\", name=name)
        return (("prefix", record.get("prefix"), user + name.text + SEPARATOR),)

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything that is not one."""
        return self.name_style.spell(proposed)

    def plan(self, name: str) -> Record:
        self.name_style.spell(name)
        return {
            "name": name,
            "url": self.url,
            "password": self._password,
            "user_prefix": self.prefix,
            "prefix": f"{self.prefix}{name}{SEPARATOR}",
        }

    def acquire(self, name: str) -> tuple[str, Record]:
        """``SET <prefix>__reclaim__ <name> NX``, sent once. Raises :class:`NotCreatedError`
        when nothing was written: the server could not be reached or refused the credentials
        (the connection is opened before the command is sent), it refused the command, or the
        marker exists already (somebody else's namespace: never released on our behalf)."""
        record = self.plan(name)
        marker = _marker(record["prefix"])
        client = _client(record["url"], record["password"])
        created = _create(
            client,
            _NAMESPACE,
            record,
            "write the namespace's marker key",
            "SET",
            marker,
            name,
            "NX",
        )
        if created is None:
            raise NotCreatedError(
                f"{_NAMESPACE} {name!r}: the marker key {marker!r} exists"
                f" already at {record['url']}: another namespace uses this prefix; refusing to"
                " share it",
                kind=_NAMESPACE,
                resource=name,
            )
        return record["prefix"], record

    @classmethod
    def release(cls, record: Record) -> None:
        """``SCAN MATCH <prefix>*`` + ``UNLINK`` in batches, the marker with the rest."""
        prefix = record["prefix"]  # exactly user prefix + name + ":" (the guard checked it)
        client = _client(record["url"], record.get("password"))
        with _translated(ReleaseError, _NAMESPACE, record, f"delete the keys under {prefix!r}"):
            unlink_prefix(client, prefix)

    #: A dead run's namespaces are released 1000 at a time: one SCAN of the database for
    #: them all, where a release on its own scans the whole database for its one prefix.
    batch_size = 1000

    @classmethod
    def release_many(cls, records: Sequence[Record]) -> Sequence[Exception | None]:
        """One ``SCAN`` per server for every namespace there, then ``UNLINK`` in batches: a key
        goes only when its whole prefix (user prefix, name, ``":"``) is one of the records'
        (I8); a namespace of the same run that is not in the batch is never touched."""
        groups: dict[tuple[str, str | None, str], list[int]] = {}
        for i, record in enumerate(records):
            key = (str(record["url"]), record.get("password"), str(record.get("user_prefix", "")))
            groups.setdefault(key, []).append(i)
        outcomes: list[Exception | None] = [None] * len(records)
        for (url, password, user), members in groups.items():
            first = records[members[0]]
            doing = f"delete the keys of {len(members)} namespaces under {user!r}"
            try:
                with _translated(ReleaseError, _NAMESPACE, first, doing):
                    prefixes = {str(records[i]["prefix"]) for i in members}
                    unlink_prefixes(_client(url, password), user, prefixes)
            except Exception as exc:
                for i in members:
                    outcomes[i] = exc
        return outcomes

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Is any key under the prefix there (the marker, or anything the test wrote)?"""
        prefix = record["prefix"]
        client = _client(record["url"], record.get("password"))
        with _translated(BackendError, _NAMESPACE, record, f"look for keys under {prefix!r}"):
            if client.exists(_marker(prefix)):
                return True
            return any(True for _ in _scan(client, prefix))

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"{record.get('url')} {record.get('prefix', record.get('name'))}*"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Namespaces in the database at ``target`` (a Redis URL): keys that start with a whole
        reclaim name followed by ``":"``, grouped by exactly that prefix.

        One ``SCAN MATCH rc_*:*`` over the database. ``rc_..._1_backup:x`` or ``rc_..._1``
        (no separator) are no namespace of reclaim's. Namespaces made with a ``prefix`` are not
        listed (their keys do not start with ``rc_``).
        """
        require_extra(_HAVE_DRIVER, _NAMESPACE, "redis", "redis-py")
        url, password = _split(target, _NAMESPACE)
        server: Record = {"name": "", "url": url, "password": password}
        client = _client(url, password)
        found: dict[str, ReclaimName] = {}
        with _translated(BackendError, _NAMESPACE, server, "list the keys under rc_*"):
            for key in client.scan_iter(
                match=b"rc_*" + SEPARATOR.encode() + b"*", count=_SCAN_COUNT
            ):
                if not isinstance(key, bytes):
                    continue
                head, sep, _rest = key.partition(SEPARATOR.encode())
                try:
                    text = head.decode("ascii")
                except UnicodeDecodeError:
                    continue
                parsed = cls.name_style.parse(text) if sep else None
                if parsed is not None:
                    found.setdefault(text, parsed)
        for name, parsed in sorted(found.items()):
            record = {**server, "name": name, "user_prefix": "", "prefix": name + SEPARATOR}
            yield Leftover.of(record, parsed)


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
        require_extra(_HAVE_DRIVER, _DATABASE, "redis", "redis-py")
        public, self._password = _split(url, _DATABASE)
        self.url = _with_db(public, _CLAIMS_DB)
        self._user_url = url
        self.databases: tuple[int, ...] | None = None
        if databases is not None:
            chosen = sorted(set(databases))
            for db in chosen:
                if not _is_claimable(db):
                    raise ValueError(
                        f"RedisDatabase databases must be whole numbers above {_CLAIMS_DB}"
                        f" (database {_CLAIMS_DB} holds the claims), not {db!r}"
                    )
            if not chosen:
                raise ValueError("RedisDatabase databases is empty: give at least one number")
            self.databases = tuple(chosen)

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The database number, when the record holds one, is one a claim key can name: a whole
        number from 1 (database 0 holds the claims: never flushed). Whether that database is
        claimed under this name only the server can say: release and exists ask it, and refuse
        a database that holds keys but no claim."""
        db = record.get("db")
        if db is not None and not _is_claimable(db):
            raise refuse(
                cls.kind,
                "db",
                db,
                f"a database number from 1 to {_MAX_DB} (database 0 holds the claims)",
                name=name,
            )
        return ()

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything that is not one."""
        return self.name_style.spell(proposed)

    def plan(self, name: str) -> Record:
        self.name_style.spell(name)
        # The database number is not known yet: release finds the claim by its name (I1).
        return {"name": name, "url": self.url, "password": self._password}

    def acquire(self, name: str) -> tuple[str, Record]:
        """Claim a free database with one script, sent once. Raises :class:`NotCreatedError`
        when nothing was claimed: the server could not be reached or refused the credentials,
        the database count could not be read (nothing is written before the script), the
        server refused the script, or no database was free."""
        record = self.plan(name)
        client = _client(record["url"], record["password"])
        with _translated(NotCreatedError, _DATABASE, record, "count the databases"):
            candidates = self.databases or tuple(range(1, _database_count(client, record)))
        claimed = _create(
            client,
            _DATABASE,
            record,
            "claim a database",
            "EVAL",
            _CLAIM_LUA,
            0,
            name,
            _CLAIMS_DB,
            *candidates,
        )
        db = int(claimed)
        if db < 0:
            raise NotCreatedError(
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
        """When the claim still holds this name: ``FLUSHDB ASYNC`` and drop the claim. A
        database that holds keys but no claim is refused (somebody else's)."""
        name = record["name"]
        client = _claims_client(record)
        with _translated(ReleaseError, _DATABASE, record, "flush and unclaim the database"):
            db = record.get("db")
            # The recorded database (the script decides, atomically, whether it is still ours),
            # or, for a planned record, whichever databases are claimed under this name.
            for n in [int(db)] if db is not None else _claims_of(client, record):
                if int(_script(client, _RELEASE_LUA)(args=[name, n, _CLAIMS_DB])) < 0:
                    _refuse_unclaimed(cls, record, n)

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Does a claim with this name exist?"""
        client = _claims_client(record)
        with _translated(BackendError, _DATABASE, record, "look for the claim"):
            if _claims_of(client, record):
                return True
            db = record.get("db")
            # No claim at all, yet keys: somebody else's database, not one released.
            if db is not None and client.get(_claim_key(db)) is None and _dbsize(client, int(db)):
                _refuse_unclaimed(cls, record, int(db))
            return False

    @classmethod
    def describe(cls, record: Record) -> str:
        db = record.get("db")
        where = _with_db(str(record.get("url")), int(db)) if db is not None else record.get("url")
        return f"{where} ({record.get('name')})"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Claims on the server at ``target`` (a Redis URL) that hold a whole reclaim name."""
        require_extra(_HAVE_DRIVER, _DATABASE, "redis", "redis-py")
        public, password = _split(target, _DATABASE)
        server: Record = {"name": "", "url": _with_db(public, _CLAIMS_DB), "password": password}
        client = _client(server["url"], password)
        with _translated(BackendError, _DATABASE, server, "list the database claims"):
            claims = _all_claims(client)
        for db, name in sorted(claims.items()):
            parsed = cls.name_style.parse(name)
            if parsed is None or not _is_claimable(db):
                continue  # not a name reclaim made: never touched
            yield Leftover.of({**server, "name": name, "db": db}, parsed)


# --- the namespace's keys ----------------------------------------------------------------------


def glob_escape(prefix: bytes) -> bytes:
    """``prefix`` with Redis glob characters (``* ? [ ] \\``) escaped: it matches only itself."""
    return _GLOB_SPECIAL.sub(rb"\\\1", prefix)


def unlink_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key that starts with ``prefix``: SCAN + UNLINK in batches. Returns how many
    keys were deleted.

    Public for benchmarks and for users who clean a prefix by hand.
    """
    return _unlink(client, _scan(client, prefix))


def unlink_prefixes(client: redis.Redis, user_prefix: str, prefixes: set[str]) -> int:
    """Delete every key under any of ``prefixes``, each ``user_prefix + name + ":"``, with one
    SCAN of the database (matching what they all start with). Returns how many keys were
    deleted. A key counts as under a prefix only when the text up to its first ``":"`` after
    ``user_prefix`` is exactly one of them: never a look-alike such as ``name_backup:``."""
    owned = {p.encode() for p in prefixes}
    user = user_prefix.encode()
    separator = SEPARATOR.encode()

    def owned_key(key: bytes) -> bool:
        head, sep, _rest = key[len(user) :].partition(separator)
        return bool(sep) and key.startswith(user) and user + head + sep in owned

    return _unlink(client, filter(owned_key, _scan(client, _common_start(prefixes))))


def _unlink(client: redis.Redis, keys: Iterable[bytes]) -> int:
    """``UNLINK`` the keys in batches; how many were deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= _UNLINK_BATCH:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def _common_start(texts: set[str]) -> str:
    """What all of ``texts`` start with (the first and last in order share it with the rest)."""
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _scan(client: redis.Redis, prefix: str) -> Iterator[bytes]:
    raw = prefix.encode()
    pattern = glob_escape(raw) + b"*"
    for key in client.scan_iter(match=pattern, count=_SCAN_COUNT):
        # Second guard: whatever the pattern matched, only keys that start with the prefix.
        if isinstance(key, bytes) and key.startswith(raw):
            yield key


def _marker(prefix: str) -> str:
    return prefix + MARKER


# --- databases ---------------------------------------------------------------------------------


def _database_count(client: redis.Redis, record: Record) -> int:
    try:
        answer = client.config_get("databases")
        return int(str(answer["databases"]))
    except (redis.ResponseError, KeyError, ValueError) as exc:
        raise NotCreatedError(
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
        return [int(db)] if client.get(_claim_key(db)) == name.encode() else []
    return sorted(n for n, holder in _all_claims(client).items() if holder == name)


def _claim_key(db: int) -> str:
    return f"{_CLAIM_PREFIX}{int(db)}"


def _is_claimable(db: object) -> bool:
    """A database number a claim key can name: a whole number from 1 (0 holds the claims)."""
    return isinstance(db, int) and not isinstance(db, bool) and _CLAIMS_DB < db <= _MAX_DB


def _dbsize(client: redis.Redis, db: int) -> int:
    return int(_script(client, _DBSIZE_LUA)(args=[db, _CLAIMS_DB]))


def _refuse_unclaimed(cls: type[Backend[Any]], record: Record, db: int) -> NoReturn:
    name = cls.name_style.parse(record.get("name"))
    raise refuse(
        cls.kind,
        "db",
        db,
        f"a database claimed under {record.get('name')!r}: it holds keys and no claim"
        f" ({_claim_key(db)} is not set), so it is somebody else's",
        name=name,
    )


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


def _split(url: object, kind: str) -> tuple[str, str]:
    """(the URL without its password, the password or ""). Messages never quote a password."""
    server: ServerURL = split_url(url, kind=kind, schemes=_SCHEMES, need_host=False)
    if server.scheme == "unix" and not server.path:
        raise ValueError(f"{kind}: the URL {server.public!r} names no socket path")
    if server.scheme != "unix" and not server.host:
        raise ValueError(f"{kind}: the URL {server.public!r} names no host")
    db = dict(server.query).get("db") or (server.path.strip("/") if server.scheme != "unix" else "")
    if db and not db.isdigit():
        raise ValueError(f"{kind}: the URL {server.public!r} names database {db!r}, not a number")
    return server.public, server.password


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


def _create(client: redis.Redis, kind: str, record: Record, doing: str, *command: Any) -> Any:
    """Send the one command that creates something, on a connection of its own, and return
    the server's answer.

    The connection is opened (and the credentials checked) before the command is sent: a
    failure there is :class:`NotCreatedError`. The command is sent once, never retried (a retry
    after a lost answer could not tell our marker from somebody else's); an error reply means
    Redis did not run it (a script's one write is its last step): :class:`NotCreatedError`.
    A connection lost after sending is :class:`AcquireError`: it may have been done.
    """
    pool = client.connection_pool
    with _translated(NotCreatedError, kind, record, "connect"):
        conn = pool.get_connection()
    try:
        with (
            _translated(AcquireError, kind, record, doing),
            _translated(NotCreatedError, kind, record, doing, catch=redis.ResponseError),
        ):
            conn.send_command(*command)  # type: ignore[no-untyped-call]
            return conn.read_response()
    finally:
        pool.release(conn)


def _claims_client(record: Record) -> redis.Redis:
    """A client on the claims' database of the record's server, whatever its URL names."""
    return _client(_with_db(str(record["url"]), _CLAIMS_DB), record.get("password"))


def _translated(
    error: type[BackendError],
    kind: str,
    record: Record,
    doing: str,
    *,
    catch: type[Exception] | None = None,
) -> contextlib.AbstractContextManager[None]:
    return translate_errors(
        catch or redis.RedisError,
        error,
        kind,
        record,
        doing,
        where=str(record.get("url") or "?"),
        reason=_reason,
        secret_fields=("password",),
    )


def _reason(exc: BaseException) -> str:
    """What a driver error means for the user, with the advice that fits it."""
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return f"the server refused the user and password ({exc}); check the URL's credentials"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"the account may not do this ({exc}); check its ACL"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"cannot reach the server ({type(exc).__name__}: {exc}); is it up?"
    return f"{type(exc).__name__}: {exc}"
