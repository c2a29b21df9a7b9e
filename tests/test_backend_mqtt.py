"""The MQTT backend against the real broker (Mosquitto): it keeps the backend contract
(conformance kit); release clears every retained message under the prefix, however many, and
nothing outside it (not even a topic whose name merely starts with the same characters); the
claim stays out of the test's own subscriptions; hostile names never become topic filters; a
silent broker makes a bounded, clear error; a SIGKILLed owner leaves no retained message
(watchdog; sweeper when the watchdog dies too); a release that met an unreachable broker stays
failed until a sweep succeeds; only reclaim's prefixes are listed as leftovers; the password is
never shown.

What is on the broker is checked by an oracle written here with paho directly: it subscribes,
then publishes a token after the SUBACK and collects every retained message until the token
comes back. Every topic a test makes is cleared at teardown, also when the test fails.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import reclaim
from _services import reachable, require
from conftest import CHILD_TIMEOUT, acquire_creates_nothing, wait_until
from reclaim import ForeignNameError, NotCreatedError
from reclaim.backends import load_backend, make_name
from reclaim.backends.mqtt import CLAIM_SUFFIX, MqttTopic

WAIT = 10.0  # seconds the oracle waits for any one answer of the broker


@pytest.fixture
def mqtt_url() -> str:
    """The broker's URL, or a skip when Mosquitto is not running."""
    return require("mqtt")


@contextlib.contextmanager
def client(url: str) -> Iterator[mqtt.Client]:
    """A connected paho client with its network thread, for the test's own checks."""
    parts = urlsplit(url)
    connected = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"oracle-{secrets.token_hex(6)}")
    c.on_connect = lambda *_args: connected.set()
    c.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    c.loop_start()
    try:
        assert connected.wait(WAIT), "the broker did not accept the oracle's connection"
        yield c
    finally:
        c.disconnect()
        c.loop_stop()


def retained(url: str, topic_filter: str, marker: str) -> dict[str, bytes]:
    """Every retained message the broker sends for a new subscription to ``topic_filter``.

    ``marker`` must match the filter: a non-retained token published there after the SUBACK
    marks the end (the broker queued the retained messages before it).
    """
    found: dict[str, bytes] = {}
    subscribed, done = threading.Event(), threading.Event()
    token = secrets.token_hex(8).encode()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            found[message.topic] = bytes(message.payload)
        elif message.topic == marker and message.payload == token:
            done.set()

    with client(url) as c:
        c.on_message = on_message
        c.on_subscribe = lambda *_args: subscribed.set()
        c.subscribe(topic_filter, qos=1)
        assert subscribed.wait(WAIT), "no SUBACK"
        c.publish(marker, token, qos=1)
        assert done.wait(WAIT), "the oracle's token did not come back"
    return found


def under(url: str, name: str) -> dict[str, bytes]:
    """The retained messages under ``name/`` and on its claim topic."""
    return {
        **retained(url, f"{name}/#", f"{name}/.oracle"),
        **retained(url, name + CLAIM_SUFFIX, name + CLAIM_SUFFIX),
    }


def publish(url: str, messages: dict[str, bytes], *, qos: int = 1, retain: bool = True) -> None:
    """Publish, and return once the broker has handled every message."""
    with client(url) as c:
        infos = [c.publish(t, payload, qos=qos, retain=retain) for t, payload in messages.items()]
        # QoS 0 is never acknowledged: a QoS 1 message after it is, and the broker handles one
        # connection's packets in order.
        infos.append(c.publish(f"reclaim-test/barrier/{secrets.token_hex(4)}", b"", qos=1))
        for info in infos:
            info.wait_for_publish(WAIT)


def clear(url: str, name: str) -> None:
    """Delete what a test left under a name, with the oracle (not the backend under test)."""
    publish(url, dict.fromkeys(under(url, name), b""))


@pytest.fixture
def names(mqtt_url: str) -> Iterator[set[str]]:
    """Prefix names (and other first topic levels) this test uses; cleared at teardown."""
    used: set[str] = set()
    yield used
    for name in used:
        clear(mqtt_url, name)


# --- the contract ----------------------------------------------------------------------------


def test_loads_through_its_entry_point() -> None:
    assert load_backend("mqtt.topic") is MqttTopic


def test_release_clears_the_prefix_and_nothing_else(
    mqtt_url: str, registry_path: str, names: set[str]
) -> None:
    with reclaim.Fixture("mqtt") as f:
        prefix = f.acquire(MqttTopic(mqtt_url))
        name = prefix.rstrip("/")
        lookalike, elsewhere = f"{name}0", f"keep_{secrets.token_hex(4)}"
        names.update({name, lookalike, elsewhere})
        assert prefix == f"{name}/"
        inside = {
            f"{prefix}a": b"1",
            f"{prefix}a/b/c": b"2",
            f"{prefix}with space/and-dash": b"3",
            f"{prefix}": b"4",  # the empty level right under the prefix
            name: b"5",  # the prefix's parent topic: "name/#" matches it, and it carries our name
        }
        outside = {f"{lookalike}/t": b"kept", f"{elsewhere}/t": b"kept", lookalike: b"kept"}
        publish(mqtt_url, inside)
        publish(mqtt_url, {f"{prefix}live": b"not retained"}, retain=False)
        publish(mqtt_url, outside)
        publish(mqtt_url, {f"{prefix}q0": b"6"}, qos=0)
        seen = retained(mqtt_url, f"{prefix}#", f"{prefix}.oracle")
        assert seen == {**inside, f"{prefix}q0": b"6"}, "the claim is not under the prefix"
        assert MqttTopic.exists(MqttTopic(mqtt_url).plan(name))
    assert under(mqtt_url, name) == {}
    assert retained(mqtt_url, f"{lookalike}/#", f"{lookalike}/.oracle") == {
        f"{lookalike}/t": b"kept",
        lookalike: b"kept",
    }
    assert retained(mqtt_url, f"{elsewhere}/#", f"{elsewhere}/.oracle") == {
        f"{elsewhere}/t": b"kept"
    }


def test_the_claim_makes_an_empty_prefix_visible(mqtt_url: str, names: set[str]) -> None:
    backend = MqttTopic(mqtt_url)
    name = make_name(secrets.token_hex(4), 1)
    names.add(name)
    planned = backend.plan(name)
    assert not MqttTopic.exists(planned)
    MqttTopic.release(planned)  # never acquired: nothing to do
    prefix, record = backend.acquire(name)
    claim = under(mqtt_url, name)
    assert list(claim) == [name + CLAIM_SUFFIX]
    assert json.loads(claim[name + CLAIM_SUFFIX])["prefix"] == prefix
    assert MqttTopic.exists(record)
    MqttTopic.release(record)
    MqttTopic.release(record)
    assert not MqttTopic.exists(record)
    assert under(mqtt_url, name) == {}


def test_many_retained_messages_beyond_the_in_flight_window(
    mqtt_url: str, registry_path: str, names: set[str]
) -> None:
    """More retained messages than the broker keeps in flight per client (Mosquitto: 20), at
    QoS 0 and 1: release still clears them all."""
    with reclaim.Fixture("mqtt") as f:
        prefix = f.acquire(MqttTopic(mqtt_url))
        names.add(prefix.rstrip("/"))
        publish(mqtt_url, {f"{prefix}q1/{i}": b"x" for i in range(400)}, qos=1)
        publish(mqtt_url, {f"{prefix}q0/{i}": b"y" for i in range(100)}, qos=0)
        assert len(retained(mqtt_url, f"{prefix}#", f"{prefix}.oracle")) == 500
    assert under(mqtt_url, prefix.rstrip("/")) == {}


# --- hostile input and a silent broker ---------------------------------------------------------

HOSTILE = [
    "#",
    "+",
    "",
    "rc_0a1b2c3d_abc_1/#",
    "rc_0a1b2c3d_abc_1/+",
    "rc_0a1b2c3d_abc_1\x00",
    "+/rc_0a1b2c3d_abc_1",
    "$SYS",
    "x/rc_0a1b2c3d_abc_1",
    "rc_0a1b2c3d_abc_1 ",
    "rc_0a1b2c3d_abc_1_backup",
    "myapp_rc_0a1b2c3d_abc_1",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_never_become_topic_filters(
    mqtt_url: str, name: str, names: set[str]
) -> None:
    bystander = f"keep_{secrets.token_hex(4)}"
    names.add(bystander)
    publish(mqtt_url, {f"{bystander}/t": b"kept"})
    backend = MqttTopic(mqtt_url)
    record = {**backend.plan("rc_0a1b2c3d_abc_1"), "name": name}
    for call in (lambda: backend.adapt_name(name), lambda: backend.acquire(name)):
        with pytest.raises(ValueError, match="not a name reclaim makes"):
            call()
    for guarded in (MqttTopic.release, MqttTopic.exists):
        with pytest.raises(ForeignNameError, match="refused"):
            guarded(record)
    assert retained(mqtt_url, f"{bystander}/#", f"{bystander}/.o") == {f"{bystander}/t": b"kept"}


def test_a_prefix_that_is_not_the_names_is_refused(mqtt_url: str, names: set[str]) -> None:
    """The record's prefix, when it holds one, is exactly the name and the one separator ``/``."""
    bystander = f"keep_{secrets.token_hex(4)}"
    names.add(bystander)
    publish(mqtt_url, {f"{bystander}/t": b"kept"})
    planned = MqttTopic(mqtt_url).plan("rc_0a1b2c3d_abc_1")
    assert planned["prefix"] == "rc_0a1b2c3d_abc_1/"
    for prefix in (f"{bystander}/", "rc_0a1b2c3d_abc_1", "rc_0a1b2c3d_abc_1_backup/", "#", ""):
        for call in (MqttTopic.release, MqttTopic.exists):
            with pytest.raises(ForeignNameError, match="prefix"):
                call({**planned, "prefix": prefix})
    assert retained(mqtt_url, f"{bystander}/#", f"{bystander}/.o") == {f"{bystander}/t": b"kept"}


def test_a_silent_broker_is_a_bounded_clear_error() -> None:
    """A server that accepts the connection and never answers: a TimeoutError naming the step,
    after the timeout, never a hang or a silent success."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        url = f"mqtt://127.0.0.1:{silent.getsockname()[1]}"
        record = MqttTopic(url, timeout=0.3).plan(make_name("0a1b2c3d", 1))
        for call in (lambda: MqttTopic.release(record), lambda: MqttTopic.exists(record)):
            with pytest.raises(TimeoutError, match=r"sent no CONNACK within 0\.3 s"):
                call()
    finally:
        silent.close()


def _free_port() -> int:
    """A port of this machine nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_acquire_leaves_no_entry = functools.partial(acquire_creates_nothing, hidden="hunter2secret")


def test_an_acquire_that_cannot_connect_creates_nothing(registry_path: str) -> None:
    """A port nobody listens on: the claim was never published; the entry is closed instead of
    failing every later sweep against a broker that is not there."""
    url = f"mqtt://tester:hunter2secret@127.0.0.1:{_free_port()}"
    with pytest.raises(NotCreatedError, match="unreachable") as info:
        MqttTopic(url).acquire(make_name("0a1b2c3d", 1))
    assert "hunter2secret" not in str(info.value)
    _acquire_leaves_no_entry(registry_path, MqttTopic(url), says="unreachable")


def test_an_acquire_that_gets_no_connack_creates_nothing(registry_path: str) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"mqtt://tester:hunter2secret@127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(NotCreatedError, match="sent no CONNACK"):
            MqttTopic(url, timeout=0.3).acquire(make_name("0a1b2c3d", 1))
        _acquire_leaves_no_entry(registry_path, MqttTopic(url, timeout=0.3), says="no CONNACK")
    finally:
        silent.close()


@pytest.fixture
def guarded_port(tmp_path: Path) -> Iterator[int]:
    """A Mosquitto of this test's own that checks passwords (user tester, password right-pw)."""
    binary, passwd = shutil.which("mosquitto"), shutil.which("mosquitto_passwd")
    if binary is None or passwd is None:
        if os.environ.get("RECLAIM_REQUIRE_SERVICES") == "1":
            pytest.fail("RECLAIM_REQUIRE_SERVICES=1 but mosquitto is not on PATH")
        pytest.skip("mosquitto and mosquitto_passwd are not on PATH: no broker with passwords")
    passwords = tmp_path / "passwords"
    subprocess.run(
        [passwd, "-c", "-b", str(passwords), "tester", "right-pw"],
        check=True,
        capture_output=True,
        timeout=CHILD_TIMEOUT,
    )
    port = _free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        # Run as root, mosquitto drops to its own user, who cannot read this test's directory.
        f"user {getpass.getuser()}\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: reachable("127.0.0.1", port, timeout=0.2), timeout=20)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=CHILD_TIMEOUT)


def test_an_acquire_with_a_wrong_password_creates_nothing(
    guarded_port: int, registry_path: str
) -> None:
    right = MqttTopic(f"mqtt://tester:right-pw@127.0.0.1:{guarded_port}")
    _prefix, record = right.acquire(make_name("0a1b2c3d", 1))  # the broker is up, and checks
    MqttTopic.release(record)
    url = f"mqtt://tester:hunter2secret@127.0.0.1:{guarded_port}"
    with pytest.raises(NotCreatedError, match="refused the connection") as info:
        MqttTopic(url).acquire(make_name("0a1b2c3d", 2))
    assert "hunter2secret" not in str(info.value)
    _acquire_leaves_no_entry(registry_path, MqttTopic(url), says="refused the connection")


def test_bad_urls_are_clear_and_keep_the_password_out() -> None:
    for url, message in [
        ("http://u:hunter2secret@127.0.0.1:1883", "must start with mqtt://"),
        ("mqtt://u:hunter2secret@127.0.0.1:notaport", "is not valid"),
        ("mqtt://u:hunter2secret@:1883", "names no host"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            MqttTopic(url)
        assert "hunter2secret" not in str(info.value)
    with pytest.raises(ValueError, match="timeout"):
        MqttTopic("mqtt://127.0.0.1", timeout=0)


def test_without_paho_the_module_imports_and_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['paho'] = None\n"
        "import reclaim.backends.mqtt as m\n"
        "try:\n"
        "    m.MqttTopic('mqtt://127.0.0.1')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=CHILD_TIMEOUT,
    ).stdout
    assert "MissingExtraError" in out
    assert "pip install 'reclaim[mqtt]'" in out


# --- leftovers without a registry ------------------------------------------------------------


def test_list_leftovers_yields_only_reclaim_prefixes(mqtt_url: str, names: set[str]) -> None:
    run_id = secrets.token_hex(4)
    then = time.time() - 7200
    data, claimed, parent = (make_name(run_id, seq, now=then) for seq in (1, 2, 3))
    foreign = [
        f"rc_{run_id}_zz",  # no sequence number
        f"{data}_extra",  # a reclaim name inside a longer level is not reclaim's
        f"app_{data}",
        f"rc_{run_id}_ABC_1",  # upper case
    ]
    names.update([data, claimed, parent, claimed + CLAIM_SUFFIX, *foreign])
    publish(
        mqtt_url,
        {
            f"{data}/a/b": b"1",
            claimed + CLAIM_SUFFIX: b"{}",
            parent: b"the parent topic only",
            f"{claimed}{CLAIM_SUFFIX}/below": b"not a claim: a level below it",
            **{f"{level}/t": b"foreign" for level in foreign},
        },
    )
    found = [lo for lo in MqttTopic.list_leftovers(mqtt_url) if lo.run_id == run_id]
    assert sorted(lo.record["name"] for lo in found) == sorted([data, claimed, parent])
    for leftover in found:
        assert leftover.created_at == float(int(then))
        assert leftover.record["password"] == ""
        MqttTopic.release(leftover.record)  # the record is all release needs
    for name in (data, claimed, parent):
        assert under(mqtt_url, name) == {}
    for level in foreign:
        assert retained(mqtt_url, f"{level}/#", f"{level}/.o") == {f"{level}/t": b"foreign"}
    below = f"{claimed}{CLAIM_SUFFIX}/#"
    assert list(retained(mqtt_url, below, f"{claimed}{CLAIM_SUFFIX}/.o")) == [below[:-1] + "below"]


def test_listing_waits_for_every_retained_message(mqtt_url: str, names: set[str]) -> None:
    """One look sees them all: more prefixes than the broker sends before the SUBACK (it keeps
    20 QoS 1 messages in flight per client, the rest follow as they are acknowledged), so a
    listing that stopped at the SUBACK would miss most; the end marker waits for the rest."""
    run_id = secrets.token_hex(4)
    then = time.time() - 7200
    many = [make_name(run_id, seq, now=then) for seq in range(1, 61)]
    names.update(many)
    publish(mqtt_url, {f"{name}/t": b"x" for name in many})
    found = {lo.record["name"] for lo in MqttTopic.list_leftovers(mqtt_url) if lo.run_id == run_id}
    assert found == set(many)
