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


# --- the SaaS kinds, on the stand-ins of tests/providers (and S3 on moto) -----------------------
#
# ``url`` is the stand-in's ``http://127.0.0.1:PORT`` (or a TcpProxy's in front of it): the
# child process and the watchdog reach the stand-in, which runs in the test process, over HTTP.


def account(kind: str, url: str, token: str) -> Any:
    """A user of the REST users API (``kind="rest"``) or of the SCIM service (``"scim"``)."""
    from reclaim.backends import accounts  # noqa: PLC0415  (each factory loads its driver)

    if kind == "rest":
        body = {"username": "{name}", "email": "{name}@example.test"}
        return accounts.RestAccount(f"{url}/api/users", body, token=token)
    return accounts.ScimUser(f"{url}/scim/v2", token=token, email_domain="example.test")


def email(kind: str, url: str, api_key: str | None = None) -> Any:
    """A mail.tm inbox (``kind="mailtm"``), or a reserved mailsac address (``"mailsac"``: a
    public inbox holds nothing until mail comes)."""
    from reclaim.backends import email as mail  # noqa: PLC0415  (each factory loads its driver)

    if kind == "mailtm":
        return mail.MailTmInbox(base_url=url)
    return mail.MailsacInbox(api_key, base_url=f"{url}/api", reserve=True)


def oauth(kind: str, url: str, client_id: str, client_secret: str) -> Any:
    """An OAuth grant of the authorization server at ``url`` (its issuer).

    ``kind="client_credentials"``: acquire asks the token endpoint for a token.
    ``kind="given"``: the tokens a test got by a login flow, obtained here first (a fresh pair
    each call, from the server's token endpoint) and handed to the backend.
    """
    from reclaim.backends.oauth import OAuthGrant  # noqa: PLC0415  (each factory loads its driver)

    if kind == "client_credentials":
        return OAuthGrant(url, client_id=client_id, client_secret=client_secret)
    import httpx  # noqa: PLC0415  (each factory loads its driver)

    answer = httpx.post(
        f"{url}/token",
        data={"grant_type": "client_credentials", "scope": "openid profile"},
        auth=(client_id, client_secret),
        timeout=10,
    )
    answer.raise_for_status()
    tokens = answer.json()
    return OAuthGrant(
        url,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        client_id=client_id,
        client_secret=client_secret,
    )


def github(url: str, client_id: str, client_secret: str) -> Any:
    """A user's grant of a GitHub app: a fresh token from the web flow's code exchange (the
    stand-in serves it beside the API), handed to the backend."""
    import httpx  # noqa: PLC0415  (each factory loads its driver)

    from reclaim.backends.oauth import GithubGrant  # noqa: PLC0415

    answer = httpx.post(
        f"{url}/login/oauth/access_token",
        data={"client_id": client_id, "client_secret": client_secret, "code": "from-the-browser"},
        headers={"Accept": "application/json"},
        timeout=10,
    )
    answer.raise_for_status()
    token = answer.json()["access_token"]
    return GithubGrant(token, client_id=client_id, client_secret=client_secret, api_url=url)


def openfga(kind: str, url: str, api_token: str, store_id: str | None = None) -> Any:
    """An OpenFGA store (``kind="store"``), or tuples carrying the name in ``store_id``."""
    from reclaim.backends import openfga as fga  # noqa: PLC0415  (each factory loads its driver)

    if kind == "store":
        return fga.OpenFgaStore(url, api_token=api_token)
    mine: list[fga.TupleLike] = [
        ("user:{name}", "owner", "document:{name}"),
        {"user": "user:anne", "relation": "viewer", "object": "document:{name}-1"},
    ]
    return fga.OpenFgaTuples(store_id, api_url=url, api_token=api_token, tuples=mine)


def twilio(url: str, account_sid: str, auth_token: str) -> Any:
    from reclaim.backends.phone import TwilioNumber  # noqa: PLC0415  (its driver)

    return TwilioNumber(account_sid, auth_token, base_url=url)


def smsactivate(url: str, api_key: str) -> Any:
    """An activation, cancellable at once (the stand-in has no minimum age by default)."""
    from reclaim.backends.phone import SmsActivateNumber  # noqa: PLC0415  (its driver)

    return SmsActivateNumber(api_key, base_url=f"{url}/stubs/handler_api.php", min_cancel_age=0)


def s3(url: str, region: str, access_key_id: str, secret_access_key: str) -> Any:
    """A versioned bucket on the S3 server at ``url`` (moto's), credentials given: nothing is
    read from AWS variables, so the record alone must be enough to release it (I2)."""
    from reclaim.backends.s3 import S3Bucket  # noqa: PLC0415  (each factory loads its driver)

    return S3Bucket(
        versioned=True,
        endpoint_url=url,
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )
