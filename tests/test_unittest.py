"""reclaim.Fixture under unittest, testtools and the ``fixtures`` library (issue 16).

The real runners (``python -m unittest``, ``python -m testtools.run``) run a small generated test
module in a subprocess; what the tests acquired is checked on the filesystem and in the
registry afterwards, and the outcome by the runner's exit code and report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import reclaim
from conftest import CHILD_TIMEOUT, reclaim_cli, registry_is_empty, wait_until
from reclaim._registry import open_registry
from reclaim.backends.path import TempDir
from reclaim_test_backends import SECRET

#: The top of every generated module: each test records what it acquired in $SCRATCH/<id>.json
#: (checked by the outer test once the runner has ended).
HEADER = """
import asyncio, json, os, pathlib, sys, time, unittest
import fixtures, testtools
import reclaim
from reclaim.backends.path import TempDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

def record(test, *paths):
    for path in paths:
        assert pathlib.Path(path).is_dir(), path
    (SCRATCH / f"{test.id()}.json").write_text(json.dumps([str(p) for p in paths]))
"""


@pytest.fixture(autouse=True)
def _scratch_env(monkeypatch: pytest.MonkeyPatch, scratch: Path) -> None:
    monkeypatch.setenv("SCRATCH", str(scratch))
    monkeypatch.delenv("RECLAIM_WATCHDOG", raising=False)


def run_tests(
    tmp_path: Path, body: str, *runner: str, module: str = "test_generated"
) -> subprocess.CompletedProcess[str]:
    """Write ``body`` as a test module and run it with ``python -m RUNNER... module``."""
    (tmp_path / f"{module}.py").write_text(HEADER + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-m", *runner, module],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )


def report_of(output: str, test: str) -> str:
    """The section of a unittest-style report (``FAIL: ...`` up to the next rule) of ``test``."""
    sections = output.split("=" * 70)
    found = [s for s in sections if s.lstrip().split("\n")[0].endswith(f".{test}")]
    assert len(found) == 1, output
    return found[0]


def recorded(scratch: Path) -> dict[str, list[Path]]:
    """What each test said it acquired (test id -> paths)."""
    return {p.stem: [Path(x) for x in json.loads(p.read_text())] for p in scratch.glob("*.json")}


def on_disk(scratch: Path) -> list[str]:
    return sorted(p.name for p in scratch.iterdir() if p.suffix != ".json")


# --- python -m unittest ------------------------------------------------------------------------

UNITTEST = """
class WithEnterContext(unittest.TestCase):
    def setUp(self):
        self.fx = self.enterContext(reclaim.Fixture(self.id()))

    def test_enter_context(self):
        record(self, self.fx.acquire(TempDir(parent=SCRATCH)))


class WithAddCleanup(unittest.TestCase):
    def setUp(self):
        self.fx = reclaim.Fixture(self.id())
        self.fx.setUp()
        self.addCleanup(self.fx.cleanUp)

    def test_add_cleanup(self):
        record(self, self.fx.acquire(TempDir(parent=SCRATCH)))


class WithClassContext(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.shared = cls.enterClassContext(reclaim.Fixture("class")).acquire(
            TempDir(parent=SCRATCH, prefix="class-")
        )

    def test_class_context(self):
        record(self, self.shared)


class WithAsyncContext(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.fx = await self.enterAsyncContext(reclaim.Fixture(self.id()))

    async def test_enter_async_context(self):
        record(self, await self.fx.aacquire(TempDir(parent=SCRATCH)))


class WithFixturesLibrary(fixtures.TestWithFixtures):
    def test_use_fixture(self):
        fx = self.useFixture(reclaim.Fixture(self.id()))
        # and the other way round: a fixtures-library fixture composed into a reclaim one
        plain = fx.useFixture(fixtures.TempDir())
        record(self, fx.acquire(TempDir(parent=SCRATCH)))
        assert os.path.isdir(plain.path)
        (SCRATCH / "plain-tempdir.txt").write_text(plain.path)
"""


def test_unittest_runner_every_way_in(tmp_path: Path, registry_path: str, scratch: Path) -> None:
    """enterContext, setUp/addCleanup, enterClassContext, enterAsyncContext and the fixtures
    library's useFixture, under ``python -m unittest``: all pass, and everything is gone."""
    result = run_tests(tmp_path, UNITTEST, "unittest", "-v")
    assert result.returncode == 0, result.stderr
    assert "Ran 5 tests" in result.stderr
    assert result.stderr.rstrip().endswith("OK"), result.stderr
    seen = recorded(scratch)
    assert len(seen) == 5, seen
    assert all(not p.exists() for paths in seen.values() for p in paths)
    assert on_disk(scratch) == ["plain-tempdir.txt"]
    assert not os.path.exists((scratch / "plain-tempdir.txt").read_text())
    assert registry_is_empty(registry_path)


# --- python -m testtools.run -------------------------------------------------------------------

TESTTOOLS = '''
class HalfBuilt(reclaim.Fixture):
    """Acquires, then its set-up fails: the directory must go before the error is reported."""

    def setup(self):
        self.dir = self.acquire(TempDir(parent=SCRATCH, prefix="half-"))
        (SCRATCH / "half.json").write_text(json.dumps([str(self.dir)]))
        self.add_detail("server.log", lambda: "listening on 5432\\n")
        raise RuntimeError("migrations failed")


class Suite(testtools.TestCase):
    def test_passes(self):
        fx = self.useFixture(reclaim.Fixture("passes"))
        record(self, fx.acquire(TempDir(parent=SCRATCH)))

    def test_fails_after_acquiring(self):
        fx = self.useFixture(reclaim.Fixture("fails"))
        record(self, fx.acquire(TempDir(parent=SCRATCH, prefix="failing-")))
        self.fail("on purpose")

    def test_setup_fails_half_way(self):
        self.useFixture(HalfBuilt("half"))
'''


def test_testtools_runner_reports_details_and_cleans_up(
    tmp_path: Path, registry_path: str, scratch: Path
) -> None:
    result = run_tests(tmp_path, TESTTOOLS, "testtools.run")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Ran 3 tests" in out
    assert "FAILED (failures=2)" in out, out
    # The failing test's report carries what the fixture had acquired...
    fails = report_of(out, "test_fails_after_acquiring")
    assert "reclaim: {{{acquired path.tempdir" in fails, out
    assert "failing-rc_" in fails
    # ...and the failed set-up's: acquired, released (before the report), and its own detail.
    half = report_of(out, "test_setup_fails_half_way")
    assert "acquired path.tempdir" in half, half
    assert "released path.tempdir" in half, half
    assert "server.log: {{{listening on 5432}}}" in half, half
    assert "RuntimeError: migrations failed" in half
    assert len(recorded(scratch)) == 3  # the two tests' files and half.json
    assert all(not p.exists() for paths in recorded(scratch).values() for p in paths)
    assert on_disk(scratch) == []
    assert registry_is_empty(registry_path)


FAILED_RELEASE = """
from reclaim_test_backends import Flaky

class Suite(testtools.TestCase):
    def test_release_fails(self):
        fx = self.useFixture(reclaim.Fixture("flaky"))
        path = fx.acquire(Flaky(SCRATCH))
        pathlib.Path(str(path) + ".fail").write_text("")  # its release will fail
"""


def test_a_failed_release_reaches_the_report_and_stays(
    tmp_path: Path, registry_path: str, scratch: Path
) -> None:
    result = run_tests(tmp_path, FAILED_RELEASE, "testtools.run")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "FAILED (failures=1)" in out, out
    assert "releasing fixture 'flaky' failed" in out, out
    assert "test.flaky 'rc_" in out, out
    assert "could not be released" in out, out
    assert SECRET not in out
    reg = open_registry(registry_path)
    try:
        (entry,) = reg.resources()
    finally:
        reg.close()
    assert entry.state == "failed"
    for marker in scratch.glob("*.fail"):
        marker.unlink()
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 1
    assert on_disk(scratch) == []


HANGS = """
class Hangs(unittest.TestCase):
    def setUp(self):
        self.fx = self.enterContext(reclaim.Fixture(self.id()))

    def test_hangs(self):
        record(self, self.fx.acquire(TempDir(parent=SCRATCH)))
        (SCRATCH / "hanging").write_text("")
        time.sleep(600)
"""


def test_a_unittest_run_killed_mid_test_is_reclaimed(
    tmp_path: Path, registry_path: str, scratch: Path
) -> None:
    """SIGKILL of the runner in the middle of a test: no cleanup of unittest's runs, the
    watchdog releases what the test held."""
    (tmp_path / "test_hangs.py").write_text(HEADER + textwrap.dedent(HANGS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "unittest", "test_hangs"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (scratch / "hanging").exists() or proc.poll() is not None)
        assert proc.poll() is None, "the runner ended before the test hung"
        (held,) = next(iter(recorded(scratch).values()))
        assert held.is_dir()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)
        wait_until(lambda: not held.exists())
        wait_until(lambda: registry_is_empty(registry_path))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=CHILD_TIMEOUT)


# --- the protocol, in process --------------------------------------------------------------------


def test_clean_up_without_raising_returns_the_errors(registry_path: str, scratch: Path) -> None:
    fx = reclaim.Fixture("protocol")
    fx.setUp()
    path = fx.acquire(TempDir(parent=scratch))

    def broken() -> None:
        raise OSError("cleanup broke")

    fx.addCleanup(broken)
    errors = fx.cleanUp(raise_first=False)
    assert errors is not None
    assert [(t, str(e)) for t, e, _ in errors] == [(OSError, "cleanup broke")]
    assert not path.exists()
    assert fx.cleanUp() is None, "a second cleanUp is a no-op"


def test_reset_releases_and_sets_up_again(registry_path: str, scratch: Path) -> None:
    class Dir(reclaim.Fixture):
        def setup(self) -> None:
            self.path = self.acquire(TempDir(parent=scratch))

    fx = Dir("reset")
    fx.setUp()
    first = fx.path
    fx.reset()
    assert not first.exists()
    assert fx.path.is_dir()
    assert fx.path != first
    fx.cleanUp()
    assert not fx.path.exists()


def test_details_are_testtools_content(registry_path: str, scratch: Path) -> None:
    from testtools.content import text_content  # noqa: PLC0415

    with reclaim.Fixture("details") as fx:
        fx.acquire(TempDir(parent=scratch))
        fx.add_detail("log", lambda: "line\n")
        fx.add_detail("dump", b"\x00\x01")
        fx.addDetail("given", text_content("as given"))
        details = fx.getDetails()
        assert sorted(details) == ["dump", "given", "log", "reclaim"]
        assert details["log"].as_text() == "line\n"
        assert details["dump"].content_type.type == "application"
        assert b"".join(details["dump"].iter_bytes()) == b"\x00\x01"
        assert details["given"].as_text() == "as given"
        assert details["reclaim"].as_text().startswith("acquired path.tempdir")
        assert fx.get_details()["given"] == "as given"  # the plain face reads content too
    # The log detail is read when asked for: after the exit it says what was released.
    assert "released path.tempdir" in details["reclaim"].as_text()


def test_details_without_testtools_are_a_plain_dict(
    registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("testtools", "testtools.content", "testtools.content_type"):
        monkeypatch.setitem(sys.modules, name, None)  # `import testtools` raises ImportError
    with reclaim.Fixture("plain") as fx:
        fx.acquire(TempDir(parent=scratch))
        fx.add_detail("log", "text")
        details: dict[str, Any] = fx.getDetails()
    assert details["log"] == "text"
    assert details["reclaim"].startswith("acquired path.tempdir")


def test_use_fixture_takes_reclaim_fixtures_too(registry_path: str, scratch: Path) -> None:
    with reclaim.Fixture("outer") as outer:
        inner = outer.useFixture(reclaim.Fixture("inner"))
        path = inner.acquire(TempDir(parent=scratch))
        inner.add_detail("note", "from inner")
        assert outer.get_details() == {"note": "from inner"}
        assert sorted(outer.getDetails()) == ["note", "reclaim", "reclaim-1"]
    assert not path.exists()
