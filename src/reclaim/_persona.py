"""Persona: one test person's identities in other systems, gathered in one Fixture.

::

    with reclaim.Persona("novice_sarah") as sarah:
        inbox = sarah.disposable_email()
        phone = sarah.sms_number()
        token = sarah.oauth_grant("github")
        user = sarah.user_account("https://api.example.test/v1/users")

    async with reclaim.Persona("novice_sarah") as sarah:  # the same, awaited
        inbox = await sarah.disposable_email()

Each method acquires through a backend of ``reclaim.backends`` with defaults from the
environment (the backends' own variables: ``TWILIO_ACCOUNT_SID``, ``MAILSAC_KEY``, ...), so a
test names *what* it needs and configuration says *where*. Everything is journaled before it is
created and released at exit, by the watchdog if the process dies, or by the next sweep.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Final

from reclaim import _settings as settings
from reclaim._fixture import Fixture
from reclaim._registry import Registry

if TYPE_CHECKING:
    from reclaim.backends import Backend

__all__ = ["AsyncPersona", "Persona"]

#: Which provider each kind of identity uses when the test does not say.
EMAIL_ENV: Final = settings.PERSONA_EMAIL.name  # mailtm (default) or mailsac
PHONE_ENV: Final = settings.PERSONA_PHONE.name  # twilio (default) or smsactivate

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class Persona(Fixture):
    """A Fixture for one test person: inbox, phone number, OAuth grants, accounts, buckets.

    The sync methods acquire at once; each has an async twin with an ``a`` prefix
    (``adisposable_email``), and ``async with Persona(...) as p`` gives an :class:`AsyncPersona`
    whose methods carry the plain names and are awaited.

    Args:
        name: the person (``"novice_sarah"``): letters, digits, ``_ . -``. It labels the
            resources in ``reclaim status`` and goes into account bodies as the display name;
            per-person tokens are read from ``RECLAIM_PERSONA_<NAME>_<PROVIDER>_TOKEN``.
        email: the inbox provider, ``"mailtm"`` or ``"mailsac"`` (default: $RECLAIM_PERSONA_EMAIL,
            else mailtm).
        phone: the number provider, ``"twilio"`` or ``"smsactivate"`` (default:
            $RECLAIM_PERSONA_PHONE, else twilio).
        registry: as for :class:`reclaim.Fixture`.
    """

    def __init__(
        self,
        name: str,
        *,
        email: str | None = None,
        phone: str | None = None,
        registry: Registry | str | None = None,
    ) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"persona name {name!r}: use 1-63 letters, digits, '_', '.' or '-', starting"
                " with a letter or digit"
            )
        super().__init__(name, registry=registry)
        self.email_provider = (email or settings.PERSONA_EMAIL.get()).lower()
        self.phone_provider = (phone or settings.PERSONA_PHONE.get()).lower()
        _check_choice("email", self.email_provider, ("mailtm", "mailsac"))
        _check_choice("phone", self.phone_provider, ("twilio", "smsactivate"))

    async def __aenter__(self) -> AsyncPersona:  # type: ignore[override]  # the async view
        await super().__aenter__()
        return AsyncPersona(self)

    # --- what to acquire, built once for both flavours -------------------------------------

    def _email_backend(self, provider: str | None, options: dict[str, Any]) -> Backend[Any]:
        from reclaim.backends.email import MailsacInbox, MailTmInbox  # noqa: PLC0415  (a provider's backend and driver load only when used)

        chosen = (provider or self.email_provider).lower()
        _check_choice("email", chosen, ("mailtm", "mailsac"))
        return MailTmInbox(**options) if chosen == "mailtm" else MailsacInbox(**options)

    def _phone_backend(self, provider: str | None, options: dict[str, Any]) -> Backend[Any]:
        from reclaim.backends.phone import SmsActivateNumber, TwilioNumber  # noqa: PLC0415  (a provider's backend and driver load only when used)

        chosen = (provider or self.phone_provider).lower()
        _check_choice("phone", chosen, ("twilio", "smsactivate"))
        return TwilioNumber(**options) if chosen == "twilio" else SmsActivateNumber(**options)

    def _grant_backend(
        self, provider: str, access_token: str | None, options: dict[str, Any]
    ) -> Backend[Any]:
        from reclaim.backends.oauth import GithubGrant, OAuthGrant  # noqa: PLC0415  (a provider's backend and driver load only when used)

        token = access_token or self.token(provider)
        if provider.lower() == "github":
            if not token:
                raise ValueError(
                    f"persona {self.name!r}: oauth_grant('github') needs the user's token: pass"
                    f" access_token=..., or set {self._token_env('github')} (reclaim never"
                    " takes GITHUB_TOKEN: releasing a grant revokes it)"
                )
            return GithubGrant(token, **options)
        return OAuthGrant(access_token=token, **options)

    def _account_backend(self, api: Any, options: dict[str, Any]) -> Backend[Any]:
        from reclaim.backends import Backend  # noqa: PLC0415  (a provider's backend and driver load only when used)
        from reclaim.backends.accounts import RestAccount, ScimUser  # noqa: PLC0415  (a provider's backend and driver load only when used)

        if isinstance(api, Backend):
            if options:
                raise TypeError("user_account(backend): give the options to the backend itself")
            return api
        if not isinstance(api, str):
            raise TypeError(
                f"user_account({api!r}): give a RestAccount or ScimUser, a collection URL, or a"
                " SCIM base URL as scim+https://..."
            )
        if api.startswith(("scim+http://", "scim+https://")):
            return ScimUser(api.removeprefix("scim+"), **options)
        body = options.pop(
            "body", {"username": "{name}", "email": "{name}@example.test", "name": self.name}
        )
        return RestAccount(api, body, **options)

    def token(self, provider: str) -> str | None:
        """This person's token for ``provider`` from ``RECLAIM_PERSONA_<NAME>_<PROVIDER>_TOKEN``."""
        return os.environ.get(self._token_env(provider)) or None

    def _token_env(self, provider: str) -> str:
        person = re.sub(r"[^A-Z0-9]", "_", self.name.upper())
        kind = re.sub(r"[^A-Z0-9]", "_", provider.upper())
        return f"{settings.PERSONA_TOKEN.name}{person}_{kind}_TOKEN"

    # --- sync ------------------------------------------------------------------------------

    def disposable_email(self, provider: str | None = None, **options: Any) -> Any:
        """A throwaway inbox (``.address``, ``wait_for_message(...)``); options go to the
        backend (``MailTmInbox`` / ``MailsacInbox``)."""
        return self.acquire(self._email_backend(provider, options))

    def sms_number(self, provider: str | None = None, **options: Any) -> Any:
        """A phone number that receives SMS (``.number``, ``wait_for_code()``); options go to
        ``TwilioNumber`` / ``SmsActivateNumber``."""
        return self.acquire(self._phone_backend(provider, options))

    def oauth_grant(
        self, provider: str = "oauth", *, access_token: str | None = None, **options: Any
    ) -> Any:
        """An OAuth grant, revoked at release: ``"github"`` (``GithubGrant``) or any RFC 7009
        server (``OAuthGrant``; issuer and client from its environment variables)."""
        return self.acquire(self._grant_backend(provider, access_token, options))

    def user_account(self, api: Any, **options: Any) -> Any:
        """An account in the product under test: ``api`` is a collection URL (``RestAccount``,
        body with the reclaim name as username), ``scim+https://.../scim/v2`` (``ScimUser``),
        or a configured backend."""
        return self.acquire(self._account_backend(api, options))

    def s3_bucket(self, **options: Any) -> Any:
        """A bucket of its own (``S3Bucket``), emptied of every version and deleted."""
        return self.acquire(_s3_backend(options))

    def openfga_store(self, **options: Any) -> Any:
        """An OpenFGA store of its own (``OpenFgaStore``)."""
        return self.acquire(_openfga_backend(options))

    # --- async twins -----------------------------------------------------------------------

    async def adisposable_email(self, provider: str | None = None, **options: Any) -> Any:
        """Async twin of :meth:`disposable_email`."""
        return await self.aacquire(self._email_backend(provider, options))

    async def asms_number(self, provider: str | None = None, **options: Any) -> Any:
        """Async twin of :meth:`sms_number`."""
        return await self.aacquire(self._phone_backend(provider, options))

    async def aoauth_grant(
        self, provider: str = "oauth", *, access_token: str | None = None, **options: Any
    ) -> Any:
        """Async twin of :meth:`oauth_grant`."""
        return await self.aacquire(self._grant_backend(provider, access_token, options))

    async def auser_account(self, api: Any, **options: Any) -> Any:
        """Async twin of :meth:`user_account`."""
        return await self.aacquire(self._account_backend(api, options))

    async def as3_bucket(self, **options: Any) -> Any:
        """Async twin of :meth:`s3_bucket`."""
        return await self.aacquire(_s3_backend(options))

    async def aopenfga_store(self, **options: Any) -> Any:
        """Async twin of :meth:`openfga_store`."""
        return await self.aacquire(_openfga_backend(options))


class AsyncPersona:
    """What ``async with Persona(...)`` gives: the same person, every method awaited.

    Anything else (``acquire``, ``aacquire``, ``add_cleanup``, ``name``) is the persona's own.
    """

    def __init__(self, persona: Persona) -> None:
        self.persona = persona

    def __getattr__(self, name: str) -> Any:
        return getattr(self.persona, name)

    def __repr__(self) -> str:
        return f"<AsyncPersona of {self.persona!r}>"

    async def disposable_email(self, provider: str | None = None, **options: Any) -> Any:
        """See :meth:`Persona.disposable_email`."""
        return await self.persona.adisposable_email(provider, **options)

    async def sms_number(self, provider: str | None = None, **options: Any) -> Any:
        """See :meth:`Persona.sms_number`."""
        return await self.persona.asms_number(provider, **options)

    async def oauth_grant(
        self, provider: str = "oauth", *, access_token: str | None = None, **options: Any
    ) -> Any:
        """See :meth:`Persona.oauth_grant`."""
        return await self.persona.aoauth_grant(provider, access_token=access_token, **options)

    async def user_account(self, api: Any, **options: Any) -> Any:
        """See :meth:`Persona.user_account`."""
        return await self.persona.auser_account(api, **options)

    async def s3_bucket(self, **options: Any) -> Any:
        """See :meth:`Persona.s3_bucket` (the blocking client runs in a worker thread)."""
        return await self.persona.as3_bucket(**options)

    async def openfga_store(self, **options: Any) -> Any:
        """See :meth:`Persona.openfga_store`."""
        return await self.persona.aopenfga_store(**options)


def _s3_backend(options: dict[str, Any]) -> Any:
    from reclaim.backends.s3 import S3Bucket  # noqa: PLC0415  (a provider's backend and driver load only when used)

    return S3Bucket(**options)


def _openfga_backend(options: dict[str, Any]) -> Any:
    from reclaim.backends.openfga import OpenFgaStore  # noqa: PLC0415  (a provider's backend and driver load only when used)

    return OpenFgaStore(**options)


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} provider {value!r}: choose one of {', '.join(allowed)}")
