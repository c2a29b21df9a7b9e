"""``reclaim watch``: a real watcher process follows the event log while this process acquires
and releases."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import reclaim
from conftest import CHILD_TIMEOUT
from reclaim._run import existing_run
from reclaim.backends.path import TempDir
from reclaim_test_backends import SECRET, Flaky

TIMEOUT = 20.0


class Watcher:
    """A running ``python -m reclaim watch ...`` whose output lines are read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reclaim", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.stderr_seen: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()

    def line(self, lines: queue.Queue[str | None] | None = None) -> str:
        """The next line (of stdout by default); fails after TIMEOUT or at end of output."""
        try:
            line = (lines or self.out).get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"reclaim watch printed nothing for {TIMEOUT} s") from None
        if line is None:
            raise AssertionError(f"reclaim watch ended (exit {self.proc.poll()})")
        return line

    def wait_for_stderr(self, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = self.line(self.err)
            self.stderr_seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} not on stderr: {self.stderr_seen}")

    def lines_until(self, done: Callable[[list[str]], bool]) -> list[str]:
        """Read stdout lines until ``done(lines)``; fails after TIMEOUT in all."""
        lines: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while not done(lines):
            if time.monotonic() > deadline:
                raise AssertionError(f"not done after {TIMEOUT} s; got {lines}")
            lines.append(self.line())
        return lines

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=CHILD_TIMEOUT)

    def stderr_rest(self) -> str:
        rest = []
        while (line := self.err.get(timeout=TIMEOUT)) is not None:
            rest.append(line)
        return "".join(self.stderr_seen + rest)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=CHILD_TIMEOUT)


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)
    stream.close()


@pytest.fixture
def watcher(registry_path: str) -> Iterator[Callable[..., Watcher]]:
    started: list[Watcher] = []

    def start(*args: str) -> Watcher:
        w = Watcher(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def events_of(lines: list[str], name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, lines) if e["name"] == name]


def has_released(name: str, *, as_json: bool) -> Callable[[list[str]], bool]:
    if as_json:
        return lambda lines: any(e["event"] == "resource.released" for e in events_of(lines, name))
    return lambda lines: any("resource.released" in x and name in x for x in lines)


def acquire_and_release(scratch: Path) -> Path:
    with reclaim.Fixture("watched") as fx:
        path = fx.acquire(TempDir(parent=scratch))
        assert path.is_dir()
    assert not path.exists()
    run = existing_run()
    assert run is not None
    run.registry.flush()  # in the log now, not within the write delay
    return path


def test_json_lines_follow_a_fixture(
    watcher: Callable[..., Watcher], registry_path: str, scratch: Path
) -> None:
    w = watcher("--json")
    # No registry yet: the watcher waits for it, then shows everything written to it.
    w.wait_for_stderr("Waiting for the registry")
    path = acquire_and_release(scratch)
    run = existing_run(registry_path)
    assert run is not None

    lines = w.lines_until(has_released(path.name, as_json=True))
    mine = events_of(lines, path.name)
    assert [e["event"] for e in mine] == [
        "resource.planned",
        "resource.acquired",
        "resource.released",
    ]
    for event in mine:
        assert set(event) == {
            "id",
            "at",
            "event",
            "run_id",
            "resource_id",
            "kind",
            "name",
            "detail",
        }
        assert event["run_id"] == run.id
        assert event["kind"] == "path.tempdir"
        assert event["resource_id"] == mine[0]["resource_id"]
        assert abs(event["at"] - time.time()) < 60
    assert mine[2]["detail"] == {"by": "fixture"}
    assert [e["id"] for e in mine] == sorted(e["id"] for e in mine)
    opened = json.loads(lines[0])
    assert opened["event"] == "run.opened"
    assert opened["run_id"] == run.id

    assert w.stop(signal.SIGTERM) == 0
    assert "Traceback" not in w.stderr_rest()


def test_for_people_starts_after_the_newest_event(
    watcher: Callable[..., Watcher], scratch: Path
) -> None:
    before = acquire_and_release(scratch)  # already in the log: not shown
    w = watcher()
    w.wait_for_stderr("Watching")
    path = acquire_and_release(scratch)

    lines = w.lines_until(has_released(path.name, as_json=False))
    assert not any(before.name in line for line in lines)
    acquired = next(x for x in lines if "resource.acquired" in x)
    released = next(x for x in lines if "resource.released" in x)
    assert "path.tempdir" in acquired
    assert path.name in acquired
    assert path.name.split("_")[1] in acquired, "the run id"
    assert released.rstrip().endswith("by fixture")
    assert all(line.count("\n") == 1 for line in lines), "one line per event"

    assert w.stop(signal.SIGINT) == 0, "Ctrl-C ends it quietly"
    assert "Traceback" not in w.stderr_rest()


def test_from_start_shows_what_was_there(
    watcher: Callable[..., Watcher], registry_path: str, scratch: Path
) -> None:
    before = acquire_and_release(scratch)
    w = watcher("--from-start", "--json")
    lines = w.lines_until(has_released(before.name, as_json=True))
    events = [json.loads(x) for x in lines]
    assert events[0]["event"] == "run.opened"
    assert [e["event"] for e in events_of(lines, before.name)] == [
        "resource.planned",
        "resource.acquired",
        "resource.released",
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert w.stop() == 0


def test_failures_show_the_redacted_error(watcher: Callable[..., Watcher], scratch: Path) -> None:
    w = watcher()
    w.wait_for_stderr("Waiting for the registry")
    with pytest.raises(BaseExceptionGroup), reclaim.Fixture("flaky") as fx:
        path = fx.acquire(Flaky(scratch))
        Path(f"{path}.fail").write_text("")
    lines = w.lines_until(lambda lines: any("resource.failed" in x for x in lines))
    failed = next(x for x in lines if "resource.failed" in x)
    assert path.name in failed
    assert "by fixture, after 3 attempts: PermissionError: cannot delete" in failed
    assert "(auth ***)" in failed
    assert SECRET not in "".join(lines)
    Path(f"{path}.fail").unlink()  # the run's end releases it now
    assert w.stop() == 0
