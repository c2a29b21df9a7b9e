"""A local stand-in for sms-activate's ``handler_api.php`` protocol (and its clones): it STANDS
IN for the real service, which CI cannot reach, and follows the protocol as public clients and
the hero-sms documentation describe it (``/work/shared/research/backends.md``).

One endpoint, ``/stubs/handler_api.php?api_key=..&action=..``, plain-text answers:
``getNumber`` -> ``ACCESS_NUMBER:<id>:<phone>``; ``getStatus`` -> ``STATUS_WAIT_CODE`` |
``STATUS_OK:<code>`` | ``STATUS_CANCEL``; ``setStatus`` with 8 (cancel) -> ``ACCESS_CANCEL``, or
``EARLY_CANCEL_DENIED`` while the activation is younger than ``min_cancel_age``, or (for an
activation that is over) the configurable ``second_cancel`` answer; 6 (finish) ->
``ACCESS_ACTIVATION`` once a code arrived; ``getActiveActivations`` -> JSON. A wrong key gets
``BAD_KEY``. With ``http_errors=True`` error words come with HTTP 400, as some clones send them.
:meth:`SmsActivateServer.deliver_sms` makes an SMS with a code arrive.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from typing import Any

from providers._server import RawReply, RawRequest, RawStandIn, text_reply

__all__ = ["SmsActivateServer"]

PATH = "/stubs/handler_api.php"


@dataclasses.dataclass
class _Activation:
    id: int
    phone: str
    service: str
    country: int
    started: float
    #: "wait", "ok" (a code arrived), "cancel" or "finish".
    state: str = "wait"
    code: str = ""
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "activationId": str(self.id),
            "serviceCode": self.service,
            "phoneNumber": self.phone,
            "activationCost": "12.50",
            "activationStatus": "2" if self.state == "ok" else "1",
            "smsCode": [self.code] if self.code else None,
            "smsText": [self.text] if self.text else None,
            "activationTime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started)),
            "discount": "0.00",
            "repeated": "0",
            "countryCode": str(self.country),
            "countryName": "Testland",
            "canGetAnotherSms": "1",
        }


class SmsActivateServer(RawStandIn):
    """The sms-activate stand-in.

    Args:
        min_cancel_age: seconds after purchase before a cancel is allowed.
        second_cancel: what a cancel of an activation that is over answers.
        http_errors: send error words with HTTP 400 (clones) instead of 200 (the original).
        services: the service codes it knows.
    """

    def __init__(
        self,
        *,
        min_cancel_age: float = 0.0,
        second_cancel: str = "ACCESS_CANCEL_ALREADY",
        http_errors: bool = False,
        services: tuple[str, ...] = ("ot", "tg", "wa"),
    ) -> None:
        super().__init__()
        self.api_key = secrets.token_hex(16)
        self.min_cancel_age = min_cancel_age
        self.second_cancel = second_cancel
        self.http_errors = http_errors
        self.services = services
        self.activations: dict[int, _Activation] = {}
        self._next_id = 635468000 + secrets.randbelow(1000)
        #: When set, getNumber answers this word instead of a number (NO_NUMBERS, NO_BALANCE).
        self.refuse_numbers: str | None = None

    @property
    def api_url(self) -> str:
        """The handler's URL."""
        return f"{self.url}{PATH}"

    # --- what tests ask and do -------------------------------------------------------------

    def active(self) -> dict[int, str]:
        """Activation id -> phone, for every activation still running."""
        with self.lock:
            return {a.id: a.phone for a in self.activations.values() if a.state in ("wait", "ok")}

    def state(self, activation_id: int | str) -> str:
        """One activation's state: wait, ok, cancel or finish."""
        with self.lock:
            return self.activations[int(activation_id)].state

    def rent(self, service: str = "ot", country: int = 0) -> int:
        """Start an activation as somebody else would (not through reclaim); returns its id."""
        with self.lock:
            return self._rent(service, country).id

    def cancel(self, activation_id: int | str) -> None:
        """Cancel an activation behind reclaim's back."""
        with self.lock:
            self.activations[int(activation_id)].state = "cancel"

    def age(self, seconds: float) -> None:
        """Make every activation ``seconds`` older (so that cancels are allowed)."""
        with self.lock:
            for activation in self.activations.values():
                activation.started -= seconds

    def deliver_sms(self, activation_id: int | str, text: str) -> str:
        """An SMS arrives for an activation; returns the code the provider reads from it."""
        with self.lock:
            activation = self.activations[int(activation_id)]
            match = re.search(r"\d{4,8}", text)
            activation.code = match.group(0) if match else text
            activation.text = text
            activation.state = "ok"
            return activation.code

    # --- the protocol ------------------------------------------------------------------------

    def _answer(self, word: str) -> RawReply:
        failed = word not in ("ACCESS_CANCEL", "ACCESS_ACTIVATION", "ACCESS_READY")
        failed = failed and not word.startswith(("ACCESS_NUMBER", "STATUS_", "ACCESS_RETRY"))
        return text_reply(400 if self.http_errors and failed else 200, word)

    def _rent(self, service: str, country: int) -> _Activation:
        self._next_id += 1
        phone = f"7999{secrets.randbelow(10**7):07d}"
        activation = _Activation(self._next_id, phone, service, country, time.time())
        self.activations[activation.id] = activation
        return activation

    def handle(self, request: RawRequest) -> RawReply:  # noqa: PLR0911  (a router: a return per route)
        if request.path != PATH:
            return text_reply(404, "Not Found")
        if request.arg("api_key") != self.api_key:
            return self._answer("BAD_KEY")
        action = request.arg("action")
        if action == "getNumber":
            if self.refuse_numbers:
                return self._answer(self.refuse_numbers)
            service = request.arg("service")
            if service not in self.services:
                return self._answer("BAD_SERVICE")
            activation = self._rent(service, int(request.arg("country", "0") or 0))
            return self._answer(f"ACCESS_NUMBER:{activation.id}:{activation.phone}")
        if action == "getActiveActivations":
            return self._active(request)
        if action not in ("getStatus", "setStatus"):
            return self._answer("BAD_ACTION")
        try:
            activation = self.activations[int(request.arg("id"))]
        except (KeyError, ValueError):
            return self._answer("NO_ACTIVATION")
        if action == "getStatus":
            return self._answer(
                {
                    "wait": "STATUS_WAIT_CODE",
                    "ok": f"STATUS_OK:{activation.code}",
                    "cancel": "STATUS_CANCEL",
                    "finish": f"STATUS_OK:{activation.code}",
                }[activation.state]
            )
        return self._set_status(activation, request.arg("status"))

    def _set_status(self, activation: _Activation, status: str) -> RawReply:  # noqa: PLR0911  (one return per answer)
        if status == "8":
            if activation.state in ("cancel", "finish"):
                return self._answer(self.second_cancel)
            if activation.state == "ok":
                return self._answer("BAD_STATUS")  # a used activation is finished, not cancelled
            if time.time() - activation.started < self.min_cancel_age:
                return self._answer("EARLY_CANCEL_DENIED")
            activation.state = "cancel"
            return self._answer("ACCESS_CANCEL")
        if status == "6":
            if activation.state != "ok":
                return self._answer("BAD_STATUS")
            activation.state = "finish"
            return self._answer("ACCESS_ACTIVATION")
        if status == "1":
            return self._answer("ACCESS_READY")
        if status == "3":
            return self._answer("ACCESS_RETRY_GET")
        return self._answer("BAD_STATUS")

    def _active(self, request: RawRequest) -> RawReply:
        running = [a for a in self.activations.values() if a.state in ("wait", "ok")]
        start = int(request.arg("start", "0") or 0)
        limit = int(request.arg("limit", "100") or 100)
        chosen = running[start : start + limit]
        if not running:
            body: dict[str, Any] = {"status": "error", "error": "NO_ACTIVATIONS"}
        else:
            body = {"status": "success", "activeActivations": [a.to_json() for a in chosen]}
        return text_reply(200, json.dumps(body), "application/json")
