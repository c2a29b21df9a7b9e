"""A local stand-in for mail.tm (https://api.mail.tm), built on
:class:`providers._server.RawStandIn`.

These servers STAND IN for the real providers, which CI cannot reach: each follows its
provider's documented protocol (paths, auth, status codes, rate limits, the answer to a second
delete) as ``/work/shared/research/backends.md`` records it, and keeps its state in memory so a
test can ask it what still exists.

:class:`MailTmServer` follows the mail.tm API: ``GET /domains``, ``POST /accounts`` (201; 422
when the address is taken), ``POST /token`` (401 "Invalid credentials."), Bearer tokens on
everything else, ``DELETE /accounts/{id}`` (204; afterwards the account's tokens are refused with
401), ``GET /messages``, ``GET /messages/{id}``, and mail.tm's limit of 8 requests per second
(429 above it, with ``Retry-After``).
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import time
from collections.abc import Iterable
from typing import Any

from providers._server import (
    RawReply,
    RawRequest,
    RawStandIn,
    empty_reply,
    json_reply,
    now_iso,
)

__all__ = ["MailTmServer"]


# --- mail.tm ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Account:
    id: str
    address: str
    password: str
    created: str
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "@context": "/contexts/Account",
            "@id": f"/accounts/{self.id}",
            "@type": "Account",
            "id": self.id,
            "address": self.address,
            "quota": 40_000_000,
            "used": 0,
            "isDisabled": False,
            "isDeleted": False,
            "createdAt": self.created,
            "updatedAt": self.created,
        }


def _hydra_error(status: int, description: str) -> RawReply:
    return json_reply(
        status,
        {
            "@context": "/contexts/Error",
            "@type": "hydra:Error",
            "hydra:title": "An error occurred",
            "hydra:description": description,
        },
    )


def _violation(path: str, message: str) -> RawReply:
    return json_reply(
        422,
        {
            "@context": "/contexts/ConstraintViolationList",
            "@type": "ConstraintViolationList",
            "hydra:title": "An error occurred",
            "hydra:description": f"{path}: {message}",
            "violations": [{"propertyPath": path, "message": message}],
        },
    )


def _collection(kind: str, members: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return {
        "@context": f"/contexts/{kind}",
        "@id": f"/{kind.lower()}s",
        "@type": "hydra:Collection",
        "hydra:member": members,
        "hydra:totalItems": total,
    }


class MailTmServer(RawStandIn):
    """The mail.tm stand-in.

    Args:
        domains: the active public domains offered (an inactive one is always listed first,
            to prove clients pick an active one).
        rate: at most this many requests in any ``window`` seconds; more get 429 (mail.tm: 8
            per second). None: no limit.
    """

    PAGE = 30

    def __init__(
        self,
        *,
        domains: Iterable[str] = ("reclaim-test.example",),
        rate: int | None = 8,
        window: float = 1.0,
    ) -> None:
        super().__init__()
        self.domains = list(domains)
        self.rate = rate
        self.window = window
        self.accounts: dict[str, _Account] = {}
        self.tokens: dict[str, str] = {}
        self.deleted: set[str] = set()
        self._hits: collections.deque[float] = collections.deque()
        #: How many requests the rate limit refused.
        self.too_many = 0

    # --- what tests ask and do -------------------------------------------------------------

    def addresses(self) -> set[str]:
        """The addresses of every account that exists."""
        with self.lock:
            return {a.address for a in self.accounts.values()}

    def create_account(self, address: str, password: str) -> str:
        """Create an account as somebody else would (not through reclaim); returns its id."""
        with self.lock:
            account = _Account(secrets.token_hex(12), address, password, now_iso())
            self.accounts[account.id] = account
            return account.id

    def delete_account(self, address: str) -> None:
        """Delete an account behind reclaim's back."""
        with self.lock:
            for account in list(self.accounts.values()):
                if account.address == address:
                    del self.accounts[account.id]
                    self.deleted.add(account.id)

    def expire_tokens(self) -> None:
        """Every token issued so far stops working, as a JWT does when it expires."""
        with self.lock:
            self.tokens.clear()

    def deliver(
        self,
        address: str,
        *,
        subject: str,
        text: str = "",
        html: str = "",
        sender: str = "noreply@example.com",
    ) -> str:
        """Deliver a message to an account's inbox; returns the message id."""
        with self.lock:
            for account in self.accounts.values():
                if account.address == address:
                    message_id = secrets.token_hex(12)
                    account.messages.insert(
                        0,
                        {
                            "id": message_id,
                            "accountId": f"/accounts/{account.id}",
                            "msgid": f"<{message_id}@example.com>",
                            "from": {"address": sender, "name": ""},
                            "to": [{"address": address, "name": ""}],
                            "subject": subject,
                            "intro": text[:100],
                            "text": text,
                            "html": [html] if html else [],
                            "seen": False,
                            "isDeleted": False,
                            "hasAttachments": False,
                            "size": len(text) + len(html),
                            "createdAt": now_iso(),
                        },
                    )
                    return message_id
        raise KeyError(f"no mail.tm account {address}")

    # --- the protocol ------------------------------------------------------------------------

    def _limited(self) -> bool:
        if self.rate is None:
            return False
        now = time.monotonic()
        while self._hits and self._hits[0] <= now - self.window:
            self._hits.popleft()
        if len(self._hits) >= self.rate:
            self.too_many += 1
            return True
        self._hits.append(now)
        return False

    def handle(self, request: RawRequest) -> RawReply:  # noqa: PLR0911, PLR0912  (a router)
        if self._limited():
            return json_reply(
                429, {"code": 429, "message": "Too Many Requests"}, {"Retry-After": "1"}
            )
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts == ["domains"] and method == "GET":
            return self._domains()
        if parts == ["accounts"] and method == "POST":
            return self._create(request)
        if parts == ["token"] and method == "POST":
            return self._token(request)
        if parts[0] not in ("me", "accounts", "messages"):
            return _hydra_error(404, "Not Found")
        account = self._bearer(request)
        if isinstance(account, RawReply):
            return account
        if parts == ["me"] and method == "GET":
            return json_reply(200, account.to_json())
        if parts[0] == "accounts" and len(parts) == 2:
            if parts[1] not in self.accounts:
                return _hydra_error(404, "Not Found")
            if parts[1] != account.id:
                return _hydra_error(403, "Access Denied.")
            if method == "GET":
                return json_reply(200, account.to_json())
            if method == "DELETE":
                del self.accounts[account.id]
                self.deleted.add(account.id)
                return empty_reply(204)
            return _hydra_error(405, "Method Not Allowed")
        if parts == ["messages"] and method == "GET":
            return self._messages(account, request)
        if parts[0] == "messages" and len(parts) == 2:
            return self._message(account, parts[1], method)
        return _hydra_error(404, "Not Found")

    def _domains(self) -> RawReply:
        members = [
            {
                "@id": f"/domains/{n}",
                "@type": "Domain",
                "id": str(n),
                "domain": domain,
                "isActive": active,
                "isPrivate": False,
                "createdAt": "2024-01-01T00:00:00+00:00",
                "updatedAt": "2024-01-01T00:00:00+00:00",
            }
            for n, (domain, active) in enumerate(
                [("retired.example", False)] + [(d, True) for d in self.domains]
            )
        ]
        return json_reply(200, _collection("Domain", members, len(members)))

    def _create(self, request: RawRequest) -> RawReply:
        body = request.json()
        if not isinstance(body, dict) or "address" not in body or "password" not in body:
            return _hydra_error(400, "The payload is missing 'address' or 'password'.")
        address, password = str(body["address"]), str(body["password"])
        local, _, domain = address.partition("@")
        if len(local) < 3 or domain not in self.domains:
            return _violation("address", "This value is not valid.")
        if len(password) < 6:
            return _violation("password", "This value is too short.")
        if address in self.addresses():
            return _violation("address", "This value is already used.")
        account = _Account(secrets.token_hex(12), address, password, now_iso())
        self.accounts[account.id] = account
        return json_reply(201, account.to_json())

    def _token(self, request: RawRequest) -> RawReply:
        body = request.json()
        if isinstance(body, dict):
            for account in self.accounts.values():
                if account.address == body.get("address") and account.password == body.get(
                    "password"
                ):
                    token = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(24)
                    self.tokens[token] = account.id
                    return json_reply(200, {"id": account.id, "token": token})
        return json_reply(401, {"code": 401, "message": "Invalid credentials."})

    def _bearer(self, request: RawRequest) -> _Account | RawReply:
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Bearer "):
            return json_reply(401, {"code": 401, "message": "JWT Token not found"})
        account_id = self.tokens.get(header.removeprefix("Bearer "))
        if account_id is None:
            return json_reply(401, {"code": 401, "message": "Expired JWT Token"})
        account = self.accounts.get(account_id)
        if account is None:
            return json_reply(401, {"code": 401, "message": "This account no longer exists."})
        return account

    def _messages(self, account: _Account, request: RawRequest) -> RawReply:
        page = max(1, int(request.arg("page", "1") or 1))
        chosen = account.messages[(page - 1) * self.PAGE : page * self.PAGE]
        summaries = [
            {k: v for k, v in m.items() if k not in ("text", "html", "to")} for m in chosen
        ]
        return json_reply(200, _collection("Message", summaries, len(account.messages)))

    def _message(self, account: _Account, message_id: str, method: str) -> RawReply:
        for message in account.messages:
            if message["id"] == message_id:
                if method == "GET":
                    return json_reply(200, {k: v for k, v in message.items() if k != "intro"})
                if method == "DELETE":
                    account.messages.remove(message)
                    return empty_reply(204)
                return _hydra_error(405, "Method Not Allowed")
        return _hydra_error(404, "Not Found")
