"""Adversaries of ``email.mailtm`` and ``email.mailsac``: a user's mailboxes at the stand-ins of
tests/providers/mailtm.py and mailsac.py (started here with the helpers the backend tests'
fixtures use)."""

from __future__ import annotations

from typing import Any

import pytest

from adversaries import Adversary, Factory, Foreign
from providers.mailsac import MailsacServer
from providers.mailtm import MailTmServer
from reclaim.backends import Record
from reclaim.backends.email import MailsacInbox, MailTmInbox

GOOD = "rc_0badf00d_t0a1b2_1"
DOMAIN = "reclaim-test.example"


def mailtm(request: pytest.FixtureRequest) -> Adversary:
    server = MailTmServer(domains=(DOMAIN,), rate=None).start()
    request.addfinalizer(server.stop)
    alice, password = f"alice@{DOMAIN}", "alices-own-password"
    server.create_account(alice, password)

    def record(**fields: Any) -> Record:
        planned = MailTmInbox(base_url=server.url, domain=DOMAIN).plan(GOOD)
        return {**planned, "password": password, **fields}

    def present() -> bool:
        return alice in server.addresses()

    def create(name: str) -> None:
        server.create_account(f"{name}@{DOMAIN}", f"pw-{name}")

    return Adversary(
        kind="email.mailtm",
        leftovers_url=None,
        create=create,
        present=lambda name: f"{name}@{DOMAIN}" in server.addresses(),
        remove=lambda name: server.delete_account(f"{name}@{DOMAIN}"),
        foreign=[
            Foreign("the user's mailbox alice", record(name="alice", address=alice), present),
            Foreign("alice's address under a reclaim name", record(address=alice), present),
            Foreign(
                "alice's address under a look-alike name",
                record(name=f"{GOOD}_backup", address=alice),
                present,
            ),
        ],
    )


def mailsac(request: pytest.FixtureRequest) -> Adversary:
    server = MailsacServer().start()
    request.addfinalizer(server.stop)
    account = server.api_keys[server.api_key]
    # The user's own private address, reserved by the same account, with mail in it.
    alice = "alice@mailsac.com"
    server.reserve(alice, account)
    server.deliver(alice, subject="keep me", text="the user's mail")
    public = f"x{GOOD}@mailsac.com"  # a public inbox somebody uses, named like ours
    server.deliver(public, subject="keep me too", text="somebody's mail")

    def record(**fields: Any) -> Record:
        backend = MailsacInbox(server.api_key, base_url=server.api_url, reserve=True)
        return {**backend.plan(GOOD), **fields}

    def alice_there() -> bool:
        return server.owners.get(alice) == account and bool(server.messages(alice))

    return Adversary(
        kind="email.mailsac",
        leftovers_url=f"mailsac+http://{server.api_key}@127.0.0.1:{server.port}/api",
        create=lambda name: server.reserve(f"{name}@mailsac.com", account),
        present=lambda name: server.owners.get(f"{name}@mailsac.com") == account,
        remove=lambda name: server.unreserve(f"{name}@mailsac.com"),
        foreign=[
            Foreign("the user's address alice", record(name="alice", address=alice), alice_there),
            Foreign("alice's address under a reclaim name", record(address=alice), alice_there),
            Foreign(
                "alice's public inbox under a reclaim name",
                record(address=alice, reserve=False),
                alice_there,
            ),
            Foreign(
                "a public inbox named like a reclaim name",
                record(name=f"x{GOOD}", address=public, reserve=False),
                lambda: bool(server.messages(public)),
            ),
        ],
    )


KINDS: dict[str, Factory] = {"email.mailtm": mailtm, "email.mailsac": mailsac}
