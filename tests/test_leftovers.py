"""``reclaim sweep --leftovers URL``: the registry-less pass, run as a user runs it.

With temporary directories (``file://`` in a scratch directory) and with MariaDB databases (seen
through an account that sees only this test's databases, so nothing else on the server is at
stake) it proves: a dry run changes nothing; ``--yes`` releases exactly the old leftovers of
runs that are dead in the registry or unknown to it; a live run's leftovers and young ones are
kept; names that merely look like reclaim's are never touched, nor what a symlink points at; a
server that cannot be asked, or a release that fails, exits 1; a missing driver is reported and
is not fatal; passwords and secret record fields never reach the output.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pymysql
import pytest

from _services import require
from conftest import CHILD_TIMEOUT, reclaim_cli
from reclaim._identity import current_identity
from reclaim._leftovers import DEFAULT_OLDER_THAN, parse_duration, redact_url
from reclaim._registry import open_registry
from reclaim.backends import Backend, Leftover, Record, make_name
from reclaim.testing import dead_identity

DAY = 86400.0

#: The secret field of the Sticky backend's leftover: it must never be shown.
STICKY_TOKEN = "sticky-tok-5e1f00d"


class Sticky(Backend[str]):
    """A kind whose one leftover (at ``sticky://`` URLs) can never be released; its error quotes
    the record's secret token, as careless drivers do."""

    kind = "test.sticky"
    secret_fields = frozenset({"token"})
    url_schemes = ("sticky",)

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        created = float(int(time.time() - 3 * DAY))
        name = make_name("0badf00d", 1, now=created)
        yield Leftover({"name": name, "token": STICKY_TOKEN}, "0badf00d", created)

    @classmethod
    def release(cls, record: Record) -> None:
        raise PermissionError(f"cannot delete {record['name']} (token {record['token']})")

    @classmethod
    def exists(cls, record: Record) -> bool:
        return True


class Liar(Backend[str]):
    """A buggy kind that lists a directory without a reclaim name (at ``liar:///path``), and
    whose release would delete it."""

    kind = "test.liar"
    url_schemes = ("liar",)

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        path = urlsplit(target).path
        yield Leftover({"name": os.path.basename(path), "path": path}, "0badf00d", 0.0)

    @classmethod
    def release(cls, record: Record) -> None:
        shutil.rmtree(record["path"])

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.exists(record["path"])


def sweep_json(*args: str, code: int = 0) -> dict[str, Any]:
    result = reclaim_cli("sweep", *args, "--json", check=False)
    assert result.returncode == code, result
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def actions(data: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["action"] for item in data["leftovers"]}


@pytest.fixture
def runs(registry_path: str) -> dict[str, str]:
    """Run ids: one alive in the registry (this process), one dead in it, one it never knew."""
    ids = {
        "live": secrets.token_hex(4),
        "dead": secrets.token_hex(4),
        "unknown": secrets.token_hex(4),
    }
    reg = open_registry(registry_path)
    try:
        reg.open_run(ids["live"], current_identity(), label="live")
        reg.open_run(ids["dead"], dead_identity(), label="dead")
    finally:
        reg.close()
    return ids


# --- durations and flags -----------------------------------------------------------------------


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == DAY
    assert parse_duration("1w") == 7 * DAY
    assert parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    assert DEFAULT_OLDER_THAN == DAY
    for bad in ("", "h", "-1h", "2 hours", "1d2h", "1e3"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_url_redaction() -> None:
    assert redact_url("mysql://root:s3cret@db:3306/x") == "mysql://root:***@db:3306/x"
    assert redact_url("mysql://root@db:3306/x") == "mysql://root@db:3306/x"
    assert redact_url("/tmp/dir") == "/tmp/dir"


def test_misuse_is_a_clear_error(registry_path: str, scratch: Path) -> None:
    for args, message in [
        (("--yes",), "go with --leftovers"),
        (("--older-than", "1h"), "go with --leftovers"),
        (("--leftovers", str(scratch), "--grace", "0"), "use --older-than"),
        (("--leftovers", str(scratch), "--dry-run", "--yes"), "contradict"),
        (("--leftovers", "ftp://user:pw-s3cret@host/"), "no installed reclaim backend"),
        (("--leftovers", str(scratch), "--older-than", "soon"), "not a duration"),
    ]:
        result = reclaim_cli("sweep", *args, check=False)
        assert result.returncode == 2, result
        assert message in result.stderr
        assert "pw-s3cret" not in result.stderr + result.stdout


# --- temporary directories (file://) -------------------------------------------------------------


def test_directories_dry_run_then_yes(scratch: Path, tmp_path: Path, runs: dict[str, str]) -> None:
    old = time.time() - 2 * DAY
    dead = scratch / make_name(runs["dead"], 1, now=old)
    unknown = scratch / make_name(runs["unknown"], 1, now=old)
    live = scratch / make_name(runs["live"], 1, now=old)
    young = scratch / make_name(runs["unknown"], 2, now=time.time() - 60)
    foreign = [
        scratch / "rc_zzzz",
        scratch / f"rc_{runs['unknown']}_x",  # no sequence number
        scratch / "rc_notes",
        scratch / "keep",
    ]
    a_file = scratch / make_name(runs["unknown"], 3, now=old)  # a file, not a directory
    precious = tmp_path / "precious"
    link = scratch / make_name(runs["unknown"], 4, now=old)  # a symlink to a directory
    for d in (dead, unknown, live, young, *foreign, precious):
        d.mkdir()
        (d / "content").write_text("x")
    a_file.write_text("x")
    link.symlink_to(precious)
    before = sorted(p.name for p in scratch.rglob("*"))

    dry = sweep_json("--leftovers", f"file://{scratch}")
    assert actions(dry) == {
        dead.name: "release",
        unknown.name: "release",
        live.name: "keep-live",
        young.name: "keep-young",
    }
    runs_of = {item["name"]: item["run"] for item in dry["leftovers"]}
    assert runs_of[dead.name] == "dead"
    assert runs_of[unknown.name] == "unknown"
    assert dry["dry_run"] is True
    people = reclaim_cli("sweep", "--leftovers", str(scratch)).stdout
    assert "Would release 2; kept 1 of live runs, 1 younger than 1d." in people
    assert "--yes" in people
    assert sorted(p.name for p in scratch.rglob("*")) == before, "a dry run changes nothing"

    done = reclaim_cli("sweep", "--leftovers", f"file://{scratch}", "--yes").stdout
    assert "Released 2, failed 0; kept 1 of live runs, 1 younger than 1d." in done
    assert not dead.exists()
    assert not unknown.exists()
    for kept in (live, young, *foreign, a_file):
        assert kept.exists(), kept
    assert link.is_symlink()
    assert (precious / "content").exists()

    # A shorter --older-than reaches the young one; the live run's stays whatever its age.
    again = sweep_json("--leftovers", str(scratch), "--older-than", "30s", "--yes")
    assert actions(again) == {young.name: "released", live.name: "keep-live"}
    assert not young.exists()
    assert live.exists()

    reg = open_registry(os.environ["RECLAIM_REGISTRY"])
    try:
        logged = [e for e in reg.events() if e.event == "leftover.released"]
    finally:
        reg.close()
    assert sorted(str(e.name) for e in logged) == sorted([dead.name, unknown.name, young.name])
    assert {e.detail["by"] for e in logged} == {"sweep --leftovers"}


def test_without_a_registry_every_run_is_unknown(tmp_path: Path, scratch: Path) -> None:
    """The machine that wrote the registry is gone: nothing is alive, only age protects."""
    old = scratch / make_name(secrets.token_hex(4), 1, now=time.time() - 2 * DAY)
    old.mkdir()
    missing = str(tmp_path / "no-such" / "registry.sqlite3")
    result = reclaim_cli(
        "--registry", missing, "sweep", "--leftovers", str(scratch), "--yes", "--json"
    )
    data = json.loads(result.stdout)
    assert actions(data) == {old.name: "released"}
    assert data["leftovers"][0]["run"] == "unknown"
    assert not old.exists()
    assert not os.path.exists(missing), "listing does not create a registry"


def test_a_failed_release_exits_1_and_keeps_secrets(
    registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RECLAIM_BACKENDS", os.environ["RECLAIM_BACKENDS"] + ",test.sticky=test_leftovers:Sticky"
    )
    dry = reclaim_cli("sweep", "--leftovers", "sticky://here", "--json")
    assert STICKY_TOKEN not in dry.stdout, "secret record fields are redacted in --json"
    failed = sweep_json("--leftovers", "sticky://here", "--yes", code=1)
    (item,) = failed["leftovers"]
    assert item["action"] == "failed"
    assert "PermissionError: cannot delete" in item["error"]
    assert failed["failed"] == 1
    people = reclaim_cli("sweep", "--leftovers", "sticky://here", "--yes", check=False)
    assert people.returncode == 1
    assert "failed" in people.stdout
    assert "cannot delete" in people.stdout
    for text in (json.dumps(failed), people.stdout, people.stderr):
        assert STICKY_TOKEN not in text


def test_a_backend_that_lists_a_foreign_name_is_not_obeyed(
    registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RECLAIM_BACKENDS", os.environ["RECLAIM_BACKENDS"] + ",test.liar=test_leftovers:Liar"
    )
    precious = scratch / "precious"
    precious.mkdir()
    data = sweep_json("--leftovers", f"liar://{precious}", "--yes", code=1)
    assert data["leftovers"] == []
    (problem,) = [p for p in data["problems"] if p["kind"] == "test.liar"]
    assert "not a whole reclaim name" in problem["error"]
    assert precious.is_dir()


def test_a_missing_driver_is_reported_and_fails_the_pass(registry_path: str, scratch: Path) -> None:
    """The other server is still asked, but the exit status is 2: a cron job must not report
    success while one of its servers was never swept."""
    code = (
        "import sys\n"
        "sys.modules['pymysql'] = None\n"
        "sys.argv = ['reclaim', 'sweep', '--leftovers', 'mysql://root@127.0.0.1:1/',"
        " '--leftovers', sys.argv[1], '--json']\n"
        "from reclaim._cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(scratch)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, result
    assert json.loads(result.stdout)["not_asked"] == ["mysql://root@127.0.0.1:1/"]
    problems = json.loads(result.stdout)["problems"]
    (mysql,) = [p for p in problems if p["kind"] == "mysql.database"]
    assert "pip install 'reclaim[mysql]'" in mysql["error"]
    assert mysql["fatal"] is False


# --- MariaDB ---------------------------------------------------------------------------------


def _free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def test_a_server_that_cannot_be_asked_exits_1(registry_path: str) -> None:
    url = f"mysql://root:pw-s3cret@127.0.0.1:{_free_port()}/"
    data = sweep_json("--leftovers", url, code=1)
    (problem,) = [p for p in data["problems"] if p["kind"] == "mysql.database"]
    assert problem["fatal"] is True
    assert "unreachable" in problem["error"]
    assert data["urls"] == [url.replace("pw-s3cret", "***")]
    people = reclaim_cli("sweep", "--leftovers", url, check=False)
    assert people.returncode == 1
    for text in (json.dumps(data), people.stdout, people.stderr):
        assert "pw-s3cret" not in text


@pytest.fixture
def mysql_url() -> str:
    return require("mysql")


def _admin(url: str) -> pymysql.connections.Connection:
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
        connect_timeout=10,
    )


def _databases(url: str, names: list[str]) -> set[str]:
    with _admin(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN %s",
            (names,),
        )
        return {str(row[0]) for row in cur.fetchall()}


def test_mysql_databases_dry_run_then_yes(mysql_url: str, runs: dict[str, str]) -> None:
    old = time.time() - 2 * DAY
    dead = make_name(runs["dead"], 1, now=old)
    unknown = make_name(runs["unknown"], 1, now=old)
    live = make_name(runs["live"], 1, now=old)
    young = make_name(runs["unknown"], 2, now=time.time() - 60)
    foreign = [f"rc_{runs['unknown']}_zz", f"{unknown}_extra", f"rc_{runs['dead']}_ABC_1"]
    everything = [dead, unknown, live, young, *foreign]
    user, password = f"reclaim_t_{secrets.token_hex(4)}", f"pw@{secrets.token_hex(8)}"
    hosts = ("localhost", "127.0.0.1")
    try:
        with _admin(mysql_url) as conn, conn.cursor() as cur:
            for name in everything:
                cur.execute(f"CREATE DATABASE `{name}`")
            for host in hosts:
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
                # This account sees (and may drop) this test's databases only: whatever else
                # the server holds is out of the sweep's reach.
                for run_id in runs.values():
                    cur.execute(
                        f"GRANT ALL PRIVILEGES ON `rc\\_{run_id}\\_%%`.* TO %s@%s", (user, host)
                    )
        parts = urlsplit(mysql_url)
        url = f"mysql://{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port}/"

        dry = sweep_json("--leftovers", url)
        assert actions(dry) == {
            dead: "release",
            unknown: "release",
            live: "keep-live",
            young: "keep-young",
        }
        assert _databases(mysql_url, everything) == set(everything), "a dry run drops nothing"
        for item in dry["leftovers"]:
            assert item["record"]["password"] == "***"

        people = reclaim_cli("sweep", "--leftovers", url, "--yes")
        assert "Released 2, failed 0; kept 1 of live runs, 1 younger than 1d." in people.stdout
        assert _databases(mysql_url, everything) == {live, young, *foreign}
        for text in (json.dumps(dry), people.stdout, people.stderr):
            assert password not in text
            assert quote(password, safe="") not in text
    finally:
        with _admin(mysql_url) as conn, conn.cursor() as cur:
            for name in everything:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            for host in hosts:
                cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
