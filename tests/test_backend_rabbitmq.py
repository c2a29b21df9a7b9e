"""The RabbitMQ backends against a real broker: queues, exchanges and vhosts keep the backend
contract; a queue carries messages and its ``expires`` safety net makes the broker drop it; a
vhost isolates; a SIGKILLed owner's watchdog (or, with the watchdog killed too, ``reclaim sweep``)
leaves nothing on the broker; a broker that is briefly away keeps the release ``failed`` until a
sweep finishes it; hostile names and arguments cannot reach another resource; leftover listings
never name what reclaim did not make; passwords stay out of records, errors and status output.

Every test works as a user of its own (a random password, so a leaked secret is recognisable) in
a vhost of its own; teardown deletes that vhost and every vhost the user was granted, whether the
test passed or not, so nothing is left on the broker and parallel runs never touch each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pika  # type: ignore[import-untyped]  # pika ships no type information
import pika.exceptions  # type: ignore[import-untyped]
import pytest

import reclaim
from _services import TcpProxy, closed_port, require, with_port
from conftest import CHILD_TIMEOUT, Spawner, acquire_creates_nothing, kill, reclaim_cli, wait_until
from reclaim import AcquireError, BackendError, ForeignNameError, NotCreatedError, ReleaseError
from reclaim._registry import open_registry
from reclaim.backends import Backend, Record, make_name
from reclaim.backends.rabbitmq import RabbitExchange, RabbitQueue, RabbitVhost

# --- a user and a vhost of the test's own, deleted whatever happens ---------------------------


@dataclasses.dataclass
class Broker:
    """The test's own corner of the broker.

    ``user`` is an administrator (RabbitVhost needs one) with a random password; ``amqp`` is its
    AMQP URL for the test's vhost, ``api`` its management API URL.
    """

    admin: httpx.Client
    user: str
    password: str
    vhost: str
    amqp_base: str
    api_base: str

    @property
    def amqp(self) -> str:
        return self.amqp_url(self.vhost)

    @property
    def api(self) -> str:
        return _with_userinfo(self.api_base, self.user, self.password)

    def amqp_url(self, vhost: str, password: str | None = None) -> str:
        url = _with_userinfo(self.amqp_base, self.user, password or self.password)
        return urlsplit(url)._replace(path="/" + quote(vhost, safe="")).geturl()

    def get(self, *segments: str) -> httpx.Response:
        """GET ``/api/<segments>`` as the broker's administrator (segments percent-encoded)."""
        return self.admin.get("/api/" + "/".join(quote(s, safe="") for s in segments))

    def has(self, collection: str, name: str, vhost: str | None = None) -> bool:
        """Does the broker list ``name`` among its ``queues``/``exchanges`` (in ``vhost``, by
        default the test's) or ``vhosts``? Asked through the management API, which neither
        counts as a use of a queue nor is reclaim's own code."""
        if collection == "vhosts":
            response = self.get("vhosts", name)
        else:
            response = self.get(collection, vhost or self.vhost, name)
        assert response.status_code in (200, 404), response.text
        return response.status_code == 200

    def vhosts_granted(self) -> set[str]:
        response = self.get("users", self.user, "permissions")
        assert response.status_code == 200, response.text
        return {p["vhost"] for p in response.json()}


def _with_userinfo(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def broker() -> Iterator[Broker]:
    """The test's own administrator and vhost. Teardown deletes every vhost the user was granted
    (RabbitMQ grants the creator of a vhost, so this finds every RabbitVhost the test made), the
    test's vhost with all queues and exchanges in it, and the user. Tests list it before
    ``spawn`` so that it is torn down last, after their children are killed."""
    amqp = require("rabbitmq")
    api = require("rabbitmq_api")
    parts = urlsplit(api)
    base = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))
    admin = httpx.Client(
        base_url=base, auth=(parts.username or "guest", parts.password or "guest"), timeout=10
    )
    token = secrets.token_hex(4)
    me = Broker(
        admin,
        user=f"reclaim-test-{token}",
        password=f"pw-{secrets.token_hex(8)}",
        vhost=f"reclaim-test-{token}",
        amqp_base=amqp,
        api_base=base,
    )
    try:
        made = admin.put(
            f"/api/users/{me.user}", json={"password": me.password, "tags": "administrator"}
        )
        assert made.status_code in (201, 204), made.text
        assert admin.put(f"/api/vhosts/{me.vhost}").status_code in (201, 204)
        granted = admin.put(
            f"/api/permissions/{me.vhost}/{me.user}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        assert granted.status_code in (201, 204), granted.text
        yield me
    finally:
        try:
            for vhost in me.vhosts_granted() - {"/"}:
                admin.delete("/api/vhosts/" + quote(vhost, safe=""))
            admin.delete(f"/api/vhosts/{me.vhost}")
        finally:
            admin.delete(f"/api/users/{me.user}")
            admin.close()


# --- helpers -----------------------------------------------------------------------------------


def channel(url: str) -> tuple[Any, Any]:
    """A pika connection and channel, as the code under test would open them."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def fresh_name(seq: int = 1) -> str:
    return make_name(secrets.token_hex(4), seq)


KINDS = ("rabbitmq.queue", "rabbitmq.exchange", "rabbitmq.vhost")


def make_backend(kind: str, broker: Broker) -> Backend[str]:
    if kind == "rabbitmq.queue":
        return RabbitQueue(broker.amqp)
    if kind == "rabbitmq.exchange":
        return RabbitExchange(broker.amqp, "direct")
    return RabbitVhost(broker.api, amqp_url=broker.amqp)


def on_broker(kind: str, broker: Broker, name: str) -> bool:
    collection = {"rabbitmq.queue": "queues", "rabbitmq.exchange": "exchanges"}
    return broker.has(collection.get(kind, "vhosts"), name)


# --- the contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_double_release_and_release_of_what_never_existed(kind: str, broker: Broker) -> None:
    backend = make_backend(kind, broker)
    cls = type(backend)
    never = backend.plan(fresh_name())
    cls.release(never)
    cls.release(never)
    _value, record = backend.acquire(fresh_name())
    assert on_broker(kind, broker, record["name"])
    cls.release(record)
    assert not on_broker(kind, broker, record["name"])
    cls.release(record)
    assert not cls.exists(record)


def test_records_hold_the_password_only_in_a_secret_field(broker: Broker) -> None:
    for backend in (
        RabbitQueue(broker.amqp),
        RabbitExchange(broker.amqp),
        make_backend("rabbitmq.vhost", broker),
    ):
        record = backend.plan(fresh_name())
        secret = {k for k, v in record.items() if isinstance(v, str) and broker.password in v}
        assert secret == {"password"}, f"{backend.kind}: the password is in {secret}"
        assert type(backend).secret_fields == frozenset({"password"})
        assert broker.password not in type(backend).describe(record)


# --- what each kind is for ---------------------------------------------------------------------


def test_a_queue_carries_messages_and_goes_at_exit(broker: Broker, registry_path: str) -> None:
    with reclaim.Fixture("messages") as f:
        name = f.acquire(RabbitQueue(broker.amqp))
        conn, ch = channel(broker.amqp)
        try:
            ch.basic_publish(exchange="", routing_key=name, body=b"hello")
            wait_until(lambda: ch.basic_get(name, auto_ack=True)[2] == b"hello", timeout=10)
        finally:
            conn.close()
        info = broker.get("queues", broker.vhost, name).json()
        assert info["durable"] is True
        assert "x-expires" not in info["arguments"], "the safety net is opt-in"
    assert not broker.has("queues", name)


def test_declare_options_reach_the_broker(broker: Broker, registry_path: str) -> None:
    with reclaim.Fixture("options") as f:
        queue = f.acquire(RabbitQueue(broker.amqp, durable=False, arguments={"x-max-length": 3}))
        exchange = f.acquire(
            RabbitExchange(broker.amqp, "fanout", durable=False, auto_delete=True, internal=True)
        )
        q = broker.get("queues", broker.vhost, queue).json()
        assert (q["durable"], q["arguments"]) == (False, {"x-max-length": 3})
        x = broker.get("exchanges", broker.vhost, exchange).json()
        assert (x["type"], x["durable"], x["auto_delete"], x["internal"]) == (
            "fanout",
            False,
            True,
            True,
        )
    assert not broker.has("queues", queue)
    assert not broker.has("exchanges", exchange)


def test_an_exchange_routes_and_its_bindings_go_with_it(broker: Broker, registry_path: str) -> None:
    with reclaim.Fixture("routing") as f:
        queue = f.acquire(RabbitQueue(broker.amqp))
        with reclaim.Fixture("inner") as inner:
            exchange = inner.acquire(RabbitExchange(broker.amqp, "topic"))
            conn, ch = channel(broker.amqp)
            try:
                ch.queue_bind(queue=queue, exchange=exchange, routing_key="orders.*")
                ch.basic_publish(exchange=exchange, routing_key="orders.new", body=b"o1")
                ch.basic_publish(exchange=exchange, routing_key="users.new", body=b"u1")
                wait_until(lambda: ch.basic_get(queue, auto_ack=True)[2] == b"o1", timeout=10)
                assert ch.basic_get(queue, auto_ack=True)[2] is None, "unrouted: not delivered"
            finally:
                conn.close()
            bindings = broker.get("queues", broker.vhost, queue, "bindings").json()
            assert exchange in {b["source"] for b in bindings}
        assert not broker.has("exchanges", exchange)
        bindings = broker.get("queues", broker.vhost, queue, "bindings").json()
        assert exchange not in {b["source"] for b in bindings}
        assert broker.has("queues", queue)
    assert not broker.has("queues", queue)


def test_expires_is_a_broker_side_safety_net(broker: Broker) -> None:
    """``expires`` is in seconds and becomes ``x-expires`` in milliseconds; the broker deletes
    the idle queue by itself, with no help from reclaim, and release afterwards is a no-op."""
    backend = RabbitQueue(broker.amqp, expires=1.5)
    name, record = backend.acquire(fresh_name())
    try:
        info = broker.get("queues", broker.vhost, name).json()
        assert info["arguments"] == {"x-expires": 1500}
        # Watched through the management API: a passive declare would count as a use.
        wait_until(lambda: not broker.has("queues", name), timeout=30)
        assert not RabbitQueue.exists(record)
    finally:
        RabbitQueue.release(record)


def test_a_vhost_isolates_and_goes_with_everything_in_it(
    broker: Broker, registry_path: str
) -> None:
    with reclaim.Fixture("vhost") as f:
        url = f.acquire(RabbitVhost(broker.api, amqp_url=broker.amqp))
        vhost = urlsplit(url).path.lstrip("/")
        assert url == broker.amqp_url(vhost), "the test user's credentials, the new vhost"
        assert vhost in broker.vhosts_granted()
        conn, ch = channel(url)
        try:
            ch.queue_declare("work", durable=True)
            ch.basic_publish(exchange="", routing_key="work", body=b"job")
        finally:
            conn.close()
        # Same queue name, another vhost: a different queue, which does not exist.
        assert broker.has("queues", "work", vhost=vhost)
        assert not broker.has("queues", "work")
        queue_there = f.acquire(RabbitQueue(url))
    assert not broker.has("vhosts", vhost)
    assert not broker.has("queues", "work", vhost=vhost)
    assert not broker.has("queues", queue_there, vhost=vhost)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.URLParameters(url))


def test_what_lived_in_a_deleted_vhost_counts_as_gone(broker: Broker) -> None:
    vhost_backend = RabbitVhost(broker.api, amqp_url=broker.amqp)
    url, vhost_record = vhost_backend.acquire(fresh_name(1))
    try:
        _queue, queue_record = RabbitQueue(url).acquire(fresh_name(2))
        _exchange, exchange_record = RabbitExchange(url).acquire(fresh_name(3))
        assert RabbitQueue.exists(queue_record)
        RabbitVhost.release(vhost_record)  # the vhost first, against LIFO order
        assert not RabbitQueue.exists(queue_record)
        assert not RabbitExchange.exists(exchange_record)
        RabbitQueue.release(queue_record)
        RabbitExchange.release(exchange_record)
    finally:
        RabbitVhost.release(vhost_record)


def test_the_default_amqp_url_of_a_vhost_is_the_apis_host_and_user() -> None:
    backend = RabbitVhost("http://alice:s%2Fcret@mq.example:15672")
    assert backend.amqp_url == "amqp://alice:s%2Fcret@mq.example:5672"
    assert backend.user == "alice"
    assert RabbitVhost("https://bob:x@[::1]:15671/").amqp_url == "amqps://bob:x@[::1]:5671"
    plan = backend.plan("rc_00000000_a_1")
    assert plan == {
        "name": "rc_00000000_a_1",
        "api_url": "http://alice@mq.example:15672",
        "password": "s/cret",
    }


# --- hostile input -----------------------------------------------------------------------------


def test_hostile_arguments_are_refused_before_anything_is_sent() -> None:
    url = "amqp://u:p@127.0.0.1:5672/%2F"
    for bad_type in ("topic\r\nx", "../fanout", "", "a" * 200, "topic;fanout"):
        with pytest.raises(ValueError, match="not an exchange type"):
            RabbitExchange(url, bad_type)
    with pytest.raises(TypeError, match="only strings"):
        RabbitQueue(url, arguments={"x-dead-letter": ["a", "b"]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="only strings"):
        RabbitQueue(url, arguments={"x-max-length": float("nan")})
    with pytest.raises(ValueError, match="argument name"):
        RabbitQueue(url, arguments={"": 1})
    with pytest.raises(ValueError, match="argument name"):
        RabbitQueue(url, arguments={"x-\nevil": 1})
    for expires in (0, -1, 0.0001, float("inf"), 5_000_000):
        with pytest.raises(ValueError, match="out of range"):
            RabbitQueue(url, expires=expires)
    with pytest.raises(TypeError, match="number of seconds"):
        RabbitQueue(url, expires=True)
    with pytest.raises(TypeError, match="number of seconds"):
        RabbitQueue(url, expires="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        RabbitQueue(url, expires=1, arguments={"x-expires": 1000})
    for scheme_url in ("http://u:pw-hunter2@h:5672/", "redis://u:pw-hunter2@h/0", "h:5672"):
        with pytest.raises(ValueError, match="must start with amqp://") as info:
            RabbitQueue(scheme_url)
        assert "pw-hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="port") as info:
        RabbitQueue("amqp://u:pw-hunter2@h:notaport/")
    assert "pw-hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="names no user"):
        RabbitVhost("http://127.0.0.1:15672")


@pytest.mark.parametrize("cls", [RabbitQueue, RabbitExchange])
def test_names_not_reclaims_never_reach_the_broker(
    cls: type[RabbitQueue] | type[RabbitExchange], broker: Broker
) -> None:
    """plan() takes only a whole reclaim name (ValueError), release() and exists() only a record
    of one (ForeignNameError, before any connection): never a user's ``orders``, a reserved
    ``amq.*`` or a name that merely contains a reclaim name."""
    backend = cls(broker.amqp)
    name = fresh_name()
    bad_names = ("amq.direct", "orders", f"{name}_backup", f"app.{name}", "é" * 128, "", "..")
    for bad in bad_names:
        with pytest.raises(ValueError, match="not a name reclaim makes"):
            backend.plan(bad)
        record = {**backend.plan(name), "name": bad}
        with pytest.raises(ForeignNameError, match="refused"):
            cls.release(record)
        with pytest.raises(ForeignNameError, match="refused"):
            cls.exists(record)
    assert broker.has("exchanges", "amq.direct")


@pytest.mark.parametrize("cls", [RabbitQueue, RabbitExchange])
def test_the_vhost_of_a_record_is_the_one_its_url_connects_to(
    cls: type[RabbitQueue] | type[RabbitExchange], broker: Broker
) -> None:
    """The vhost is part of what a record names: a record whose ``vhost`` is not the one its
    URL connects to (as pika reads it) is refused; a record without one (earlier versions)
    is taken to mean the URL's."""
    backend = cls(broker.amqp)
    _name, record = backend.acquire(fresh_name())
    try:
        assert record["vhost"] == broker.vhost
        for other in ("/", f"{broker.vhost}/x", "", None):
            hostile = {**record, "vhost": other}
            with pytest.raises(ForeignNameError, match="refused: the record's vhost"):
                cls.release(hostile)
            with pytest.raises(ForeignNameError, match="refused: the record's vhost"):
                cls.exists(hostile)
        with pytest.raises(ForeignNameError, match="refused: the record's url"):
            cls.release({**record, "url": None})
        assert cls.exists(record)
        older = {k: v for k, v in record.items() if k != "vhost"}
        assert cls.exists(older)
        cls.release(older)
        assert not cls.exists(record)
    finally:
        cls.release(record)


def test_a_hostile_vhost_name_in_a_record_reaches_no_other_endpoint(broker: Broker) -> None:
    """A tampered record cannot make release delete a user, the default vhost, a user's vhost
    or another endpoint: only whole reclaim names pass, before any request (I8)."""
    base = RabbitVhost(broker.api, amqp_url=broker.amqp).plan(fresh_name())
    hostile = (f"../users/{broker.user}", "%2F", "/", f"{broker.vhost}/../x", "a?b#c", ".", "..")
    for name in (*hostile, broker.vhost, f"{base['name']}_backup", "a\x00b", "x\n", ""):
        record = {**base, "name": name}
        with pytest.raises(ForeignNameError, match="refused"):
            RabbitVhost.release(record)
        with pytest.raises(ForeignNameError, match="refused"):
            RabbitVhost.exists(record)
    with pytest.raises(ValueError, match="not a name reclaim makes"):
        RabbitVhost(broker.api).plan("/")
    assert broker.get("users", broker.user).status_code == 200
    assert broker.has("vhosts", "/")
    assert broker.has("vhosts", broker.vhost)


def test_a_hostile_user_name_is_one_path_segment(broker: Broker) -> None:
    """The user who gets the permissions comes from a URL: ``nobody/../<user>`` must not reach
    ``/api/permissions/<vhost>/<user>``, where the grant would succeed. It is sent as one
    percent-encoded segment, names no user, and acquire fails at that step."""
    sneaky = _with_userinfo(broker.amqp, f"nobody/../{broker.user}", broker.password)
    backend = RabbitVhost(broker.api, amqp_url=sneaky)
    assert backend.user == f"nobody/../{broker.user}"
    name = fresh_name()
    try:
        with pytest.raises(AcquireError, match=r"grant user 'nobody/\.\./.*HTTP 4\d\d"):
            backend.acquire(name)
    finally:
        RabbitVhost.release(backend.plan(name))
    assert not broker.has("vhosts", name)


# --- leftovers ---------------------------------------------------------------------------------


def look_alikes(broker: Broker) -> tuple[str, ...]:
    """Names that look like reclaim's but are not exactly its shape (a run id of this test's,
    so that parallel runs never share them)."""
    run = broker.vhost[-8:]
    return (
        f"rc_{run}_abc_1x",
        f"xrc_{run}_abc_1",
        f"rc_{run}_ABC_1",
        f"rc_{run[:7]}_abc_1",
        f"rc_{run}_abc_1.dlq",
        f"app.rc_{run}_abc_1",
        f"rc_{run}_abc_",
    )


def test_leftover_queues_and_exchanges_are_only_reclaims(broker: Broker) -> None:
    conn, ch = channel(broker.amqp)
    try:
        for name in look_alikes(broker):
            ch.queue_declare(name, durable=True)
            ch.exchange_declare(name, exchange_type="topic", durable=True)
    finally:
        conn.close()
    ours: dict[type[Backend[str]], Record] = {}
    for seq, backend in enumerate((RabbitQueue(broker.amqp), RabbitExchange(broker.amqp)), 1):
        ours[type(backend)] = backend.acquire(make_name("0123abcd", seq, now=1.8e9))[1]
    for cls, record in ours.items():
        found = list(cls.list_leftovers(broker.amqp))
        assert [left.record for left in found] == [record], f"{cls.kind} listed look-alikes"
        assert (found[0].run_id, found[0].created_at) == ("0123abcd", 1.8e9)
        cls.release(found[0].record)  # the leftover's record is enough to release it
        assert not cls.exists(record)
        assert list(cls.list_leftovers(broker.amqp)) == []
    for name in look_alikes(broker):
        assert broker.has("queues", name), "a look-alike was released"
        assert broker.has("exchanges", name), "a look-alike was released"


def test_leftover_listing_takes_a_management_url_and_says_when_there_is_none(
    broker: Broker,
) -> None:
    name, record = RabbitQueue(broker.amqp).acquire(fresh_name())
    try:
        target = f"{broker.amqp}?heartbeat=30&management_url={broker.api_base}"
        (left,) = RabbitQueue.list_leftovers(target)
        assert left.record["name"] == name
        assert left.record["url"] == RabbitQueue(broker.amqp + "?heartbeat=30").url
        RabbitQueue.release(left.record)  # pika takes the URL: our parameter is gone from it
        assert not broker.has("queues", name)
    finally:
        RabbitQueue.release(record)
    target = f"{broker.amqp}?management_url=http://127.0.0.1:{closed_port()}"
    with pytest.raises(BackendError, match="rabbitmq-plugins enable rabbitmq_management") as info:
        list(RabbitExchange.list_leftovers(target))
    assert broker.password not in str(info.value)


def test_leftover_vhosts_are_only_reclaims(broker: Broker) -> None:
    for name in look_alikes(broker):
        assert broker.admin.put("/api/vhosts/" + quote(name, safe="")).status_code in (201, 204)
        broker.admin.put(
            f"/api/permissions/{quote(name, safe='')}/{broker.user}",
            json={"configure": "", "write": "", "read": ""},
        )  # so that teardown finds and deletes it
    _url, record = RabbitVhost(broker.api, amqp_url=broker.amqp).acquire(fresh_name())
    try:
        for target in (broker.api, broker.amqp):
            found = {left.record["name"]: left for left in RabbitVhost.list_leftovers(target)}
            assert record["name"] in found
            assert not set(look_alikes(broker)) & set(found), "a look-alike was listed"
            assert all(n.startswith("rc_") for n in found)
            assert found[record["name"]].record == record
        RabbitVhost.release(found[record["name"]].record)
        assert not broker.has("vhosts", record["name"])
    finally:
        RabbitVhost.release(record)
    assert all(broker.has("vhosts", name) for name in look_alikes(broker))


# --- crashes -------------------------------------------------------------------------------------

HOLDER = """
import json, os, sys, time
import reclaim
from reclaim.backends.rabbitmq import RabbitExchange, RabbitQueue, RabbitVhost
from reclaim._run import current_run

url, api = sys.argv[1:3]
if len(sys.argv) > 3:
    os.setpgid(0, 0)
with reclaim.Fixture("rabbit-holder") as f:
    queues = [f.acquire(RabbitQueue(url, expires=3600)) for _ in range(3)]
    exchanges = [f.acquire(RabbitExchange(url, "fanout")) for _ in range(2)]
    vhost_url = f.acquire(RabbitVhost(api, amqp_url=url))
    inner = f.acquire(RabbitQueue(vhost_url))
    run = current_run()
    print(json.dumps({"queues": queues, "exchanges": exchanges, "vhost_url": vhost_url,
                      "inner": inner, "run": run.id, "watchdog": run.watchdog.pid}), flush=True)
    time.sleep(600)
"""


def _held_on_broker(broker: Broker, held: dict[str, Any]) -> list[str]:
    vhost = urlsplit(held["vhost_url"]).path.lstrip("/")
    there = [q for q in held["queues"] if broker.has("queues", q)]
    there += [x for x in held["exchanges"] if broker.has("exchanges", x)]
    there += [vhost] if broker.has("vhosts", vhost) else []
    there += [held["inner"]] if broker.has("queues", held["inner"], vhost=vhost) else []
    return there


def test_sigkill_the_watchdog_leaves_nothing_on_the_broker(
    broker: Broker, spawn: Spawner, registry_path: str
) -> None:
    proc, held = spawn(HOLDER, broker.amqp, broker.api)
    assert len(_held_on_broker(broker, held)) == 7
    kill(proc)
    wait_until(lambda: _held_on_broker(broker, held) == [])

    def run_gone() -> bool:
        reg = open_registry(registry_path)
        try:
            return reg.get_run(held["run"]) is None
        finally:
            reg.close()

    wait_until(run_gone)
    reg = open_registry(registry_path)
    try:
        by = [e.detail.get("by") for e in reg.events() if e.event == "resource.released"]
    finally:
        reg.close()
    assert by == ["watchdog"] * 7


def test_owner_and_watchdog_killed_then_sweep_leaves_nothing(
    broker: Broker, spawn: Spawner, registry_path: str
) -> None:
    proc, held = spawn(HOLDER, broker.amqp, broker.api, "own-group")
    os.kill(held["watchdog"], signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=CHILD_TIMEOUT)
    assert len(_held_on_broker(broker, held)) == 7, "nobody released anything yet"
    status = reclaim_cli("status").stdout + reclaim_cli("status", "--json").stdout
    assert broker.password not in status
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert (swept["released"], swept["failed"]) == (7, 0)
    assert _held_on_broker(broker, held) == []
    assert json.loads(reclaim_cli("status", "--json").stdout) == {"runs": []}


DOWN = """
import json, sys
import reclaim
from reclaim.backends.rabbitmq import RabbitQueue, RabbitVhost
from reclaim._run import current_run

kind, target, amqp = sys.argv[1:4]
with reclaim.Fixture("briefly-down") as f:
    if kind == "queue":
        value = f.acquire(RabbitQueue(target))
    else:
        value = f.acquire(RabbitVhost(target, amqp_url=amqp))
    print(json.dumps({"value": value, "run": current_run().id}), flush=True)
    sys.stdin.readline()  # the test takes the broker away, then lets the fixture exit
"""


@pytest.mark.parametrize("kind", ["queue", "vhost"])
def test_a_broker_briefly_down_keeps_the_release_failed_until_a_sweep(
    kind: str, broker: Broker, registry_path: str
) -> None:
    """Reached through a proxy that is stopped before the fixture exits: the in-process release
    fails, the entry stays ``failed`` with a redacted error, and once the broker is back
    ``reclaim sweep`` deletes it."""
    real = urlsplit(broker.amqp if kind == "queue" else broker.api)
    proxy = TcpProxy(real.hostname or "127.0.0.1", real.port or 0)
    proxy.start()
    target = with_port(broker.amqp if kind == "queue" else broker.api, proxy.port)
    child = subprocess.Popen(
        [sys.executable, "-c", DOWN, kind, target, broker.amqp],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        line = child.stdout.readline()
        assert line, child.communicate(timeout=CHILD_TIMEOUT)[1]
        held = json.loads(line)
        name = held["value"] if kind == "queue" else urlsplit(held["value"]).path.lstrip("/")
        collection = "queues" if kind == "queue" else "vhosts"
        proxy.stop()
        child.stdin.write("go\n")
        child.stdin.flush()
        _, err = child.communicate(timeout=CHILD_TIMEOUT)
        assert child.returncode != 0, "the fixture raised the release error"
        assert "could not be released" in err
        assert broker.password not in err
        assert broker.has(collection, name), "the broker was away: nothing was deleted"

        status = json.loads(reclaim_cli("status", "--json").stdout)
        (run,) = status["runs"]
        (resource,) = run["resources"]
        assert (resource["name"], resource["state"]) == (name, "failed")
        assert f"could not delete the {kind}" in resource["last_error"]
        assert broker.password not in json.dumps(status)
        assert broker.password not in reclaim_cli("status").stdout

        proxy.start()
        swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
        assert (swept["released"], swept["failed"]) == (1, 0)
        assert not broker.has(collection, name)
        assert json.loads(reclaim_cli("status", "--json").stdout) == {"runs": []}
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=CHILD_TIMEOUT)
        proxy.stop()


# --- errors --------------------------------------------------------------------------------------


def test_acquire_errors_say_what_happened_without_the_password(broker: Broker) -> None:
    wrong = f"wrong-{secrets.token_hex(6)}"
    cases = [
        (RabbitQueue(broker.amqp_url(broker.vhost, password=wrong)), "user and password", wrong),
        (RabbitExchange(broker.amqp_url("no-such-vhost")), "vhost does not exist", None),
        (RabbitVhost(_with_userinfo(broker.api, broker.user, wrong)), "refused the user", wrong),
    ]
    for backend, hint, secret in cases:
        with pytest.raises(AcquireError) as info:
            backend.acquire(fresh_name())
        message = str(info.value)
        assert backend.kind in message
        assert hint in message
        assert broker.password not in message
        if secret is not None:
            assert secret not in message


def test_an_acquire_that_cannot_connect_creates_nothing(broker: Broker, registry_path: str) -> None:
    """A port nobody listens on: nothing was sent, so nothing was created; the entry is closed
    instead of failing every later sweep against a broker that is not there."""
    closed = closed_port()
    cases: list[tuple[Any, str]] = [
        (lambda: RabbitQueue(with_port(broker.amqp, closed)), "is the broker up"),
        (lambda: RabbitExchange(with_port(broker.amqp, closed)), "is the broker up"),
        (lambda: RabbitVhost(with_port(broker.api, closed)), "rabbitmq_management"),
    ]
    for make, says in cases:
        with pytest.raises(NotCreatedError, match=says) as info:
            make().acquire(fresh_name())
        assert broker.password not in str(info.value)
        acquire_creates_nothing(registry_path, make(), says=says, hidden=(broker.password,))


def test_an_acquire_with_a_wrong_password_creates_nothing(
    broker: Broker, registry_path: str
) -> None:
    wrong = f"wrong-{secrets.token_hex(6)}"
    cases: list[tuple[Any, str]] = [
        (lambda: RabbitQueue(broker.amqp_url(broker.vhost, password=wrong)), "user and password"),
        (lambda: RabbitExchange(broker.amqp_url("no-such-vhost")), "vhost does not exist"),
        (lambda: RabbitVhost(_with_userinfo(broker.api, broker.user, wrong)), "refused the user"),
    ]
    for make, says in cases:
        with pytest.raises(NotCreatedError, match=says):
            make().acquire(fresh_name())
        acquire_creates_nothing(registry_path, make(), says=says, hidden=(broker.password, wrong))


def test_a_refused_declare_creates_nothing(broker: Broker, registry_path: str) -> None:
    """The broker refuses the declare itself (an unknown exchange type closes the connection
    with 503 COMMAND_INVALID): nothing was made."""
    name = fresh_name()
    with pytest.raises(NotCreatedError, match="COMMAND_INVALID"):
        RabbitExchange(broker.amqp, "x-no-such-type").acquire(name)
    assert not broker.has("exchanges", name)
    acquire_creates_nothing(
        registry_path,
        RabbitExchange(broker.amqp, "x-no-such-type"),
        says="COMMAND_INVALID",
        hidden=(broker.password,),
    )


class _NamedQueue(RabbitQueue):
    """Takes the name it is given (to collide with somebody else's queue on purpose)."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url)
        self.fixed = name

    def adapt_name(self, proposed: str) -> str:
        return self.fixed


class _NamedExchange(RabbitExchange):
    def __init__(self, url: str, name: str) -> None:
        super().__init__(url, "topic")
        self.fixed = name

    def adapt_name(self, proposed: str) -> str:
        return self.fixed


class _NamedVhost(RabbitVhost):
    def __init__(self, api_url: str, name: str) -> None:
        super().__init__(api_url)
        self.fixed = name

    def adapt_name(self, proposed: str) -> str:
        return self.fixed


def test_what_somebody_else_holds_is_never_released(broker: Broker, registry_path: str) -> None:
    """A queue, exchange or vhost of that name exists already: not ours. The failed acquire
    (406 PRECONDITION_FAILED for other arguments; a vhost that answers GET) leaves it alone."""
    queue, exchange, vhost = fresh_name(1), fresh_name(2), fresh_name(3)
    conn, ch = channel(broker.amqp)
    try:
        ch.queue_declare(queue=queue, durable=False)
        ch.exchange_declare(exchange=exchange, exchange_type="direct")
    finally:
        conn.close()
    assert broker.admin.put(f"/api/vhosts/{vhost}").status_code == 201
    try:
        cases: list[tuple[Backend[str], str, str, str]] = [
            (_NamedQueue(broker.amqp, queue), "PRECONDITION_FAILED", "queues", queue),
            (_NamedExchange(broker.amqp, exchange), "PRECONDITION_FAILED", "exchanges", exchange),
            (_NamedVhost(broker.api, vhost), "exists already", "vhosts", vhost),
        ]
        for backend, says, collection, name in cases:
            with pytest.raises(NotCreatedError, match=says):
                backend.acquire(name)
            acquire_creates_nothing(registry_path, backend, says=says, hidden=(broker.password,))
            assert broker.has(collection, name), f"{name} is somebody else's: never deleted"
    finally:
        broker.admin.delete(f"/api/vhosts/{vhost}")


def test_release_errors_name_the_resource_and_hide_the_password(broker: Broker) -> None:
    closed = closed_port()
    record = RabbitQueue(with_port(broker.amqp, closed)).plan("rc_00000000_a_1")
    with pytest.raises(ReleaseError, match="is the broker up") as info:
        RabbitQueue.release(record)
    assert "rc_00000000_a_1" in str(info.value)
    assert broker.password not in str(info.value)
    assert info.value.kind == "rabbitmq.queue"
    record = RabbitVhost(with_port(broker.api, closed)).plan("rc_00000000_a_2")
    with pytest.raises(ReleaseError, match="rabbitmq_management") as info:
        RabbitVhost.release(record)
    assert broker.password not in str(info.value)


def test_the_module_imports_without_its_drivers() -> None:
    code = (
        "import sys\n"
        "sys.modules['pika'] = None\n"
        "sys.modules['httpx'] = None\n"
        "from reclaim.backends.rabbitmq import RabbitQueue, RabbitVhost\n"
        "for make in (lambda: RabbitQueue('amqp://h/'), lambda: RabbitVhost('http://u:p@h')):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.count("MissingExtraError") == 2
    assert "pip install 'reclaim[rabbitmq]'" in out
    assert "needs pika" in out
    assert "needs httpx" in out
