"""Benchmark: instructions per test of the pytest plugin, counted by callgrind, next to a plain
yield fixture, in one run.

Wall time on this machine drifts by half from one hour to the next; instructions do not (the
same binary, inputs and environment count the same, whatever else the machine does). Each
suite of ``bench/pytest_plugin.py`` named here runs as a real pytest process under
``valgrind --tool=callgrind`` twice, with ``--small`` and ``--large`` tests; the difference,
divided by the difference in tests, is what one more test costs, and what is left is the
session's fixed cost. Only the pytest process is counted (not the watchdog, which is switched
off here, nor anything it starts).

What is held still, so that the count depends on the code alone:

- a fresh registry for every run (no start-up sweep of what earlier runs left);
- ``RECLAIM_WRITE_DELAY=1h`` and ``RECLAIM_LEASE=3h``: under callgrind a second of wall time is
  a few dozen tests, so merges driven by the clock would land at other places each run;
  the journal is merged when its id block runs out and at the close instead;
- a warm-up run first, so that no counted run compiles byte code.

Needs valgrind (``apt-get install valgrind``). It prints a Markdown table and, with
``--save``, writes ``bench/results/pytest_instructions.json``. From the project root::

    uv run python bench/pytest_instructions.py              # 100 and 500 tests, ~4 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pytest_plugin import APPEND, INI, RECLAIM, SUITES, YIELD  # the same suites

RESULTS: Final = Path(__file__).resolve().parent / "results" / "pytest_instructions.json"
VARIANTS: Final = (YIELD, APPEND, RECLAIM)
_COLLECTED: Final = re.compile(r"Collected : (\d+)")


def count(directory: Path, env: dict[str, str], tests: int, state: Path) -> int:
    """Instructions of one pytest process of ``tests`` tests, on a fresh registry."""
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_it.py",
        ],
        cwd=directory,
        env={**env, "TESTS": str(tests)},
        capture_output=True,
        text=True,
        check=False,
    )
    found = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"pytest under callgrind failed:\n{result.stdout}\n{result.stderr}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=500)
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")

    with tempfile.TemporaryDirectory(prefix="reclaim-bench-") as tmp:
        root = Path(tmp)
        scratch, state = root / "scratch", root / "state"
        scratch.mkdir()
        env = {
            **os.environ,
            "SCRATCH": str(scratch),
            "RECLAIM_REGISTRY": str(state / "registry.sqlite3"),
            "FLOOR_DB": str(state / "floor.sqlite3"),
            "RECLAIM_WATCHDOG": "0",
            "RECLAIM_WRITE_DELAY": "1h",
            "RECLAIM_LEASE": "3h",
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        per_test: dict[str, float] = {}
        fixed: dict[str, float] = {}
        for variant in VARIANTS:
            d = root / f"suite-{VARIANTS.index(variant)}"
            d.mkdir()
            (d / "test_it.py").write_text(SUITES[variant])
            (d / "pytest.ini").write_text(INI)
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir()
            subprocess.run(  # warm-up: byte code
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_it.py"],
                cwd=d,
                env={**env, "TESTS": "1"},
                capture_output=True,
                check=True,
            )
            small = count(d, env, args.small, state)
            large = count(d, env, args.large, state)
            per_test[variant] = (large - small) / (args.large - args.small)
            fixed[variant] = small - per_test[variant] * args.small
            assert not any(scratch.iterdir()), "a suite left something behind"

    result = {
        "tests": [args.small, args.large],
        "python": sys.version.split()[0],
        "instructions_per_test": per_test,
        "fixed_instructions": fixed,
    }
    if args.save:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    base = per_test[YIELD]
    print(f"instructions counted by callgrind, per test ({args.small} vs {args.large} tests)\n")
    print("| suite | per test | more than the yield fixture | fixed, per session |")
    print("|---|---:|---:|---:|")
    for variant in VARIANTS:
        extra = per_test[variant] - base
        print(
            f"| {variant} | {per_test[variant] / 1e3:,.0f}k | {extra / 1e3:+,.0f}k"
            f" | {fixed[variant] / 1e6:,.0f}M |"
        )


if __name__ == "__main__":
    main()
