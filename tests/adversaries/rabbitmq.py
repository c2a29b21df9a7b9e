"""Adversaries of ``rabbitmq.queue``, ``rabbitmq.exchange`` and ``rabbitmq.vhost``: real queues,
exchanges and vhosts on the broker of tests/_services.py, made through the management API (not
reclaim's code). Queues and exchanges live in a vhost of the test's own, deleted at the end with
all it holds; the vhosts a test makes are deleted one by one."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import httpx
import pytest

from _services import require
from adversaries import Adversary, Factory, Foreign

GOOD = "rc_0badf00d_t0a1b2_1"


class _Broker:
    """The broker as its administrator sees it, through the management API."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.amqp = require("rabbitmq")
        api = urlsplit(require("rabbitmq_api"))
        self.user = api.username or "guest"
        self.client = httpx.Client(
            base_url=f"{api.scheme}://{api.hostname}:{api.port}",
            auth=(self.user, api.password or "guest"),
            timeout=10,
        )
        # Not a reclaim name: the vhost kind's leftover listing never takes it.
        self.vhost = f"reclaim-adversary-{secrets.token_hex(4)}"
        self.put_vhost(self.vhost)
        request.addfinalizer(self.close)

    def path(self, *segments: str) -> str:
        return "/api/" + "/".join(quote(s, safe="") for s in segments)

    def put_vhost(self, name: str) -> None:
        made = self.client.put(self.path("vhosts", name))
        assert made.status_code in (201, 204), made.text
        granted = self.client.put(
            self.path("permissions", name, self.user),
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        assert granted.status_code in (201, 204), granted.text

    def has(self, *segments: str) -> bool:
        response = self.client.get(self.path(*segments))
        assert response.status_code in (200, 404), response.text
        return response.status_code == 200

    def delete(self, *segments: str) -> None:
        response = self.client.delete(self.path(*segments))
        assert response.status_code in (204, 404), response.text

    def url(self, vhost: str) -> str:
        """The AMQP URL of ``vhost`` (the configured broker's user and password)."""
        return urlsplit(self.amqp)._replace(path="/" + quote(vhost, safe="")).geturl()

    def close(self) -> None:
        try:
            self.delete("vhosts", self.vhost)
        finally:
            self.client.close()


def _in_vhost(kind: str, collection: str, body: dict[str, object]) -> Factory:
    """The factory of a kind that lives in a vhost: queues or exchanges."""

    def factory(request: pytest.FixtureRequest) -> Adversary:
        broker = _Broker(request)
        vhost = broker.vhost
        url = broker.url(vhost)
        public = urlsplit(url)
        record_url = public._replace(netloc=public.netloc.replace(f":{public.password}@", "@"))
        password = public.password or ""

        def create(name: str) -> None:
            made = broker.client.put(broker.path(collection, vhost, name), json=body)
            assert made.status_code in (201, 204), made.text

        def present(name: str) -> bool:
            return broker.has(collection, vhost, name)

        def remove(name: str) -> None:
            broker.delete(collection, vhost, name)

        def record(name: str, **more: object) -> dict[str, object]:
            return {
                "name": name,
                "url": record_url.geturl(),
                "vhost": vhost,
                "password": password,
                **more,
            }

        def foreign(label: str, name: str, made: bool = True, **more: object) -> Foreign:
            return Foreign(
                label,
                record(name, **more),
                present=lambda: present(name),
                create=(lambda: create(name)) if made else None,
                remove=(lambda: remove(name)) if made else None,
            )

        noun = collection[:-1]
        found = [
            foreign(f"a user's {noun} 'orders'", "orders"),
            foreign(f"a user's {noun} that contains a reclaim name", f"{GOOD}_backup"),
            # A reclaim name, but the record says another vhost than the URL connects to.
            foreign(f"a {noun} in another vhost than the record's", GOOD, vhost="/"),
        ]
        if collection == "exchanges":
            found.append(foreign("the built-in exchange amq.direct", "amq.direct", made=False))
        return Adversary(
            kind=kind,
            leftovers_url=url,
            create=create,
            present=present,
            remove=remove,
            foreign=found,
        )

    return factory


def vhost(request: pytest.FixtureRequest) -> Adversary:
    broker = _Broker(request)
    api = urlsplit(require("rabbitmq_api"))
    api_url = f"{api.scheme}://{broker.user}@{api.hostname}:{api.port}"
    password = api.password or "guest"
    user_vhost = f"team-{secrets.token_hex(4)}"

    def present(name: str) -> bool:
        return broker.has("vhosts", name)

    def remove(name: str) -> None:
        broker.delete("vhosts", name)

    def foreign(label: str, name: str, made: bool = True) -> Foreign:
        make: Callable[[], None] | None = (lambda: broker.put_vhost(name)) if made else None
        return Foreign(
            label,
            {"name": name, "api_url": api_url, "password": password},
            present=lambda: present(name),
            create=make,
            remove=(lambda: remove(name)) if made else None,
        )

    return Adversary(
        kind="rabbitmq.vhost",
        leftovers_url=broker.url(broker.vhost),
        create=broker.put_vhost,
        present=present,
        remove=remove,
        foreign=[
            foreign("the default vhost '/'", "/", made=False),
            foreign("a user's vhost", user_vhost),
            foreign("a user's vhost that contains a reclaim name", f"{GOOD}_backup"),
        ],
    )


KINDS: dict[str, Factory] = {
    "rabbitmq.queue": _in_vhost("rabbitmq.queue", "queues", {"durable": True}),
    "rabbitmq.exchange": _in_vhost(
        "rabbitmq.exchange", "exchanges", {"type": "topic", "durable": True}
    ),
    "rabbitmq.vhost": vhost,
}
