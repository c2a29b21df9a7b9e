"""Adversaries of ``mqtt.topic``: retained messages on the real broker (Mosquitto), and records
that reach a user's retained topic (by a name that is not reclaim's, or by a prefix field that is
not the one a reclaim name makes)."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from _services import require
from adversaries import Adversary, Factory, Foreign
from reclaim.backends import make_name

WAIT = 10.0


@contextlib.contextmanager
def _client(url: str) -> Iterator[mqtt.Client]:
    parts = urlsplit(url)
    connected = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"adversary-{secrets.token_hex(6)}")
    c.on_connect = lambda *_args: connected.set()
    c.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    c.loop_start()
    try:
        assert connected.wait(WAIT), "the broker did not accept the adversary's connection"
        yield c
    finally:
        c.disconnect()
        c.loop_stop()


def _publish(url: str, messages: dict[str, bytes]) -> None:
    """Publish retained messages (an empty payload deletes one); return once all are handled."""
    with _client(url) as c:
        infos = [
            c.publish(topic, payload, qos=1, retain=True) for topic, payload in messages.items()
        ]
        for info in infos:
            info.wait_for_publish(WAIT)


def _retained(url: str, topic_filter: str, marker: str) -> set[str]:
    """The topics of every retained message the broker sends for ``topic_filter``, up to a
    non-retained token published to ``marker`` (which the filter matches) after the SUBACK."""
    found: set[str] = set()
    subscribed, done = threading.Event(), threading.Event()
    token = secrets.token_hex(8).encode()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain and message.payload:
            found.add(message.topic)
        elif message.topic == marker and message.payload == token:
            done.set()

    with _client(url) as c:
        c.on_message = on_message
        c.on_subscribe = lambda *_args: subscribed.set()
        c.subscribe(topic_filter, qos=1)
        assert subscribed.wait(WAIT), "no SUBACK"
        c.publish(marker, token, qos=1)
        assert done.wait(WAIT), "the adversary's token did not come back"
    return found


def _is_valid(name: str) -> bool:
    return bool(name) and not any(c in name for c in "+#/\0")


def topic(request: pytest.FixtureRequest) -> Adversary:
    url = require("mqtt")
    token = secrets.token_hex(4)
    old = make_name(token, 1, now=time.time() - 86400)
    home = f"home_{token}"
    backup = f"{old}_backup"
    broker = {"host": "127.0.0.1", "port": urlsplit(url).port or 1883}
    broker |= {"username": "", "password": "", "tls": False, "timeout": WAIT}

    def create(name: str) -> None:
        _publish(url, {f"{name}/data": b"x"})

    def present(name: str) -> bool:
        return f"{name}/data" in _retained(url, f"{name}/#", f"{name}/.adversary")

    def remove(name: str) -> None:
        _publish(url, {f"{name}/data": b""})

    def foreign(label: str, level: str, **record: Any) -> Foreign:
        return Foreign(
            label,
            {**broker, **record},
            present=lambda: present(level),
            create=lambda: create(level),
            remove=lambda: remove(level),
        )

    return Adversary(
        kind="mqtt.topic",
        leftovers_url=url,
        create=create,
        present=present,
        remove=remove,
        valid=_is_valid,
        foreign=[
            foreign("a user's retained topic", home, name=home, prefix=f"{home}/"),
            foreign("a user's retained topic through a wildcard", home, name="#"),
            foreign("a user's topic behind a reclaim name", home, name=old, prefix=f"{home}/"),
            foreign("a topic named like reclaim's with _backup", backup, name=backup),
            foreign(
                "a topic named like reclaim's with _backup, as the prefix",
                backup,
                name=old,
                prefix=f"{backup}/",
            ),
        ],
    )


KINDS: dict[str, Factory] = {"mqtt.topic": topic}
