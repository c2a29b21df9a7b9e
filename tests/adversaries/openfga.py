"""Adversaries of ``openfga.store`` and ``openfga.tuples``: a user's stores and tuples at the
stand-in of tests/providers/openfga.py (started here with the helper the backend tests'
fixture uses)."""

from __future__ import annotations

from typing import Any

import pytest

from adversaries import Adversary, Factory, Foreign
from providers.openfga import OpenFgaServer
from reclaim.backends import Record
from reclaim.backends.openfga import OpenFgaStore, OpenFgaTuples

GOOD = "rc_0badf00d_t0a1b2_1"


def store(request: pytest.FixtureRequest) -> Adversary:
    server = OpenFgaServer().start()
    request.addfinalizer(server.stop)
    prod = server.make_store("prod-authz")  # the user's own store

    def record(**fields: Any) -> Record:
        return {**OpenFgaStore(server.url).plan(GOOD), **fields}

    def create(name: str) -> None:
        server.make_store(name, model=False)

    def remove(name: str) -> None:
        with server.lock:
            for made in server.stores.values():
                if made["name"] == name:
                    made["deleted"] = True

    def present() -> bool:
        return prod in server.live_stores()

    return Adversary(
        kind="openfga.store",
        leftovers_url=f"openfga+http://127.0.0.1:{server.port}",
        create=create,
        present=lambda name: name in server.live_stores().values(),
        remove=remove,
        valid=lambda name: 3 <= len(name) <= 64,
        foreign=[
            Foreign("the user's store", record(name="prod-authz", id=prod), present),
            Foreign("the user's store found by its name", record(name="prod-authz"), present),
            Foreign("the user's store id under a reclaim name", record(id=prod), present),
            Foreign(
                "the user's store id under a look-alike name",
                record(name=f"{GOOD}-prod", id=prod),
                present,
            ),
        ],
    )


def tuples(request: pytest.FixtureRequest) -> Adversary:
    server = OpenFgaServer().start()
    request.addfinalizer(server.stop)
    shared = server.make_store("shared-app")
    users = [
        ("user:anne", "viewer", "document:budget"),
        ("user:anne", "owner", f"document:myapp_{GOOD}"),
        ("user:budget", "owner", f"document:{GOOD}_backup"),
    ]
    server.put(shared, *users)

    def record(name: str) -> Record:
        return {**OpenFgaTuples(shared, api_url=server.url).plan(GOOD), "name": name}

    def create(name: str) -> None:
        server.put(shared, ("user:anne", "viewer", f"document:{name}"))

    def present(name: str) -> bool:
        return ("user:anne", "viewer", f"document:{name}") in server.keys(shared)

    def remove(name: str) -> None:
        with server.lock:
            server.tuples[shared].pop(("user:anne", "viewer", f"document:{name}"), None)

    def untouched() -> bool:
        return set(users) <= server.keys(shared)

    return Adversary(
        kind="openfga.tuples",
        leftovers_url=None,
        create=create,
        present=present,
        remove=remove,
        foreign=[
            Foreign(f"the user's tuples under the name {bad!r}", record(bad), untouched)
            for bad in ("anne", "budget", f"myapp_{GOOD}", f"{GOOD}_backup")
        ],
    )


KINDS: dict[str, Factory] = {"openfga.store": store, "openfga.tuples": tuples}
