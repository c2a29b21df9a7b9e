"""Adversaries of ``redis.namespace`` and ``redis.database``: keys and database claims on the
real server, and records that reach a user's keys (``user:1``, ``rc_..._1_backup:x``) or a
user's database (0, or one that holds keys and no claim)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import redis

from _services import require
from adversaries import Adversary, Factory, Foreign
from reclaim.backends import make_name

CLAIM = "reclaim:db:{}"


def _db(url: str, n: int) -> redis.Redis:
    return redis.Redis.from_url(urlsplit(url)._replace(path=f"/{n}").geturl())


def _has(client: redis.Redis, key: str) -> bool:
    return bool(client.exists(key))


def namespace(request: pytest.FixtureRequest) -> Adversary:
    url = require("redis")
    client = _db(url, 0)
    token = secrets.token_hex(4)
    old = make_name(token, 1, now=time.time() - 86400)
    user_key = "user:1"
    backup_key = f"{old}_backup:x"
    keys = [user_key, backup_key]
    server = {"url": url, "password": ""}

    def create(name: str) -> None:
        client.set(f"{name}:k", "x")

    def present(name: str) -> bool:
        return any(True for _ in client.scan_iter(match=_glob(name) + ":*", count=1000))

    def remove(name: str) -> None:
        for key in list(client.scan_iter(match=_glob(name) + ":*", count=1000)):
            client.unlink(key)

    def make_users_keys() -> None:
        client.mset(dict.fromkeys(keys, "the user's"))

    def remove_users_keys() -> None:
        client.delete(*keys)

    def users_keys() -> bool:
        return all(_has(client, key) for key in keys)

    def foreign(label: str, **record: object) -> Foreign:
        return Foreign(
            label,
            {**server, **record},
            present=users_keys,
            create=make_users_keys,
            remove=remove_users_keys,
        )

    return Adversary(
        kind="redis.namespace",
        leftovers_url=url,
        create=create,
        present=present,
        remove=remove,
        foreign=[
            foreign("a user's keys under user:", name="user", prefix="user:"),
            foreign("a user's keys, a reclaim name, a prefix user:", name=old, prefix="user:"),
            foreign(
                "the user prefix in its own field, no reclaim name after it",
                name=old,
                user_prefix="user:",
                prefix="user:",
            ),
            foreign("every key", name=old, prefix=""),
            foreign(
                "a reclaim name with _backup after it",
                name=f"{old}_backup",
                prefix=f"{old}_backup:",
            ),
            foreign("the old listing's prefix rc_..._1_", name=old, prefix=f"{old}_"),
            foreign("a glob in the user prefix", name=old, user_prefix="*", prefix=f"*{old}:"),
        ],
    )


def database(request: pytest.FixtureRequest) -> Adversary:
    url = require("redis")
    claims = _db(url, 0)
    count = int(str(claims.config_get("databases")["databases"]))
    made: dict[str, int] = {}

    def free() -> int:
        for n in range(1, count):
            if claims.get(CLAIM.format(n)) is None and _db(url, n).dbsize() == 0:
                return n
        pytest.skip("not enough free logical databases on the Redis server")

    def create(name: str) -> None:
        # A claim made outside reclaim, as reclaim's script makes it, over a database in use.
        n = free()
        _db(url, n).set("k", "x")
        claims.set(CLAIM.format(n), name)
        made[name] = n

    def claimed(name: str) -> list[int]:
        found = []
        for key in claims.scan_iter(match=CLAIM.format("*"), count=1000):
            if claims.get(key) == name.encode():
                found.append(int(key.rsplit(b":", 1)[1]))
        return found

    def remove(name: str) -> None:
        n = made.pop(name, None)
        if n is not None and claims.get(CLAIM.format(n)) == name.encode():
            _db(url, n).delete("k")
            claims.delete(CLAIM.format(n))

    old = make_name(secrets.token_hex(4), 1, now=time.time() - 86400)
    user_key = f"user:{secrets.token_hex(4)}"
    users = free()  # a database the user keeps keys in, without any claim

    def keys_of_user(n: int) -> tuple[Callable[[], None], Callable[[], bool], Callable[[], None]]:
        client = _db(url, n)

        def create() -> None:
            client.set(user_key, "the user's")

        def remove() -> None:
            client.delete(user_key)

        return create, lambda: _has(client, user_key), remove

    def foreign(label: str, n: int, **record: object) -> Foreign:
        create, present, remove = keys_of_user(n)
        return Foreign(
            label,
            {"name": old, "url": url, "password": "", **record},
            present=present,
            create=create,
            remove=remove,
        )

    foreigns = [
        foreign("database 0 (the claims, and the user's keys)", 0, db=0),
        foreign("database 0 as a string", 0, db="0"),
        foreign("database 0 as true", 0, db=True),
        foreign("a user's database (keys, no claim) under a reclaim name", users, db=users),
        foreign(
            "a user's database under a name that is not reclaim's", users, name="user", db=users
        ),
        foreign(
            "a user's database behind a reclaim name with _backup after it",
            users,
            name=f"{old}_backup",
            db=users,
        ),
    ]
    return Adversary(
        kind="redis.database",
        leftovers_url=url,
        create=create,
        present=lambda name: bool(claimed(name)),
        remove=remove,
        foreign=foreigns,
    )


def _glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


KINDS: dict[str, Factory] = {"redis.namespace": namespace, "redis.database": database}
