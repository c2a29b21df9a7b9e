"""Adversaries of ``phone.twilio`` and ``phone.smsactivate``: a user's numbers at the stand-ins of
tests/providers/twilio.py and smsactivate.py (started here with the helpers the backend tests'
fixtures use).

An sms-activate activation carries no name, so reclaim cannot ask whose it is: its foreign
records are a user's activation under names that are not whole reclaim names (refused by the
guard); docs/backends/phone.md says what reclaim can and cannot check.
"""

from __future__ import annotations

from typing import Any

import pytest

from adversaries import Adversary, Factory, Foreign
from providers.smsactivate import SmsActivateServer
from providers.twilio import TwilioServer
from reclaim.backends import Record
from reclaim.backends.phone import SmsActivateNumber, TwilioNumber

GOOD = "rc_0badf00d_t0a1b2_1"


def twilio(request: pytest.FixtureRequest) -> Adversary:
    server = TwilioServer().start()
    request.addfinalizer(server.stop)
    support = server.buy(server.available[-1], "Support line")  # the user's own number

    def record(**fields: Any) -> Record:
        backend = TwilioNumber(server.account_sid, server.auth_token, base_url=server.url)
        return {**backend.plan(GOOD), **fields}

    def create(name: str) -> None:
        server.buy(server.available[-1], name)

    def remove(name: str) -> None:
        with server.lock:
            sids = [s for s, n in server.numbers.items() if n["friendly_name"] == name]
        for sid in sids:
            server.release_number(sid)

    def present() -> bool:
        return support in server.numbers

    return Adversary(
        kind="phone.twilio",
        leftovers_url=(
            f"twilio+http://{server.account_sid}:{server.auth_token}@127.0.0.1:{server.port}"
        ),
        create=create,
        present=lambda name: name in server.owned(),
        remove=remove,
        foreign=[
            Foreign("the user's number", record(name="Support line", sid=support), present),
            Foreign("the user's number found by its name", record(name="Support line"), present),
            Foreign("the user's number's sid under a reclaim name", record(sid=support), present),
            Foreign(
                "the user's number's sid under a look-alike name",
                record(name=f"{GOOD}_backup", sid=support),
                present,
            ),
        ],
    )


def smsactivate(request: pytest.FixtureRequest) -> Adversary:
    server = SmsActivateServer().start()
    request.addfinalizer(server.stop)
    made: dict[str, int] = {}
    theirs = server.rent()  # the user's own activation

    def record(**fields: Any) -> Record:
        backend = SmsActivateNumber(server.api_key, base_url=server.api_url)
        return {**backend.plan(GOOD), "activation_id": str(theirs), **fields}

    def create(name: str) -> None:  # an activation "for" a name: activations carry none
        made[name] = server.rent()

    def present() -> bool:
        return theirs in server.active()

    return Adversary(
        kind="phone.smsactivate",
        leftovers_url=None,
        create=create,
        present=lambda name: name in made and made[name] in server.active(),
        remove=lambda name: server.cancel(made[name]) if name in made else None,
        foreign=[
            Foreign(f"the user's activation under the name {bad!r}", record(name=bad), present)
            for bad in ("alice", f"{GOOD}_backup", f"myapp_{GOOD}", f"{GOOD}.bak")
        ],
    )


KINDS: dict[str, Factory] = {"phone.twilio": twilio, "phone.smsactivate": smsactivate}
