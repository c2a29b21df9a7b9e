"""Secrets stay put (I7), also in tracebacks: a suite whose every test fails, with a secret in
the configuration of each server kind that takes one (23 of the 24; mail.tm takes none), is run
by a real pytest under each traceback style (pytest's long format prints every frame's
arguments), and the secret appears nowhere in what it prints. The servers are a closed port, so
every acquire fails while connecting (PostgresTables without a setup connects only to release:
its release fails instead)."""

from __future__ import annotations

import pytest

from _services import closed_port

SECRET = "Zq8-s3cr3t-Pa55-w0rd"

SUITE = """
import pytest
import reclaim

SECRET = {secret!r}
PORT = {port}
HOST = f"127.0.0.1:{{PORT}}"


def make(case):
    if case == "postgres":
        from reclaim.backends.postgres import PostgresSchema
        return PostgresSchema(f"postgresql://postgres:{{SECRET}}@{{HOST}}/postgres")
    if case == "postgres-database":
        from reclaim.backends.postgres import PostgresDatabase
        return PostgresDatabase(f"postgresql://postgres:{{SECRET}}@{{HOST}}/postgres")
    if case == "mysql":
        from reclaim.backends.mysql import MysqlDatabase
        return MysqlDatabase(f"mysql://root:{{SECRET}}@{{HOST}}/test")
    if case == "redis":
        from reclaim.backends.redis import RedisNamespace
        return RedisNamespace(f"redis://:{{SECRET}}@{{HOST}}/0")
    if case == "rabbitmq":
        from reclaim.backends.rabbitmq import RabbitQueue
        return RabbitQueue(f"amqp://guest:{{SECRET}}@{{HOST}}/%2F")
    if case == "nats":
        from reclaim.backends.nats import NatsStream
        return NatsStream(f"nats://user:{{SECRET}}@{{HOST}}")
    if case == "mqtt":
        from reclaim.backends.mqtt import MqttTopic
        return MqttTopic(f"mqtt://user:{{SECRET}}@{{HOST}}", timeout=2)
    if case == "s3":
        from reclaim.backends.s3 import S3Bucket
        return S3Bucket(
            endpoint_url=f"http://{{HOST}}", region="us-east-1",
            access_key_id="AKIAEXAMPLE", secret_access_key=SECRET,
        )
    if case == "rest":
        from reclaim.backends.accounts import RestAccount
        return RestAccount(f"http://{{HOST}}/users", token=SECRET)
    if case == "scim":
        from reclaim.backends.accounts import ScimUser
        return ScimUser(f"http://{{HOST}}/scim/v2", token=SECRET)
    if case == "twilio":
        from reclaim.backends.phone import TwilioNumber
        return TwilioNumber(
            "AC" + "0" * 32, SECRET, base_url=f"http://{{HOST}}", phone_number="+15005550006"
        )
    if case == "openfga":
        from reclaim.backends.openfga import OpenFgaStore
        return OpenFgaStore(api_url=f"http://{{HOST}}", api_token=SECRET)
    if case == "postgres-tables":
        from reclaim.backends.postgres import PostgresTables
        return PostgresTables(f"postgresql://postgres:{{SECRET}}@{{HOST}}/postgres")
    if case == "postgres-role":
        from reclaim.backends.postgres import PostgresRole
        return PostgresRole(f"postgresql://postgres:{{SECRET}}@{{HOST}}/postgres")
    if case == "redis-database":
        from reclaim.backends.redis import RedisDatabase
        return RedisDatabase(f"redis://:{{SECRET}}@{{HOST}}/0")
    if case == "rabbitmq-exchange":
        from reclaim.backends.rabbitmq import RabbitExchange
        return RabbitExchange(f"amqp://guest:{{SECRET}}@{{HOST}}/%2F", "direct")
    if case == "rabbitmq-vhost":
        from reclaim.backends.rabbitmq import RabbitVhost
        return RabbitVhost(
            f"http://guest:{{SECRET}}@{{HOST}}", amqp_url=f"amqp://guest:{{SECRET}}@{{HOST}}/%2F"
        )
    if case == "nats-kv":
        from reclaim.backends.nats import NatsKeyValue
        return NatsKeyValue(f"nats://user:{{SECRET}}@{{HOST}}")
    if case == "mailsac":
        from reclaim.backends.email import MailsacInbox
        return MailsacInbox(SECRET, base_url=f"http://{{HOST}}")
    if case == "smsactivate":
        from reclaim.backends.phone import SmsActivateNumber
        return SmsActivateNumber(SECRET, service="tg", base_url=f"http://{{HOST}}/handler_api.php")
    if case == "oauth":
        from reclaim.backends.oauth import OAuthGrant
        return OAuthGrant(
            f"http://{{HOST}}", client_id="tests", client_secret=SECRET,
            token_url=f"http://{{HOST}}/token", revocation_url=f"http://{{HOST}}/revoke",
        )
    if case == "github":
        from reclaim.backends.oauth import GithubGrant
        return GithubGrant(
            SECRET, client_id="Iv1.tests", client_secret=SECRET, api_url=f"http://{{HOST}}"
        )
    if case == "openfga-tuples":
        from reclaim.backends.openfga import OpenFgaTuples
        return OpenFgaTuples(
            "01ARZ3NDEKTSV4RRFFQ69G5FAV", api_url=f"http://{{HOST}}", api_token=SECRET,
            tuples=[("user:anne", "viewer", "document:{{name}}")],
        )
    raise AssertionError(case)


CASES = {cases!r}


@pytest.mark.parametrize("case", CASES)
def test_acquire_fails_with_a_secret(case):
    with reclaim.Fixture("secret") as f:
        f.acquire(make(case))
"""

CASES = [
    "postgres", "postgres-database", "postgres-tables", "postgres-role", "mysql", "redis",
    "redis-database", "rabbitmq", "rabbitmq-exchange", "rabbitmq-vhost", "nats", "nats-kv",
    "mqtt", "s3", "rest", "scim", "twilio", "smsactivate", "mailsac", "oauth", "github",
    "openfga", "openfga-tuples",
]  # fmt: skip


@pytest.mark.parametrize("style", ["auto", "long", "short", "native"])
def test_no_secret_in_any_traceback_style(
    pytester: pytest.Pytester, registry_path: str, style: str
) -> None:
    pytester.makepyfile(test_secrets=SUITE.format(secret=SECRET, port=closed_port(), cases=CASES))
    result = pytester.runpytest_subprocess(
        f"--tb={style}",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestUnraisableExceptionWarning",
        timeout=300,
    )
    text = result.stdout.str() + result.stderr.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == len(CASES), text[-3000:]
    leaks = [line for line in text.splitlines() if SECRET in line]
    assert not leaks, f"--tb={style} printed the secret:\n" + "\n".join(leaks[:20])
    assert "AcquireError" in text
