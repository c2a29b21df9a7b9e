"""Stand-ins for OAuth 2.0 authorization servers: RFC 7009 revocation and RFC 7662 introspection
(:class:`OAuthServer`), and GitHub's OAuth-app endpoints (:class:`GithubServer`).

They stand in for Keycloak, Auth0, Okta... and for api.github.com, which the tests cannot reach.
Tokens live in memory: a test asks :meth:`OAuthServer.active` whether a token is still valid.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

from providers._server import JsonReply, JsonRequest, JsonStandIn

CLIENT_ID: Final = "reclaim-tests"
CLIENT_SECRET: Final = "client-secret-0a9b8c7d"
GITHUB_CLIENT_ID: Final = "Iv1.0123456789abcdef"
GITHUB_CLIENT_SECRET: Final = "gh-app-secret-7e6d5c4b"


@dataclasses.dataclass
class _Token:
    client_id: str
    kind: str  # "access_token" | "refresh_token"
    grant: str
    scope: str
    exp: int
    active: bool = True


class OAuthServer(JsonStandIn):
    """An authorization server: ``POST /token`` (client credentials), ``/revoke``, ``/introspect``.

    Clients authenticate with HTTP Basic (form-encoded id and secret, RFC 6749 section 2.3.1) or
    in the form body; a bad one gets 401 ``invalid_client``. Revocation answers 200 for unknown
    and revoked tokens too (RFC 7009 section 2.2); revoking a refresh token revokes the access
    tokens of its grant. ``access_revocable=False`` makes access tokens answer 400
    ``unsupported_token_type`` (section 2.2.1). Introspection answers ``{"active": false}`` and
    nothing else for a dead token (RFC 7662 section 2.2).
    """

    def __init__(
        self,
        clients: Mapping[str, str] | None = None,
        *,
        access_revocable: bool = True,
        refresh_on_client_credentials: bool = False,
        lifetime: int = 3600,
    ) -> None:
        super().__init__()
        self.clients = dict(clients or {CLIENT_ID: CLIENT_SECRET})
        self.access_revocable = access_revocable
        self.refresh_on_client_credentials = refresh_on_client_credentials
        self.lifetime = lifetime
        self.tokens: dict[str, _Token] = {}
        self.revoked: list[str] = []

    def issue(
        self, client_id: str = CLIENT_ID, *, refresh: bool = True, scope: str = "openid profile"
    ) -> tuple[str, str | None]:
        """Tokens of a new grant, as a user's login flow would get them: (access, refresh)."""
        with self.lock:
            grant = secrets.token_hex(4)
            access = self._mint(client_id, "access_token", grant, scope)
            fresh = self._mint(client_id, "refresh_token", grant, scope) if refresh else None
            return access, fresh

    def active(self, token: str) -> bool:
        with self.lock:
            found = self.tokens.get(token)
            return found is not None and found.active and found.exp > time.time()

    def live_tokens(self) -> list[str]:
        with self.lock:
            return [t for t in self.tokens if self.active(t)]

    def _mint(self, client_id: str, kind: str, grant: str, scope: str) -> str:
        prefix = "at" if kind == "access_token" else "rt"
        value = f"{prefix}-{secrets.token_urlsafe(24)}"
        self.tokens[value] = _Token(client_id, kind, grant, scope, int(time.time()) + self.lifetime)
        return value

    def _client(self, request: JsonRequest, form: Mapping[str, str]) -> str | None:
        basic = request.basic()
        if basic is not None:
            client_id, secret = basic
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id if client_id and self.clients.get(client_id) == secret else None

    def route(self, request: JsonRequest) -> JsonReply:  # noqa: PLR0911  (a router: a return per route)
        if request.method != "POST":
            return JsonReply(405, {"error": "invalid_request"})
        form = request.form()
        client_id = self._client(request, form)
        if client_id is None:
            return JsonReply(
                401,
                {"error": "invalid_client", "error_description": "client authentication failed"},
                {"WWW-Authenticate": 'Basic realm="stand-in"'},
            )
        if request.path == "/token":
            return self._token(client_id, form)
        if request.path in ("/revoke", "/introspect"):
            token = form.get("token")
            if not token:
                return JsonReply(400, {"error": "invalid_request", "error_description": "no token"})
            found = self.tokens.get(token)
            if request.path == "/introspect":
                return self._introspect(found)
            return self._revoke(client_id, token, found)
        return JsonReply(404, {"error": "not_found"})

    def _token(self, client_id: str, form: Mapping[str, str]) -> JsonReply:
        if form.get("grant_type") != "client_credentials":
            return JsonReply(400, {"error": "unsupported_grant_type"})
        grant = secrets.token_hex(4)
        scope = form.get("scope", "api")
        body: dict[str, Any] = {
            "access_token": self._mint(client_id, "access_token", grant, scope),
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "scope": scope,
        }
        if self.refresh_on_client_credentials:
            body["refresh_token"] = self._mint(client_id, "refresh_token", grant, scope)
        return JsonReply(200, body, {"Cache-Control": "no-store"})

    def _introspect(self, found: _Token | None) -> JsonReply:
        if found is None or not found.active or found.exp <= time.time():
            return JsonReply(200, {"active": False})
        return JsonReply(
            200,
            {
                "active": True,
                "client_id": found.client_id,
                "token_type": "Bearer" if found.kind == "access_token" else "refresh_token",
                "scope": found.scope,
                "exp": found.exp,
            },
        )

    def _revoke(self, client_id: str, token: str, found: _Token | None) -> JsonReply:
        if found is None or not found.active:
            return JsonReply(200)  # unknown or revoked already: 200 all the same (RFC 7009)
        if found.client_id != client_id:
            return JsonReply(400, {"error": "unauthorized_client"})
        if found.kind == "access_token" and not self.access_revocable:
            return JsonReply(400, {"error": "unsupported_token_type"})
        self.revoked.append(token)
        found.active = False
        if found.kind == "refresh_token":
            for other in self.tokens.values():
                if other.grant == found.grant:
                    other.active = False
        return JsonReply(200)


class GithubServer(JsonStandIn):
    """GitHub's OAuth-app token endpoints, HTTP Basic with the app's id and secret.

    ``POST /applications/{client_id}/token`` checks a token (200, or 404 once revoked);
    ``DELETE /applications/{client_id}/grant`` removes every token of that user for the app
    (204; 404 for a token it does not know); ``DELETE .../token`` removes one token. A body
    without ``access_token`` is 422. Bad app credentials are 401 here (what GitHub answers then
    is not documented). ``POST /login/oauth/access_token`` (the web flow's code exchange, on
    github.com for the real one) gives a user token of the app to another process, as
    :meth:`issue` does in this one: any code is taken (there is no browser login here), bad app
    credentials answer ``{"error": "incorrect_client_credentials"}`` with 200, as GitHub does.
    """

    def __init__(self, apps: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.apps = dict(apps or {GITHUB_CLIENT_ID: GITHUB_CLIENT_SECRET})
        self.tokens: dict[str, tuple[str, str]] = {}  # token -> (client_id, user)

    def issue(self, user: str = "octocat", client_id: str = GITHUB_CLIENT_ID) -> str:
        """A user token of the app, as the web flow would give it."""
        with self.lock:
            token = f"gho_{secrets.token_hex(18)}"
            self.tokens[token] = (client_id, user)
            return token

    def valid(self, token: str) -> bool:
        with self.lock:
            return token in self.tokens

    def route(self, request: JsonRequest) -> JsonReply:  # noqa: PLR0911  (a router: a return per route)
        if request.path == "/login/oauth/access_token" and request.method == "POST":
            return self._exchange(request)
        match = re.fullmatch(r"/applications/([^/]+)/(token|grant)", request.path)
        if match is None:
            return JsonReply(404, {"message": "Not Found"})
        client_id, what = match.groups()
        if request.basic() != (client_id, self.apps.get(client_id)):
            return JsonReply(401, {"message": "Bad credentials"})
        body = request.json()
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return JsonReply(422, {"message": "Validation Failed"})
        owner = self.tokens.get(token)
        if owner is None or owner[0] != client_id:
            return JsonReply(404, {"message": "Not Found"})
        if request.method == "POST" and what == "token":
            return JsonReply(
                200,
                {
                    "token": token,
                    "scopes": ["read:user"],
                    "app": {"client_id": client_id},
                    "user": {"login": owner[1]},
                    "expires_at": None,
                },
            )
        if request.method == "DELETE" and what == "token":
            del self.tokens[token]
            return JsonReply(204)
        if request.method == "DELETE" and what == "grant":
            for other, who in list(self.tokens.items()):
                if who == owner:
                    del self.tokens[other]
            return JsonReply(204)
        return JsonReply(404, {"message": "Not Found"})

    def _exchange(self, request: JsonRequest) -> JsonReply:
        form = request.form()
        client_id = form.get("client_id", "")
        if not client_id or self.apps.get(client_id) != form.get("client_secret"):
            return JsonReply(200, {"error": "incorrect_client_credentials"})
        if not form.get("code"):
            return JsonReply(200, {"error": "bad_verification_code"})
        token = self.issue(client_id=client_id)
        return JsonReply(200, {"access_token": token, "token_type": "bearer", "scope": "read:user"})
