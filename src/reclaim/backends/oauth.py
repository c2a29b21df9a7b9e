"""OAuth grants, revoked by RFC 7009 (``OAuthGrant``) or by GitHub's app API (``GithubGrant``).

A test that logs a user in through OAuth holds a grant in the authorization server: a refresh
token that can mint access tokens for weeks. A crashed run leaves it valid. These backends own
such a grant and revoke it at release, from the record alone.

What is owned, and I1. There is no API that lists the tokens of a client, so a token is found
only by its own value. Two ways to get one:

- **A token the test was given** (``OAuthGrant(access_token=..., refresh_token=...)``,
  ``GithubGrant(token)``; the default and the recommended way): the test obtained it by a
  login flow and hands it to reclaim. The token is in the *planned* record, journaled before
  ``acquire`` does anything, so from that moment every layer of the crash model revokes it.
  ``acquire`` checks that the token is live (introspection, or GitHub's check) and refuses a
  dead one. Because the token exists before reclaim owns it, ``exists`` is true for the planned
  record too: ``reclaim.testing.check_backend``, which checks a resource *created* by acquire,
  does not apply; the tests of this module check each of its rules that does.
- **Client credentials** (``OAuthGrant()`` with no token): ``acquire`` asks the token endpoint
  for a token (RFC 6749 section 4.4). The gap: the token exists a moment before its record
  does. A process killed in between leaves a token nobody can find, which stays valid until it
  expires (``expires_in``). Give test clients short token lifetimes.

Release revokes the refresh token first (RFC 7009 section 2.1: revoking it SHOULD revoke the
access tokens of the grant), then the access token. Revocation answers 200 for unknown and
already revoked tokens too, so a second release is a no-op (I3). When a revocation call fails,
introspection (RFC 7662) decides: every token inactive means released.

Only our own (I8): a token carries no name, so reclaim cannot ask the server whether a token
is one a test handed it. What it checks is the record: its ``name`` must be a whole reclaim name
(the guard in front of every release), which a hand-written or damaged row naming somebody's
grant does not have. A record with a reclaim name and a user's token in it cannot be told apart
from a test's own: never copy tokens into registry rows by hand.

Tokens and client secrets are secret fields (I7): they are in the record because release needs
them, and never in an error message. Needs httpx: ``pip install 'reclaim[http]'``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import quote, quote_plus

from reclaim.backends import Record
from reclaim.backends._http import (
    Context,
    Flow,
    FlowBackend,
    HttpError,
    NothingMade,
    ProtocolError,
    Request,
    check_url,
    json_object,
    send,
    send_or_gone,
    show_url,
)

__all__ = ["GithubGrant", "Grant", "OAuthGrant"]

#: GitHub client ids: "Iv1.0123abcd...", "Ov23li...", or 20 hex digits for old OAuth apps.
_GITHUB_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: The REST API version GitHub's application endpoints are documented for.
GITHUB_API_VERSION: Final = "2022-11-28"


@dataclasses.dataclass(frozen=True)
class Grant:
    """The tokens a test gets. Tokens are left out of ``repr`` (test reports print values).

    Attributes:
        access_token: the access token, when there is one.
        refresh_token: the refresh token, when there is one.
        token_type: as the server said, usually ``"Bearer"``.
        expires_at: the access token's expiry (seconds since the epoch), when known.
        scope: the granted scope, space-separated, when known.
    """

    access_token: str | None = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(default=None, repr=False)
    token_type: str = "Bearer"  # noqa: S105  (a token type, not a password)
    expires_at: float | None = None
    scope: str | None = None

    def headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <access token>"}``, for the test's own calls."""
        if not self.access_token:
            raise ValueError("this grant holds no access token (only a refresh token)")
        return {"Authorization": f"Bearer {self.access_token}"}


class OAuthGrant(FlowBackend[Grant]):
    """A grant of an OAuth 2.0 authorization server, revoked by RFC 7009 at release.

    ::

        tokens = log_in_through_the_browser()          # the test's own login flow
        grant = persona.acquire(OAuthGrant(
            "https://auth.test/realms/e2e/protocol/openid-connect",
            access_token=tokens["access_token"], refresh_token=tokens["refresh_token"],
            revocation_url=".../revoke", introspection_url=".../token/introspect",
        ))
        # revoked here, or by the watchdog or the sweeper if the test dies

    Args:
        issuer: the base URL of the endpoints (``{issuer}/token``, ``/revoke``, ``/introspect``
            unless given one by one); ``OAUTH_ISSUER`` by default.
        access_token, refresh_token: tokens the test already holds. Never read from the
            environment: whatever is acquired is revoked at release. With neither, a token is
            asked for with the client credentials grant.
        client_id, client_secret: the client's credentials (``OAUTH_CLIENT_ID``,
            ``OAUTH_CLIENT_SECRET``); revocation and introspection authenticate with them.
        scope: the scope to ask for (client credentials only).
        token_url, revocation_url, introspection_url: the endpoints, when they do not follow the
            issuer (``OAUTH_TOKEN_URL``, ``OAUTH_REVOCATION_URL``, ``OAUTH_INTROSPECTION_URL``).
        client_auth: ``"basic"`` (``client_secret_basic``, the default) or ``"post"``
            (``client_secret_post``: the credentials in the form body).
        timeout: seconds per HTTP call.
    """

    kind = "oauth.grant"
    secret_fields = frozenset({"client_secret", "access_token", "refresh_token"})
    _releasing = "be revoked"

    def __init__(
        self,
        issuer: str | None = None,
        *,
        access_token: str | None = None,
        refresh_token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str | None = None,
        token_url: str | None = None,
        revocation_url: str | None = None,
        introspection_url: str | None = None,
        client_auth: Literal["basic", "post"] = "basic",
        timeout: float = 10.0,
    ) -> None:
        base = (issuer or os.environ.get("OAUTH_ISSUER") or "").rstrip("/")

        def endpoint(given: str | None, env: str, path: str) -> str:
            url = given or os.environ.get(env) or (f"{base}{path}" if base else "")
            if not url:
                raise ValueError(
                    f"OAuthGrant needs the {path.strip('/')} endpoint: pass issuer (or"
                    f" OAUTH_ISSUER), or the endpoint's URL (or {env})"
                )
            return check_url(url, env.lower().removeprefix("oauth_"))

        self.given = bool(access_token or refresh_token)
        self._given = self.given  # a given token is owned before acquire (see the module)
        self.revocation_url = endpoint(revocation_url, "OAUTH_REVOCATION_URL", "/revoke")
        self.introspection_url = endpoint(
            introspection_url, "OAUTH_INTROSPECTION_URL", "/introspect"
        )
        self.token_url = None if self.given else endpoint(token_url, "OAUTH_TOKEN_URL", "/token")
        if client_auth not in ("basic", "post"):
            raise ValueError(f"client_auth must be 'basic' or 'post', not {client_auth!r}")
        self.client_id = client_id or os.environ.get("OAUTH_CLIENT_ID")
        self.client_secret = client_secret or os.environ.get("OAUTH_CLIENT_SECRET")
        if not self.given and not (self.client_id and self.client_secret):
            raise ValueError(
                "OAuthGrant with no token asks for one with the client credentials grant, which"
                " needs client_id and client_secret (or OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET)"
            )
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.scope = scope
        self.client_auth = client_auth
        self.timeout = timeout

    def plan(self, name: str) -> Record:
        # A given token is journaled here, before acquire: from now on it is revoked whatever
        # happens (I1). A client-credentials token is not known yet (see the module's text).
        return {
            "name": name,
            "grant": "given" if self.given else "client_credentials",
            "revocation_url": self.revocation_url,
            "introspection_url": self.introspection_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "client_auth": self.client_auth,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": None,
            "timeout": self.timeout,
        }

    def _create_flow(self, record: Record) -> Flow[dict[str, Any]]:
        if not self.given:
            return (yield from self._token_flow(record))
        # Nothing is created for a given token: it is owned from the plan on. Only the server's
        # word that every token is dead proves there is nothing to own (NotCreatedError); a
        # server that cannot be asked leaves the tokens to release.
        fields = [f for f in ("refresh_token", "access_token") if record[f]]
        infos = {}
        for field in fields:
            infos[field] = yield from _introspect(record, field)
        dead = [f for f in fields if infos[f].get("active") is not True]
        if dead:
            shown = dead[0].replace("_", " ")
            if len(dead) == len(fields):
                raise NothingMade(
                    ProtocolError(
                        f"the {shown} it was given is not active (expired, revoked or unknown"
                        " to this server): there is nothing to own"
                    )
                )
            raise ProtocolError(
                f"the {shown} it was given is not active (expired, revoked or unknown to this"
                " server), though the other token is: that one is revoked"
            )
        info = infos[fields[-1]]
        return {
            "expires": info.get("exp") if record["access_token"] else None,
            "scope": info.get("scope"),
            "token_type": info.get("token_type"),
        }

    def _token_flow(self, record: Record) -> Flow[dict[str, Any]]:
        """The client credentials grant (RFC 6749 section 4.4): a token of its own."""
        assert self.token_url is not None
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        response = yield from send(_oauth_request(record, self.token_url, form), proof=True)
        tokens = json_object(response)
        if not isinstance(tokens.get("access_token"), str):
            raise ProtocolError("the token endpoint answered 200 but sent no access_token")
        record["access_token"] = tokens["access_token"]
        refresh = tokens.get("refresh_token")
        record["refresh_token"] = refresh if isinstance(refresh, str) else None
        lifetime = tokens.get("expires_in")
        return {
            "expires": time.time() + lifetime if isinstance(lifetime, int | float) else None,
            "scope": tokens.get("scope", self.scope),
            "token_type": tokens.get("token_type"),
        }

    def _acquired(self, record: Record, got: dict[str, Any]) -> tuple[Grant, Record]:
        expires, scope = got["expires"], got["scope"]
        record["expires_at"] = float(expires) if isinstance(expires, int | float) else None
        grant = Grant(
            record["access_token"],
            record["refresh_token"],
            str(got["token_type"] or "Bearer"),
            record["expires_at"],
            scope if isinstance(scope, str) else None,
        )
        return grant, record

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        fields = [f for f in ("refresh_token", "access_token") if record.get(f)]
        errors: list[HttpError] = []
        for field in fields:  # the refresh token first: it takes its access tokens along
            form = {"token": record[field], "token_type_hint": field}
            try:
                # RFC 7009 section 2.2: 200 also for a token that is unknown or revoked.
                yield from send(_oauth_request(record, record["revocation_url"], form))
            except HttpError as exc:
                errors.append(exc)
        if not errors:
            return
        # The server refused a revocation (unsupported_token_type for access tokens, ...): the
        # grant is released all the same if no token of it is active any more.
        try:
            still = yield from _active(record, fields)
        except (HttpError, ProtocolError):
            still = fields  # cannot tell: the refusal stands
        if still:
            raise errors[0]

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        fields = [f for f in ("refresh_token", "access_token") if record.get(f)]
        return bool((yield from _active(record, fields)))

    @classmethod
    def describe(cls, record: Record) -> str:
        client = f" of client {record['client_id']}" if record.get("client_id") else ""
        return f"OAuth grant {record.get('name')}{client} at {show_url(record['revocation_url'])}"


def _oauth_request(record: Record, url: str, form: Mapping[str, str]) -> Request:
    """``POST`` of ``form`` with the client's authentication (RFC 6749 section 2.3.1): HTTP
    Basic of the form-encoded id and secret, or both in the body."""
    data = dict(form)
    headers = {"Accept": "application/json"}
    client_id, secret = record.get("client_id"), record.get("client_secret")
    if client_id and secret and record.get("client_auth", "basic") == "basic":
        pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    elif client_id:
        data["client_id"] = client_id
        if secret:
            data["client_secret"] = secret
    return Request("POST", url, data=data, headers=headers)


def _active(record: Record, fields: list[str]) -> Flow[list[str]]:
    """The token fields whose tokens introspection says are active."""
    active = []
    for field in fields:
        if (yield from _introspect(record, field)).get("active") is True:
            active.append(field)
    return active


def _introspect(record: Record, field: str) -> Flow[dict[str, Any]]:
    """RFC 7662: ``{"active": false}`` for a token that is expired, revoked or unknown."""
    form = {"token": record[field], "token_type_hint": field}
    response = yield from send(_oauth_request(record, record["introspection_url"], form))
    info = json_object(response)
    if not isinstance(info.get("active"), bool):
        raise ProtocolError("the introspection endpoint answered without the boolean 'active'")
    return info


class GithubGrant(FlowBackend[Grant]):
    """A user's authorization of a GitHub OAuth app or GitHub App, removed at release.

    Release is ``DELETE /applications/{client_id}/grant``: every token of that user for the
    app goes, and the app leaves the user's authorized apps (``revoke="token"`` deletes only
    this token). The check, ``POST /applications/{client_id}/token``, answers 404 for a token
    that is revoked or invalid: release asks it first, so a second release is a no-op (I3), and
    asks it again when the delete is refused.

    The token is one the test obtained (web or device flow) and hands over: it is journaled
    before acquire runs (I1). Caveat: GitHub answers 404 to a wrong client secret too, it is
    said; a secret rotated between acquire and release would then look like a revoked token.

    Args:
        access_token: the user's token (``gho_...``, ``ghu_...``). Never read from the
            environment (``GITHUB_TOKEN`` in CI is not a user token, and must not be revoked).
        client_id, client_secret: the app's credentials (``GITHUB_CLIENT_ID``,
            ``GITHUB_CLIENT_SECRET``), sent as HTTP Basic; the secret is a secret field.
        api_url: ``https://api.github.com`` (``GITHUB_API_URL``; GitHub Enterprise:
            ``https://HOST/api/v3``).
        revoke: ``"grant"`` (the default) or ``"token"``.
        timeout: seconds per HTTP call.
    """

    kind = "oauth.github"
    secret_fields = frozenset({"client_secret", "access_token"})
    _releasing = "be revoked"
    _given = True  # the token is the test's, owned from the plan on

    def __init__(
        self,
        access_token: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        api_url: str | None = None,
        revoke: Literal["grant", "token"] = "grant",
        timeout: float = 10.0,
    ) -> None:
        if not access_token:
            raise ValueError("GithubGrant needs the user's access token it is to own")
        self.client_id = client_id or os.environ.get("GITHUB_CLIENT_ID", "")
        self.client_secret = client_secret or os.environ.get("GITHUB_CLIENT_SECRET", "")
        if not (self.client_id and self.client_secret):
            raise ValueError(
                "GithubGrant needs the app's client_id and client_secret (or GITHUB_CLIENT_ID"
                " and GITHUB_CLIENT_SECRET)"
            )
        if not _GITHUB_CLIENT_ID.fullmatch(self.client_id):
            raise ValueError(f"{self.client_id!r} is not a GitHub client id")
        if revoke not in ("grant", "token"):
            raise ValueError(f"revoke must be 'grant' or 'token', not {revoke!r}")
        api = api_url or os.environ.get("GITHUB_API_URL") or "https://api.github.com"
        self.api_url = check_url(api.rstrip("/"), "api_url")
        self.access_token = access_token
        self.revoke = revoke
        self.timeout = timeout

    def plan(self, name: str) -> Record:
        return {
            "name": name,
            "api_url": self.api_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "access_token": self.access_token,
            "revoke": self.revoke,
            "timeout": self.timeout,
        }

    @classmethod
    def _context(cls, record: Record) -> Context:
        _github_app(record)  # checked before anything is sent: the client id stays in its path
        return Context(cls, record)

    def _create_flow(self, record: Record) -> Flow[dict[str, Any]]:
        info = yield from _github_check(record)
        if info is None:
            raise NothingMade(
                ProtocolError(
                    "GitHub does not know the token it was given for this app (revoked,"
                    " expired or of another app): there is nothing to own"
                )
            )
        return info

    def _acquired(self, record: Record, info: dict[str, Any]) -> tuple[Grant, Record]:
        scopes = info.get("scopes")
        scope = (
            " ".join(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else None
        )
        grant = Grant(self.access_token, None, "bearer", _iso_time(info.get("expires_at")), scope)
        return grant, record

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        if (yield from _github_check(record)) is None:
            return  # revoked already (or never valid): nothing to do (I3)
        what = "grant" if record.get("revoke", "grant") == "grant" else "token"
        body = {"access_token": record["access_token"]}
        try:
            yield from send_or_gone(
                _github_request(record, "DELETE", f"{_github_app(record)}/{what}", body),
                200, 204,
                gone=(404,),
            )  # fmt: skip
        except HttpError:
            # 422 ("validation failed, or the endpoint has been spammed"), or a delete of a
            # token revoked meanwhile: released if the check no longer knows the token.
            if (yield from _github_check(record)) is not None:
                raise

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        return (yield from _github_check(record)) is not None

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"GitHub {record.get('revoke', 'grant')} of app {record.get('client_id')}"


def _github_app(record: Record) -> str:
    client_id = str(record["client_id"])
    if not _GITHUB_CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"{client_id!r} is not a GitHub client id")
    return f"{record['api_url']}/applications/{quote(client_id, safe='')}"


def _github_request(record: Record, method: str, url: str, body: Any) -> Request:
    pair = f"{record['client_id']}:{record['client_secret']}".encode()
    headers = {
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": GITHUB_API_VERSION,
        "User-Agent": "reclaim",
        "Authorization": "Basic " + base64.b64encode(pair).decode("ascii"),
    }
    return Request(method, url, json=body, headers=headers)


def _github_check(record: Record) -> Flow[dict[str, Any] | None]:
    """``POST /applications/{client_id}/token``: the authorization, or None (404) when the token
    is revoked or invalid."""
    url = f"{_github_app(record)}/token"
    req = _github_request(record, "POST", url, {"access_token": record["access_token"]})
    response = yield from send_or_gone(req, gone=(404,))
    return None if response is None else json_object(response)


def _iso_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
