"""``reclaim sweep`` tells each outcome as it happens: over a progress bar on a terminal, as
plain lines (no bar, no escape codes) in a pipe; ``--json`` stays one object at the end.

The sweeps are real ``reclaim`` processes releasing real temp directories of a dead run. To see
lines arrive *before* the sweep ends, the run's first entry (released last: last in, first out)
is a :class:`Gate`, whose release waits until the test has read what came before it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import secrets
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import CHILD_TIMEOUT, TEST_BACKENDS, reclaim_cli
from reclaim._registry import open_registry
from reclaim.backends import Backend, Record, make_name
from reclaim.backends.path import TempDir
from reclaim.testing import dead_identity
from reclaim_test_backends import SECRET, Flaky

GATE_KIND = "test.gate"


class Gate(Backend[Path]):
    """A file whose release waits until the file ``go`` (in its record) exists, so a test can
    hold a sweep half-way. Gives up after ``CHILD_TIMEOUT`` seconds, so nothing hangs."""

    kind = GATE_KIND

    def __init__(self, directory: Path, go: Path) -> None:
        self.directory = directory
        self.go = go

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / name), "go": str(self.go)}

    def acquire(self, name: str) -> tuple[Path, Record]:
        record = self.plan(name)
        Path(record["path"]).touch(exist_ok=False)
        return Path(record["path"]), record

    @classmethod
    def release(cls, record: Record) -> None:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not os.path.exists(record["go"]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody opened the gate {record['go']}")
            time.sleep(0.01)
        Path(record["path"]).unlink(missing_ok=True)

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.lexists(record["path"])


@pytest.fixture(autouse=True)
def _env(registry_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No watchdog (the sweeper is under test), the gate's kind known here and in every child,
    and nothing in the environment that tells rich to act as if on a terminal, or not."""
    monkeypatch.setenv("RECLAIM_WATCHDOG", "0")
    monkeypatch.setenv("RECLAIM_BACKENDS", f"{TEST_BACKENDS},{GATE_KIND}={__name__}:Gate")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


@dataclass
class DeadRun:
    """A dead run's entries in the registry, each a real file or directory."""

    dirs: list[Path]  # TempDirs, in the order a sweep releases them (last in, first out)
    go: Path  # the file that lets the gate's release go on
    gate: Path | None = None  # the gate's file: the run's first entry, released last
    others: list[str] = field(default_factory=list)  # names of other entries


def _dead_run(
    location: str,
    parent: Path,
    count: int,
    *,
    gate: bool = False,
    flaky: bool = False,
) -> DeadRun:
    """A run whose owner is dead, holding ``count`` TempDirs under ``parent``: after a gate
    (``gate``), and followed by a Flaky file whose release fails (``flaky``)."""
    reg = open_registry(location)
    run_id = secrets.token_hex(4)
    reg.open_run(run_id, dead_identity(), label="sweep-progress")
    run = DeadRun(dirs=[], go=parent / "go")
    seq = 0

    def add(backend: Backend[Path]) -> tuple[str, Path]:
        nonlocal seq
        seq += 1
        name = backend.adapt_name(make_name(run_id, seq))
        rid = reg.plan(run_id, "sweep-progress", backend.kind, name, backend.plan(name))
        value, record = backend.acquire(name)
        reg.mark_acquired(rid, record)
        return name, value

    try:
        if gate:
            _, run.gate = add(Gate(parent, run.go))
        for _ in range(count):
            run.dirs.insert(0, add(TempDir(parent=parent))[1])
        if flaky:
            name, path = add(Flaky(parent))
            Path(f"{path}.fail").touch()  # its release fails, quoting the secret token
            run.others.append(name)
    finally:
        reg.close()
    for d in run.dirs:
        assert d.is_dir()
    return run


# --- reading a child's output with a deadline --------------------------------------------------

#: What rich writes to steer a terminal: colours, cursor moves, line erasing, cursor hiding.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Output:
    """What a child writes to ``fd`` (a pipe, or a pseudo-terminal's master side), read as it
    comes, never waiting past a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = b""
        self.ended = False

    @property
    def text(self) -> str:
        return self.raw.decode(errors="replace")

    def _read(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no more output after {CHILD_TIMEOUT} s; so far:\n{self.text}")
        ready, _, _ = select.select([self.fd], [], [], left)
        if not ready:
            return
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: a pseudo-terminal whose other side is closed
            chunk = b""
        self.raw += chunk
        self.ended = not chunk

    def until(self, predicate: Callable[[str], bool]) -> str:
        """Read until ``predicate(text so far)``; fails if the output ends first."""
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not predicate(self.text):
            assert not self.ended, f"the output ended before it was there:\n{self.text}"
            self._read(deadline)
        return self.text

    def to_end(self) -> str:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not self.ended:
            self._read(deadline)
        return self.text


@contextlib.contextmanager
def sweeping(*args: str, terminal: bool) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    """``reclaim sweep --grace 0 ARGS...`` with its standard output and error on a pipe each,
    or both on a pseudo-terminal (200 columns). The child is killed if still running at the
    end, and every descriptor closed."""
    argv = [sys.executable, "-m", "reclaim", "sweep", "--grace", "0", *args]
    if terminal:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        fd = master
    else:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
    try:
        yield proc, Output(fd)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT)
        if terminal:
            os.close(master)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def released(path: Path | str, kind: str = "path.tempdir") -> str:
    return f"released  {kind}  {path}"


# --- the tests -----------------------------------------------------------------------------------


def test_piped_each_outcome_is_a_plain_line_as_it_happens(
    registry_path: str, scratch: Path
) -> None:
    run = _dead_run(registry_path, scratch, 3, gate=True)
    assert run.gate is not None
    try:
        with sweeping(terminal=False) as (proc, out):
            before = out.until(lambda text: all(f"{released(d)}\n" in text for d in run.dirs))
            # The gate holds the sweep's last release: the lines came while it was at work.
            assert proc.poll() is None, "the sweep is still running"
            assert run.gate.exists()
            assert not any(d.exists() for d in run.dirs), "each line follows its release"
            assert "Released" not in before, "the summary comes at the end"
            run.go.touch()
            text = out.to_end()
            assert proc.wait(timeout=CHILD_TIMEOUT) == 0
            assert proc.stderr is not None
            errors = proc.stderr.read().decode()
    finally:
        run.go.touch()
    assert "Traceback" not in errors, errors
    assert "\x1b" not in text, "no escape codes in a pipe"
    assert text.splitlines() == [
        *(released(d) for d in run.dirs),
        released(run.gate.name, GATE_KIND),
        "Released 4, failed 0.",
    ], "one line per outcome, none repeated at the end, then the summary"
    assert not run.gate.exists()


def test_piped_failure_is_told_at_once_and_redacted(registry_path: str, scratch: Path) -> None:
    run = _dead_run(registry_path, scratch, 2, flaky=True)
    (flaky,) = run.others
    try:
        with sweeping(terminal=False) as (proc, out):
            text = out.to_end()
            assert proc.wait(timeout=CHILD_TIMEOUT) == 1, "a failed release is exit status 1"
    finally:
        Path(f"{scratch / flaky}.fail").unlink()  # the registry fixture's sweep releases it
    lines = text.splitlines()
    assert lines[0] == f"failed    test.flaky  {flaky}", "healthy entries first: the newest"
    assert lines[1].startswith("          "), "the error on the next line, indented"
    assert "cannot delete" in lines[1]
    assert SECRET not in text, "the error is redacted (I7)"
    assert lines[2:] == [*(released(d) for d in run.dirs), "Released 2, failed 1."]
    assert "\x1b" not in text


def test_on_a_terminal_a_bar_counts_and_the_lines_come_above_it(
    registry_path: str, scratch: Path
) -> None:
    run = _dead_run(registry_path, scratch, 3, gate=True)
    assert run.gate is not None

    def plain(text: str) -> str:
        return ANSI.sub("", text).replace("\r", "")

    try:
        with sweeping(terminal=True) as (proc, out):
            before = plain(
                out.until(
                    lambda t: "3/4" in plain(t) and all(released(d) in plain(t) for d in run.dirs)
                )
            )
            assert proc.poll() is None, "the sweep is still running"
            assert run.gate.exists()
            assert "0/4" in before, "the bar is drawn from the start, with the total"
            assert "━" in before, "a bar, not only a count"
            assert "Released" not in before
            run.go.touch()
            raw = out.to_end()
            assert proc.wait(timeout=CHILD_TIMEOUT) == 0
    finally:
        run.go.touch()
    text = plain(raw)
    assert "Traceback" not in text, text
    assert "\x1b[32m" in raw, "styled, as on any terminal"
    for line in (*(released(d) for d in run.dirs), released(run.gate.name, GATE_KIND)):
        assert text.count(line) == 1, f"printed once: {line}\n{text}"
    assert "4/4" in text, "the bar counted every entry"
    summary = text.index("Released 4, failed 0.")
    assert text.rindex("4/4") < summary, "the summary comes after the bar, which is gone"
    assert text.rindex(released(run.gate.name, GATE_KIND)) < summary
    assert not run.gate.exists()


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
def test_json_is_one_object_at_the_end(registry_path: str, scratch: Path, terminal: bool) -> None:
    run = _dead_run(registry_path, scratch, 3)
    with sweeping("--json", terminal=terminal) as (proc, out):
        text = out.to_end()
        assert proc.wait(timeout=CHILD_TIMEOUT) == 0
    assert "\x1b" not in text, "no bar, no colour"
    data = json.loads(text)  # one object, nothing around it
    assert data["released"] == 3
    assert data["failed"] == 0
    assert len(data["runs_reaped"]) == 1
    assert not any(d.exists() for d in run.dirs)


def test_dry_run_lists_without_a_bar(registry_path: str, scratch: Path) -> None:
    run = _dead_run(registry_path, scratch, 2)
    dry = reclaim_cli("sweep", "--dry-run", "--grace", "0").stdout
    assert dry.splitlines() == [
        *(f"would release  path.tempdir  {d}  (exists)" for d in run.dirs),
        "Would release 2, failed 0.",
    ]
    assert all(d.is_dir() for d in run.dirs), "a dry run changes nothing"
