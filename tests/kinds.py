"""Backends of the built-in kinds made from the test servers' URLs, importable in a child
process: the factories ``reclaim.testing.check_crash`` is given in tests/test_crash_kit.py."""

from __future__ import annotations

import contextlib
from typing import Any

from _services import service_url


def tempdir(parent: str) -> Any:
    from reclaim.backends.path import TempDir  # noqa: PLC0415  (each factory loads its driver)

    return TempDir(parent=parent)


def process() -> Any:
    from reclaim.backends.process import Process  # noqa: PLC0415  (each factory loads its driver)

    return Process(["sleep", "600"], grace=2)


def postgres(kind: str, url: str | None = None) -> Any:
    from reclaim.backends import postgres as pg  # noqa: PLC0415  (each factory loads its driver)

    url = url or service_url("postgres")
    if kind == "tables":  # a prefix holds nothing until a table is made under it
        return pg.PostgresTables(url, setup=_make_prefixed_table)
    cls = {"schema": pg.PostgresSchema, "database": pg.PostgresDatabase, "role": pg.PostgresRole}
    return cls[kind](url)


def _make_prefixed_table(conn: Any, prefix: str) -> None:
    from psycopg import sql  # noqa: PLC0415  (each factory loads its driver)

    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(f"{prefix}items")))


def mysql(url: str | None = None) -> Any:
    from reclaim.backends.mysql import MysqlDatabase  # noqa: PLC0415  (each factory loads its driver)

    return MysqlDatabase(url or service_url("mysql"))


def redis(kind: str, url: str | None = None) -> Any:
    from reclaim.backends import redis as r  # noqa: PLC0415  (each factory loads its driver)

    cls = r.RedisNamespace if kind == "namespace" else r.RedisDatabase
    return cls(url or service_url("redis"))


def rabbitmq(kind: str, url: str | None = None) -> Any:
    """``url``: the AMQP URL for a queue or an exchange, the management API's for a vhost."""
    from reclaim.backends import rabbitmq as mq  # noqa: PLC0415  (each factory loads its driver)

    amqp = service_url("rabbitmq")
    if kind == "queue":
        return mq.RabbitQueue(url or amqp)
    if kind == "exchange":
        return mq.RabbitExchange(url or amqp, "direct")
    return mq.RabbitVhost(url or service_url("rabbitmq_api"), amqp_url=amqp)


def nats(kind: str, url: str | None = None) -> Any:
    from reclaim.backends import nats as n  # noqa: PLC0415  (each factory loads its driver)

    cls = n.NatsStream if kind == "stream" else n.NatsKeyValue
    return cls(url or service_url("nats"))


def mqtt(url: str | None = None) -> Any:
    from reclaim.backends.mqtt import MqttTopic  # noqa: PLC0415  (each factory loads its driver)

    return MqttTopic(url or service_url("mqtt"))


def redis_swallowing(url: str) -> Any:
    """A broken backend for the kit's own test: its release hides every failure."""
    from reclaim.backends import redis as r  # noqa: PLC0415  (each factory loads its driver)

    class Swallowing(r.RedisNamespace):
        @classmethod
        def release(cls, record: Any) -> None:
            with contextlib.suppress(Exception):  # the bug the kit must catch
                super().release(record)

    return Swallowing(url)


def docker(kind: str, url: str | None = None) -> Any:
    """A container (running ``sleep`` in the local test image), a network or a volume on the
    engine at ``url`` (by default the tcp one of tests/_services.py, which a TcpProxy can stand
    in front of). ``"testcontainers"``: a testcontainers-python container on testcontainers'
    own engine (``DOCKER_HOST``), Ryuk switched off by the caller's environment."""
    from _engine import SLEEP, TEST_IMAGE  # noqa: PLC0415  (each factory loads its driver)
    from reclaim.backends import docker as d  # noqa: PLC0415

    if kind == "testcontainers":
        from testcontainers.core.container import DockerContainer as Tc  # noqa: PLC0415

        return d.TestcontainersContainer(Tc(TEST_IMAGE, command=" ".join(SLEEP)))
    url = url or service_url("docker")
    if kind == "container":
        return d.DockerContainer(TEST_IMAGE, SLEEP, base_url=url)
    if kind == "network":
        return d.DockerNetwork(base_url=url)
    return d.DockerVolume(base_url=url)
