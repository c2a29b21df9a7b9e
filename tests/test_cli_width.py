"""A command line that reads well (issue 16): ``reclaim status`` at 80 columns, piped and on a
terminal; ``reclaim kinds``; ``reclaim run --strict``; ``sweep --leftovers`` when nobody could
ask the server; and the watchdog's order (healthy resources before already-failed ones).

Everything runs the real ``reclaim`` command in a subprocess; the terminal is a real
pseudo-terminal of 80 columns.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import CHILD_TIMEOUT, Spawner, kill, reclaim_cli, wait_until
from reclaim._registry import open_registry
from reclaim_test_backends import SECRET

# --- reclaim status at 80 columns ---------------------------------------------------------------

#: An error as long as drivers write them (the issue's wrapped over fourteen lines).
LONG_ERROR = (
    'OperationalError: connection to server at "127.0.0.1", port 5432 failed: FATAL:  remaining'
    " connection slots are reserved for non-replication superuser connections; the server"
    " closed the connection at /var/run/postgresql/.s.PGSQL.5432 after three attempts"
)

#: A process that journals resources of long kinds (as a dead run leaves them: one failed with
#: LONG_ERROR, one planned) and a long path, then dies without closing its run.
DEAD_RUN = f"""
import json, os, sys
from reclaim._run import current_run
from reclaim.backends.path import TempDir

run = current_run()
reg = run.registry
names = {{}}
for kind in ("postgres.schema", "rabbitmq.exchange"):
    name = run.next_name()
    rid = reg.plan(run.id, "fixture", kind, name, {{"name": name, "dsn": "postgresql://u@db/x"}})
    reg.mark_failed(rid, {LONG_ERROR!r}, attempts=3, actor="watchdog")
    names[kind] = name
deep = os.path.join(sys.argv[1], "a", "directory", "deep", "enough", "to", "overflow", "a", "row")
os.makedirs(deep)
backend = TempDir(parent=deep)
name = run.next_name()
rid = reg.plan(run.id, "fixture", backend.kind, name, backend.plan(name))
path, record = backend.acquire(name)
reg.mark_acquired(rid, record)
names["path.tempdir"] = str(path)
print(json.dumps({{"run": run.id, "names": names}}), flush=True)
os._exit(0)  # no clean exit: the run stays open, its owner dead
"""


@pytest.fixture
def dead_run(registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("RECLAIM_WATCHDOG", "0")  # nobody releases: status shows it all
    out = subprocess.run(
        [sys.executable, "-c", DEAD_RUN, str(scratch)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=True,
    )
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def _forget_all(registry_path: str) -> None:
    reg = open_registry(registry_path)
    try:
        for resource in reg.resources():
            if resource.kind != "path.tempdir":  # the others were never created
                reg.forget(resource.id, actor="test")
    finally:
        reg.close()


def test_status_piped_at_80_columns_elides_nothing_and_pads_nothing(
    dead_run: dict[str, Any], registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = reclaim_cli("status").stdout
    lines = out.splitlines()
    assert "…" not in out
    assert all(line == line.rstrip() for line in lines), "no padding after the last column"
    for kind, name in dead_run["names"].items():
        assert kind in out
        rows = [line for line in lines if name in line]
        assert len(rows) == 1, out
        assert kind in rows[0], rows[0]
    # The error is on a line of its own under its row, whole (piped output is for grep).
    errors = [line for line in lines if "error: " in line]
    assert errors == [f"      error: {LONG_ERROR}"] * 2, out
    assert not any(LONG_ERROR in line for line in lines if "failed (failed)" in line)
    _forget_all(registry_path)


def run_in_terminal(columns: int, *args: str) -> str:
    """``reclaim ARGS`` on a pseudo-terminal ``columns`` wide; what it wrote, colours removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reclaim", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        proc.wait(timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_status_on_an_80_column_terminal(dead_run: dict[str, Any], registry_path: str) -> None:
    out = run_in_terminal(80, "status")
    lines = out.splitlines()
    assert "…" not in out
    names = dead_run["names"].values()
    for line in lines:
        # Every line fits, but a name (or the registry's path) that is longer on its own than
        # the room left: it is never cut (the terminal wraps it), and stands alone on its line.
        if len(line) > 80:
            assert line.strip() in [*names, f"registry: {registry_path}"], line
    for kind, name in dead_run["names"].items():
        assert kind in out
        assert name in out, "whole, on one line"
    # The long error is wrapped at spaces under its row, and reads whole again.
    first = next(i for i, line in enumerate(lines) if line.startswith("      error: "))
    block = [lines[first]]
    for line in lines[first + 1 :]:
        if not line.startswith("        ") or "error: " in line:
            break
        block.append(line)
    assert len(block) > 1
    assert all(len(line) <= 80 for line in block)
    assert " ".join(line.strip() for line in block) == f"error: {LONG_ERROR}"
    _forget_all(registry_path)


# --- reclaim kinds -------------------------------------------------------------------------------


def test_kinds_lists_every_installed_kind_with_its_arguments(
    registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RECLAIM_BACKENDS", os.environ["RECLAIM_BACKENDS"] + ",test.missing=no_such_module:Kind"
    )
    data = json.loads(reclaim_cli("kinds", "--json").stdout)
    kinds = {k["kind"]: k for k in data["kinds"]}
    assert {"path.tempdir", "process", "postgres.schema", "test.flaky"} <= set(kinds)
    tempdir = kinds["path.tempdir"]
    assert tempdir["class"] == "reclaim.backends.path:TempDir"
    assert tempdir["module"] == "reclaim.backends.path"
    assert tempdir["source"] == "entry point"
    assert sorted(a["name"] for a in tempdir["arguments"]) == ["parent", "prefix"]
    assert not any(a["required"] for a in tempdir["arguments"])
    schema = kinds["postgres.schema"]
    assert schema["arguments"][0] == {
        "name": "dsn",
        "kind": "positional or keyword",
        "required": True,
        "default": None,
        "annotation": "str",
    }
    assert "postgresql" in schema["url_schemes"]
    flaky = kinds["test.flaky"]
    assert flaky["source"] == "RECLAIM_BACKENDS"
    assert {a["name"]: a["default"] for a in flaky["arguments"]} == {
        "directory": None,
        "token": "***",  # a secret field's default is never shown
    }
    missing = kinds["test.missing"]
    assert "no_such_module" in missing["error"]
    assert missing["arguments"] == []

    text = reclaim_cli("kinds").stdout
    assert SECRET not in text
    assert "path.tempdir  reclaim.backends.path:TempDir\n" in text
    assert "    dsn: str  (required)\n" in text
    assert "test.missing  no_such_module:Kind\n  cannot be used here: " in text


def test_acquire_help_points_to_kinds() -> None:
    assert "reclaim kinds" in reclaim_cli("acquire", "--help").stdout


# --- reclaim run --strict -------------------------------------------------------------------------

#: A backend whose release fails while ``<path>.stuck`` exists (its argument is a plain string,
#: as `reclaim acquire --json-args` passes it).
STUCK = """
import os
from reclaim.backends import Backend


class Stuck(Backend):
    kind = "test.stuck"

    def __init__(self, directory):
        self.directory = directory

    def plan(self, name):
        return {"name": name, "path": os.path.join(self.directory, name)}

    def acquire(self, name):
        record = self.plan(name)
        open(record["path"], "w").close()
        return record["path"], record

    @classmethod
    def release(cls, record):
        if os.path.exists(record["path"] + ".stuck"):
            raise PermissionError(f"{record['path']} is stuck")
        if os.path.exists(record["path"]):
            os.unlink(record["path"])

    @classmethod
    def exists(cls, record):
        return os.path.exists(record["path"])
"""


@pytest.fixture
def stuck(
    registry_path: str, tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The Stuck kind, importable by every process of the test (its module in tmp_path)."""
    (tmp_path / "stuck_backend.py").write_text(textwrap.dedent(STUCK))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ['PYTHONPATH']}")
    monkeypatch.setenv(
        "RECLAIM_BACKENDS", os.environ["RECLAIM_BACKENDS"] + ",test.stuck=stuck_backend:Stuck"
    )
    return scratch


def _acquire_stuck(scratch: Path) -> str:
    """The shell script a `reclaim run` runs: acquire a Stuck file, make its release fail."""
    args = json.dumps({"directory": str(scratch)})
    acquire = f"'{sys.executable}' -m reclaim acquire test.stuck --json-args '{args}'"
    return f'p=$({acquire}) && touch "$p.stuck"'


@pytest.mark.parametrize(("strict", "status"), [(False, 0), (True, 1)])
def test_run_strict_exits_non_zero_when_a_release_failed(
    stuck: Path, registry_path: str, strict: bool, status: int
) -> None:
    options = ["--strict"] if strict else []
    result = reclaim_cli(
        "run", *options, "--json", "--", "sh", "-c", _acquire_stuck(stuck), check=False
    )
    assert result.returncode == status, result.stderr
    assert "could not be released" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exit_code"] == 0, "the command itself succeeded"
    assert report["exit_status"] == status
    assert len(report["failed"]) == 1
    for marker in stuck.glob("*.stuck"):
        marker.unlink()
    assert json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)["released"] == 1
    assert list(stuck.iterdir()) == []


def test_run_strict_keeps_a_failed_commands_status(stuck: Path, registry_path: str) -> None:
    script = _acquire_stuck(stuck) + " && exit 7"
    result = reclaim_cli("run", "--strict", "--", "sh", "-c", script, check=False)
    assert result.returncode == 7
    for marker in stuck.glob("*.stuck"):
        marker.unlink()
    reclaim_cli("sweep", "--grace", "0")


# --- sweep --leftovers when nobody could ask the server ------------------------------------------


def test_sweep_leftovers_that_asks_nobody_exits_2(
    registry_path: str, tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg is hidden (as on a machine without the postgres extra): every kind that lists
    postgresql:// says "not asked", and the sweep fails instead of saying "would release 0"."""
    shadow = tmp_path / "shadow" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('psycopg is hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", f"{shadow.parent}{os.pathsep}{os.environ['PYTHONPATH']}")
    url = "postgresql://postgres@127.0.0.1:1/postgres"
    # Beside a URL that is asked (a directory): still a failure, and the JSON says which.
    result = reclaim_cli(
        "sweep", "--leftovers", url, "--leftovers", str(scratch), "--json", check=False
    )
    assert result.returncode == 2, result
    data = json.loads(result.stdout)
    assert data["not_asked"] == [url]
    problems = {p["kind"]: p for p in data["problems"]}
    assert "needs psycopg" in problems["postgres.schema"]["error"]
    assert problems["postgres.schema"]["fatal"] is False
    assert f"nobody asked the server at {url}" in result.stderr
    assert "Traceback" not in result.stderr


# --- the watchdog: healthy first, then what already failed ---------------------------------------

HOLDS_A_FAILED_ONE = """
import json, pathlib, sys, time
import reclaim
from reclaim_test_backends import Flaky, Tally

scratch = pathlib.Path(sys.argv[1])
outer = reclaim.Fixture("outer").__enter__()
first = outer.acquire(Tally(str(scratch)))
inner = reclaim.Fixture("inner").__enter__()
flaky = inner.acquire(Flaky(scratch))
pathlib.Path(str(flaky) + ".fail").write_text("")
try:
    inner.__exit__(None, None, None)  # fails: the entry stays, failed
except BaseExceptionGroup:
    pass
second = outer.acquire(Tally(str(scratch)))
print(json.dumps({"names": [first.name, flaky.name, second.name]}), flush=True)
time.sleep(600)
"""


def test_the_watchdog_releases_healthy_resources_before_failed_ones(
    spawn: Spawner, registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECLAIM_WATCHDOG", raising=False)
    proc, held = spawn(HOLDS_A_FAILED_ONE, str(scratch))
    first, flaky, second = held["names"]
    kill(proc)

    def reaped() -> list[tuple[str, str | None]]:
        reg = open_registry(registry_path)
        try:
            return [
                (e.event, e.name)
                for e in reg.events()
                if e.detail.get("by") == "watchdog" and e.event.startswith("resource.")
            ]
        finally:
            reg.close()

    wait_until(lambda: len(reaped()) == 3)
    assert reaped() == [
        ("resource.released", second),  # last in, first out among the healthy ones
        ("resource.released", first),
        ("resource.failed", flaky),  # then the one that had failed already (it fails again)
    ]
    for marker in scratch.glob("*.fail"):
        marker.unlink()
    assert json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)["released"] == 1
