"""The Redis backends against a real server: namespaces and logical databases keep the backend
contract; a namespace's release deletes 10,000 keys with SCAN + UNLINK in batches and glob
characters in a prefix never widen what it deletes; database claims are exclusive under
concurrent processes, never take a database somebody else uses, and a stale record never
flushes a database claimed since; a SIGKILLed owner's watchdog (or, with the watchdog killed
too, ``reclaim sweep``) leaves nothing on the server; a server that is briefly away keeps the
release ``failed`` until a sweep finishes it; hostile records cannot delete another namespace;
leftover listings never name what reclaim did not make; passwords stay out of records, errors
and status output.

Every test cleans up on the server whether it passed or not: whatever the backends planned in
this process is deleted with plain redis-py at teardown, children's resources are swept by the
``registry_path`` fixture (their run is dead by then) and deleted by the test's own finally.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import redis

import reclaim
from _services import closed_port, require, with_port
from conftest import CHILD_TIMEOUT, acquire_creates_nothing
from reclaim import AcquireError, BackendError, ForeignNameError, NotCreatedError, ReleaseError
from reclaim._run import current_run
from reclaim.backends import Record, make_name, redact_record
from reclaim.backends.redis import MARKER, RedisDatabase, RedisNamespace, glob_escape

CLAIM = "reclaim:db:{}"


# --- the server, and everything a test made on it deleted whatever happens --------------------


@dataclasses.dataclass
class Server:
    """The Redis server of the tests, a plain client on it, and what to delete at teardown.

    ``token`` is this test's own 8 hex digits: names made with :meth:`name` carry it as their
    run id, and ``prefix`` (``"reclaim-test-<token>:"``) is the user prefix of namespaces made
    in children, so teardown finds them.
    """

    url: str
    token: str
    planned: list[Record] = dataclasses.field(default_factory=list)
    prefixes: list[str] = dataclasses.field(default_factory=list)
    claims: list[tuple[str, int | None]] = dataclasses.field(default_factory=list)
    acl_users: list[str] = dataclasses.field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"reclaim-test-{self.token}:"

    def db(self, n: int = 0) -> redis.Redis:
        return redis.Redis.from_url(_db_url(self.url, n))

    def name(self, seq: int) -> str:
        return make_name(self.token, seq)

    def keys(self, prefix: str, db: int = 0) -> list[bytes]:
        """Every key under ``prefix`` (asked with SCAN, the glob escaped)."""
        return list(self.db(db).scan_iter(match=glob_escape(prefix.encode()) + b"*", count=1000))

    def claim_of(self, db: int) -> str | None:
        value = self.db(0).get(CLAIM.format(db))
        return value.decode() if isinstance(value, bytes) else None

    def free_databases(self) -> list[int]:
        """Databases 1..N-1 with no claim and no key, right now."""
        count = int(str(self.db(0).config_get("databases")["databases"]))
        return [n for n in range(1, count) if self.claim_of(n) is None and self.db(n).dbsize() == 0]

    def acl_user(self) -> tuple[str, str]:
        """A user of the server's ACL with a random password (deleted at teardown)."""
        user, password = f"reclaim-test-{self.token}", f"pw-{secrets.token_hex(8)}"
        self.db(0).acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        self.acl_users.append(user)
        return user, password

    def url_as(self, user: str, password: str, db: int = 0) -> str:
        parts = urlsplit(_db_url(self.url, db))
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
        return parts._replace(netloc=netloc).geturl()

    def cleanup(self) -> None:
        for record in self.planned:
            if "prefix" in record:
                self.prefixes.append(record["prefix"])
            else:
                self.claims.append((record["name"], record.get("db")))
        for prefix in self.prefixes:
            for key in self.keys(prefix):
                self.db(0).unlink(key)
        names = {name for name, _db in self.claims}
        for key in self.db(0).scan_iter(match=CLAIM.format("*"), count=1000):
            n = int(key.split(b":")[-1])
            if self.claim_of(n) in names:
                self.db(n).flushdb()
                self.db(0).delete(key)
        for key in self.db(0).scan_iter(match=f"*{self.token}*", count=1000):
            self.db(0).unlink(key)
        for user in self.acl_users:
            self.db(0).acl_deluser(user)


def _db_url(url: str, db: int) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The test's view of the server. Every record the backends plan in this process is noted
    (the backends' ``plan`` is wrapped, nothing else changes) and deleted at teardown with plain
    redis-py; tests list it before ``spawn`` so that it is torn down after their children."""
    me = Server(url=require("redis"), token=secrets.token_hex(4))
    for cls in (RedisNamespace, RedisDatabase):
        original = cls.plan

        def noting(self: Any, name: str, _original: Any = original) -> Record:
            record: Record = _original(self, name)
            me.planned.append(record)
            return record

        monkeypatch.setattr(cls, "plan", noting)
    try:
        yield me
    finally:
        me.cleanup()


# --- the contract -------------------------------------------------------------------------------


# --- namespaces -----------------------------------------------------------------------------


def test_a_namespace_is_a_prefix_with_a_marker_and_goes_at_exit(
    server: Server, registry_path: str
) -> None:
    with reclaim.Fixture("ns") as f:
        prefix = f.acquire(RedisNamespace(server.url))
        assert prefix.startswith("rc_")
        assert prefix.endswith(":")
        assert server.keys(prefix) == [f"{prefix}{MARKER}".encode()]
        server.db(0).mset({f"{prefix}user:{i}": i for i in range(50)})
        assert len(server.keys(prefix)) == 51
    assert server.keys(prefix) == []


def test_exists_counts_any_key_not_only_the_marker(server: Server) -> None:
    backend = RedisNamespace(server.url)
    prefix, record = backend.acquire(server.name(1))
    server.db(0).set(f"{prefix}left", "x")
    server.db(0).delete(f"{prefix}{MARKER}")
    assert RedisNamespace.exists(record), "a key under the prefix is still there"
    RedisNamespace.release(record)
    assert not RedisNamespace.exists(record)
    assert server.keys(prefix) == []
    RedisNamespace.release(record)  # double release: a no-op


def test_release_unlinks_10k_keys_in_batches_and_nothing_else(server: Server) -> None:
    backend = RedisNamespace(server.url)
    prefix, record = backend.acquire(server.name(1))
    # Neighbours: seq 10 starts with the digits of seq 1; without the separator, and with no
    # separator at all, a prefix match would take them too.
    neighbour = server.name(10)
    client = server.db(0)
    pipe = client.pipeline(transaction=False)
    for i in range(10_000):
        pipe.set(f"{prefix}k{i}", i)
    pipe.set(f"{neighbour}:keep", 1)
    pipe.set(f"{prefix.rstrip(':')}", 1)  # the name alone, no separator: not in the namespace
    pipe.execute()
    assert len(server.keys(prefix)) == 10_001
    before = _unlink_calls(client)
    RedisNamespace.release(record)
    calls = _unlink_calls(client) - before
    assert server.keys(prefix) == []
    assert client.get(f"{neighbour}:keep") == b"1"
    assert client.get(prefix.rstrip(":")) == b"1"
    assert calls >= math.ceil(10_001 / 1000), f"UNLINK in batches of at most 1000: {calls} calls"
    client.delete(f"{neighbour}:keep", prefix.rstrip(":"))


def _unlink_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_unlink", {}).get("calls", 0))


def test_glob_characters_in_a_prefix_are_refused(server: Server) -> None:
    """A user prefix is matched by SCAN: one with glob characters is refused when it is given,
    and in a record, so ``[x]*`` can never widen what release deletes."""
    for bad in ("[x]", "a*", "?", "a\\b", "]"):
        with pytest.raises(ValueError, match="glob characters"):
            RedisNamespace(server.url, prefix=f"{server.prefix}{bad}")
    name = server.name(1)
    client = server.db(0)
    decoys = [f"{server.prefix}xZZZQ-{name}:theirs", f"{server.prefix}x?-{name}:theirs"]
    for key in decoys:
        client.set(key, 1)
    user = f"{server.prefix}[x]*?-"
    record = {"name": name, "url": server.url, "user_prefix": user, "prefix": f"{user}{name}:"}
    for call in (RedisNamespace.release, RedisNamespace.exists):
        with pytest.raises(ForeignNameError, match="user_prefix"):
            call(record)
    assert all(client.exists(key) for key in decoys)


def test_glob_escape() -> None:
    assert glob_escape(b"a*b?c[d]e\\f") == b"a\\*b\\?c\\[d\\]e\\\\f"
    assert glob_escape(b"plain:rc_1") == b"plain:rc_1"


def test_acquire_refuses_a_prefix_in_use(server: Server) -> None:
    name = server.name(1)
    server.db(0).set(f"{name}:{MARKER}", "somebody")
    with pytest.raises(AcquireError, match="exists already"):
        RedisNamespace(server.url).acquire(name)
    assert server.db(0).get(f"{name}:{MARKER}") == b"somebody"


def test_hostile_records_never_delete_another_namespace(server: Server) -> None:
    client = server.db(0)
    victim = server.name(7)
    mine = server.name(1)
    kept = [f"{victim}:precious", f"{mine}_backup:x", f"user:{server.token}", f"{mine}7:k"]
    client.mset(dict.fromkeys(kept, 1))
    hostile: list[Record] = [
        {"name": mine, "url": server.url, "prefix": "*"},
        {"name": mine, "url": server.url, "prefix": ""},
        {"name": mine, "url": server.url, "prefix": mine},  # no separator
        {"name": mine, "url": server.url, "prefix": f"{mine}7"},
        {"name": mine, "url": server.url, "prefix": f"{mine}_"},  # the old listing's prefix
        {"name": mine, "url": server.url, "prefix": f"{mine}/"},  # another separator
        {"name": mine, "url": server.url, "prefix": f"x{mine}:"},  # a prefix not in its field
        {"name": mine, "url": server.url, "prefix": "user:"},
        {"name": mine, "url": server.url, "user_prefix": "user:", "prefix": "user:"},
        {"name": mine, "url": server.url, "user_prefix": 7, "prefix": f"{mine}:"},
        {"name": "*", "url": server.url, "prefix": "*:"},
        {"name": "user", "url": server.url, "prefix": "user:"},
        {"name": f"{mine}_backup", "url": server.url, "prefix": f"{mine}_backup:"},
        {"name": f"{victim}*", "url": server.url, "prefix": f"{victim}:"},
        {"name": mine, "url": server.url, "prefix": f"{victim}:"},
    ]
    for record in hostile:
        for call in (RedisNamespace.release, RedisNamespace.exists):
            with pytest.raises(ForeignNameError, match="refused"):
                call(record)
    assert all(client.exists(key) for key in kept)
    client.delete(*kept)
    with pytest.raises(ValueError, match="not a name reclaim makes"):
        RedisNamespace(server.url).acquire("rc_*")
    with pytest.raises(ForeignNameError, match="refused"):
        RedisDatabase.release({"name": "x' or 1", "url": server.url, "db": 1})


def test_a_backup_key_is_no_namespace_of_reclaims(server: Server) -> None:
    """The bug of issue 10: the listing took ``rc_..._1_backup:x`` for the namespace
    ``rc_..._1_`` and its release deleted the user's key."""
    name = make_name(server.token, 1, now=time.time() - 86400)
    client = server.db(0)
    client.set(f"{name}_backup:x", "precious")
    listed = [lo for lo in RedisNamespace.list_leftovers(server.url) if lo.run_id == server.token]
    assert listed == []
    with pytest.raises(ForeignNameError, match="prefix"):
        RedisNamespace.release({"name": name, "url": server.url, "prefix": f"{name}_"})
    assert client.get(f"{name}_backup:x") == b"precious"
    client.delete(f"{name}_backup:x")


def test_one_separator_and_the_prefix_are_checked() -> None:
    with pytest.raises(TypeError, match="separator"):
        RedisNamespace("redis://127.0.0.1:6379/0", separator="/")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="prefix"):
        RedisNamespace("redis://127.0.0.1:6379/0", prefix=b"x")  # type: ignore[arg-type]
    record = RedisNamespace("redis://127.0.0.1:6379/0", prefix="app:").plan("rc_00000000_a_1")
    assert record["user_prefix"] == "app:"
    assert record["prefix"] == "app:rc_00000000_a_1:"
    assert RedisNamespace.prefix_separator == ":"


# --- databases --------------------------------------------------------------------------------


def test_a_database_is_a_url_of_its_own_and_is_flushed_at_exit(
    server: Server, registry_path: str
) -> None:
    free = server.free_databases()
    if not free:
        pytest.skip("every logical database of the server is claimed or in use")
    with reclaim.Fixture("db") as f:
        url = f.acquire(RedisDatabase(server.url))
        db = int(urlsplit(url).path.strip("/"))
        assert db in free
        mine = redis.Redis.from_url(url)
        mine.mset({"a": 1, "b": 2})
        mine.flushdb()  # what suites that need a database of their own do
        mine.set("c", 3)
        assert server.db(db).dbsize() == 1
        assert (server.claim_of(db) or "").startswith(f"rc_{current_run().id}_")
    assert server.db(db).dbsize() == 0
    assert server.claim_of(db) is None


def test_database_claims_are_exclusive_under_concurrency(
    server: Server, registry_path: str
) -> None:
    """As many processes as there are databases to take, released at the same moment: each
    gets one, no two the same."""
    free = server.free_databases()[:6]
    if len(free) < 2:
        pytest.skip("fewer than two free logical databases")
    code = (
        "import json, sys\n"
        "import reclaim\n"
        "from reclaim.backends.redis import RedisDatabase\n"
        "url, dbs = sys.argv[1], [int(n) for n in sys.argv[2].split(',')]\n"
        "backend = RedisDatabase(url, databases=dbs)\n"
        "sys.stdin.readline()\n"
        "with reclaim.Fixture('racer') as f:\n"
        "    print(json.dumps(f.acquire(backend)), flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, server.url, ",".join(map(str, free))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in free
    ]
    try:
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
        for child in children:
            assert child.stdin is not None
            child.stdin.flush()
        got = []
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, child.communicate(timeout=CHILD_TIMEOUT)[1]
            got.append(int(urlsplit(json.loads(line)).path.strip("/")))
        assert sorted(got) == free, "every process got a database of its own"
        claims = {server.claim_of(db) for db in free}
        assert None not in claims
        assert len(claims) == len(free)
        with pytest.raises(AcquireError, match="no free database") as info:
            RedisDatabase(server.url, databases=free).acquire(server.name(1))
        assert "reclaim sweep" in str(info.value)
        assert "claimed: " in str(info.value)
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            assert child.wait(timeout=CHILD_TIMEOUT) == 0
        assert all(server.claim_of(db) is None for db in free)
    finally:
        for child in children:
            _reap(child)


def test_a_database_somebody_else_uses_is_never_taken(server: Server) -> None:
    free = server.free_databases()
    if len(free) < 2:
        pytest.skip("fewer than two free logical databases")
    used, other = free[:2]
    server.db(used).set(f"theirs-{server.token}", 1)
    try:
        url, record = RedisDatabase(server.url, databases=[used, other]).acquire(server.name(1))
        assert record["db"] == other
        assert url.endswith(f"/{other}")
        with pytest.raises(AcquireError, match=rf"holding keys of somebody else.*{used}"):
            RedisDatabase(server.url, databases=[used]).acquire(server.name(2))
        RedisDatabase.release(record)
        assert server.db(used).get(f"theirs-{server.token}") == b"1"
    finally:
        server.db(used).delete(f"theirs-{server.token}")


def test_a_stale_record_never_flushes_a_database_claimed_since(server: Server) -> None:
    free = server.free_databases()
    if not free:
        pytest.skip("every logical database of the server is claimed or in use")
    backend = RedisDatabase(server.url, databases=[free[0]])
    _, first = backend.acquire(server.name(1))
    RedisDatabase.release(first)
    url, second = backend.acquire(server.name(2))
    assert second["db"] == first["db"]
    redis.Redis.from_url(url).set("k", 1)
    RedisDatabase.release(first)  # the first run's sweeper, late
    assert RedisDatabase.exists(second)
    assert server.db(second["db"]).get("k") == b"1"
    assert not RedisDatabase.exists(first)
    RedisDatabase.release(second)
    assert server.db(second["db"]).dbsize() == 0


def test_a_record_never_flushes_database_0_or_a_users_database(server: Server) -> None:
    """The database number is an identity: 0 (the claims) and anything a claim key cannot name
    are refused before any I/O; a database that holds keys and no claim is refused by the
    server's answer; neither is flushed."""
    free = server.free_databases()
    if not free:
        pytest.skip("every logical database of the server is claimed or in use")
    users = free[0]
    key = f"user:{server.token}"
    server.db(0).set(key, 1)
    server.db(users).set(key, 1)
    name = server.name(1)
    try:
        for db in (0, -1, True, "3", 1.5, 2**31):
            record = {"name": name, "url": server.url, "db": db}
            for call in (RedisDatabase.release, RedisDatabase.exists):
                with pytest.raises(ForeignNameError, match="db"):
                    call(record)
        record = {"name": name, "url": server.url, "db": users}
        for call in (RedisDatabase.release, RedisDatabase.exists):
            with pytest.raises(ForeignNameError, match="no claim"):
                call(record)
        # Through a URL that names the user's database: the claims are still asked in db 0.
        record = {"name": name, "url": _db_url(server.url, users), "db": users}
        with pytest.raises(ForeignNameError, match="no claim"):
            RedisDatabase.release(record)
        assert server.db(0).get(key) == b"1"
        assert server.db(users).get(key) == b"1"
    finally:
        server.db(0).delete(key)
        server.db(users).delete(key)


def test_acquire_retried_after_a_lost_answer_gets_the_same_database(server: Server) -> None:
    free = server.free_databases()
    if len(free) < 2:
        pytest.skip("fewer than two free logical databases")
    backend = RedisDatabase(server.url, databases=free[:2])
    name = server.name(1)
    _, once = backend.acquire(name)
    _, twice = backend.acquire(name)
    assert once["db"] == twice["db"]
    RedisDatabase.release(once)
    assert not any(server.claim_of(db) == name for db in free)


def test_database_numbers_are_checked() -> None:
    url = "redis://127.0.0.1:6379/0"
    cases: list[list[Any]] = [[0], [-1], [], [True], ["3"]]
    for bad in cases:
        with pytest.raises(ValueError, match="databases"):
            RedisDatabase(url, databases=bad)


# --- leftovers ----------------------------------------------------------------------------------


def test_leftover_namespaces_are_only_reclaims_and_grouped(server: Server) -> None:
    client = server.db(0)
    ours = [server.name(1), server.name(2)]
    keys = [f"{ours[0]}:a", f"{ours[0]}:b", f"{ours[0]}:c", f"{ours[1]}:x"]
    tag = f":{server.token}"  # teardown finds every key that carries the token
    foreign = [
        server.name(3),  # the name alone, no separator
        f"{server.name(3)}/x{tag}",  # another separator
        f"{server.name(3)}_backup{tag}",  # a reclaim name with something after it
        f"{server.name(3)}_:x",  # the old listing grouped this as the namespace rc_..._3_
        f"{server.name(4)}x{tag}",  # the sequence goes on with a letter
        f"rc_{server.token[:7]}_abc_1{tag}",  # seven hex digits
        f"rc_ABCDEF12_abc_1{tag}",  # upper case
        f"xrc_{server.token}_abc_1{tag}",
        f"rc_{server.token}_ABC_1{tag}",
        f"rc_{server.token}_abc_{tag}",  # no sequence number
        f"rc_{server.token}_abcdefghi_1{tag}",  # a time of nine digits
        f"{server.prefix}{server.name(5)}:k",  # a user prefix: not found without the registry
    ]
    client.mset(dict.fromkeys(keys + foreign, 1))
    listed = list(RedisNamespace.list_leftovers(server.url))
    for key in foreign:
        assert not any(key.startswith(left.record["prefix"]) for left in listed), key
    found = [left for left in listed if left.run_id == server.token]
    assert sorted(left.record["prefix"] for left in found) == [f"{ours[0]}:", f"{ours[1]}:"]
    for left in found:
        assert left.record["name"] in ours
        assert left.record["url"] == server.url
        RedisNamespace.release(left.record)
    assert all(client.exists(key) for key in foreign)
    assert not any(client.exists(key) for key in keys)
    client.delete(*foreign)


def test_leftover_databases_are_only_reclaims(server: Server) -> None:
    free = server.free_databases()
    if len(free) < 2:
        pytest.skip("fewer than two free logical databases")
    _, record = RedisDatabase(server.url, databases=[free[0]]).acquire(server.name(1))
    server.db(0).set(CLAIM.format(free[1]), f"not-reclaim-{server.token}")
    try:
        found = {
            left.record["db"]: left
            for left in RedisDatabase.list_leftovers(server.url)
            if server.token in left.record["name"]
        }
        assert set(found) == {free[0]}
        assert found[free[0]].record["name"] == record["name"]
        assert found[free[0]].run_id == server.token
        RedisDatabase.release(found[free[0]].record)
        assert not RedisDatabase.exists(record)
    finally:
        server.db(0).delete(CLAIM.format(free[1]))


# --- child processes (crashes and a server that goes down: tests/test_crash_kit.py) ---------


def _reap(child: subprocess.Popen[str]) -> None:
    """Kill a child that still runs, wait for it and close its pipes."""
    if child.poll() is None:
        child.kill()
    child.wait(timeout=CHILD_TIMEOUT)
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()


# --- URLs, secrets, errors ------------------------------------------------------------------


def test_records_hold_the_password_only_in_a_secret_field(server: Server) -> None:
    user, password = server.acl_user()
    backend = RedisNamespace(server.url_as(user, password))
    prefix, record = backend.acquire(server.name(1))
    assert record["password"] == password
    assert password not in json.dumps({k: v for k, v in record.items() if k != "password"})
    assert record["url"] == f"redis://{user}@{urlsplit(server.url).netloc}/0"
    assert password not in json.dumps(redact_record(record, RedisNamespace.secret_fields))
    assert RedisNamespace.exists(record)
    RedisNamespace.release(record)
    assert server.keys(prefix) == []
    url, db_record = RedisDatabase(server.url_as(user, password)).acquire(server.name(2))
    assert password in url, "the value is for the test's own client"
    assert password not in json.dumps({k: v for k, v in db_record.items() if k != "password"})
    RedisDatabase.release(db_record)


def test_a_password_in_the_query_string_is_a_secret_too() -> None:
    backend = RedisNamespace("unix:///run/redis.sock?db=3&password=hunter2secret")
    record = backend.plan("rc_00000000_a_1")
    assert record["password"] == "hunter2secret"
    assert record["url"] == "unix:///run/redis.sock?db=3"


def test_acquire_errors_say_what_happened_without_the_password(server: Server) -> None:
    user, _password = server.acl_user()
    wrong = f"wrong-{secrets.token_hex(6)}"
    for backend in (
        RedisNamespace(server.url_as(user, wrong)),
        RedisDatabase(server.url_as(user, wrong)),
    ):
        with pytest.raises(AcquireError) as info:
            backend.acquire(server.name(1))
        message = str(info.value)
        assert backend.kind in message
        assert "refused the user and password" in message
        assert wrong not in message


def test_an_acquire_that_cannot_connect_creates_nothing(server: Server, registry_path: str) -> None:
    """A port nobody listens on: the connection never opened, so nothing was created; the
    entry is closed instead of failing every later sweep against a server that is not there."""
    url = with_port(server.url_as("someone", "hunter2secret"), closed_port())
    for make in (RedisNamespace, RedisDatabase):
        with pytest.raises(NotCreatedError, match="cannot reach the server") as info:
            make(url).acquire(server.name(1))
        assert "hunter2secret" not in str(info.value)
        acquire_creates_nothing(
            registry_path, make(url), says="cannot reach the server", hidden="hunter2secret"
        )


def test_an_acquire_with_a_wrong_password_creates_nothing(
    server: Server, registry_path: str
) -> None:
    user, _password = server.acl_user()
    wrong = f"wrong-{secrets.token_hex(6)}"
    for make in (RedisNamespace, RedisDatabase):
        with pytest.raises(NotCreatedError, match="refused the user and password"):
            make(server.url_as(user, wrong)).acquire(server.name(1))
        acquire_creates_nothing(
            registry_path,
            make(server.url_as(user, wrong)),
            says="refused the user and password",
            hidden=wrong,
        )


def test_a_refused_create_command_creates_nothing(server: Server, registry_path: str) -> None:
    """An account that may connect but not write: the server's error reply means the command
    did not run."""
    user, password = server.acl_user()
    server.db(0).acl_setuser(user, enabled=True, commands=["-set", "-eval", "-evalsha"])
    url = server.url_as(user, password)
    with pytest.raises(NotCreatedError, match="may not do this"):
        RedisNamespace(url).acquire(server.name(1))
    with pytest.raises(NotCreatedError, match="may not do this"):
        RedisDatabase(url, databases=[1]).acquire(server.name(2))
    acquire_creates_nothing(registry_path, RedisNamespace(url), says="ACL", hidden=password)


class _Named(RedisNamespace):
    """Takes the name it is given (to collide with somebody else's namespace on purpose)."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url)
        self.fixed = name

    def adapt_name(self, proposed: str) -> str:
        return self.fixed


def test_a_namespace_somebody_else_holds_is_never_released(
    server: Server, registry_path: str
) -> None:
    """The marker exists already: not ours. The failed acquire must leave its keys alone."""
    name = server.name(1)
    server.db(0).set(f"{name}:{MARKER}", "somebody")
    server.db(0).set(f"{name}:data", "theirs")
    with pytest.raises(NotCreatedError, match="exists already"):
        RedisNamespace(server.url).acquire(name)
    with (
        reclaim.Fixture("collides") as f,
        pytest.raises(reclaim.AcquireError, match="exists already"),
    ):
        f.acquire(_Named(server.url, name))
    assert server.db(0).get(f"{name}:data") == b"theirs"
    assert server.db(0).get(f"{name}:{MARKER}") == b"somebody"


def test_no_free_database_creates_nothing(server: Server, registry_path: str) -> None:
    claimed = server.free_databases()[:1]
    if not claimed:
        pytest.skip("every logical database of the server is claimed or in use")
    db = claimed[0]
    server.db(db).set(f"reclaim-test-{server.token}:user-key", "x")
    try:
        with pytest.raises(NotCreatedError, match="no free database"):
            RedisDatabase(server.url, databases=[db]).acquire(server.name(1))
        acquire_creates_nothing(
            registry_path,
            RedisDatabase(server.url, databases=[db]),
            says="no free database",
            hidden="-",
        )
    finally:
        server.db(db).delete(f"reclaim-test-{server.token}:user-key")


def test_release_errors_name_the_resource_and_hide_the_password(server: Server) -> None:
    closed = closed_port()
    url = with_port(server.url_as("someone", "hunter2secret"), closed)
    record = RedisNamespace(url).plan("rc_00000000_a_1")
    with pytest.raises(ReleaseError, match="cannot reach the server") as info:
        RedisNamespace.release(record)
    assert "rc_00000000_a_1" in str(info.value)
    assert "hunter2secret" not in str(info.value)
    assert info.value.kind == "redis.namespace"
    record = RedisDatabase(url).plan("rc_00000000_a_2")
    with pytest.raises(ReleaseError, match="is it up") as info:
        RedisDatabase.release(record)
    assert "hunter2secret" not in str(info.value)
    with pytest.raises(BackendError, match="look for"):
        RedisNamespace.exists(record | {"prefix": "rc_00000000_a_2:"})


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://u:hunter2secret@127.0.0.1:6379/0", "must start with redis://"),
        ("redis://u:hunter2secret@127.0.0.1:notaport/0", "is not valid"),
        ("redis://u:hunter2secret@/0", "names no host"),
        ("redis://u:hunter2secret@127.0.0.1:6379/zero", "not a number"),
        ("unix://", "names no socket path"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint) as info:
        RedisNamespace(url)
    assert "hunter2secret" not in str(info.value)


def test_the_module_imports_without_its_driver() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from reclaim.backends.redis import RedisDatabase, RedisNamespace\n"
        "for make in (RedisNamespace, RedisDatabase):\n"
        "    try:\n"
        "        make('redis://h:6379/0')\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.count("MissingExtraError") == 2
    assert "pip install 'reclaim[redis]'" in out
