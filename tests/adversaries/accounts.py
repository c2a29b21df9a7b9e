"""Adversaries of ``account.rest`` and ``account.scim``: users of the stand-in servers of
tests/providers/scim.py (started here with the helpers the backend tests' fixtures use)."""

from __future__ import annotations

from typing import Any

import pytest

from adversaries import Adversary, Factory, Foreign
from providers.scim import RestUsers, ScimServer
from reclaim.backends import Record
from reclaim.backends.accounts import RestAccount, ScimUser

GOOD = "rc_0badf00d_t0a1b2_1"


def rest(request: pytest.FixtureRequest) -> Adversary:
    server = RestUsers().start()
    request.addfinalizer(server.stop)
    alice = server.add("alice")  # a user's account, made outside reclaim

    def record(**fields: Any) -> Record:
        return {**RestAccount(server.collection, token=server.token).plan(GOOD), **fields}

    def create(name: str) -> None:
        server.add(name)

    def remove(name: str) -> None:
        with server.lock:
            for user_id, user in list(server.users.items()):
                if user["username"] == name:
                    del server.users[user_id]

    def present() -> bool:
        return alice in server.users

    return Adversary(
        kind="account.rest",
        leftovers_url=None,
        create=create,
        present=lambda name: name in server.usernames(),
        remove=remove,
        foreign=[
            Foreign(
                "the user's account alice", record(name="alice", login="alice", id=alice), present
            ),
            Foreign("alice found by her login", record(name="alice", login="alice"), present),
            Foreign("alice's id under a reclaim name", record(id=alice), present),
            Foreign(
                "alice's id and login under a reclaim name",
                record(id=alice, login="alice"),
                present,
            ),
            Foreign(
                "alice's id under a look-alike name",
                record(name=f"{GOOD}_backup", login=f"{GOOD}_backup", id=alice),
                present,
            ),
        ],
    )


def scim(request: pytest.FixtureRequest) -> Adversary:
    server = ScimServer().start()
    request.addfinalizer(server.stop)
    alice = server.add("alice@example.test")

    def record(**fields: Any) -> Record:
        backend = ScimUser(server.base_url, token=server.token, email_domain="example.test")
        return {**backend.plan(GOOD), **fields}

    def create(name: str) -> None:
        server.add(name)

    def remove(name: str) -> None:
        with server.lock:
            for user_id, user in list(server.users.items()):
                if user["userName"] == name:
                    del server.users[user_id]

    def present() -> bool:
        return alice in server.users

    return Adversary(
        kind="account.scim",
        leftovers_url=f"scim+http://:{server.token}@127.0.0.1:{server.port}/scim/v2",
        create=create,
        present=lambda name: name in server.user_names(),
        remove=remove,
        foreign=[
            Foreign(
                "the user's account alice",
                record(name="alice", user_name="alice@example.test", id=alice),
                present,
            ),
            Foreign(
                "alice found by her userName",
                record(name="alice", user_name="alice@example.test"),
                present,
            ),
            Foreign("alice's id under a reclaim name", record(id=alice), present),
            Foreign(
                "alice's id and userName under a reclaim name",
                record(id=alice, user_name="alice@example.test"),
                present,
            ),
            Foreign(
                "a planned record whose userName is a user's", record(user_name=f"x{GOOD}"), present
            ),
        ],
    )


KINDS: dict[str, Factory] = {"account.rest": rest, "account.scim": scim}
