"""Persona: one person's inbox, phone number, OAuth grant and account, configured from the
environment, released at exit (sync and async), by the watchdog after SIGKILL, by the sweep when
the watchdog dies too, and through the pytest ``persona`` factory. The providers are the local
stand-ins of ``tests/providers`` (the real ones are not reachable from CI); every check asks
them what still exists."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import reclaim
from conftest import CHILD_TIMEOUT, Spawner, alive, kill, reclaim_cli, wait_until
from providers.mailtm import MailTmServer
from providers.oauth import GITHUB_CLIENT_ID, GITHUB_CLIENT_SECRET, GithubServer
from providers.scim import ScimServer
from providers.twilio import TwilioServer


@dataclass
class World:
    """The stand-in providers one person's identities live on."""

    mailtm: MailTmServer
    twilio: TwilioServer
    github: GithubServer
    scim: ScimServer
    token: str  # the person's GitHub user token

    def empty(self, *, granted: bool = True) -> bool:
        """Nothing left on any provider (and the token revoked, when it was granted)."""
        revoked = not self.github.valid(self.token) if granted else True
        return (
            not self.mailtm.addresses()
            and not self.twilio.owned()
            and not self.scim.users
            and revoked
        )

    @property
    def scim_api(self) -> str:
        return "scim+" + self.scim.base_url


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, registry_path: str) -> Iterator[World]:
    with (
        MailTmServer() as mailtm,
        TwilioServer() as twilio,
        GithubServer() as github,
        ScimServer() as scim,
    ):
        token = github.issue()
        # Configuration, as a CI job would give it: the persona's methods take no arguments.
        for key, value in {
            "RECLAIM_MAILTM_URL": mailtm.url,
            "TWILIO_ACCOUNT_SID": twilio.account_sid,
            "TWILIO_AUTH_TOKEN": twilio.auth_token,
            "RECLAIM_TWILIO_URL": twilio.url,
            "GITHUB_CLIENT_ID": GITHUB_CLIENT_ID,
            "GITHUB_CLIENT_SECRET": GITHUB_CLIENT_SECRET,
            "GITHUB_API_URL": github.url,
            "SCIM_TOKEN": scim.token,
            "RECLAIM_PERSONA_NOVICE_SARAH_GITHUB_TOKEN": token,
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("RECLAIM_PERSONA_EMAIL", raising=False)
        monkeypatch.delenv("RECLAIM_PERSONA_PHONE", raising=False)
        yield World(mailtm, twilio, github, scim, token)


def test_a_persona_gathers_and_releases_one_persons_identities(world: World) -> None:
    with reclaim.Persona("novice_sarah") as sarah:
        inbox = sarah.disposable_email()
        phone = sarah.sms_number()
        grant = sarah.oauth_grant("github")
        user = sarah.user_account(world.scim_api)
        # They are real on the providers, and usable for what a sign-up test does.
        assert world.mailtm.addresses() == {inbox.address}
        assert set(world.twilio.owned().values()) == {phone.number}
        assert grant.access_token == world.token
        assert world.github.valid(world.token)
        assert list(world.scim.users) == [user.id]
        world.mailtm.deliver(inbox.address, subject="Welcome", text="Your code is 482913")
        assert inbox.wait_for_message(subject="Welcome", timeout=10).text.endswith("482913")
        world.twilio.deliver_sms(phone.number, "Sarah, your code: 7731")
        assert phone.wait_for_code(timeout=10) == "7731"
        assert len(sarah) == 4
    assert world.empty(), "everything released at exit"


def test_async_with_gives_awaited_methods(world: World) -> None:
    async def main() -> None:
        async with reclaim.Persona("novice_sarah") as sarah:
            assert isinstance(sarah, reclaim.AsyncPersona)
            inbox = await sarah.disposable_email()
            phone = await sarah.sms_number()
            await sarah.oauth_grant("github")
            await sarah.user_account(world.scim_api)
            assert inbox.address in world.mailtm.addresses()
            assert phone.number in world.twilio.owned().values()
            assert sarah.name == "novice_sarah"  # the rest is the persona's own

    asyncio.run(main())
    assert world.empty()


def test_a_cancelled_async_persona_still_releases(world: World) -> None:
    async def main() -> None:
        async with reclaim.Persona("novice_sarah") as sarah:
            await sarah.disposable_email()
            await sarah.sms_number()
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert world.empty(granted=False)
    assert world.github.valid(world.token), "never granted through reclaim: never revoked"


def test_configuration_errors_name_what_to_set(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="unknown email provider 'gmail'"):
        reclaim.Persona("x", email="gmail")
    with pytest.raises(ValueError, match="persona name"):
        reclaim.Persona("robert'); DROP TABLE students;--")
    monkeypatch.setenv("RECLAIM_PERSONA_EMAIL", "mailsac")
    assert reclaim.Persona("y").email_provider == "mailsac"
    with reclaim.Persona("power_user") as other:
        with pytest.raises(ValueError, match="RECLAIM_PERSONA_POWER_USER_GITHUB_TOKEN"):
            other.oauth_grant("github")
        assert len(other) == 0, "nothing was journaled for a grant that could not be built"


CHILD = """
import json, sys, time
import reclaim
from reclaim._run import existing_run

with reclaim.Persona("novice_sarah") as sarah:
    inbox = sarah.disposable_email()
    phone = sarah.sms_number()
    sarah.oauth_grant("github")
    sarah.user_account(sys.argv[1])
    run = existing_run()
    print(json.dumps({"watchdog": run.watchdog.pid, "address": inbox.address}), flush=True)
    time.sleep(600)
"""


def test_sigkill_the_watchdog_releases_every_identity(world: World, spawn: Spawner) -> None:
    proc, held = spawn(CHILD, world.scim_api)
    assert world.mailtm.addresses() == {held["address"]}
    assert world.twilio.owned()
    kill(proc)
    wait_until(world.empty)
    wait_until(lambda: not alive(held["watchdog"]))


def test_sigkill_with_the_watchdog_then_the_sweep(world: World, spawn: Spawner) -> None:
    proc, held = spawn(CHILD, world.scim_api)
    os.kill(held["watchdog"], signal.SIGKILL)
    kill(proc)
    time.sleep(0.2)
    assert not world.empty(), "nobody released anything yet"
    # The sweep runs in a fresh process with none of the providers' environment: the records
    # hold what release needs (secrets marked, never printed).
    env_free = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO", "GITHUB"))}
    swept = reclaim_cli("sweep", "--grace", "0", "--json", env=env_free)
    assert json.loads(swept.stdout)["released"] == 4
    assert world.twilio.auth_token not in swept.stdout + swept.stderr
    assert world.empty()
    status = reclaim_cli("status", "--json")
    assert json.loads(status.stdout) == {"runs": []}


def test_the_pytest_persona_factory(
    world: World, pytester: pytest.Pytester, registry_path: str
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        f"""
def test_signup(persona):
    sarah = persona("novice_sarah")
    inbox = sarah.disposable_email()
    sarah.user_account({world.scim_api!r})
    assert "@" in inbox.address

def test_two_people(persona):
    a, b = persona("alice"), persona("bob")
    assert a.disposable_email().address != b.disposable_email().address
"""
    )
    result = pytester.runpytest_subprocess(timeout=CHILD_TIMEOUT)
    result.assert_outcomes(passed=2)
    assert world.empty(granted=False)
