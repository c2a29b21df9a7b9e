"""The crash kits of ``reclaim.testing`` over the built-in kinds, each through one
parametrisation, checked on the real server:

- ``check_crash``: a real child holding one resource is SIGKILLed (its watchdog releases it),
  then a child and its watchdog are SIGKILLed together (a sweep releases it);
- ``check_outage``: the server goes down (a TCP proxy in front of it stops) before the child's
  release, which fails; the entry is kept, failed, no secret shown; a later sweep releases it.

The SaaS kinds, whose stand-in servers live in this test process, are not in them yet (the
README says so); their own test modules kill their holders by hand."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from _services import require, with_port
from reclaim.backends import ENTRY_POINT_GROUP
from reclaim.testing import TcpProxy, check_crash, check_outage

#: kind -> (factory, its arguments, the service it needs or None).
CRASHABLE: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "path.tempdir": ("kinds:tempdir", {}, ()),
    "process": ("kinds:process", {}, ()),
    "postgres.schema": ("kinds:postgres", {"kind": "schema"}, ("postgres",)),
    "postgres.database": ("kinds:postgres", {"kind": "database"}, ("postgres",)),
    "postgres.tables": ("kinds:postgres", {"kind": "tables"}, ("postgres",)),
    "postgres.role": ("kinds:postgres", {"kind": "role"}, ("postgres",)),
    "mysql.database": ("kinds:mysql", {}, ("mysql",)),
    "redis.namespace": ("kinds:redis", {"kind": "namespace"}, ("redis",)),
    "redis.database": ("kinds:redis", {"kind": "database"}, ("redis",)),
    "rabbitmq.queue": ("kinds:rabbitmq", {"kind": "queue"}, ("rabbitmq",)),
    "rabbitmq.exchange": ("kinds:rabbitmq", {"kind": "exchange"}, ("rabbitmq",)),
    "rabbitmq.vhost": ("kinds:rabbitmq", {"kind": "vhost"}, ("rabbitmq", "rabbitmq_api")),
    "nats.stream": ("kinds:nats", {"kind": "stream"}, ("nats",)),
    "nats.kv": ("kinds:nats", {"kind": "kv"}, ("nats",)),
    "mqtt.topic": ("kinds:mqtt", {}, ("mqtt",)),
    # On the engine's tcp address: check_outage's TcpProxy forwards TCP, not a unix socket.
    "docker.container": ("kinds:docker", {"kind": "container"}, ("docker",)),
    "docker.network": ("kinds:docker", {"kind": "network"}, ("docker",)),
    "docker.volume": ("kinds:docker", {"kind": "volume"}, ("docker",)),
}

#: Built-in kinds not in the crash kit's parametrisation yet, and why.
NOT_YET: dict[str, str] = {
    kind: "its stand-in server runs in the test process; its module kills holders by hand"
    for kind in (
        "account.rest", "account.scim", "email.mailsac", "email.mailtm", "oauth.github",
        "oauth.grant", "openfga.store", "openfga.tuples", "phone.smsactivate", "phone.twilio",
        "s3.bucket",
    )
}  # fmt: skip


def test_every_built_in_kind_is_crash_tested_or_said_not_to_be() -> None:
    built_in = {
        ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("reclaim.")
    }
    assert built_in == set(CRASHABLE) | set(NOT_YET)
    assert not set(CRASHABLE) & set(NOT_YET)


@pytest.mark.parametrize("kind", sorted(CRASHABLE))
def test_a_killed_owner_leaves_nothing(kind: str, registry_path: str, scratch: Path) -> None:
    factory, args, services = CRASHABLE[kind]
    for service in services:
        require(service)
    if kind == "path.tempdir":
        args = {"parent": str(scratch)}
    report = check_crash(factory, registry=registry_path, args=args)
    assert report.watchdog_seconds >= 0
    assert report.sweep_seconds >= 0


def test_the_kit_catches_a_release_that_deletes_nothing(registry_path: str, scratch: Path) -> None:
    with pytest.raises(AssertionError, match="not released by the watchdog"):
        check_crash(
            "reclaim_test_backends:Leaky",
            registry=registry_path,
            args={"directory": str(scratch)},
            timeout=3,
        )


#: Kinds without a server to lose: nothing to check with ``check_outage``.
LOCAL: frozenset[str] = frozenset({"path.tempdir", "process"})


@pytest.mark.parametrize("kind", sorted(set(CRASHABLE) - LOCAL))
def test_a_release_that_meets_a_dead_server_is_kept_then_swept(
    kind: str, registry_path: str
) -> None:
    factory, args, services = CRASHABLE[kind]
    urls = [require(service) for service in services]
    real = urlsplit(urls[-1])  # the server the backend's releases go to
    assert real.port is not None
    proxy = TcpProxy(real.hostname or "127.0.0.1", real.port)
    url = with_port(urls[-1], proxy.port)
    if kind.startswith("postgres."):  # trust auth takes any password: one to look for
        url = url.replace("postgres@", "postgres:outage-secret-pw@", 1)
    secret = urlsplit(url).password or ""
    try:
        check_outage(
            factory,
            registry=registry_path,
            proxy=proxy,
            args={**args, "url": url},
            secrets=[secret] if len(secret) >= 4 else [],
        )
    finally:
        proxy.stop()


def test_the_outage_kit_catches_a_release_that_hides_its_failure(registry_path: str) -> None:
    real = urlsplit(require("redis"))
    assert real.port is not None
    proxy = TcpProxy(real.hostname or "127.0.0.1", real.port)
    try:
        with pytest.raises(AssertionError, match=r"raised nothing|dropped by a release"):
            check_outage(
                "kinds:redis_swallowing",
                registry=registry_path,
                proxy=proxy,
                args={"url": with_port(require("redis"), proxy.port)},
                timeout=20,
            )
    finally:
        proxy.stop()
