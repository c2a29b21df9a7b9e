"""A local stand-in for mailsac (https://mailsac.com/api): it STANDS IN for the real service,
which CI cannot reach, and follows mailsac's OpenAPI description.

Every call needs the ``Mailsac-Key`` header (or ``?_mailsacKey=``); 401 otherwise. Any address
receives mail without being created (a public inbox); ``POST /addresses/{email}`` reserves one
as a private address (400 when the caller owns it already or has no credits left, 401 when
another account owns it); ``DELETE /addresses/{email}`` gives it back (200; a second delete
answers 400 "Not currently owned by the current account, or already deleted."). Messages are
listed newest first, read as text (``/text/``) or HTML (``/dirty/``), deleted one by one by
anybody on a public inbox, or all at once (starred ones are kept) on an owned address.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from typing import Any

from providers._server import (
    RawReply,
    RawRequest,
    RawStandIn,
    empty_reply,
    json_reply,
    now_iso,
    text_reply,
)

__all__ = ["MailsacServer"]

NOT_OWNED = "Not currently owned by the current account, or already deleted."


@dataclasses.dataclass
class _Mail:
    id: str
    inbox: str
    sender: str
    subject: str
    text: str
    html: str
    received: str
    starred: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "inbox": self.inbox,
            "originalInbox": self.inbox,
            "from": [{"address": self.sender, "name": ""}],
            "to": [{"address": self.inbox, "name": ""}],
            "subject": self.subject,
            "received": self.received,
            "domain": self.inbox.partition("@")[2],
            "savedBy": "owner" if self.starred else None,
            "size": len(self.text) + len(self.html),
            "links": [],
        }


def _error(status: int, message: str) -> RawReply:
    return json_reply(status, {"message": message, "error": _REASONS.get(status, "Error")})


_REASONS = {400: "Bad RawRequest", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}


class MailsacServer(RawStandIn):
    """The mailsac stand-in.

    Args:
        api_keys: API key -> account name; the first is the one tests use.
        credits: how many private addresses accounts may still reserve.
    """

    def __init__(self, api_keys: dict[str, str] | None = None, *, credits: int = 100) -> None:
        super().__init__()
        self.api_keys = api_keys or {"k_" + secrets.token_hex(12): "reclaim-tests"}
        self.credits = credits
        #: address -> the account that reserved it.
        self.owners: dict[str, str] = {}
        self.mail: list[_Mail] = []

    @property
    def api_key(self) -> str:
        """The key of the tests' own account."""
        return next(iter(self.api_keys))

    @property
    def api_url(self) -> str:
        """Where the API lives: ``http://127.0.0.1:PORT/api``."""
        return f"{self.url}/api"

    # --- what tests ask and do -------------------------------------------------------------

    def deliver(
        self,
        address: str,
        *,
        subject: str,
        text: str = "",
        html: str = "",
        sender: str = "noreply@example.com",
        starred: bool = False,
    ) -> str:
        """A message arrives at ``address``; returns its id."""
        with self.lock:
            mail = _Mail(
                secrets.token_urlsafe(12), address, sender, subject, text, html, now_iso(), starred
            )
            self.mail.append(mail)
            return mail.id

    def messages(self, address: str) -> list[str]:
        """Ids of the messages at ``address``."""
        with self.lock:
            return [m.id for m in self.mail if m.inbox == address]

    def reserve(self, address: str, account: str) -> None:
        """``account`` (perhaps a stranger) reserves ``address``, not through reclaim."""
        with self.lock:
            self.owners[address] = account

    def unreserve(self, address: str) -> None:
        """Give an address back and drop its mail behind reclaim's back."""
        with self.lock:
            self.owners.pop(address, None)
            self.mail = [m for m in self.mail if m.inbox != address]

    # --- the protocol ------------------------------------------------------------------------

    def handle(self, request: RawRequest) -> RawReply:  # noqa: PLR0911  (a router: a return per route)
        key = request.headers.get("Mailsac-Key") or request.arg("_mailsacKey")
        account = self.api_keys.get(key)
        if account is None:
            return _error(401, "Not authorized. You may need to log in first.")
        parts = request.path.strip("/").split("/")
        if parts[:1] != ["api"]:
            return _error(404, "Not found")
        parts, method = parts[1:], request.method
        if parts == ["addresses"] and method == "GET":
            owned = [a for a, owner in self.owners.items() if owner == account]
            return json_reply(200, [self._address(a, account) for a in owned])
        if len(parts) >= 2 and parts[0] in ("text", "dirty") and len(parts) == 3:
            return self._body(account, parts[0], parts[1], parts[2])
        if len(parts) < 2 or parts[0] != "addresses":
            return _error(404, "Not found")
        address, rest = parts[1], parts[2:]
        owner = self.owners.get(address)
        if owner is not None and owner != account:
            return _error(401, "Owned by another account.")
        if not rest:
            return self._address_call(address, account, owner, request)
        if rest == ["message-count"] and method == "GET":
            count = sum(1 for m in self.mail if m.inbox == address)
            return json_reply(200, {"count": count, "inbox": address})
        if rest == ["messages"]:
            return self._messages(address, account, owner, request)
        if len(rest) == 2 and rest[0] == "messages":
            return self._message(address, rest[1], method)
        return _error(404, "Not found")

    def _address(self, address: str, account: str) -> dict[str, Any]:
        out: dict[str, Any] = {"_id": address, "info": "", "enabledws": False}
        if self.owners.get(address) == account:
            out.update(owner=account, created=now_iso(), updated=now_iso())
        return out

    def _address_call(  # noqa: PLR0911  (one return per answer of the protocol)
        self, address: str, account: str, owner: str | None, request: RawRequest
    ) -> RawReply:
        if request.method == "GET":
            return json_reply(200, self._address(address, account))
        if request.method == "POST":
            if owner == account:
                return _error(400, "Address is already reserved by the current account.")
            if self.credits <= 0:
                return _error(400, "Not enough private address credits.")
            self.credits -= 1
            self.owners[address] = account
            return json_reply(200, self._address(address, account))
        if request.method == "DELETE":
            if owner != account:
                return _error(400, NOT_OWNED)
            body = self._address(address, account)
            del self.owners[address]
            self.credits += 1
            if request.arg("deleteAddressMessages") == "true":
                self.mail = [m for m in self.mail if m.inbox != address]
            return json_reply(200, body)
        return _error(405, "Method not allowed")

    def _messages(
        self, address: str, account: str, owner: str | None, request: RawRequest
    ) -> RawReply:
        if request.method == "GET":
            limit = int(request.arg("limit", "10") or 10)
            found = [m for m in reversed(self.mail) if m.inbox == address][:limit]
            return json_reply(200, [m.to_json() for m in found])
        if request.method == "DELETE":
            if owner != account:
                return _error(401, "The address must be an owned address.")
            self.mail = [m for m in self.mail if m.inbox != address or m.starred]
            return empty_reply(204)
        return _error(405, "Method not allowed")

    def _message(self, address: str, message_id: str, method: str) -> RawReply:
        for mail in self.mail:
            if mail.inbox == address and mail.id == message_id:
                if method == "GET":
                    return json_reply(200, mail.to_json())
                if method == "DELETE":
                    self.mail.remove(mail)
                    return json_reply(
                        200, {"_id": mail.id, "inbox": address, "message": "Message was deleted."}
                    )
                return _error(405, "Method not allowed")
        return _error(404, "Message not found")

    def _body(self, account: str, form: str, address: str, message_id: str) -> RawReply:
        owner = self.owners.get(address)
        if owner is not None and owner != account:
            return _error(401, "Owned by another account.")
        for mail in self.mail:
            if mail.inbox == address and mail.id == message_id:
                if form == "text":
                    # An HTML-only message gets a plain text made from its HTML, as mailsac does.
                    return text_reply(200, mail.text or re.sub(r"<[^>]*>", " ", mail.html))
                return text_reply(200, mail.html or f"<p>{mail.text}</p>", "text/html")
        return _error(404, "Message not found")
