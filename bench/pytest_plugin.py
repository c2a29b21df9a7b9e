"""Benchmark: the pytest plugin, next to what a suite would do without reclaim.

Four generated suites of ``--tests`` tests each, run as real ``pytest`` processes, side by side:

- ``reclaim fixture``: each test does ``reclaim.acquire(TempDir())`` through the plugin's
  ``reclaim`` fixture (journaled, watchdog running, released at teardown).
- ``yield fixture``: the same with a plain fixture doing ``tempfile.mkdtemp`` and
  ``shutil.rmtree`` after ``yield`` (no crash safety).
- ``yield fixture + one SQLite commit``: the yield fixture that also commits one small
  transaction (two rows) to a SQLite file in WAL mode beside reclaim's registry: the floor of
  any journal that writes one transaction per test, which is what reclaim's registry does.
- ``yield fixture + two appended lines``: the yield fixture that also appends one line to a
  file before ``mkdtemp`` and one after ``rmtree`` (one ``write(2)`` each, ``O_APPEND``): the
  floor of a journal of lines, which is what reclaim's Fixture writes now (a plan, a release).
- ``plugin loaded, unused``: trivial tests, reclaim's plugin loaded as it is once installed.
- ``plugin disabled``: the same trivial tests with ``-p no:reclaim``.

The first pair gives the cost of crash safety per test; the second, what the plugin costs a
suite that acquires nothing (the issue asks for "next to nothing"). Each round runs every
variant once, in a rotated order, so machine noise hits them alike. The report gives the
median wall time of the whole pytest process, the per-test difference, and two ratios: of
the medians, and the median of each round's own ratio (the machine's speed drifts from minute
to minute; a round's variants ran within seconds of each other). It prints a Markdown table
and, with ``--save``, writes ``bench/results/pytest_plugin.json``.

The suites run without ``PYTHONDONTWRITEBYTECODE`` (this machine kind sets it): with it, no
process keeps its byte code and every pytest process compiles all it imports again, which
would measure the compiler (0.3 s of reclaim's modules per session) rather than the plugin.

Run it from the project root::

    uv run python bench/pytest_plugin.py                   # 1000 tests, 9 rounds
    uv run python bench/pytest_plugin.py --tests 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

RESULTS: Final = Path(__file__).resolve().parent / "results" / "pytest_plugin.json"

RECLAIM: Final = "reclaim fixture"
YIELD: Final = "yield fixture"
COMMIT: Final = "yield fixture + one SQLite commit"
APPEND: Final = "yield fixture + two appended lines"
LOADED: Final = "plugin loaded, unused"
DISABLED: Final = "plugin disabled"

SUITES: Final = {
    RECLAIM: """
import os, pytest
from reclaim.backends.path import TempDir

@pytest.mark.parametrize("n", range(int(os.environ["TESTS"])))
def test_it(reclaim, n):
    path = reclaim.acquire(TempDir(parent=os.environ["SCRATCH"]))
    (path / "f").write_text("x")
""",
    YIELD: """
import os, shutil, tempfile, pathlib, pytest

@pytest.fixture
def workdir():
    path = pathlib.Path(tempfile.mkdtemp(dir=os.environ["SCRATCH"]))
    yield path
    shutil.rmtree(path)

@pytest.mark.parametrize("n", range(int(os.environ["TESTS"])))
def test_it(workdir, n):
    (workdir / "f").write_text("x")
""",
    COMMIT: """
import os, shutil, sqlite3, tempfile, pathlib, pytest

db = sqlite3.connect(os.environ["FLOOR_DB"], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT, record TEXT)")
db.execute("CREATE TABLE IF NOT EXISTS e (id INTEGER PRIMARY KEY, at REAL, what TEXT)")

@pytest.fixture
def workdir():
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t (name, record) VALUES (?, ?)", ("rc_x", '{"path": "/tmp/rc_x"}'))
    db.execute("INSERT INTO e (at, what) VALUES (1.0, 'planned')")
    db.execute("DELETE FROM t WHERE id < (SELECT max(id) FROM t)")
    db.execute("COMMIT")
    path = pathlib.Path(tempfile.mkdtemp(dir=os.environ["SCRATCH"]))
    yield path
    shutil.rmtree(path)

@pytest.mark.parametrize("n", range(int(os.environ["TESTS"])))
def test_it(workdir, n):
    (workdir / "f").write_text("x")
""",
    APPEND: """
import json, os, shutil, tempfile, pathlib, pytest

fd = os.open(os.environ["FLOOR_DB"] + ".lines", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

@pytest.fixture
def workdir():
    line = ["p", 1, "f", "path.tempdir", "rc_x", {"path": "/tmp/rc_x"}, 1.0]
    os.write(fd, json.dumps(line).encode() + b"\\n")
    path = pathlib.Path(tempfile.mkdtemp(dir=os.environ["SCRATCH"]))
    yield path
    shutil.rmtree(path)
    os.write(fd, b'["a",1,1.0]\\n["r",1,1.0,{"by":"fixture"}]\\n')

@pytest.mark.parametrize("n", range(int(os.environ["TESTS"])))
def test_it(workdir, n):
    (workdir / "f").write_text("x")
""",
    LOADED: """
import os, pytest

@pytest.mark.parametrize("n", range(int(os.environ["TESTS"])))
def test_it(n):
    assert n >= 0
""",
}
SUITES[DISABLED] = SUITES[LOADED]

INI: Final = """[pytest]
asyncio_default_fixture_loop_scope = function
"""


def run_suite(directory: Path, variant: str, env: dict[str, str]) -> float:
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_it.py"]
    if variant == DISABLED:
        args[3:3] = ["-p", "no:reclaim"]
    started = time.perf_counter()
    result = subprocess.run(
        args, cwd=directory, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{variant}: pytest failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="reclaim-bench-") as tmp:
        root = Path(tmp)
        scratch = root / "scratch"
        scratch.mkdir()
        env = {
            **os.environ,
            "TESTS": str(args.tests),
            "SCRATCH": str(scratch),
            "RECLAIM_REGISTRY": str(root / "state" / "registry.sqlite3"),
            "FLOOR_DB": str(root / "state" / "floor.sqlite3"),
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        dirs: dict[str, Path] = {}
        for i, (variant, code) in enumerate(SUITES.items()):
            d = root / f"suite{i}"
            d.mkdir()
            (d / "test_it.py").write_text(code)
            (d / "pytest.ini").write_text(INI)
            dirs[variant] = d
        for variant in SUITES:  # warm-up: byte-code caches, page cache
            run_suite(dirs[variant], variant, env)
        times: dict[str, list[float]] = {v: [] for v in SUITES}
        order = list(SUITES)
        for r in range(args.rounds):
            for variant in order[r % len(order) :] + order[: r % len(order)]:
                times[variant].append(run_suite(dirs[variant], variant, env))
            assert not any(scratch.iterdir()), "a suite left something behind"

    med = {v: statistics.median(t) for v, t in times.items()}
    per_test_ms = (med[RECLAIM] - med[YIELD]) / args.tests * 1000
    unused_ms = (med[LOADED] - med[DISABLED]) * 1000

    def paired(variant: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(times[variant], times[base], strict=True))

    ratios = {
        RECLAIM: (med[RECLAIM] / med[YIELD], paired(RECLAIM, YIELD)),
        COMMIT: (med[COMMIT] / med[YIELD], paired(COMMIT, YIELD)),
        APPEND: (med[APPEND] / med[YIELD], paired(APPEND, YIELD)),
        LOADED: (med[LOADED] / med[DISABLED], paired(LOADED, DISABLED)),
    }
    result = {
        "tests": args.tests,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "median_seconds": med,
        "all_seconds": times,
        "ratio_reclaim_to_yield": ratios[RECLAIM][0],
        "paired_ratio_reclaim_to_yield": ratios[RECLAIM][1],
        "ratio_commit_to_yield": ratios[COMMIT][0],
        "paired_ratio_commit_to_yield": ratios[COMMIT][1],
        "ratio_append_to_yield": ratios[APPEND][0],
        "paired_ratio_append_to_yield": ratios[APPEND][1],
        "ratio_loaded_to_disabled": ratios[LOADED][0],
        "paired_ratio_loaded_to_disabled": ratios[LOADED][1],
        "crash_safety_ms_per_test": per_test_ms,
        "unused_plugin_ms_per_session": unused_ms,
    }
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{args.tests} tests per suite, median of {args.rounds} rounds (whole pytest process)\n")
    print("| suite | median wall time | ratio of medians | median ratio per round |")
    print("|---|---:|---:|---:|")
    for variant in (YIELD, COMMIT, APPEND, RECLAIM, DISABLED, LOADED):
        of_medians, per_round = ratios.get(variant, (1.0, 1.0))
        print(f"| {variant} | {med[variant]:.2f} s | {of_medians:.2f} | {per_round:.2f} |")
    print(
        f"\ncrash safety costs {per_test_ms:.2f} ms per test; the plugin of a suite that"
        f" acquires nothing costs {unused_ms:.0f} ms per session (loading it, reading options)"
    )


if __name__ == "__main__":
    main()
