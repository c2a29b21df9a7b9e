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

Endpoints are discovered, not guessed: given the issuer, acquire reads the server's metadata
(RFC 8414, then OpenID Connect Discovery) and journals the token, revocation and introspection
endpoints in the record. Endpoints given explicitly win. A grant that could not be revoked is
refused before a token is asked for or taken (``NotCreatedError``): servers serve revocation
at paths of their own (node-oidc-provider at ``/token/revocation``), and a guessed
``{issuer}/revoke`` would acquire a token that every release then fails to revoke.

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
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import quote, quote_plus, urlsplit

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
    provider_error,
    request,
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
            "https://auth.test/realms/e2e",             # the issuer: its endpoints are discovered
            access_token=tokens["access_token"], refresh_token=tokens["refresh_token"],
        ))
        # revoked here, or by the watchdog or the sweeper if the test dies

    Endpoints. Given the issuer, acquire reads the server's metadata (RFC 8414
    ``/.well-known/oauth-authorization-server``, then OpenID Connect's
    ``/.well-known/openid-configuration``) and journals the token, revocation and introspection
    endpoints it names in the record, with where each came from (``endpoints_from``,
    ``metadata_url``). An endpoint given explicitly (argument or environment) always wins and
    is not looked up. A server that publishes no metadata gets the conventional
    ``{issuer}/token``, ``/revoke`` and ``/introspect``, and the guessed revocation endpoint is
    asked first (a revocation of a made-up token, which RFC 7009 answers 200). A grant that
    could not be revoked is never acquired: metadata without ``revocation_endpoint``, or a
    guessed one that is not there, is a ``NotCreatedError`` before any token is asked for.

    Args:
        issuer: the authorization server's issuer URL, whose metadata names the endpoints;
            ``OAUTH_ISSUER`` by default.
        access_token, refresh_token: tokens the test already holds. Never read from the
            environment: whatever is acquired is revoked at release. With neither, a token is
            asked for with the client credentials grant.
        client_id, client_secret: the client's credentials (``OAUTH_CLIENT_ID``,
            ``OAUTH_CLIENT_SECRET``); revocation and introspection authenticate with them.
        scope: the scope to ask for (client credentials only).
        token_url, revocation_url, introspection_url: the endpoints, when they are not to be
            discovered (``OAUTH_TOKEN_URL``, ``OAUTH_REVOCATION_URL``,
            ``OAUTH_INTROSPECTION_URL``); without an issuer the revocation endpoint (and for
            client credentials the token endpoint) must be given.
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
        self.issuer = _check_issuer(base) if base else None
        self.given = bool(access_token or refresh_token)
        self._given = self.given  # a given token is owned before acquire (see the module)
        explicit = {
            "token_url": None if self.given else token_url or os.environ.get("OAUTH_TOKEN_URL"),
            "revocation_url": revocation_url or os.environ.get("OAUTH_REVOCATION_URL"),
            "introspection_url": introspection_url or os.environ.get("OAUTH_INTROSPECTION_URL"),
        }
        for field in ("revocation_url", "token_url"):
            if explicit[field] or self.issuer or (field == "token_url" and self.given):
                continue
            env = f"OAUTH_{field.upper()}"
            raise ValueError(
                f"OAuthGrant needs the {_ENDPOINTS[field].label}: pass issuer (or OAUTH_ISSUER),"
                f" whose metadata names it, or the endpoint's URL ({field}, or {env})"
            )
        for field, url in explicit.items():
            if url:
                check_url(url, field)
        self.token_url = explicit["token_url"]
        self.revocation_url = explicit["revocation_url"]
        self.introspection_url = explicit["introspection_url"]
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
        # Endpoints not given are discovered by acquire (or, for a planned record, by release).
        return {
            "name": name,
            "grant": "given" if self.given else "client_credentials",
            "issuer": self.issuer,
            "token_url": self.token_url,
            "revocation_url": self.revocation_url,
            "introspection_url": self.introspection_url,
            "endpoints_from": {f: "given" for f in _ENDPOINTS if getattr(self, f)},
            "metadata_url": None,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "client_auth": self.client_auth,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": None,
            "timeout": self.timeout,
        }

    def _create_flow(self, record: Record) -> Flow[dict[str, Any]]:
        # First the endpoints, and the proof that a grant can be revoked: before any token is
        # asked for (client credentials) or taken (a given one).
        yield from _find_endpoints(record, acquiring=True)
        if not self.given:
            return (yield from self._token_flow(record))
        if not record.get("introspection_url"):
            # The server has no introspection (Google's has none): the tokens are owned as they
            # were given, since nothing can say whether they are still active.
            return {"expires": None, "scope": None, "token_type": None}
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
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        response = yield from send(_oauth_request(record, record["token_url"], form), proof=True)
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
        if not fields:
            return  # planned, never got a token: nothing to revoke, nothing to ask
        if not record.get("revocation_url"):
            # A planned record of given tokens (the owner died before acquire found the
            # endpoints): find them now, from the issuer in the record.
            record = dict(record)
            yield from _find_endpoints(record, acquiring=False)
            if not record.get("revocation_url"):
                raise ProtocolError(
                    "the server names no revocation endpoint, so reclaim cannot revoke these"
                    " tokens: revoke them by hand, then `reclaim forget` this entry"
                )
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
        if fields and not record.get("introspection_url"):
            record = dict(record)
            yield from _find_endpoints(record, acquiring=False)
        return bool((yield from _active(record, fields)))

    @classmethod
    def describe(cls, record: Record) -> str:
        client = f" of client {record['client_id']}" if record.get("client_id") else ""
        where = record.get("revocation_url") or record.get("issuer")
        at = f" at {show_url(where)}" if isinstance(where, str) and where else ""
        return f"OAuth grant {record.get('name')}{client}{at}"


# --- endpoints: given, discovered (RFC 8414, OpenID Connect Discovery), or guessed -----------


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    #: The endpoint's member in the server's metadata (RFC 8414 section 2).
    member: str
    #: The path below the issuer guessed when the server publishes no metadata.
    guess: str
    #: The endpoint in messages.
    label: str


_ENDPOINTS: Final = {
    "token_url": _Endpoint("token_endpoint", "/token", "token endpoint"),
    "revocation_url": _Endpoint("revocation_endpoint", "/revoke", "revocation endpoint"),
    "introspection_url": _Endpoint(
        "introspection_endpoint", "/introspect", "introspection endpoint"
    ),
}

#: Answers to the probe of a guessed revocation endpoint that say there is none there.
_NO_ENDPOINT: Final = frozenset({404, 405, 410, 501})


def _check_issuer(issuer: str) -> str:
    """An issuer URL: http(s), a host, no query or fragment (RFC 8414 section 2)."""
    check_url(issuer, "issuer")
    parts = urlsplit(issuer)
    if parts.query or parts.fragment:
        raise ValueError(f"issuer {show_url(issuer)!r} must have no query or fragment")
    return issuer


def _metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be, in the order asked: RFC 8414's well-known URI
    (inserted between host and path, section 3.1), OpenID Connect Discovery's (appended to the
    issuer), and RFC 8414's appended too, as Keycloak and others serve it for a path issuer."""
    parts = urlsplit(issuer)
    root = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = [
        f"{root}/.well-known/oauth-authorization-server{path}",
        f"{issuer}/.well-known/openid-configuration",
    ]
    if path:
        urls.append(f"{issuer}/.well-known/oauth-authorization-server")
    return urls


def _metadata(issuer: str) -> Flow[tuple[dict[str, Any] | None, list[str]]]:
    """The issuer's metadata and the URLs asked (the last one is where it was found), or None
    when none of them serves it. A 5xx or a rate limit that does not end is an error: it says
    nothing about what the server publishes."""
    asked: list[str] = []
    for url in _metadata_urls(issuer):
        asked.append(url)
        req = Request("GET", url, headers={"Accept": "application/json"}, creates=False)
        response = yield from request(req)
        status = response.status_code
        if status >= 500 or status == 429:
            raise HttpError(req.label, response)
        if status != 200:
            continue  # 404 and the like: not here
        try:
            body = response.json()
        except ValueError:
            continue  # a web page that answers every path: not metadata
        if not isinstance(body, dict):
            continue
        named = body.get("issuer")
        if isinstance(named, str) and named.rstrip("/") != issuer:
            # RFC 8414 section 3.3: metadata of another issuer must not be used.
            raise NothingMade(
                ProtocolError(
                    f"the metadata at {show_url(url)} is the issuer {named!r}'s, not"
                    f" {issuer!r}'s: pass the issuer exactly as the server names it"
                )
            )
        return body, asked
    return None, asked


def _find_endpoints(record: Record, *, acquiring: bool) -> Flow[None]:
    """Fill in the endpoints ``record`` lacks: from the issuer's metadata, or guessed below the
    issuer when it publishes none; journal where each came from. When ``acquiring``, prove the
    grant can be revoked before any token is asked for or taken: ``NothingMade`` when the
    server names no revocation endpoint or the guessed one is not there."""
    client_credentials = record.get("grant") == "client_credentials"
    wanted = [f for f in _ENDPOINTS if f != "token_url" or (acquiring and client_credentials)]
    missing = [f for f in wanted if not record.get(f)]
    issuer = record.get("issuer")
    sources = dict(record.get("endpoints_from") or {})
    asked: list[str] = []
    if missing and isinstance(issuer, str) and issuer:
        metadata, asked = yield from _metadata(_check_issuer(issuer))
        if metadata is not None:
            record["metadata_url"] = asked[-1]
            for field in missing:
                url = metadata.get(_ENDPOINTS[field].member)
                if url is not None:
                    record[field] = _metadata_endpoint(issuer, asked[-1], field, url)
                    sources[field] = "metadata"
        else:
            for field in missing:
                record[field] = issuer + _ENDPOINTS[field].guess
                sources[field] = "guessed"
    record["endpoints_from"] = sources
    if not acquiring:
        return
    where = record.get("metadata_url")
    if not record.get("revocation_url"):
        raise _unrevocable(
            record,
            f"the server's metadata ({show_url(where)}) names no revocation_endpoint"
            if isinstance(where, str)
            else "no revocation endpoint is known",
        )
    if client_credentials and not record.get("token_url"):
        raise NothingMade(
            ProtocolError(
                f"the server's metadata ({show_url(str(where))}) names no token_endpoint: pass"
                " token_url (or OAUTH_TOKEN_URL)"
            )
        )
    if sources.get("revocation_url") == "guessed":
        yield from _probe_revocation(record, asked)


def _metadata_endpoint(issuer: str, where: str, field: str, url: object) -> str:
    """An endpoint the metadata at ``where`` names: an http(s) URL, https when the issuer is
    (the client's secret goes there)."""
    label = _ENDPOINTS[field].label
    if not isinstance(url, str) or not url:
        raise NothingMade(
            ProtocolError(f"the metadata at {show_url(where)} names its {label} as {url!r}")
        )
    try:
        check_url(url, f"the {label} of the metadata at {show_url(where)}")
    except ValueError as exc:
        raise NothingMade(ProtocolError(str(exc))) from None
    if urlsplit(issuer).scheme == "https" and urlsplit(url).scheme != "https":
        raise NothingMade(
            ProtocolError(
                f"the metadata at {show_url(where)} names an http:// {label} for an https://"
                f" issuer ({show_url(url)}): the client's secret would travel in clear text"
            )
        )
    return url


def _probe_revocation(record: Record, asked: list[str]) -> Flow[None]:
    """Ask the guessed revocation endpoint to revoke a made-up token: RFC 7009 answers 200 for
    a token it does not know, so 200 proves that an endpoint is there and takes the client (as
    does a 400 with an OAuth error code: some servers call a made-up token ``invalid_token``)."""
    url = record["revocation_url"]
    form = {"token": f"reclaim-probe-{secrets.token_urlsafe(16)}"}
    req = dataclasses.replace(_oauth_request(record, url, form), creates=False)
    response = yield from request(req)
    status = response.status_code
    if status == 200 or (status == 400 and provider_error(response)[0]):
        return  # 200, or an OAuth error about the made-up token (Google's invalid_token)
    if status in _NO_ENDPOINT:
        shown = ", ".join(show_url(u) for u in asked) or "the well-known URLs"
        raise _unrevocable(
            record,
            f"the server publishes no metadata ({shown}), and {show_url(url)}, guessed from"
            f" the issuer, is not a revocation endpoint (HTTP {status})",
        )
    raise HttpError(req.label, response)


def _unrevocable(record: Record, why: str) -> NothingMade:
    """The refusal of a grant that could not be revoked: nothing is taken or asked for."""
    if record.get("grant") == "given":
        what = "reclaim does not take the token it was given (it stays as valid as it was)"
    else:
        what = "no token is asked for"
    return NothingMade(
        ProtocolError(
            f"{why}: a token there could not be revoked, so {what}; pass revocation_url (or"
            " OAUTH_REVOCATION_URL) if the server has a revocation endpoint"
        )
    )


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
    url = record.get("introspection_url")
    if not url:
        raise ProtocolError(
            "the server names no introspection endpoint, so whether a token is still active"
            " cannot be asked (pass introspection_url, or OAUTH_INTROSPECTION_URL, if it has one)"
        )
    form = {"token": record[field], "token_type_hint": field}
    response = yield from send(_oauth_request(record, url, form))
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
