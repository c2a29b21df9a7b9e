"""The pytest plugin, black-box: real pytest sessions in subprocesses (``pytester``), real
SIGKILLs of the session, of its watchdog and of one xdist worker; what is left is checked on the
filesystem and in the registry, never in the plugin's own counters alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CHILD_TIMEOUT, alive, reclaim_cli, registry_exists, wait_until
from reclaim._registry import open_registry
from reclaim_test_backends import SECRET

INI = """
[pytest]
reclaim_grace = 0
asyncio_default_fixture_loop_scope = function
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, registry_path: str, scratch: Path) -> pytest.Pytester:
    """A pytest project whose tests put what they acquire under ``$SCRATCH``."""
    pytester.makeini(INI)
    return pytester


@pytest.fixture(autouse=True)
def _scratch_env(monkeypatch: pytest.MonkeyPatch, scratch: Path) -> None:
    monkeypatch.setenv("SCRATCH", str(scratch))
    # The inner sessions are short; their release paths are what is under test.
    monkeypatch.delenv("RECLAIM_WATCHDOG", raising=False)


def leftovers(scratch: Path) -> list[str]:
    return sorted(p.name for p in scratch.iterdir() if not p.name.endswith(".json"))


def held(registry_path: str) -> list[Any]:
    if not registry_exists(registry_path):
        return []
    reg = open_registry(registry_path)
    try:
        return reg.resources()
    finally:
        reg.close()


def summary_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("reclaim: ") and "acquired" in ln]
    assert lines, f"no reclaim summary in:\n{output}"
    return lines[0]


# --- fixtures of every scope ---------------------------------------------------------------

SCOPES = """
import os, pathlib
import pytest
from reclaim.backends.path import TempDir
from reclaim.pytest_plugin import reclaim_fixture

SCRATCH = pathlib.Path(os.environ["SCRATCH"])
reclaim_module = reclaim_fixture("module")
per_class = reclaim_fixture("class", name="per_class")
seen = {}

@pytest.fixture(scope="session")
def session_dir(reclaim_session):
    return reclaim_session.acquire(TempDir(parent=SCRATCH, prefix="session-"))

def test_first(reclaim, reclaim_module, session_dir):
    seen["function"] = reclaim.acquire(TempDir(parent=SCRATCH, prefix="function-"))
    seen["module"] = reclaim_module.acquire(TempDir(parent=SCRATCH, prefix="module-"))
    seen["session"] = session_dir

def test_second(reclaim, reclaim_module, session_dir):
    assert not seen["function"].exists(), "the function-scoped dir went at its test's teardown"
    assert seen["module"].is_dir() and seen["session"] is session_dir and session_dir.is_dir()

class TestClass:
    def test_a(self, per_class):
        seen["class"] = per_class.acquire(TempDir(parent=SCRATCH, prefix="class-"))
    def test_b(self, per_class):
        assert seen["class"].is_dir()

def test_after_class():
    assert not seen["class"].exists()
"""


def test_every_scope_releases_at_its_teardown(
    suite: pytest.Pytester, scratch: Path, registry_path: str
) -> None:
    suite.makepyfile(test_scopes=SCOPES)
    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=5)
    assert summary_line(result.stdout.str()) == (
        "reclaim: 4 acquired, 4 released, 0 failed, 0 reclaimed from earlier runs"
    )
    assert leftovers(scratch) == []
    assert held(registry_path) == []


def test_a_suite_that_acquires_nothing_creates_nothing(
    pytester: pytest.Pytester, registry_path: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile("def test_plain(): pass\n")
    # What of reclaim the session imported, once its last hook (the summary) has run.
    pytester.makeconftest(
        "import json, sys\n"
        "def pytest_unconfigure(config):\n"
        "    names = sorted(m for m in sys.modules if m.split('.')[0] == 'reclaim')\n"
        "    print('reclaim modules: ' + json.dumps(names))\n"
    )
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["plugins: *reclaim-*"])  # loaded through its entry point
    assert "reclaim:" not in result.stdout.str()
    assert not registry_exists(registry_path), "no registry is created when nothing is acquired"
    if "://" in registry_path:
        return  # a shared registry is opened to learn whether its tables exist
    # Nor is a registry file's code imported: the plugin costs such a suite its options only.
    line = next(ln for ln in result.stdout.lines if ln.startswith("reclaim modules: "))
    imported = json.loads(line.removeprefix("reclaim modules: "))
    assert imported == [
        "reclaim",
        "reclaim._duration",
        "reclaim._settings",
        "reclaim.pytest_plugin",
    ]


def test_reclaims_own_modules_load_without_assertion_rewriting(
    suite: pytest.Pytester, scratch: Path
) -> None:
    """pytest marks a plugin's whole package for assertion rewriting; the plugin keeps only
    ``reclaim.testing`` (the kits' asserts are for users), and the rest loads as Python loads
    it."""
    suite.makepyfile(
        """
import os, sys
from reclaim.backends.path import TempDir

def test_loaders(reclaim):
    reclaim.acquire(TempDir(parent=os.environ["SCRATCH"]))
    import reclaim.testing
    for name in ("reclaim._fixture", "reclaim._run", "reclaim.testing"):
        print("loader", name, type(sys.modules[name].__loader__).__name__)
"""
    )
    result = suite.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    loaders = dict(re.findall(r"loader (reclaim\S*) (\w+)", result.stdout.str()))
    assert loaders == {
        "reclaim._fixture": "SourceFileLoader",
        "reclaim._run": "SourceFileLoader",
        "reclaim.testing": "AssertionRewritingHook",
    }
    assert leftovers(scratch) == []


def test_the_session_pattern_shared_database_cheap_per_test_cleanup(
    suite: pytest.Pytester, scratch: Path
) -> None:
    """The documented pattern: one expensive thing per session, a cheap isolated part per test
    (here a directory per session and a sub-directory per test, as a schema per test would be)."""
    suite.makeconftest(
        """
import os, pathlib
import pytest
from reclaim.backends.path import TempDir

@pytest.fixture(scope="session")
def database(reclaim_session):
    return reclaim_session.acquire(TempDir(parent=os.environ["SCRATCH"], prefix="db-"))

@pytest.fixture
def schema(reclaim, database):
    return reclaim.acquire(TempDir(parent=database, prefix="schema-"))
"""
    )
    suite.makepyfile(
        """
import pytest

@pytest.mark.parametrize("n", range(5))
def test_isolated(schema, database, n):
    assert list(database.iterdir()) == [schema], "each test sees only its own schema"
    (schema / "table").write_text(str(n))
"""
    )
    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=5)
    assert leftovers(scratch) == []


# --- failures at set-up and at release -------------------------------------------------------


def test_setup_failure_inside_a_fixture_releases_what_it_had(
    suite: pytest.Pytester, scratch: Path, registry_path: str
) -> None:
    suite.makepyfile(
        """
import os, pytest
from reclaim.backends.path import TempDir

@pytest.fixture
def half_built(reclaim):
    reclaim.acquire(TempDir(parent=os.environ["SCRATCH"]))
    reclaim.acquire(TempDir(parent="/nonexistent/parent"))  # fails: no such parent

def test_uses_it(half_built):
    pass
"""
    )
    result = suite.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*AcquireError*path.tempdir*could not be created*"])
    assert leftovers(scratch) == []
    assert held(registry_path) == []


NAMES = """
import json, os, pathlib
import pytest

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

def _note(fixture, key):
    (SCRATCH / f"{key}.json").write_text(json.dumps(fixture.name))

@pytest.fixture
def uses_reclaim(reclaim):
    return reclaim

def test_first(reclaim):
    _note(reclaim, "first")

def test_second(uses_reclaim):
    _note(uses_reclaim, "second")

def test_late(request):
    _note(request.getfixturevalue("reclaim"), "late")
"""


def test_each_tests_fixture_is_named_by_its_test(suite: pytest.Pytester, scratch: Path) -> None:
    """The ``reclaim`` fixture's name (its entries' ``fixture``, its warnings' label) is the
    node id of the test it serves, asked for directly, through another fixture or late."""
    suite.makepyfile(test_names=NAMES)
    suite.runpytest_subprocess().assert_outcomes(passed=3)
    names = {
        key: json.loads((scratch / f"{key}.json").read_text())
        for key in ("first", "second", "late")
    }
    assert names == {
        "first": "test_names.py::test_first",
        "second": "test_names.py::test_second",
        "late": "test_names.py::test_late",
    }


FLAKY = """
import os, pathlib
from reclaim_test_backends import Flaky

def test_flaky_release(reclaim):
    path = reclaim.acquire(Flaky(pathlib.Path(os.environ["SCRATCH"])))
    pathlib.Path(str(path) + ".fail").write_text("")  # its release will fail
"""


def test_a_failed_release_is_a_warning_and_the_entry_stays(
    suite: pytest.Pytester, scratch: Path, registry_path: str
) -> None:
    suite.makepyfile(test_flaky=FLAKY)
    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=1, warnings=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*ReclaimWarning: test_flaky.py::test_flaky_release: *test.flaky*rc_*cannot delete*"]
    )
    assert summary_line(out).startswith("reclaim: 1 acquired, 0 released, 1 failed")
    assert SECRET not in out
    # Nothing is lost: the entry is kept as failed, and the next sweep releases it once it can.
    (entry,) = held(registry_path)
    assert entry.state == "failed"
    assert SECRET not in (entry.last_error or "")
    for marker in scratch.glob("*.fail"):
        marker.unlink()
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 1
    assert leftovers(scratch) == []


def test_strict_makes_a_failed_release_a_teardown_error(
    suite: pytest.Pytester, scratch: Path
) -> None:
    suite.makepyfile(test_flaky=FLAKY)
    result = suite.runpytest_subprocess("--reclaim-strict")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_flaky_release*"])
    assert SECRET not in result.stdout.str()
    for marker in scratch.glob("*.fail"):
        marker.unlink()


def test_strict_from_the_ini_catches_a_release_that_deletes_nothing(
    pytester: pytest.Pytester, scratch: Path, registry_path: str
) -> None:
    pytester.makeini(INI + "reclaim_strict = true\n")
    pytester.makepyfile(
        """
import os, pathlib
from reclaim_test_backends import Sticky

def test_sticky(reclaim):
    reclaim.acquire(Sticky(pathlib.Path(os.environ["SCRATCH"])))
"""
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test.sticky 'rc_*' still exists after its release*"])
    assert "1 still existed after release" in summary_line(result.stdout.str())
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "reclaim_strict=false")
    without.assert_outcomes(passed=1)  # not strict: the same suite passes


# --- async tests -----------------------------------------------------------------------------

ASYNC = """
import asyncio, os, pathlib
import pytest
from reclaim.backends.path import TempDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

@pytest.mark.asyncio
async def test_asyncio(reclaim):
    path = await reclaim.aacquire(TempDir(parent=SCRATCH))
    assert path.is_dir()

@pytest.mark.asyncio
async def test_asyncio_cancelled_after_acquiring(reclaim):
    await reclaim.aacquire(TempDir(parent=SCRATCH))
    async with asyncio.timeout(0.01):
        await asyncio.sleep(10)

@pytest.mark.asyncio
async def test_asyncio_task_cancelled(reclaim):
    await reclaim.aacquire(TempDir(parent=SCRATCH))
    asyncio.current_task().cancel()
    await asyncio.sleep(1)

@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_anyio(reclaim):
    import anyio
    await reclaim.aacquire(TempDir(parent=SCRATCH))
    with anyio.move_on_after(0.01):
        await anyio.sleep(10)

@pytest.fixture
async def async_owned():
    import reclaim
    async with reclaim.Fixture("async-fixture") as f:
        yield await f.aacquire(TempDir(parent=SCRATCH))

@pytest.mark.asyncio
async def test_async_fixture_cancelled(async_owned):
    assert async_owned.is_dir()
    asyncio.current_task().cancel()
    await asyncio.sleep(1)
"""


def test_async_tests_release_even_when_cancelled(
    suite: pytest.Pytester, scratch: Path, registry_path: str
) -> None:
    suite.makepyfile(test_async=ASYNC)
    result = suite.runpytest_subprocess()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2, result.stdout.str()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 3, result.stdout.str()
    assert leftovers(scratch) == []
    assert held(registry_path) == []


# --- options ---------------------------------------------------------------------------------


def test_registry_from_the_ini_is_relative_to_it(pytester: pytest.Pytester, scratch: Path) -> None:
    pytester.makeini(INI + "reclaim_registry = state/reg.sqlite3\n")
    pytester.makepyfile(
        """
import os
from reclaim.backends.path import TempDir

def test_it(reclaim):
    reclaim.acquire(TempDir(parent=os.environ["SCRATCH"]))
    assert os.environ["RECLAIM_REGISTRY"].endswith("state/reg.sqlite3")
"""
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert (pytester.path / "state" / "reg.sqlite3").exists()


def test_a_bad_grace_is_a_usage_error(suite: pytest.Pytester) -> None:
    suite.makepyfile("def test_x(): pass\n")
    result = suite.runpytest_subprocess("--reclaim-grace", "soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*reclaim_grace: 'soon' is not a duration*"])


# --- killed sessions -------------------------------------------------------------------------

MANY = """
import json, os, pathlib, time
import pytest
from reclaim.backends.path import TempDir

SCRATCH = pathlib.Path(os.environ["SCRATCH"])

@pytest.mark.parametrize("n", range(int(os.environ.get("TESTS", "20"))))
def test_acquires(reclaim, reclaim_session, n, worker_id):
    if n == 0:
        reclaim_session.acquire(TempDir(parent=SCRATCH, prefix="session-"))
    reclaim.acquire(TempDir(parent=SCRATCH, prefix=f"t{n}-"))
    if n == int(os.environ.get("HANG_AT", "-1")):
        from reclaim._run import existing_run
        run = existing_run()
        info = {"pid": os.getpid(), "watchdog": run.watchdog.pid, "worker": worker_id}
        (SCRATCH / "hang.json").write_text(json.dumps(info))
        time.sleep(600)
"""


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = CHILD_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the suite ended (exit {proc.returncode}) before hanging")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)
    time.sleep(0.05)  # the writer's json.dumps and write are one call; let it finish
    return json.loads(path.read_text())


@pytest.fixture
def session_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Inner sessions started by hand (to be killed); each one's group is killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)


def start_suite(
    pytester: pytest.Pytester, procs: list[subprocess.Popen[bytes]], *args: str, **env: str
) -> subprocess.Popen[bytes]:
    log = env.pop("LOG", os.devnull)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=pytester.path,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: killed whole, as a CI timeout does
        )
    procs.append(proc)
    return proc


def test_a_suite_killed_half_way_is_reclaimed_by_the_next_run(
    suite: pytest.Pytester,
    scratch: Path,
    registry_path: str,
    session_proc: list[subprocess.Popen[bytes]],
) -> None:
    """The CI-timeout case: the whole group and the watchdog die at once (a job's cgroup is
    killed); the next run's start-up sweep reclaims everything and reports it."""
    suite.makepyfile(test_many=MANY)
    proc = start_suite(suite, session_proc, HANG_AT="7")
    hang = wait_for(scratch / "hang.json", proc)
    os.kill(hang["watchdog"], signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=CHILD_TIMEOUT)
    wait_until(lambda: not alive(hang["watchdog"]))
    (scratch / "hang.json").unlink()
    left = leftovers(scratch)
    assert len(left) == 2, f"the session dir and test 7's dir were held at the kill: {left}"

    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=20)
    result.stdout.fnmatch_lines(["reclaim: reclaimed 2 resources of 1 dead runs from *"])
    assert summary_line(result.stdout.str()) == (
        "reclaim: 21 acquired, 21 released, 0 failed, 2 reclaimed from earlier runs"
    )
    assert leftovers(scratch) == []
    assert held(registry_path) == []


def test_a_killed_session_is_reclaimed_by_its_watchdog(
    suite: pytest.Pytester,
    scratch: Path,
    registry_path: str,
    session_proc: list[subprocess.Popen[bytes]],
) -> None:
    suite.makepyfile(test_many=MANY)
    proc = start_suite(suite, session_proc, HANG_AT="3")
    hang = wait_for(scratch / "hang.json", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=CHILD_TIMEOUT)
    (scratch / "hang.json").unlink()
    wait_until(lambda: leftovers(scratch) == [])
    wait_until(lambda: not alive(hang["watchdog"]))
    result = suite.runpytest_subprocess()
    result.assert_outcomes(passed=20)
    assert "0 reclaimed from earlier runs" in summary_line(result.stdout.str())
    assert held(registry_path) == []


def test_xdist_worker_killed_mid_test(
    suite: pytest.Pytester,
    scratch: Path,
    registry_path: str,
    session_proc: list[subprocess.Popen[bytes]],
) -> None:
    """``pytest -n 2``: one worker is SIGKILLed in the middle of a test. Its watchdog releases
    what it held; the other worker and the replacement finish; the controller's summary counts
    both workers and names the crashed one; a second run passes and leaves nothing."""
    suite.makepyfile(test_many=MANY)
    log = suite.path / "inner.log"
    proc = start_suite(suite, session_proc, "-n", "2", HANG_AT="7", LOG=str(log))
    hang = wait_for(scratch / "hang.json", proc)
    (scratch / "hang.json").unlink()
    os.kill(hang["pid"], signal.SIGKILL)
    assert proc.wait(timeout=CHILD_TIMEOUT * 2) == pytest.ExitCode.TESTS_FAILED
    out = log.read_text()
    assert "crashed while running" in out, out
    assert "1 failed, 19 passed" in out, out  # the test the worker died in failed
    line = [ln for ln in out.splitlines() if ln.startswith("reclaim: crashed workers")]
    assert line, out
    assert hang["worker"] in line[0], line[0]
    assert "their watchdogs released" in line[0], line[0]
    wait_until(lambda: leftovers(scratch) == [])
    wait_until(lambda: held(registry_path) == [])
    again = suite.runpytest_subprocess("-n", "2", timeout=CHILD_TIMEOUT * 2)
    again.assert_outcomes(passed=20)
    assert leftovers(scratch) == []
    assert held(registry_path) == []


def test_no_sweep_leaves_dead_runs_alone(
    suite: pytest.Pytester,
    scratch: Path,
    registry_path: str,
    session_proc: list[subprocess.Popen[bytes]],
) -> None:
    suite.makepyfile(test_many=MANY)
    proc = start_suite(suite, session_proc, HANG_AT="0")
    hang = wait_for(scratch / "hang.json", proc)
    os.kill(hang["watchdog"], signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=CHILD_TIMEOUT)
    (scratch / "hang.json").unlink()
    result = suite.runpytest_subprocess("--no-reclaim-sweep", "-k", "not acquires")
    result.assert_outcomes(deselected=20)
    assert len(leftovers(scratch)) == 2, "switched off: the dead run's dirs are still there"
    result = suite.runpytest_subprocess("--reclaim-grace", "1h", "-k", "not acquires")
    assert len(leftovers(scratch)) == 2, "younger than the grace period: left alone"
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 2
