"""Benchmark: a PostgreSQL schema per test through reclaim, next to pytest-postgresql's database
per test, on the same server in the same run.

Every "test" does the same work: it gets a place of its own, creates a table in it, inserts one
row, selects it, and gives the place back. The clock runs from the start of the set-up to the
end of the teardown. Variants:

- ``reclaim schema, session connection``: ``with reclaim.Fixture(...)`` acquires a
  :class:`~reclaim.backends.postgres.PostgresSchema` (journaled in a registry in a temporary
  directory, with the watchdog running, as users have it); the test uses one connection opened
  for the whole session, with ``SET search_path TO <schema>`` (the pattern the docs recommend).
- ``reclaim schema, connection per test``: the same, but every test opens and closes its own
  connection (``options=-c search_path=<schema>``), as a test with a database of its own must.
- ``raw schema, no reclaim``: ``CREATE SCHEMA`` / ``DROP SCHEMA ... CASCADE`` by hand on one
  connection, with a session connection for the test: what reclaim's bookkeeping costs on top.
- ``pytest-postgresql database``: what its ``postgresql_noproc`` + ``postgresql`` fixtures do:
  a session template made once with ``DatabaseJanitor(..., as_template=True)``, then per test
  ``DatabaseJanitor(dbname, template_dbname=...)`` (terminate sessions on the template,
  ``CREATE DATABASE ... TEMPLATE``), a fresh psycopg connection to it, and at teardown the
  janitor's drop (``allow_connections false``, terminate, ``DROP DATABASE``).

The variants run in rounds (``--n`` tests of each per round, order rotated), so machine noise
hits them alike. The report gives the median, p90 and mean per test in milliseconds and the ratio
of pytest-postgresql's median to each reclaim variant's (the issue asks for >= 10x). It prints a
Markdown table and, with ``--save``, writes ``bench/results/postgres_per_test.json``.

Run from the project root, with PostgreSQL at ``RECLAIM_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``; its user needs CREATEDB)::

    uv run python bench/postgres_per_test.py               # 4 rounds x 50 tests per variant
    uv run python bench/postgres_per_test.py --n 10 --rounds 2   # a quick look
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.janitor import DatabaseJanitor

import reclaim
from reclaim._registry import ENV_VAR
from reclaim._run import existing_run
from reclaim.backends.postgres import PostgresSchema

RESULTS: Final = Path(__file__).resolve().parent / "results" / "postgres_per_test.json"
DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
WARMUP: Final = 5

SESSION: Final = "reclaim schema, session connection"
PER_TEST: Final = "reclaim schema, connection per test"
RAW: Final = "raw schema, no reclaim"
PYTEST_PG: Final = "pytest-postgresql database"


def the_test(conn: psycopg.Connection[Any]) -> None:
    """What every variant's test does in its own place."""
    conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
    conn.execute("INSERT INTO items (name) VALUES ('widget')")
    row = conn.execute("SELECT name FROM items").fetchone()
    if row != ("widget",):
        raise RuntimeError(f"the test read {row!r}")


class ReclaimSession:
    """A schema per test through reclaim; the test uses one session-wide connection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)

    def once(self) -> int:
        t0 = time.perf_counter_ns()
        with reclaim.Fixture("bench") as fx:
            schema = fx.acquire(PostgresSchema(self.dsn))
            self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            the_test(self.conn)
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.conn.close()


class ReclaimPerTest:
    """A schema per test through reclaim; every test connects on its own."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def once(self) -> int:
        t0 = time.perf_counter_ns()
        with reclaim.Fixture("bench") as fx:
            schema = fx.acquire(PostgresSchema(self.dsn))
            # reclaim's names are [a-z0-9_] only: safe in the options string unquoted.
            with psycopg.connect(
                self.dsn, autocommit=True, options=f"-c search_path={schema}"
            ) as conn:
                the_test(conn)
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        pass


class RawSchema:
    """CREATE SCHEMA / DROP SCHEMA by hand on one connection: no journal, no watchdog."""

    def __init__(self, dsn: str) -> None:
        self.admin = psycopg.connect(dsn, autocommit=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.prefix = f"bench_raw_{uuid.uuid4().hex[:8]}_"
        self.seq = 0

    def once(self) -> int:
        self.seq += 1
        schema = sql.Identifier(f"{self.prefix}{self.seq}")
        t0 = time.perf_counter_ns()
        self.admin.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        try:
            self.conn.execute(sql.SQL("SET search_path TO {}").format(schema))
            the_test(self.conn)
        finally:
            self.admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.conn.close()
        self.admin.close()


class PytestPostgresql:
    """pytest-postgresql's ``postgresql_noproc`` (session template) + ``postgresql`` (database
    per test), with its own DatabaseJanitor, as its fixtures use it."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        self.kwargs: dict[str, Any] = {
            "user": str(params.get("user", "postgres")),
            "host": str(params.get("host", "127.0.0.1")),
            "port": str(params.get("port", 5432)),
            "password": params.get("password"),
        }
        # Names of this benchmark run only (the plugin's are fixed: "tests", "tests_tmpl").
        self.dbname = f"bench_tests_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.dbname}_tmpl"
        self.session = DatabaseJanitor(dbname=self.template, as_template=True, **self.kwargs)
        self.session.init()  # the template (nothing loaded: the tests create their table)

    def once(self) -> int:
        t0 = time.perf_counter_ns()
        janitor = DatabaseJanitor(dbname=self.dbname, template_dbname=self.template, **self.kwargs)
        with janitor:
            conn = psycopg.connect(
                dbname=self.dbname,
                user=self.kwargs["user"],
                password=self.kwargs["password"],
                host=self.kwargs["host"],
                port=self.kwargs["port"],
            )
            try:
                the_test(conn)
                conn.commit()
            finally:
                conn.close()
        return time.perf_counter_ns() - t0

    def close(self) -> None:
        self.session.drop()


def median_ms(samples: Sequence[int]) -> float:
    return statistics.median(samples) / 1e6


def p90_ms(samples: Sequence[int]) -> float:
    if len(samples) < 2:
        return samples[0] / 1e6
    return statistics.quantiles(samples, n=10)[-1] / 1e6


def measure(
    variants: dict[str, Callable[[], int]], n: int, rounds: int
) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """``n`` tests of every variant per round, rotating the order each round."""
    for once in variants.values():
        for _ in range(WARMUP):
            once()
    samples: dict[str, list[int]] = {name: [] for name in variants}
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            once = variants[name]
            gc.collect()
            block = [once() for _ in range(n)]
            samples[name].extend(block)
            per_round[name].append(round(median_ms(block), 3))
    return samples, per_round


def server_info(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        settings = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    return {name: row[0] if row else None for name, row in settings.items()}


def build_report(
    samples: dict[str, list[int]],
    per_round: dict[str, list[float]],
    args: argparse.Namespace,
    server: dict[str, Any],
) -> dict[str, Any]:
    baseline = median_ms(samples[PYTEST_PG])
    variants: dict[str, Any] = {}
    for name, data in samples.items():
        med = median_ms(data)
        variants[name] = {
            "tests": len(data),
            "median_ms": round(med, 3),
            "p90_ms": round(p90_ms(data), 3),
            "mean_ms": round(statistics.fmean(data) / 1e6, 3),
            "round_medians_ms": per_round[name],
            "pytest_postgresql_median_over_this": round(baseline / med, 1),
        }
    return {
        "tests_per_variant": args.n * args.rounds,
        "n_per_round": args.n,
        "rounds": args.rounds,
        "server": server,
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "watchdog": os.environ.get("RECLAIM_WATCHDOG", "1") != "0",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variants": variants,
        "speedup_session_connection": variants[SESSION]["pytest_postgresql_median_over_this"],
        "speedup_connection_per_test": variants[PER_TEST]["pytest_postgresql_median_over_this"],
    }


def markdown(report: dict[str, Any]) -> str:
    server = report["server"]
    lines = [
        f"{report['tests_per_variant']} tests per variant ({report['rounds']} rounds x"
        f" {report['n_per_round']}), PostgreSQL {server['server_version']} (fsync"
        f" {server['fsync']}), Python {report['python']}, psycopg {report['psycopg']},"
        f" {report['machine']}, watchdog {'on' if report['watchdog'] else 'off'}",
        "",
        "| variant | median ms/test | p90 ms | mean ms | pytest-postgresql median / this |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in report["variants"].items():
        lines.append(
            f"| {name} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} | {v['mean_ms']:.2f}"
            f" | {v['pytest_postgresql_median_over_this']:.1f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=50, help="tests per variant per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (default 4)")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("RECLAIM_TEST_POSTGRES", DEFAULT_DSN),
        help="the server (default: RECLAIM_TEST_POSTGRES or the local one)",
    )
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="reclaim-bench-"))
    os.environ[ENV_VAR] = str(workdir / "registry.sqlite3")
    session = ReclaimSession(args.dsn)
    per_test = ReclaimPerTest(args.dsn)
    raw = RawSchema(args.dsn)
    pytest_pg = PytestPostgresql(args.dsn)
    try:
        samples, per_round = measure(
            {
                SESSION: session.once,
                PER_TEST: per_test.once,
                RAW: raw.once,
                PYTEST_PG: pytest_pg.once,
            },
            args.n,
            args.rounds,
        )
    finally:
        for variant in (session, per_test, raw, pytest_pg):
            variant.close()
        run = existing_run()
        if run is not None:
            run.close()
            run.registry.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report = build_report(samples, per_round, args, server_info(args.dsn))
    print(markdown(report))
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"\nwritten to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
