"""Stand-ins for user-account APIs: SCIM 2.0 (RFC 7644) and a generic JSON REST users API.

They stand in for real identity providers (Okta, Entra ID, Keycloak...) and for an application's
own sign-up API, which the tests cannot reach. Each keeps its users in memory, so a test asks it
what still exists.
They are built on :class:`providers._server.JsonStandIn`.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

from providers._server import JsonReply, JsonRequest, JsonStandIn

SCIM_USER: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_ERROR: Final = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_LIST: Final = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SCIM_JSON: Final = "application/scim+json"
REST_TOKEN: Final = "rest-admin-token-1234"
SCIM_TOKEN: Final = "scim-bearer-token-5678"


# --- a generic REST users API ------------------------------------------------------------------


class RestUsers(JsonStandIn):
    """An application's users API at ``/api/users``, with a bearer token.

    ``POST /api/users`` (JSON, ``username`` required and unique) answers 201 with the user, or
    ``{"data": user}`` (``envelope``), or no body and a ``Location`` (``location_only``, as
    Keycloak does). ``GET /api/users?username=x`` lists matches (``ignore_filter``: lists
    everyone, as a careless API would). ``DELETE /api/users/{id}`` answers 204, then
    ``gone_status`` (404, or 410). ``hide_id``: creates, and answers with no id at all.
    """

    def __init__(
        self,
        token: str = REST_TOKEN,
        *,
        envelope: bool = False,
        location_only: bool = False,
        ignore_filter: bool = False,
        gone_status: int = 404,
        hide_id: bool = False,
    ) -> None:
        super().__init__()
        self.token = token
        self.envelope = envelope
        self.location_only = location_only
        self.ignore_filter = ignore_filter
        self.gone_status = gone_status
        self.hide_id = hide_id
        self.users: dict[str, dict[str, Any]] = {}
        self.passwords: dict[str, str] = {}
        self._ids = itertools.count(1)

    @property
    def collection(self) -> str:
        return f"{self.url}/api/users"

    def usernames(self) -> set[str]:
        with self.lock:
            return {u["username"] for u in self.users.values()}

    def add(self, username: str) -> str:
        """A user made behind reclaim's back (a stranger); its id."""
        with self.lock:
            user_id = f"u{next(self._ids)}"
            self.users[user_id] = {"id": user_id, "username": username}
            return user_id

    def route(self, request: JsonRequest) -> JsonReply:  # noqa: PLR0911  (a router: a return per route)
        if request.bearer() != self.token:
            return JsonReply(401, {"error": "unauthorized", "message": "bad or missing token"})
        if request.path == "/api/users":
            if request.method == "POST":
                return self._create(request)
            if request.method == "GET":
                return self._list(request)
        match = re.fullmatch(r"/api/users/([^/]+)", request.path)
        if match is None:
            return JsonReply(404, {"error": "not_found", "message": f"no route {request.path}"})
        user = self.users.get(match.group(1))
        if user is None:
            return JsonReply(self.gone_status, {"error": "not_found", "message": "no such user"})
        if request.method == "GET":
            return JsonReply(200, user)
        if request.method == "DELETE":
            del self.users[user["id"]]
            return JsonReply(204)
        return JsonReply(405, {"error": "method_not_allowed"})

    def _create(self, request: JsonRequest) -> JsonReply:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("username"), str):
            return JsonReply(400, {"error": "invalid", "message": "username is required"})
        if body["username"] in self.usernames():
            return JsonReply(409, {"error": "conflict", "message": "username taken"})
        user_id = f"u{next(self._ids)}"
        password = body.pop("password", None)
        if isinstance(password, str):
            self.passwords[user_id] = password
        user = {**body, "id": user_id}
        self.users[user_id] = user
        location = {"Location": f"{self.collection}/{user_id}"}
        if self.hide_id:  # a create answer a backend cannot read the id from
            return JsonReply(201, {"ok": True})
        if self.location_only:
            return JsonReply(201, None, location)
        return JsonReply(201, {"data": user} if self.envelope else user, location)

    def _list(self, request: JsonRequest) -> JsonReply:
        found = list(self.users.values())
        if not self.ignore_filter:
            for key, values in request.query.items():
                found = [u for u in found if str(u.get(key)) == values[0]]
        return JsonReply(200, {"items": found} if self.envelope else found)


# --- SCIM 2.0 --------------------------------------------------------------------------------

_FILTER: Final = re.compile(r'\s*userName\s+(eq|sw|co)\s+("(?:[^"\\]|\\.)*")\s*', re.IGNORECASE)


class ScimServer(JsonStandIn):
    """A SCIM 2.0 service provider at ``/scim/v2`` (RFC 7644), users only.

    Bearer auth; ``POST /Users`` (``application/scim+json``, core schema, unique ``userName``
    compared case-insensitively, 409 ``uniqueness`` otherwise) answers 201 with ``Location``;
    ``GET``/``DELETE /Users/{id}`` (204, then 404 for every operation, section 3.6); ``GET
    /Users?filter=userName eq|sw|co "..."`` with ``startIndex``/``count`` paging (at most
    ``page_size`` a page; ``operators`` limits the filter operators it supports, as many
    providers support only ``eq``). Errors carry the SCIM error schema, ``status`` as a string.
    """

    def __init__(
        self,
        token: str = SCIM_TOKEN,
        *,
        page_size: int = 50,
        operators: tuple[str, ...] = ("eq", "sw", "co"),
    ) -> None:
        super().__init__()
        self.token = token
        self.page_size = page_size
        self.operators = operators
        self.users: dict[str, dict[str, Any]] = {}
        self.passwords: dict[str, str] = {}
        self.created_bodies: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"{self.url}/scim/v2"

    def user_names(self) -> set[str]:
        with self.lock:
            return {u["userName"] for u in self.users.values()}

    def add(self, user_name: str) -> str:
        """A user provisioned behind reclaim's back; its id."""
        with self.lock:
            user_id = str(uuid.uuid4())
            self.users[user_id] = self._resource(user_id, {"userName": user_name})
            return user_id

    def _resource(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        resource = {k: v for k, v in body.items() if k != "password"}  # writeOnly, never returned
        resource.update(
            id=user_id,
            meta={"resourceType": "User", "location": f"{self.base_url}/Users/{user_id}"},
        )
        resource.setdefault("schemas", [SCIM_USER])
        return resource

    @staticmethod
    def _error(status: int, detail: str, scim_type: str | None = None) -> JsonReply:
        body: dict[str, Any] = {"schemas": [SCIM_ERROR], "status": str(status), "detail": detail}
        if scim_type:
            body["scimType"] = scim_type
        return JsonReply(status, body, content_type=SCIM_JSON)

    def route(self, request: JsonRequest) -> JsonReply:  # noqa: PLR0911  (a router: a return per route)
        if request.bearer() != self.token:
            return self._error(401, "Authorization failure")
        if request.path == "/scim/v2/Users":
            if request.method == "POST":
                return self._create(request)
            if request.method == "GET":
                return self._query(request)
        match = re.fullmatch(r"/scim/v2/Users/([^/]+)", request.path)
        if match is None:
            return self._error(404, f"no endpoint {request.path}")
        user = self.users.get(match.group(1))
        if user is None:
            return self._error(404, f"Resource {match.group(1)} not found")
        if request.method == "GET":
            return JsonReply(200, user, content_type=SCIM_JSON)
        if request.method == "DELETE":
            del self.users[user["id"]]
            return JsonReply(204)
        return self._error(405, "method not allowed")

    def _create(self, request: JsonRequest) -> JsonReply:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type not in (SCIM_JSON, "application/json"):
            return self._error(415, f"unsupported media type {content_type!r}")
        body = request.json()
        if not isinstance(body, dict) or SCIM_USER not in (body.get("schemas") or []):
            return self._error(400, "the core User schema is required", "invalidValue")
        user_name = body.get("userName")
        if not isinstance(user_name, str) or not user_name:
            return self._error(400, "userName is required", "invalidValue")
        if user_name.casefold() in {n.casefold() for n in self.user_names()}:
            return self._error(409, f"userName {user_name} is taken", "uniqueness")
        self.created_bodies.append(body)
        user_id = str(uuid.uuid4())
        if isinstance(body.get("password"), str):
            self.passwords[user_id] = body["password"]
        user = self._resource(user_id, body)
        self.users[user_id] = user
        location = {"Location": user["meta"]["location"]}
        return JsonReply(201, user, location, content_type=SCIM_JSON)

    def _query(self, request: JsonRequest) -> JsonReply:
        found = list(self.users.values())
        expression = request.arg("filter")
        if expression is not None:
            match = _FILTER.fullmatch(expression)
            if match is None or match.group(1).lower() not in self.operators:
                return self._error(400, f"unsupported filter {expression!r}", "invalidFilter")
            op, value = match.group(1).lower(), str(json.loads(match.group(2))).casefold()
            found = [u for u in found if _compare(op, str(u["userName"]).casefold(), value)]
        found.sort(key=lambda u: str(u["id"]))
        start = max(int(request.arg("startIndex") or 1), 1)
        count = min(int(request.arg("count") or self.page_size), self.page_size)
        page = found[start - 1 : start - 1 + count]
        body = {
            "schemas": [SCIM_LIST],
            "totalResults": len(found),
            "startIndex": start,
            "itemsPerPage": len(page),
            "Resources": page,
        }
        return JsonReply(200, body, content_type=SCIM_JSON)


def _compare(op: str, name: str, value: str) -> bool:
    if op == "eq":
        return name == value
    return name.startswith(value) if op == "sw" else value in name
