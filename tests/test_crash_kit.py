"""The crash kits of ``reclaim.testing`` over every built-in kind, each through one
parametrisation, checked on the real server or the kind's stand-in:

- ``check_crash``: a real child holding one resource is SIGKILLed (its watchdog releases it),
  then a child and its watchdog are SIGKILLed together (a sweep releases it);
- ``check_outage``: the server goes down (a TCP proxy in front of it stops) before the child's
  release, which fails; the entry is kept, failed, no secret shown; a later sweep releases it.

A case serves its kind: it finds the real server (PostgreSQL, Redis, ...), or starts the
SaaS kind's stand-in (``tests/providers``) or moto's S3 server in this test process, and stops
it whatever happens. The child process and its watchdog reach a stand-in over HTTP at its URL,
which the case passes to the kind's factory in ``tests/kinds.py`` (through the kit's JSON
``args``), with the keys the stand-in takes; ``check_outage`` gets a TcpProxy in front of the
stand-in's port and the kind's secrets. Where a stand-in can rate-limit the release alone, the
watchdog's release meets a 429 first, and must wait it out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

import pytest

from _services import require, with_port
from providers._server import JsonStandIn, RawStandIn
from providers.mailsac import MailsacServer
from providers.mailtm import MailTmServer
from providers.oauth import (
    CLIENT_ID,
    CLIENT_SECRET,
    GITHUB_CLIENT_ID,
    GITHUB_CLIENT_SECRET,
    GithubServer,
    OAuthServer,
)
from providers.openfga import OpenFgaServer
from providers.scim import RestUsers, ScimServer
from providers.smsactivate import SmsActivateServer
from providers.twilio import TwilioServer
from reclaim.backends import ENTRY_POINT_GROUP
from reclaim.testing import TcpProxy, check_crash, check_outage


class Learned(Sequence[str]):
    """Secrets that exist only once the kit's child has acquired (the password a mail.tm
    inbox chose, the tokens a grant was minted), read from the stand-in whenever the kit looks,
    after the ``fixed`` ones. :attr:`most` says how many of them a look found: 0 would mean the
    kit never looked while they existed."""

    def __init__(self, read: Callable[[], Iterable[str]], *fixed: str) -> None:
        self._read = read
        self._fixed = fixed
        self._seen: dict[str, None] = {}
        self.most = 0

    def _values(self) -> list[str]:
        self._seen.update(dict.fromkeys(self._read()))
        self.most = max(self.most, len(self._seen))
        return [*self._fixed, *self._seen]

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._values()[index]

    def __len__(self) -> int:
        return len(self._values())

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())


#: Arms a rate limit on the next release that reaches the server; returns how many 429s the
#: server has answered since.
RateLimit = Callable[[], Callable[[], int]]


@dataclasses.dataclass(frozen=True)
class Served:
    """What a case serves: the factory (``module:callable``, importable in the child) and the
    server its backend reaches."""

    factory: str
    #: The server's URL; None for a local kind (nothing to lose, so no check_outage).
    url: str | None
    #: The factory's arguments for a server at this URL: the server's own, or a TcpProxy's.
    args: Callable[[str], dict[str, Any]]
    #: What must never be shown: API keys, tokens, passwords.
    secrets: Sequence[str] = ()
    #: For check_crash: the watchdog's release meets a 429 (Retry-After: 1) and waits it out.
    rate_limit: RateLimit | None = None


Case = Callable[[Path], contextlib.AbstractContextManager[Served]]

CASES: dict[str, Case] = {}


def _kind_of(case_id: str) -> str:
    return case_id.partition("[")[0]


# --- local kinds and the real servers ---------------------------------------------------------


@contextlib.contextmanager
def _tempdir(scratch: Path) -> Iterator[Served]:
    yield Served("kinds:tempdir", None, lambda _url: {"parent": str(scratch)})


@contextlib.contextmanager
def _process(_scratch: Path) -> Iterator[Served]:
    yield Served("kinds:process", None, lambda _url: {})


CASES["path.tempdir"] = _tempdir
CASES["process"] = _process


def _server(factory: str, fixed: dict[str, Any], *services: str) -> Case:
    """A kind on a real server (the last of ``services`` is the one releases go to)."""

    @contextlib.contextmanager
    def serve(_scratch: Path) -> Iterator[Served]:
        url = [require(service) for service in services][-1]
        if url.startswith("postgresql://postgres@"):
            # Trust auth takes any password: one for check_outage to look for.
            url = url.replace("postgres@", "postgres:outage-secret-pw@", 1)
        password = urlsplit(url).password or ""
        yield Served(
            factory,
            url,
            lambda at: {**fixed, "url": at},
            secrets=[password] if len(password) >= 4 else [],
        )

    return serve


for _kind in ("schema", "database", "tables", "role"):
    CASES[f"postgres.{_kind}"] = _server("kinds:postgres", {"kind": _kind}, "postgres")
CASES["mysql.database"] = _server("kinds:mysql", {}, "mysql")
for _kind in ("namespace", "database"):
    CASES[f"redis.{_kind}"] = _server("kinds:redis", {"kind": _kind}, "redis")
CASES["rabbitmq.queue"] = _server("kinds:rabbitmq", {"kind": "queue"}, "rabbitmq")
CASES["rabbitmq.exchange"] = _server("kinds:rabbitmq", {"kind": "exchange"}, "rabbitmq")
CASES["rabbitmq.vhost"] = _server("kinds:rabbitmq", {"kind": "vhost"}, "rabbitmq", "rabbitmq_api")
for _kind in ("stream", "kv"):
    CASES[f"nats.{_kind}"] = _server("kinds:nats", {"kind": _kind}, "nats")
CASES["mqtt.topic"] = _server("kinds:mqtt", {}, "mqtt")
# On the engine's tcp address: check_outage's TcpProxy forwards TCP, not a unix socket.
for _kind in ("container", "network", "volume"):
    CASES[f"docker.{_kind}"] = _server("kinds:docker", {"kind": _kind}, "docker")


# --- the SaaS kinds on their stand-ins, S3 on moto ---------------------------------------------


def _json_rate_limit(server: JsonStandIn) -> RateLimit:
    def arm() -> Callable[[], int]:
        server.inject(1, 429, {"message": "slow down"}, {"Retry-After": "1"}, method="DELETE")
        return lambda: [status for _, _, status in server.injected].count(429)

    return arm


def _raw_rate_limit(server: RawStandIn) -> RateLimit:
    def arm() -> Callable[[], int]:
        server.fail_next(1, 429, headers={"Retry-After": "1"}, only="DELETE ")
        return lambda: server.injected

    return arm


def _account(which: str) -> Case:
    @contextlib.contextmanager
    def serve(_scratch: Path) -> Iterator[Served]:
        with RestUsers() if which == "rest" else ScimServer() as server:
            token = server.token
            yield Served(
                "kinds:account",
                server.url,
                lambda url: {"kind": which, "url": url, "token": token},
                secrets=[token],
                rate_limit=_json_rate_limit(server),
            )
            assert server.users == {}, "an account is left on the stand-in"

    return serve


CASES["account.rest"] = _account("rest")
CASES["account.scim"] = _account("scim")


@contextlib.contextmanager
def _mailtm(_scratch: Path) -> Iterator[Served]:
    # No rate limit: the kit asks exists() in a loop from this process, which would take mail.tm's
    # 8 requests a second from the watchdog. The limit has tests of its own (test_backend_email).
    with MailTmServer(rate=None) as server:

        def passwords() -> list[str]:  # chosen by the child's plan(): learned from the stand-in
            with server.lock:
                return [account.password for account in server.accounts.values()]

        yield Served(
            "kinds:email",
            server.url,
            lambda url: {"kind": "mailtm", "url": url},
            secrets=Learned(passwords),
            rate_limit=_raw_rate_limit(server),
        )
        assert server.addresses() == set(), "an inbox is left on the stand-in"


@contextlib.contextmanager
def _mailsac(_scratch: Path) -> Iterator[Served]:
    with MailsacServer() as server:
        key = server.api_key
        yield Served(
            "kinds:email",
            server.url,
            lambda url: {"kind": "mailsac", "url": url, "api_key": key},
            secrets=[key],
            rate_limit=_raw_rate_limit(server),
        )
        assert server.owners == {}, "a reserved address is left on the stand-in"


CASES["email.mailtm"] = _mailtm
CASES["email.mailsac"] = _mailsac


def _oauth(which: str) -> Case:
    """``given``: tokens the factory got from the token endpoint before it made the backend,
    as a test's login flow would; ``client_credentials``: acquire asks for the token."""

    @contextlib.contextmanager
    def serve(_scratch: Path) -> Iterator[Served]:
        with OAuthServer(refresh_on_client_credentials=which == "given") as server:

            def minted() -> list[str]:  # in the child, through the stand-in: learned from it
                with server.lock:
                    return list(server.tokens)

            yield Served(
                "kinds:oauth",
                server.url,
                lambda url: {
                    "kind": which,
                    "url": url,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                },
                secrets=Learned(minted, CLIENT_SECRET),
            )
            assert server.live_tokens() == [], "a token is left valid"

    return serve


@contextlib.contextmanager
def _github(_scratch: Path) -> Iterator[Served]:
    with GithubServer() as server:

        def issued() -> list[str]:
            with server.lock:
                return list(server.tokens)

        yield Served(
            "kinds:github",
            server.url,
            lambda url: {
                "url": url,
                "client_id": GITHUB_CLIENT_ID,
                "client_secret": GITHUB_CLIENT_SECRET,
            },
            secrets=Learned(issued, GITHUB_CLIENT_SECRET),
            rate_limit=_json_rate_limit(server),
        )
        assert server.tokens == {}, "a token is left valid"


CASES["oauth.grant[given]"] = _oauth("given")
CASES["oauth.grant[client_credentials]"] = _oauth("client_credentials")
CASES["oauth.github"] = _github

FGA_TOKEN = "fga-preshared-key-kit-51d2"


def _openfga(which: str) -> Case:
    """A store; or our tuples in a store that others' tuples share, which stay."""

    @contextlib.contextmanager
    def serve(_scratch: Path) -> Iterator[Served]:
        with OpenFgaServer(token=FGA_TOKEN) as server:
            shared = None
            if which == "tuples":
                shared = server.make_store("shared-e2e")
                server.put(shared, ("user:anne", "viewer", "document:budget"))
            others = server.keys(shared) if shared else set()
            yield Served(
                "kinds:openfga",
                server.url,
                lambda url: {"kind": which, "url": url, "api_token": FGA_TOKEN, "store_id": shared},
                secrets=[FGA_TOKEN],
                rate_limit=_json_rate_limit(server) if which == "store" else None,
            )
            if shared is None:
                assert server.live_stores() == {}, "a store is left on the stand-in"
            else:
                assert server.keys(shared) == others, "only our tuples go, all of them"

    return serve


CASES["openfga.store"] = _openfga("store")
CASES["openfga.tuples"] = _openfga("tuples")


@contextlib.contextmanager
def _twilio(_scratch: Path) -> Iterator[Served]:
    with TwilioServer() as server:
        sid, token = server.account_sid, server.auth_token
        yield Served(
            "kinds:twilio",
            server.url,
            lambda url: {"url": url, "account_sid": sid, "auth_token": token},
            secrets=[token],
            rate_limit=_raw_rate_limit(server),
        )
        assert server.owned() == {}, "a number is left on the stand-in"


@contextlib.contextmanager
def _smsactivate(_scratch: Path) -> Iterator[Served]:
    with SmsActivateServer() as server:
        key = server.api_key
        yield Served(
            "kinds:smsactivate",
            server.url,
            lambda url: {"url": url, "api_key": key},
            secrets=[key],
        )
        assert server.active() == {}, "an activation is left running"


CASES["phone.twilio"] = _twilio
CASES["phone.smsactivate"] = _smsactivate


@contextlib.contextmanager
def _s3(scratch: Path) -> Iterator[Served]:
    """With no AWS variable anywhere (here, in the child, the watchdog, the sweeps): the
    factory is given the keys, and every release has only the record (I2)."""
    from test_backend_s3 import (  # noqa: PLC0415  (boto3 and moto only for this case)
        KEY_ID,
        REGION,
        SECRET,
        bucket_names,
        moto_server,
        no_aws_environment,
        raw_client,
        wipe,
    )

    with pytest.MonkeyPatch.context() as monkeypatch, moto_server() as server:
        no_aws_environment(monkeypatch, scratch)
        observer = raw_client(server)
        before = bucket_names(observer)
        try:
            yield Served(
                "kinds:s3",
                server,
                lambda url: {
                    "url": url,
                    "region": REGION,
                    "access_key_id": KEY_ID,
                    "secret_access_key": SECRET,
                },
                secrets=[SECRET],
            )
            assert bucket_names(observer) == before, "a bucket is left on the server"
        finally:  # moto keeps its buckets per process, not per server: none for later tests
            for name in bucket_names(observer) - before:
                wipe(observer, name)


CASES["s3.bucket"] = _s3

#: Built-in kinds not in the kits' parametrisation, and why.
NOT_YET: dict[str, str] = {}


def test_every_built_in_kind_is_crash_tested_or_said_not_to_be() -> None:
    built_in = {
        ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("reclaim.")
    }
    checked = {_kind_of(case_id) for case_id in CASES}
    assert built_in == checked | set(NOT_YET)
    assert not checked & set(NOT_YET)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_killed_owner_leaves_nothing(kind: str, registry_path: str, scratch: Path) -> None:
    with CASES[kind](scratch) as served:
        answered = served.rate_limit() if served.rate_limit is not None else None
        report = check_crash(
            served.factory, registry=registry_path, args=served.args(served.url or "")
        )
        if answered is not None:
            assert answered() == 1, "the watchdog's release met a 429, and waited it out"
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


@pytest.mark.parametrize("kind", sorted(set(CASES) - LOCAL))
def test_a_release_that_meets_a_dead_server_is_kept_then_swept(
    kind: str, registry_path: str, scratch: Path
) -> None:
    with CASES[kind](scratch) as served:
        assert served.url is not None
        real = urlsplit(served.url)
        assert real.port is not None
        proxy = TcpProxy(real.hostname or "127.0.0.1", real.port)
        try:
            check_outage(
                served.factory,
                registry=registry_path,
                proxy=proxy,
                args=served.args(with_port(served.url, proxy.port)),
                secrets=served.secrets,
            )
        finally:
            proxy.stop()
        if isinstance(served.secrets, Learned):
            assert served.secrets.most, (
                "the kit never looked for the child's secrets while they existed"
            )


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
