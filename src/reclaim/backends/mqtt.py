"""MQTT topics: ``MqttTopic(url)`` gives a topic prefix of its own, ``"rc_<run>_<time>_<seq>/"``.

A test publishes under the prefix (``f"{prefix}sensors/1"``) and subscribes to ``f"{prefix}#"``.
What outlives an MQTT client on the broker is its *retained* messages, so release clears every
retained message under the prefix: it publishes a zero-length retained payload to each topic that
holds one, which is how MQTT deletes a retained message.

The claim. ``acquire`` publishes one retained message next to the prefix, on the topic
``<name>.reclaim`` (a sibling, never under the prefix, so the test's own subscriptions do not see
it). It makes the resource visible to :meth:`MqttTopic.exists` and to the registry-less sweep
from the moment it is acquired, and it is cleared last.

Knowing when every retained message has arrived. MQTT sends the retained messages that match a
new subscription without an end marker, and the specification does not order them relative to
other messages. Release therefore makes its own marker and does not trust a single look:

1. Subscribe (QoS 1) to ``<name>/#`` and to the claim topic; wait for the SUBACK.
2. Publish a *non-retained* message with a random token to the claim topic (it replaces nothing)
   and collect every retained message that arrives until the token comes back. A broker that
   queues a subscription's retained messages when it handles the SUBSCRIBE, and delivers each
   client's messages first in, first out (Mosquitto does both), delivers them all before the
   token. Every wait is bounded: ``timeout`` seconds without any progress (a message, an
   acknowledgement) is an error, never a silent success.
3. Unsubscribe, and clear each topic seen (QoS 1, waiting for every PUBACK: the broker has
   applied the delete). A look whose token did not come back in time but which did receive
   retained messages is no proof of anything: its topics are cleared and the next look decides.
4. Subscribe again, which makes the broker send the retained messages once more, and repeat until
   a look whose end marker arrived finds nothing. That last, empty look is the proof; a broker
   that dropped some messages (a full per-client queue) or sent some late only costs more looks.
   After 20 looks that still find messages (a publisher is still writing there) release fails,
   and the entry stays for the next sweep.

A broker that dispatches retained messages asynchronously, after later messages (some clustered
brokers), can beat step 2; step 4 narrows that window but cannot close it. Only retained messages
the account may read are seen, and cleared.

Needs the ``mqtt`` extra (paho-mqtt 2.x): ``pip install 'reclaim[mqtt]'``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from reclaim.backends import (
    Backend,
    Leftover,
    NotCreatedError,
    ReclaimName,
    Record,
    backend_error,
    redact_text,
    require_extra,
    split_url,
)

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
except ImportError:  # the extra is not installed: MissingExtraError when the backend is used
    _HAVE_DRIVER = False
else:
    _HAVE_DRIVER = True

__all__ = ["CLAIM_SUFFIX", "SEPARATOR", "MqttTopic"]

_KIND: Final = "mqtt.topic"

#: The claim topic is the resource's name followed by this.
CLAIM_SUFFIX: Final = ".reclaim"

#: The one separator after reclaim's name in the topic prefix: ``rc_<run>_<time>_<seq>/``.
SEPARATOR: Final = "/"

_DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}

#: Seconds a step may go without progress (connect, SUBACK, a message, a PUBACK).
DEFAULT_TIMEOUT: Final = 10.0

#: How many looks release makes before it says a publisher keeps adding retained messages.
_MAX_LOOKS: Final = 20

#: How long each network poll blocks at most (seconds).
_POLL: Final = 0.05


class MqttTopic(Backend[str]):
    """A topic prefix of its own on an MQTT broker; its retained messages are cleared at release.

    The value is the prefix, ``"rc_<run>_<time>_<seq>/"``: publish to ``prefix + "a/b"``,
    subscribe to ``prefix + "#"``.

    Args:
        url: the broker, ``mqtt://[user:password@]host[:port]`` (``mqtts://`` for TLS with the
            system's certificate authorities).
        timeout: seconds any one step may go without progress before it fails.

    Raises:
        ValueError: the URL cannot be used.
        MissingExtraError: paho-mqtt is not installed.
    """

    kind = _KIND
    secret_fields = frozenset({"password"})
    url_schemes = ("mqtt", "mqtts")
    prefix_separator = SEPARATOR

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        require_extra(_HAVE_DRIVER, _KIND, "mqtt", "paho-mqtt 2.x")
        if not timeout > 0:
            raise ValueError(f"MqttTopic timeout must be positive, not {timeout!r}")
        self._broker = _parse_url(url)
        self._broker["timeout"] = float(timeout)

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """Every topic release touches is derived from the name (``<name>/#`` and the claim
        ``<name>.reclaim``); the record's ``prefix``, when it holds one, must be exactly the
        name and ``/`` (I8). Records written before the field existed derive it."""
        expected = name.text + SEPARATOR
        return (("prefix", record.get("prefix", expected), expected),)

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything else (``+``, ``#``, ``/`` would widen a filter)."""
        return self.name_style.spell(proposed)

    def plan(self, name: str) -> Record:
        self.name_style.spell(name)
        return {"name": name, "prefix": name + SEPARATOR, **self._broker}

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        prefix = record["prefix"]
        claim = json.dumps({"kind": _KIND, "prefix": prefix, "created_at": time.time()})
        try:
            session = _Session(record, f"claim the topic prefix {prefix}")
        except Exception as exc:
            # The claim is the first message published: a session that never opened (broker
            # down, wrong port, CONNACK refused, no CONNACK in time) made nothing.
            raise backend_error(
                NotCreatedError,
                _KIND,
                record,
                "connect to the broker",
                exc,
                where=_where(record),
                reason=str,
                secret_fields=self.secret_fields,
            ) from exc
        with session:
            session.publish_retained({name + CLAIM_SUFFIX: claim.encode()})
        return prefix, record

    @classmethod
    def release(cls, record: Record) -> None:
        """Clear every retained message under the prefix, and the claim (last)."""
        name = record["name"]  # a whole reclaim name: the guard checked it, and the prefix
        prefix = cls.owned_prefix(record)
        claim = name + CLAIM_SUFFIX
        with _Session(record, f"clear the retained messages under {prefix}") as session:
            for _look in range(_MAX_LOOKS):
                seen, _complete = session.look([f"{prefix}#", claim], marker=claim)
                if not seen:
                    return  # a look that got its end marker and found nothing: all clear
                # The claim goes last: a release cut short still leaves the prefix findable.
                ordered = sorted(seen - {claim}) + sorted(seen & {claim})
                session.publish_retained(dict.fromkeys(ordered, b""))
        raise RuntimeError(
            f"retained messages under {prefix} on the MQTT broker {_where(record)} kept appearing"
            f" through {_MAX_LOOKS} rounds of clearing: is a publisher still writing there?"
        )

    @classmethod
    def exists(cls, record: Record) -> bool:
        """Is any retained message under the prefix, or its claim, still on the broker?"""
        prefix = cls.owned_prefix(record)
        claim = record["name"] + CLAIM_SUFFIX
        with _Session(record, f"look for retained messages under {prefix}") as session:
            seen, _complete = session.look([f"{prefix}#", claim], marker=claim)
        return bool(seen)

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"{_where(record)} {record['name']}/#"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Prefixes on the broker at ``target`` (a URL) that hold retained messages or a claim.

        Subscribes to ``#``, which reaches every retained message the account may read (not the
        ``$``-topics); groups the topics whose first level is, whole, a reclaim name (what
        ``<name>/#`` matches), and the claims ``<name>.reclaim``.
        """
        require_extra(_HAVE_DRIVER, _KIND, "mqtt", "paho-mqtt 2.x")
        record: Record = {"name": "", **_parse_url(target), "timeout": DEFAULT_TIMEOUT}
        marker = f".reclaim-scan/{secrets.token_hex(8)}"
        with _Session(record, "list retained messages") as session:
            seen, _complete = session.look(["#", marker], marker=marker)
        found: dict[str, ReclaimName] = {}
        for topic in seen:
            first, sep, _rest = topic.partition(SEPARATOR)
            text = first if sep else topic.removesuffix(CLAIM_SUFFIX)
            parsed = cls.name_style.parse(text)
            if parsed is not None:
                found[text] = parsed
        for name, parsed in sorted(found.items()):
            yield Leftover.of({**record, "name": name, "prefix": name + SEPARATOR}, parsed)


# --- helpers -----------------------------------------------------------------------------------


def _parse_url(url: str) -> dict[str, Any]:
    server = split_url(url, kind=_KIND, schemes=_DEFAULT_PORTS)
    return {
        "host": server.host,
        "port": server.port or _DEFAULT_PORTS[server.scheme],
        "username": server.username,
        "password": server.password,
        "tls": server.scheme == "mqtts",
    }


def _where(record: Record) -> str:
    return f"{record.get('host')}:{record.get('port')}"


class _Session:
    """One clean-session MQTT 3.1.1 connection, driven from the calling thread.

    Every wait polls the socket and ends with an error after ``timeout`` seconds without
    progress; errors name the broker and the step, never the password (I7).
    """

    def __init__(self, record: Record, what: str) -> None:
        self._record = record
        self._what = what
        self._timeout = float(record.get("timeout") or DEFAULT_TIMEOUT)
        self._progress = 0
        self._connected = False
        self._refused: str | None = None
        self._subacks: dict[int, list[Any]] = {}
        self._unsubacks: set[int] = set()
        self._seen: set[str] = set()
        self._marker: tuple[str, bytes] | None = None
        self._marker_back = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"reclaim-{secrets.token_hex(8)}",
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if record.get("username"):
            client.username_pw_set(record["username"], record.get("password") or None)
        if record.get("tls"):
            client.tls_set()
        client.connect_timeout = self._timeout
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_unsubscribe
        self._client = client
        try:
            client.connect(record["host"], int(record["port"]), keepalive=60)
        except OSError as exc:
            raise self._error(
                ConnectionError, f"the MQTT broker {_where(record)} is unreachable", exc
            ) from exc
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Small packets in a row (PUBACKs, then a SUBSCRIBE) must not wait for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._wait(lambda: self._connected, "CONNACK")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- callbacks (run inside loop(), in the calling thread) --------------------------------

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._refused = f"the broker refused the connection: {reason}"
        else:
            self._connected = True
        self._progress += 1

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        self._subacks[mid] = reasons
        self._progress += 1

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, _rc: Any, _props: Any) -> None:
        self._unsubacks.add(mid)
        self._progress += 1

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        topic = message.topic
        if message.retain and message.payload:
            self._seen.add(topic)
        elif self._marker is not None and (topic, bytes(message.payload)) == self._marker:
            self._marker_back = True
        self._progress += 1

    def _on_publish(self, _c: Any, _u: Any, _mid: int, _reason: Any, _props: Any) -> None:
        self._progress += 1

    # --- steps -----------------------------------------------------------------------------

    def look(self, filters: list[str], *, marker: str) -> tuple[set[str], bool]:
        """Subscribe to ``filters`` and collect the topics of the retained messages sent for
        them, until a non-retained token published to ``marker`` (which a filter must match)
        comes back.

        Returns (topics, complete); complete is False when the token did not come back in time
        but retained messages did (the caller clears those and looks again). Nothing at all
        within ``timeout`` raises TimeoutError.
        """
        self._seen = set()
        self._marker_back = False
        result, mid = self._client.subscribe([(f, 1) for f in filters])
        self._check(result, f"subscribe to {filters}")
        assert mid is not None
        self._wait(lambda: mid in self._subacks, "SUBACK")
        for topic_filter, granted in zip(filters, self._subacks.pop(mid), strict=False):
            if granted.is_failure:
                raise PermissionError(
                    f"cannot {self._what}: the MQTT broker {_where(self._record)} refused the"
                    f" subscription to {topic_filter!r} ({granted}); may this account read it?"
                )
        token = secrets.token_hex(16).encode()
        self._marker = (marker, token)
        info = self._client.publish(marker, token, qos=1, retain=False)
        self._check(info.rc, f"publish the end marker to {marker!r}")
        complete = True
        try:
            self._wait(
                lambda: self._marker_back, "end marker (the token published after the SUBACK)"
            )
        except TimeoutError:
            if not self._seen:
                raise
            complete = False
        finally:
            self._marker = None
        # Unsubscribe before the caller clears what was seen: the broker then need not send our
        # own deletions back to us, and the next look's SUBSCRIBE is a new subscription.
        result, mid = self._client.unsubscribe(filters)
        self._check(result, f"unsubscribe from {filters}")
        assert mid is not None
        self._wait(lambda: mid in self._unsubacks, "UNSUBACK")
        self._unsubacks.discard(mid)
        return set(self._seen), complete

    def publish_retained(self, messages: dict[str, bytes]) -> None:
        """Publish each as a retained message (QoS 1); return once the broker acknowledged all.

        A zero-length payload deletes the topic's retained message.
        """
        infos = []
        for topic, payload in messages.items():
            info = self._client.publish(topic, payload, qos=1, retain=True)
            self._check(info.rc, f"publish to {topic!r}")
            infos.append(info)
        self._wait(lambda: all(i.is_published() for i in infos), "PUBACKs")

    def close(self) -> None:
        """Disconnect politely, and wait (briefly, bounded) for the socket to close."""
        client = self._client
        deadline = time.monotonic() + 1.0
        # Closing after a failure: the connection may be gone already, which is fine here.
        try:
            with contextlib.suppress(Exception):
                if client.is_connected():
                    client.disconnect()
                    # The broker closes its end on DISCONNECT; paho notices in loop().
                    while client.socket() is not None and time.monotonic() < deadline:
                        client.loop(_POLL)
        finally:
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    # --- plumbing --------------------------------------------------------------------------

    def _wait(self, done: Callable[[], bool], waiting_for: str) -> None:
        progress = self._progress
        deadline = time.monotonic() + self._timeout
        while not done():
            if self._refused is not None:
                raise PermissionError(
                    f"cannot {self._what}: {self._refused} ({_where(self._record)})"
                )
            if self._progress != progress:  # something arrived: the clock starts again
                progress = self._progress
                deadline = time.monotonic() + self._timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"cannot {self._what}: the MQTT broker {_where(self._record)} sent no"
                    f" {waiting_for} within {self._timeout:g} s"
                )
            self._check(self._client.loop(min(remaining, _POLL)), f"wait for {waiting_for}")

    def _check(self, rc: MQTTErrorCode | int, doing: str) -> None:
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        if self._refused is not None:
            raise PermissionError(f"cannot {self._what}: {self._refused} ({_where(self._record)})")
        raise ConnectionError(
            f"cannot {self._what}: lost the MQTT broker {_where(self._record)} while trying to"
            f" {doing} ({mqtt.error_string(rc)})"
        )

    def _error(self, cls: type[Exception], message: str, exc: BaseException) -> Exception:
        reason = redact_text(f"{type(exc).__name__}: {exc}", self._record, ("password",))
        return cls(f"cannot {self._what}: {message} ({reason})")
