"""Every environment variable reclaim reads or sets: its name, its default and its meaning.

One place for each: the core reads its settings through :class:`Setting`, and the table in
docs/settings.md is tested against :data:`SETTINGS` (as is every ``RECLAIM_...`` name in the
source), so a variable cannot be added, renamed or given another default in one place only.
Backends read their own variables (listed here too, with ``owner``), because a backend imports
nothing of reclaim's core. Standard library only (and ``_duration``, which is too): the watchdog
imports this.
"""

from __future__ import annotations

import os
from typing import Final

from reclaim._duration import parse_duration

__all__ = [
    "BACKENDS",
    "DEFAULT_PYTEST_GRACE",
    "DEFAULT_SWEEP_GRACE",
    "HOST_ID",
    "LABEL",
    "LEASE",
    "PARENT_RUN",
    "PERSONA_EMAIL",
    "PERSONA_PHONE",
    "REGISTRY",
    "REQUIRE_SERVICES",
    "RESOURCE",
    "RUN",
    "SETTINGS",
    "WATCHDOG",
    "WATCHDOG_PIDFD",
    "WATCHDOG_REGISTRY",
    "WRITE_DELAY",
    "Setting",
    "default_location",
]


class Setting:
    """One environment variable.

    Args:
        name: its name.
        default: what an unset or empty variable means ("" when it has no default).
        meaning: what it does, in one sentence (the docs table shows it).
        owner: who reads it: "core", a backend's module, "tests"; or "set by reclaim" for a
            variable reclaim writes for others to read.
    """

    # A plain class, not a dataclass, which costs about 0.4 ms to define: the pytest plugin
    # imports this module in every pytest run of the environment (issue 15).
    __slots__ = ("default", "meaning", "name", "owner")

    def __init__(self, name: str, default: str, meaning: str, owner: str = "core") -> None:
        self.name = name
        self.default = default
        self.meaning = meaning
        self.owner = owner

    def __repr__(self) -> str:
        return f"Setting({self.name!r}, default={self.default!r})"

    def get(self) -> str:
        """Its value, stripped; the default when it is unset or empty."""
        return os.environ.get(self.name, "").strip() or self.default

    def seconds(self) -> float:
        """Its value as a duration (``90``, ``90s``, ``30m``...).

        Raises:
            ValueError: it is not a duration; the message names the variable.
        """
        try:
            return parse_duration(self.get())
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None


REGISTRY: Final = Setting(
    "RECLAIM_REGISTRY",
    "",
    "the registry: a file path, or a `postgresql://` URL for one registry shared by many"
    " machines; unset, `$XDG_STATE_HOME/reclaim/registry.sqlite3` (default `~/.local/state/...`)",
)
BACKENDS: Final = Setting(
    "RECLAIM_BACKENDS",
    "",
    "extra kinds that are not packaged, as `kind=module:Class` pairs separated by commas",
    owner="reclaim.backends",
)
WATCHDOG: Final = Setting(
    "RECLAIM_WATCHDOG", "1", "`0` starts no watchdog process (layer 3 is then off)"
)
WATCHDOG_PIDFD: Final = Setting(
    "RECLAIM_WATCHDOG_PIDFD",
    "1",
    "`0` makes the watchdog watch its owner through the pipe alone (to test that path)",
)
LEASE: Final = Setting(
    "RECLAIM_LEASE",
    "60s",
    "how long a run on another host (or in another pid namespace) counts as alive after its"
    " last lease renewal; owner and watchdog renew it every third of that",
)
WRITE_DELAY: Final = Setting(
    "RECLAIM_WRITE_DELAY",
    "1s",
    "how long at most a run's journal lines (a Fixture's plans and releases, appended to"
    " `<registry>-plans/<run id>`) and its acquired marks that add nothing to the plan wait"
    " before they are merged into the registry's tables; other processes' listings merge them"
    " first, `reclaim follow` sees their events that much later; `0` writes each in the"
    " tables at once",
)
HOST_ID: Final = Setting(
    "RECLAIM_HOST_ID",
    "",
    "for tests only: the host name this process claims, to play several hosts on one machine"
    " (runs of another host name are judged by their lease)",
)
WATCHDOG_REGISTRY: Final = Setting(
    "RECLAIM_WATCHDOG_REGISTRY",
    "",
    "in the watchdog's environment: the registry it opens (kept out of its command line,"
    " which every user can read)",
    owner="set by reclaim",
)
LABEL: Final = Setting(
    "RECLAIM_RUN_LABEL",
    "",
    "the label of this process's run in `reclaim status` (default: the program's name)",
)
PARENT_RUN: Final = Setting(
    "RECLAIM_PARENT_RUN", "", "the run this process's run belongs to (recorded as its parent)"
)
RUN: Final = Setting(
    "RECLAIM_RUN",
    "",
    "the run that `reclaim acquire` adds to: set by `reclaim run` for its command",
    owner="set by reclaim",
)
RESOURCE: Final = Setting(
    "RECLAIM_RESOURCE",
    "",
    "in a `process` resource's environment: its reclaim name, by which it is found and"
    " proved reclaim's",
    owner="set by reclaim",
)
PERSONA_EMAIL: Final = Setting(
    "RECLAIM_PERSONA_EMAIL", "mailtm", "the inbox provider of `Persona`: `mailtm` or `mailsac`"
)
PERSONA_PHONE: Final = Setting(
    "RECLAIM_PERSONA_PHONE", "twilio", "the phone provider of `Persona`: `twilio` or `smsactivate`"
)
PERSONA_TOKEN: Final = Setting(
    "RECLAIM_PERSONA_",
    "",
    "`RECLAIM_PERSONA_<NAME>_<PROVIDER>_TOKEN`: one test person's own token for a provider"
    " (release revokes it)",
)
ACCOUNT_URL: Final = Setting(
    "RECLAIM_ACCOUNT_URL", "", "the collection URL of `RestAccount`", owner="backends.accounts"
)
ACCOUNT_TOKEN: Final = Setting(
    "RECLAIM_ACCOUNT_TOKEN", "", "the API token of `RestAccount`", owner="backends.accounts"
)
MAILTM_URL: Final = Setting(
    "RECLAIM_MAILTM_URL", "https://api.mail.tm", "the mail.tm API", owner="backends.email"
)
MAILSAC_URL: Final = Setting(
    "RECLAIM_MAILSAC_URL", "https://mailsac.com/api", "the mailsac API", owner="backends.email"
)
TWILIO_URL: Final = Setting(
    "RECLAIM_TWILIO_URL", "https://api.twilio.com", "the Twilio API", owner="backends.phone"
)
SMS_ACTIVATE_URL: Final = Setting(
    "RECLAIM_SMS_ACTIVATE_URL",
    "https://api.sms-activate.org/stubs/handler_api.php",
    "the sms-activate API",
    owner="backends.phone",
)
REQUIRE_SERVICES: Final = Setting(
    "RECLAIM_REQUIRE_SERVICES",
    "",
    "`1` makes reclaim's own tests fail, not skip, when a server they need is not reachable"
    " (CI sets it)",
    owner="tests",
)

#: Every variable, in the order of the docs table.
SETTINGS: Final = (
    REGISTRY,
    BACKENDS,
    WATCHDOG,
    WATCHDOG_PIDFD,
    WATCHDOG_REGISTRY,
    LEASE,
    WRITE_DELAY,
    HOST_ID,
    LABEL,
    PARENT_RUN,
    RUN,
    RESOURCE,
    PERSONA_EMAIL,
    PERSONA_PHONE,
    PERSONA_TOKEN,
    ACCOUNT_URL,
    ACCOUNT_TOKEN,
    MAILTM_URL,
    MAILSAC_URL,
    TWILIO_URL,
    SMS_ACTIVATE_URL,
    REQUIRE_SERVICES,
)

#: The grace of `reclaim sweep` (seconds): a run that died younger may have its watchdog at work
#: still, and a sweep from cron has no hurry.
DEFAULT_SWEEP_GRACE: Final = 300.0
#: The grace of the pytest plugin's start-up sweep (seconds): shorter, because a developer
#: re-running a suite wants the last run's leftovers gone; on the same host a dead owner is
#: certain from its pid and start time, and its watchdog has had ten seconds.
DEFAULT_PYTEST_GRACE: Final = 10.0


def default_location() -> str:
    """The registry's location: ``$RECLAIM_REGISTRY``, else
    ``$XDG_STATE_HOME/reclaim/registry.sqlite3`` (by default under ``~/.local/state``). Here,
    not in the registry's package, so that the pytest plugin learns it without importing the
    registry: a suite that acquires nothing has none to open."""
    configured = REGISTRY.get()
    if configured:
        return configured
    state_home = os.environ.get("XDG_STATE_HOME", "").strip()
    base = state_home or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "reclaim", "registry.sqlite3")
