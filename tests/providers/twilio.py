"""A local stand-in for Twilio's phone-number and message API (https://api.twilio.com): it
STANDS IN for the real service, which CI cannot reach, and follows Twilio's OpenAPI description
(``twilio_api_v2010.yaml``).

HTTP Basic auth with AccountSid:AuthToken (401, code 20003, otherwise). Under
``/2010-04-01/Accounts/{AccountSid}``: ``GET AvailablePhoneNumbers/{CC}/{Type}.json``, ``POST
IncomingPhoneNumbers.json`` (form-encoded ``PhoneNumber`` or ``AreaCode``, ``FriendlyName``;
201; 400 code 21422 when the number is not available), ``GET IncomingPhoneNumbers.json``
(filters ``FriendlyName``, ``PhoneNumber``; pages with ``next_page_uri``), ``GET`` and
``DELETE IncomingPhoneNumbers/{Sid}.json`` (204; 404 code 20404 once gone) and ``GET
Messages.json?To=``. :meth:`TwilioServer.deliver_sms` makes an SMS arrive.
"""

from __future__ import annotations

import base64
import email.utils
import secrets
from typing import Any
from urllib.parse import urlencode

from providers._server import RawReply, RawRequest, RawStandIn, empty_reply, json_reply

__all__ = ["TwilioServer"]

API = "/2010-04-01"


def _error(status: int, code: int, message: str) -> RawReply:
    return json_reply(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
    )


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class TwilioServer(RawStandIn):
    """The Twilio stand-in.

    Args:
        available: numbers the account can buy (E.164).
        page_size_limit: the most numbers one page lists, whatever PageSize asks (to make
            paging happen in tests).
    """

    def __init__(self, available: list[str] | None = None, *, page_size_limit: int = 1000) -> None:
        super().__init__()
        self.account_sid = _sid("AC")
        self.auth_token = secrets.token_hex(16)
        self.available = list(available or [f"+1500555{n:04d}" for n in range(6, 6 + 50)])
        self.page_size_limit = page_size_limit
        #: sid -> the incoming phone number resource.
        self.numbers: dict[str, dict[str, Any]] = {}
        self.sms: list[dict[str, Any]] = []

    # --- what tests ask and do -------------------------------------------------------------

    def owned(self) -> dict[str, str]:
        """FriendlyName -> number, for every number the account holds."""
        with self.lock:
            return {n["friendly_name"]: n["phone_number"] for n in self.numbers.values()}

    def buy(self, number: str, friendly_name: str) -> str:
        """Buy a number as somebody else would (not through reclaim); returns its sid."""
        with self.lock:
            return self._buy(number, friendly_name)

    def release_number(self, sid: str) -> None:
        """Release a number behind reclaim's back."""
        with self.lock:
            number = self.numbers.pop(sid)
            self.available.append(number["phone_number"])

    def deliver_sms(self, to: str, body: str, sender: str = "+15017122661") -> str:
        """An SMS arrives at one of the account's numbers; returns its sid."""
        with self.lock:
            if to not in {n["phone_number"] for n in self.numbers.values()}:
                raise KeyError(f"the account holds no number {to}")
            sid = _sid("SM")
            self.sms.append(
                {
                    "sid": sid,
                    "account_sid": self.account_sid,
                    "from": sender,
                    "to": to,
                    "body": body,
                    "direction": "inbound",
                    "status": "received",
                    "num_segments": "1",
                    "date_created": email.utils.formatdate(usegmt=False),
                }
            )
            return sid

    # --- the protocol ------------------------------------------------------------------------

    def _authorized(self, request: RawRequest) -> bool:
        header = request.headers.get("Authorization") or ""
        if not header.startswith("Basic "):
            return False
        try:
            pair = base64.b64decode(header.removeprefix("Basic ")).decode()
        except ValueError:
            return False
        return pair == f"{self.account_sid}:{self.auth_token}"

    def handle(self, request: RawRequest) -> RawReply:  # noqa: PLR0911  (a router: a return per route)
        if not self._authorized(request):
            return _error(401, 20003, "Authentication Error - invalid username")
        root = f"{API}/Accounts/{self.account_sid}/"
        if not request.path.startswith(root):
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        rest, method = request.path.removeprefix(root), request.method
        parts = rest.split("/")
        if parts[0] == "AvailablePhoneNumbers" and len(parts) == 3 and method == "GET":
            return self._search(request, parts[1], parts[2])
        if rest == "IncomingPhoneNumbers.json":
            if method == "POST":
                return self._purchase(request)
            if method == "GET":
                return self._list(request)
        if parts[0] == "IncomingPhoneNumbers" and len(parts) == 2 and parts[1].endswith(".json"):
            sid = parts[1].removesuffix(".json")
            number = self.numbers.get(sid)
            if number is None:
                return _error(404, 20404, f"The requested resource {request.path} was not found")
            if method == "GET":
                return json_reply(200, number)
            if method == "DELETE":
                self.release_number(sid)
                return empty_reply(204)
        if rest == "Messages.json" and method == "GET":
            to = request.arg("To")
            found = [m for m in reversed(self.sms) if not to or m["to"] == to]
            return json_reply(200, {"messages": found, "next_page_uri": None, "page": 0})
        return _error(404, 20404, f"The requested resource {request.path} was not found")

    def _search(self, request: RawRequest, country: str, kind: str) -> RawReply:
        if country != "US" or kind not in ("Local.json", "Mobile.json"):
            return json_reply(200, {"available_phone_numbers": [], "uri": request.path})
        area = request.arg("AreaCode")
        taken = {n["phone_number"] for n in self.numbers.values()}
        offered = [
            {"phone_number": n, "friendly_name": n, "iso_country": "US", "capabilities": {}}
            for n in self.available
            if n not in taken and (not area or n.startswith(f"+1{area}"))
        ][: int(request.arg("PageSize", "20") or 20)]
        return json_reply(200, {"available_phone_numbers": offered, "uri": request.path})

    def _buy(self, number: str, friendly_name: str) -> str:
        sid = _sid("PN")
        self.available.remove(number)
        self.numbers[sid] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "friendly_name": friendly_name,
            "phone_number": number,
            "date_created": email.utils.formatdate(usegmt=False),
            "capabilities": {"sms": True, "voice": True, "mms": False},
            "uri": f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json",
        }
        return sid

    def _purchase(self, request: RawRequest) -> RawReply:
        number, area = request.arg("PhoneNumber"), request.arg("AreaCode")
        if not number and area:
            number = next((n for n in self.available if n.startswith(f"+1{area}")), "")
            if not number:
                return _error(400, 21452, f"No phone numbers found in area code {area}")
        if not number:
            return _error(400, 21450, "PhoneNumber or AreaCode is required")
        if number not in self.available:
            return _error(400, 21422, f"PhoneNumber {number} is not available")
        sid = self._buy(number, request.arg("FriendlyName") or number)
        return json_reply(201, self.numbers[sid])

    def _list(self, request: RawRequest) -> RawReply:
        name, number = request.arg("FriendlyName"), request.arg("PhoneNumber")
        found = [
            n
            for n in self.numbers.values()
            if (not name or n["friendly_name"] == name)
            and (not number or n["phone_number"] == number)
        ]
        size = min(int(request.arg("PageSize", "50") or 50), self.page_size_limit)
        page = int(request.arg("Page", "0") or 0)
        chosen = found[page * size : (page + 1) * size]
        following = None
        if (page + 1) * size < len(found):
            query = {"PageSize": str(size), "Page": str(page + 1)}
            query.update({k: v for k, v in (("FriendlyName", name), ("PhoneNumber", number)) if v})
            following = f"{API}/Accounts/{self.account_sid}/IncomingPhoneNumbers.json?" + urlencode(
                query
            )
        return json_reply(
            200,
            {
                "incoming_phone_numbers": chosen,
                "next_page_uri": following,
                "page": page,
                "page_size": size,
            },
        )
