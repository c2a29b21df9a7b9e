"""The NATS JetStream backends against a real server: streams and KV buckets keep the backend
contract; a stream captures its subjects (``{name}`` filled in) and serves what was published; a
bucket stores and serves keys; the ``durable_consumer`` safety net makes the server delete an
idle durable consumer by itself; the sync API works inside a running event loop and the async
one on it; a SIGKILLed owner's watchdog (or, with the watchdog killed too, ``reclaim sweep``)
leaves nothing on the server; a server that is briefly away keeps the release ``failed`` until a
sweep finishes it; hostile names and subjects never reach the JetStream API; leftover listings
never name what reclaim did not make; passwords and tokens stay out of records, errors and
status output.

Every test cleans up on the server whether it passed or not: every stream the backends planned
in this process, and every stream whose name carries the test's token, is deleted with plain
nats-py at teardown; children's resources are swept by the ``registry_path`` fixture (their run
is dead by then) and deleted by the test's own finally.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.js.api
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

import reclaim
from _services import closed_port, reachable, require
from conftest import CHILD_TIMEOUT, acquire_creates_nothing, wait_until
from reclaim import AcquireError, BackendError, ForeignNameError, NotCreatedError, ReleaseError
from reclaim._registry import open_registry
from reclaim.backends import Record, make_name, redact_record
from reclaim.backends.nats import NatsKeyValue, NatsStream, durable_consumer

T = TypeVar("T")


# --- the server, and everything a test made on it deleted whatever happens --------------------


@dataclasses.dataclass
class Server:
    """The NATS server of the tests and what to delete at teardown.

    ``token`` is this test's own 8 hex digits: names made with :meth:`name` carry it as their
    run id, and every stream whose name contains it is deleted at teardown.
    """

    url: str
    token: str
    planned: list[Record] = dataclasses.field(default_factory=list)
    streams: list[str] = dataclasses.field(default_factory=list)

    def name(self, seq: int) -> str:
        return make_name(self.token, seq)

    def run(self, work: Callable[[NATS], Awaitable[T]], url: str | None = None) -> T:
        """Run ``work`` with a connection of its own (from sync code)."""

        async def main() -> T:
            nc = await nats.connect(url or self.url, allow_reconnect=False, connect_timeout=5)
            try:
                return await work(nc)
            finally:
                await nc.close()

        return asyncio.run(main())

    def names(self) -> set[str]:
        """Every stream on the server (``$JS.API.STREAM.NAMES``, page by page)."""

        async def work(nc: NATS) -> set[str]:
            found: set[str] = set()
            while True:
                reply = await nc.request(
                    "$JS.API.STREAM.NAMES", json.dumps({"offset": len(found)}).encode(), timeout=5
                )
                page = json.loads(reply.data)
                batch = page.get("streams") or []
                found.update(batch)
                if not batch or len(found) >= page["total"]:
                    return found

        return self.run(work)

    def has(self, stream: str) -> bool:
        async def work(nc: NATS) -> bool:
            try:
                await nc.jetstream().stream_info(stream)
            except nats.js.errors.NotFoundError:
                return False
            return True

        return self.run(work)

    def delete(self, *streams: str) -> None:
        async def work(nc: NATS) -> None:
            js = nc.jetstream()
            for stream in streams:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(stream)

        self.run(work)

    def cleanup(self) -> None:
        doomed = set(self.streams)
        for record in self.planned:
            doomed |= {record["name"], f"KV_{record['name']}"}
        doomed |= {stream for stream in self.names() if self.token in stream}
        self.delete(*sorted(doomed))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The test's view of the server. Every record the backends plan in this process is noted
    (the backends' ``plan`` is wrapped, nothing else changes) and its stream deleted at teardown
    with plain nats-py; tests list it before ``spawn`` so that it is torn down after their
    children."""
    me = Server(url=require("nats"), token=secrets.token_hex(4))
    for cls in (NatsStream, NatsKeyValue):
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


def _with_userinfo(url: str, userinfo: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{userinfo}@{parts.netloc.rpartition('@')[2]}").geturl()


# --- the contract -------------------------------------------------------------------------------


# --- streams and buckets ----------------------------------------------------------------------


def test_a_stream_captures_its_subjects_and_goes_at_exit(
    server: Server, registry_path: str
) -> None:
    with reclaim.Fixture("stream") as f:
        name = f.acquire(NatsStream(server.url, subjects=["orders.{name}.>", "audit.{name}"]))
        default = f.acquire(NatsStream(server.url))

        async def work(nc: NATS) -> list[Any]:
            js = nc.jetstream()
            await js.publish(f"orders.{name}.created", b"order 1")
            await js.publish(f"audit.{name}", b"audit 1")
            await js.publish(default, b"bare")
            await js.publish(f"{default}.a.b", b"deep")
            info = await js.stream_info(name)
            first = await js.get_msg(name, 1)
            other = await js.stream_info(default)
            return [info.config.subjects, info.state.messages, first.data, other.state.messages]

        subjects, count, data, default_count = server.run(work)
        assert subjects == [f"orders.{name}.>", f"audit.{name}"]
        assert count == 2
        assert data == b"order 1"
        assert default_count == 2, "by default the stream takes its name and everything under it"
    assert not server.has(name)
    assert not server.has(default)


def test_stream_config_reaches_the_server(server: Server) -> None:
    backend = NatsStream(
        server.url, storage=nats.js.api.StorageType.MEMORY, max_age=90, max_msgs=10
    )
    name, record = backend.acquire(server.name(1))

    async def work(nc: NATS) -> nats.js.api.StreamConfig:
        return (await nc.jetstream().stream_info(name)).config

    config = server.run(work)
    assert config.storage == nats.js.api.StorageType.MEMORY
    assert config.max_age == 90
    assert config.max_msgs == 10
    NatsStream.release(record)
    NatsStream.release(record)  # double release: a no-op
    assert not server.has(name)


def test_a_kv_bucket_stores_keys_and_goes_with_them(server: Server, registry_path: str) -> None:
    with reclaim.Fixture("kv") as f:
        bucket = f.acquire(NatsKeyValue(server.url, history=2))

        async def work(nc: NATS) -> bytes | None:
            kv = await nc.jetstream().key_value(bucket)
            await kv.put("colour", b"blue")
            await kv.put("colour", b"green")
            return (await kv.get("colour")).value

        assert server.run(work) == b"green"
        assert server.has(f"KV_{bucket}")
    assert not server.has(f"KV_{bucket}")
    assert NatsKeyValue.exists({"name": bucket, "url": server.url}) is False


def test_durable_consumer_is_deleted_by_the_server_when_idle(server: Server) -> None:
    """The safety net for consumers on streams reclaim does not own: nothing deletes the
    consumer but the server's ``inactive_threshold``."""
    name, record = NatsStream(server.url).acquire(server.name(1))
    config = durable_consumer("idle-worker", inactive_threshold=0.5, ack_policy="explicit")
    assert config.durable_name == "idle-worker"

    async def add(nc: NATS) -> float | None:
        info = await nc.jetstream().add_consumer(name, config=config)
        return info.config.inactive_threshold

    assert server.run(add) == 0.5

    async def gone(nc: NATS) -> bool:
        try:
            await nc.jetstream().consumer_info(name, "idle-worker")
        except nats.js.errors.NotFoundError:
            return True
        return False

    wait_until(lambda: server.run(gone), timeout=30)
    NatsStream.release(record)


def test_durable_consumer_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        durable_consumer("a.b")
    with pytest.raises(ValueError, match="positive"):
        durable_consumer("w", inactive_threshold=0)
    with pytest.raises(ValueError, match="reclaim's to set"):
        durable_consumer("w", name="x")
    with pytest.raises(ValueError, match="not a ConsumerConfig field"):
        durable_consumer("w", no_such_option=1)
    assert durable_consumer("w").inactive_threshold == 3600.0


def test_sync_calls_inside_a_running_loop_and_async_calls_on_it(
    server: Server, registry_path: str
) -> None:
    async def main() -> tuple[str, str]:
        async with reclaim.Fixture("async") as f:
            stream = await f.aacquire(NatsStream(server.url))
            bucket = f.acquire(NatsKeyValue(server.url))  # sync, from inside the loop
            assert NatsStream.exists({"name": stream, "url": server.url})
            assert NatsKeyValue.exists({"name": bucket, "url": server.url})
        return stream, bucket

    stream, bucket = asyncio.run(main())
    assert not server.has(stream)
    assert not server.has(f"KV_{bucket}")

    async def arelease_twice() -> None:
        _, record = await NatsStream(server.url).aacquire(server.name(9))
        await NatsStream.arelease(record)
        await NatsStream.arelease(record)
        assert not NatsStream.exists(record)

    asyncio.run(arelease_twice())


# --- names, subjects, config ------------------------------------------------------------------


def test_hostile_names_never_reach_the_jetstream_api(server: Server) -> None:
    victim = server.name(7)
    _, record = NatsStream(server.url).acquire(victim)
    hostile = ("*", ">", f"{victim}.>", f"{victim} x", f"rc_{server.token}_a_1/../x", "")
    for name in (*hostile, f"{victim}_backup", f"KV_{victim}"):
        for cls in (NatsStream, NatsKeyValue):
            for call in (cls.release, cls.exists):
                with pytest.raises(ForeignNameError, match="refused"):
                    call({"name": name, "url": server.url})
    # A whole reclaim name, but a stream field that is not the one the name makes.
    for cls, stream in ((NatsStream, f"KV_{victim}"), (NatsKeyValue, victim)):
        for call in (cls.release, cls.exists):
            with pytest.raises(ForeignNameError, match="stream"):
                call({"name": victim, "url": server.url, "stream": stream})
    with pytest.raises(ValueError, match="not a name reclaim makes"):
        NatsStream(server.url).acquire("rc_x.>")
    assert server.has(victim)
    NatsStream.release(record)


@pytest.mark.parametrize(
    "subject",
    ["a b", "a..b", ".a", "a.", "a.>.b", "a*.b", "$JS.API.>", "$SYS.>", "a.b>", "", "a\tb"],
)
def test_bad_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="is not allowed"):
        NatsStream("nats://127.0.0.1:4222", subjects=[subject])


def test_good_subjects_and_config_checks() -> None:
    NatsStream("nats://127.0.0.1:4222", subjects=["a.*.c", "a.>", "{name}.x", ">", "A-b_c:d"])
    with pytest.raises(TypeError, match="list of subjects"):
        NatsStream("nats://127.0.0.1:4222", subjects="a.b")
    with pytest.raises(ValueError, match="empty"):
        NatsStream("nats://127.0.0.1:4222", subjects=[])
    with pytest.raises(ValueError, match="reclaim's to set"):
        NatsStream("nats://127.0.0.1:4222", name="x")
    with pytest.raises(ValueError, match="not a StreamConfig field"):
        NatsStream("nats://127.0.0.1:4222", max_agee=3)
    with pytest.raises(ValueError, match="reclaim's to set"):
        NatsKeyValue("nats://127.0.0.1:4222", bucket="x")


# --- leftovers ----------------------------------------------------------------------------------


def test_leftover_streams_and_buckets_are_only_reclaims(server: Server) -> None:
    stream, stream_record = NatsStream(server.url).acquire(server.name(1))
    bucket, bucket_record = NatsKeyValue(server.url).acquire(server.name(2))
    foreign = [
        f"{server.name(3)}_x",  # a reclaim name with something after it
        f"x{server.name(4)}",
        f"rc_{server.token[:7]}_abc_1_{server.token}",
        f"RC_{server.token}_ABC_1",
        # A hex sequence: forced to hold a letter, since an all-digit token (2% of them, seen
        # in CI) would make this a valid reclaim name.
        f"rc_{server.token}_abc_f{server.token[1:]}",
        f"OBJ_{server.name(5)}",  # an object store
        f"KV_{server.name(6)}_x",
    ]

    async def make(nc: NATS) -> None:
        js = nc.jetstream()
        for name in foreign:
            await js.add_stream(name=name, subjects=[f"foreign.{name}"])

    server.run(make)
    listed = {left.record["name"]: left for left in NatsStream.list_leftovers(server.url)}
    buckets = {left.record["name"]: left for left in NatsKeyValue.list_leftovers(server.url)}
    for name in foreign:
        assert name not in listed
        assert name.removeprefix("KV_") not in buckets
        assert name.removeprefix("OBJ_") not in buckets
        assert name.removeprefix("OBJ_") not in listed
    assert stream in listed
    assert bucket not in listed, "a bucket's stream is KV_<name>: not a stream of reclaim's"
    assert bucket in buckets
    assert stream not in buckets
    assert listed[stream].run_id == server.token
    assert buckets[bucket].record == bucket_record | {"name": bucket}
    NatsStream.release(listed[stream].record)
    NatsKeyValue.release(buckets[bucket].record)
    assert not NatsStream.exists(stream_record)
    assert not NatsKeyValue.exists(bucket_record)
    assert all(server.has(name) for name in foreign)


# --- URLs, secrets, errors ------------------------------------------------------------------


def test_records_hold_credentials_only_in_secret_fields(server: Server) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    backend = NatsStream(_with_userinfo(server.url, f"tester:{password}"))
    name, record = backend.acquire(server.name(1))
    assert (record["user"], record["password"], record["token"]) == ("tester", password, "")
    assert record["url"] == server.url
    assert password not in json.dumps(redact_record(record, NatsStream.secret_fields))
    assert NatsStream.exists(record)
    NatsStream.release(record)
    assert not server.has(name)

    token = f"tok-{secrets.token_hex(8)}"
    bucket, record = NatsKeyValue(_with_userinfo(server.url, token)).acquire(server.name(2))
    assert record["token"] == token
    assert token not in json.dumps(redact_record(record, NatsKeyValue.secret_fields))
    NatsKeyValue.release(record)
    assert not server.has(f"KV_{bucket}")


def test_errors_name_the_resource_and_hide_the_secrets() -> None:
    closed = closed_port()
    url = f"nats://tester:hunter2secret@127.0.0.1:{closed}"
    for cls in (NatsStream, NatsKeyValue):
        record = cls(url).plan("rc_00000000_a_1")
        with pytest.raises(ReleaseError, match="cannot reach the server") as info:
            cls.release(record)
        assert "rc_00000000_a_1" in str(info.value)
        assert "hunter2secret" not in str(info.value)
        assert info.value.kind == cls.kind
        with pytest.raises(BackendError, match="is it up"):
            cls.exists(record)
    with pytest.raises(AcquireError, match="could not create the stream") as acquire_info:
        NatsStream(f"nats://sesame-token-1234@127.0.0.1:{closed}").acquire("rc_00000000_a_2")
    assert "sesame-token-1234" not in str(acquire_info.value)
    with pytest.raises(BackendError, match="list the streams"):
        list(NatsStream.list_leftovers(url))


def _no_entry(registry_path: str) -> None:
    reg = open_registry(registry_path)
    try:
        assert reg.resources() == []
    finally:
        reg.close()


_acquire_leaves_no_entry = functools.partial(acquire_creates_nothing, also_async=True)


def test_an_acquire_that_cannot_connect_creates_nothing(registry_path: str) -> None:
    """A port nobody listens on: the connection never opened, so nothing was created; the
    entry is closed instead of failing every later sweep against a server that is not there."""
    url = f"nats://tester:hunter2secret@127.0.0.1:{closed_port()}"
    for make in (NatsStream, NatsKeyValue):
        with pytest.raises(NotCreatedError, match="cannot reach the server") as info:
            make(url).acquire("rc_00000000_a_1")
        assert "hunter2secret" not in str(info.value)
        _acquire_leaves_no_entry(
            registry_path, make(url), says="cannot reach the server", hidden="hunter2secret"
        )


@pytest.fixture
def guarded_url() -> Iterator[str]:
    """A nats-server of this test's own that checks a user and password (tester / right-pw)."""
    binary = shutil.which("nats-server")
    if binary is None:
        if os.environ.get("RECLAIM_REQUIRE_SERVICES") == "1":
            pytest.fail("RECLAIM_REQUIRE_SERVICES=1 but nats-server is not on PATH")
        pytest.skip("nats-server is not on PATH: no server that checks a password")
    port = closed_port()
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "--user", "tester", "--pass", "right-pw"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: reachable("127.0.0.1", port, timeout=0.2), timeout=20)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=CHILD_TIMEOUT)


def test_an_acquire_with_a_wrong_password_creates_nothing(
    guarded_url: str, registry_path: str
) -> None:
    wrong = f"wrong-{secrets.token_hex(6)}"
    url = _with_userinfo(guarded_url, f"tester:{wrong}")
    # nats-server answers a wrong password with -ERR and closes at once; when the client's
    # PING is still unread there, the close is a reset and the -ERR is lost on the way (a race
    # of the real server, seen under load). Either way the connection never opened.
    causes = ("refused the credentials", "Connection reset by peer")
    for make in (NatsStream, NatsKeyValue):
        with pytest.raises(NotCreatedError, match="|".join(causes)) as info:
            make(url).acquire("rc_00000000_a_1")
        assert wrong not in str(info.value)
        _acquire_leaves_no_entry(registry_path, make(url), says=causes, hidden=wrong)


class _Named(NatsStream):
    """A stream backend that takes the name it is given (to collide with a stream on purpose)."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url)
        self.fixed = name

    def adapt_name(self, proposed: str) -> str:
        return self.fixed


def test_a_stream_somebody_else_holds_is_never_released(server: Server, registry_path: str) -> None:
    """A stream of that name exists with another configuration: the API refuses the create
    (400), the stream is not ours, and the failed acquire leaves it alone."""
    name = server.name(1)

    async def theirs(nc: NATS) -> None:
        await nc.jetstream().add_stream(name=name, subjects=[f"theirs.{server.token}"])

    server.run(theirs)
    with pytest.raises(NotCreatedError, match="JetStream API answered 400"):
        NatsStream(server.url).acquire(name)
    with (
        reclaim.Fixture("collides") as f,
        pytest.raises(reclaim.AcquireError, match="answered 400"),
    ):
        f.acquire(_Named(server.url, name))
    assert server.has(name)
    _no_entry(registry_path)


def test_a_bucket_nats_py_refuses_is_never_sent(server: Server) -> None:
    name = server.name(1)
    with pytest.raises(NotCreatedError, match="at most 64"):
        NatsKeyValue(server.url, history=65).acquire(name)
    assert not server.has(f"KV_{name}")


def test_a_server_error_is_reported_with_its_code(server: Server) -> None:
    """Two streams may not capture the same subjects: the server's answer reaches the user."""
    subject = f"shared.{server.token}"
    NatsStream(server.url, subjects=[subject]).acquire(server.name(1))
    with pytest.raises(NotCreatedError, match=r"JetStream API answered \d+"):
        NatsStream(server.url, subjects=[subject]).acquire(server.name(2))


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://u:hunter2secret@127.0.0.1:4222", "must start with nats://"),
        ("nats://u:hunter2secret@127.0.0.1:notaport", "is not valid"),
        ("nats://u:hunter2secret@", "names no host"),
        ("nats://hunter2secret@127.0.0.1:notaport", "is not valid"),  # a token
        ("nats://hunter2secret@", "names no host"),
        ("nats://hunter2secret@127.0.0.1:4222/x?y=1#z", None),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, hint: str | None) -> None:
    if hint is None:  # a good URL: the token goes into its secret field only
        record = NatsStream(url).plan("rc_00000000_a_1")
        assert record["token"] == "hunter2secret"
        assert record["url"] == "nats://127.0.0.1:4222"
        return
    with pytest.raises(ValueError, match=hint) as info:
        NatsStream(url)
    assert "hunter2secret" not in str(info.value)


def test_the_module_imports_without_its_driver() -> None:
    code = (
        "import sys\n"
        "sys.modules['nats'] = None\n"
        "from reclaim.backends.nats import NatsKeyValue, NatsStream, durable_consumer\n"
        "for make in (NatsStream, NatsKeyValue, durable_consumer):\n"
        "    try:\n"
        "        make('nats://h:4222')\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.count("MissingExtraError") == 3
    assert "pip install 'reclaim[nats]'" in out
