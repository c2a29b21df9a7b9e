"""One list of settings (issue 12): docs/settings.md, reclaim._settings and every RECLAIM_...
name in the source agree, as do the defaults that backends keep beside their code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reclaim import _settings as settings
from reclaim.backends import email, phone

ROOT = Path(__file__).resolve().parent.parent


def _table() -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for line in (ROOT / "docs" / "settings.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`RECLAIM_"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2], cells[3])
    return rows


def test_the_docs_table_is_the_module() -> None:
    table = _table()
    assert list(table) == [s.name for s in settings.SETTINGS]
    for s in settings.SETTINGS:
        assert table[s.name] == (s.default, s.meaning, s.owner), s.name


def test_every_reclaim_variable_in_the_source_is_a_setting() -> None:
    names = {s.name for s in settings.SETTINGS}
    found: dict[str, str] = {}
    for path in (ROOT / "src" / "reclaim").rglob("*.py"):
        for name in re.findall(r"RECLAIM_[A-Z0-9][A-Z0-9_]*", path.read_text()):
            found.setdefault(name, str(path.relative_to(ROOT)))
    unknown = {n: p for n, p in found.items() if n not in names}
    assert not unknown, f"RECLAIM_ names not in reclaim._settings: {unknown}"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        (settings.MAILTM_URL, email.MAILTM_URL),
        (settings.MAILSAC_URL, email.MAILSAC_URL),
        (settings.TWILIO_URL, phone.TWILIO_URL),
        (settings.SMS_ACTIVATE_URL, phone.SMS_ACTIVATE_URL),
    ],
)
def test_backend_defaults_match(setting: settings.Setting, value: str) -> None:
    assert setting.default == value


def test_get_strips_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECLAIM_PERSONA_EMAIL", "  mailsac ")
    assert settings.PERSONA_EMAIL.get() == "mailsac"
    monkeypatch.setenv("RECLAIM_PERSONA_EMAIL", "")
    assert settings.PERSONA_EMAIL.get() == "mailtm"
