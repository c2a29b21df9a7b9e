"""Adversaries of ``nats.stream`` and ``nats.kv``: JetStream streams and KV buckets on the real
server, and records that name a user's stream or bucket (by a name that is not reclaim's, or by
a ``stream`` field that is not the one a reclaim name makes)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.js.api
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from _services import require
from adversaries import Adversary, Factory, Foreign
from reclaim.backends import make_name

T = TypeVar("T")

#: What the server accepts as a stream name (no whitespace, ".", "*", ">", path separators).
_STREAM_NAME = re.compile(r"[^\s.*>/\\]+")
#: What a KV bucket name may be.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _run(url: str, work: Callable[[NATS], Awaitable[T]]) -> T:
    async def main() -> T:
        nc = await nats.connect(servers=[url], connect_timeout=5, allow_reconnect=False)
        try:
            return await work(nc)
        finally:
            await nc.close()

    return asyncio.run(main())


def _has(url: str, stream: str) -> bool:
    async def ask(nc: NATS) -> bool:
        try:
            await nc.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            return False
        return True

    return _run(url, ask)


def _delete(url: str, stream: str) -> None:
    async def delete(nc: NATS) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(stream)

    _run(url, delete)


def _records(url: str, **fields: Any) -> dict[str, Any]:
    return {"url": url, "user": "", "password": "", "token": "", **fields}


def stream(request: pytest.FixtureRequest) -> Adversary:
    url = require("nats")
    token = secrets.token_hex(4)
    counter = itertools.count()
    old = make_name(token, 1, now=time.time() - 86400)
    users = f"ORDERS_{token}"
    backup = f"{old}_backup"

    def create(name: str) -> None:
        subject = f"adversary.{token}.{next(counter)}"

        async def add(nc: NATS) -> None:
            await nc.jetstream().add_stream(
                name=name, subjects=[subject], storage=nats.js.api.StorageType.MEMORY
            )

        _run(url, add)

    def make(name: str) -> Callable[[], None]:
        return lambda: create(name) if not _has(url, name) else None

    def foreign(label: str, target: str, **record: Any) -> Foreign:
        return Foreign(
            label,
            _records(url, **record),
            present=lambda: _has(url, target),
            create=make(target),
            remove=lambda: _delete(url, target),
        )

    return Adversary(
        kind="nats.stream",
        leftovers_url=url,
        create=create,
        present=lambda name: _has(url, name),
        remove=lambda name: _delete(url, name),
        valid=lambda name: _STREAM_NAME.fullmatch(name) is not None,
        foreign=[
            foreign("a user's stream", users, name=users),
            foreign("a user's stream behind a reclaim name", users, name=old, stream=users),
            foreign("a stream named like reclaim's with _backup", backup, name=backup),
            foreign(
                "a user's stream behind a reclaim name and its own stream field",
                backup,
                name=old,
                stream=backup,
            ),
        ],
    )


def kv(request: pytest.FixtureRequest) -> Adversary:
    url = require("nats")
    token = secrets.token_hex(4)
    old = make_name(token, 1, now=time.time() - 86400)
    users = f"config_{token}"
    backup = f"{old}_backup"

    def create(name: str) -> None:
        async def add(nc: NATS) -> None:
            js = nc.jetstream()
            bucket = await js.create_key_value(bucket=name, storage=nats.js.api.StorageType.MEMORY)
            await bucket.put("k", b"the user's")

        _run(url, add)

    def make(name: str) -> Callable[[], None]:
        return lambda: create(name) if not _has(url, f"KV_{name}") else None

    def foreign(label: str, bucket: str, **record: Any) -> Foreign:
        return Foreign(
            label,
            _records(url, **record),
            present=lambda: _has(url, f"KV_{bucket}"),
            create=make(bucket),
            remove=lambda: _delete(url, f"KV_{bucket}"),
        )

    return Adversary(
        kind="nats.kv",
        leftovers_url=url,
        create=create,
        present=lambda name: _has(url, f"KV_{name}"),
        remove=lambda name: _delete(url, f"KV_{name}"),
        valid=lambda name: _BUCKET_NAME.fullmatch(name) is not None,
        foreign=[
            foreign("a user's KV bucket", users, name=users),
            foreign("a user's KV bucket by its stream's name", users, name=f"KV_{users}"),
            foreign(
                "a user's KV bucket behind a reclaim name",
                users,
                name=old,
                stream=f"KV_{users}",
            ),
            foreign("a bucket named like reclaim's with _backup", backup, name=backup),
            foreign(
                "a reclaim name whose stream field is the bare name, not KV_<name>",
                backup,
                name=old,
                stream=backup,
            ),
        ],
    )


KINDS: dict[str, Factory] = {"nats.stream": stream, "nats.kv": kv}
