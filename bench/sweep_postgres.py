"""Benchmark: ``reclaim._reaper.sweep`` releasing thousands of a dead run's PostgreSQL schemas,
next to the same ``DROP SCHEMA`` commands run by hand on one connection.

What it measures, in one run:

- ``reclaim sweep``: ``--n`` schemas (2,000 by default) exist on the server and are journaled,
  as acquired :class:`~reclaim.backends.postgres.PostgresSchema` resources, in a fresh SQLite
  registry under a run whose owner is dead (``reclaim.testing.dead_identity()``). The clock
  times ``sweep(registry, grace=0)``: claiming the run, then for each batch of up to 100
  schemas one registry transaction for their claims, the backend's ``release_many`` (one
  ``DROP SCHEMA IF EXISTS a, b, ... CASCADE``) and one transaction for their outcomes, then
  closing the run. The time spent inside the backend is measured too, so the rest (reclaim's
  bookkeeping) is known.
- ``raw DROP SCHEMA``: the same number of schemas, made the same way, dropped with the same
  statement, one autocommit statement each, on one psycopg connection, with nothing else.

Each schema is empty (``--tables 0``, the cheapest drop and so the hardest case for the ratio)
or holds ``--tables`` small tables. The two variants alternate ``--repeat`` times. The report
gives schemas per second for both and their ratio (issue 15 aims at reclaim >= 0.9 of the raw
rate), prints a Markdown table and, with ``--save``, writes ``bench/results/sweep_postgres.json``
(``sweep_postgres_t<K>.json`` with ``--tables K``).

Run from the project root, with PostgreSQL at ``RECLAIM_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``)::

    uv run python bench/sweep_postgres.py                      # 2000 empty schemas, twice
    uv run python bench/sweep_postgres.py --n 200 --repeat 1   # a quick look
    uv run python bench/sweep_postgres.py --tables 1           # each holding a table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import psycopg
from _timing import TimedRelease
from psycopg import sql

from reclaim._registry import open_registry
from reclaim._sweep import sweep
from reclaim.backends import make_name
from reclaim.backends.postgres import PostgresSchema
from reclaim.testing import dead_identity

RESULTS: Final = Path(__file__).resolve().parent / "results" / "sweep_postgres.json"
DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH: Final = 200  # schemas created per transaction while setting up


def create_schemas(dsn: str, names: Sequence[str], tables: int) -> None:
    """Make the schemas (untimed), ``BATCH`` per transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, len(names), BATCH):
            statements: list[sql.Composable] = []
            for name in names[start : start + BATCH]:
                statements.append(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
                statements.extend(
                    sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, v text)").format(
                        sql.Identifier(name, f"t{k}")
                    )
                    for k in range(tables)
                )
            conn.execute(sql.SQL("; ").join(statements))


def count_left(dsn: str, names: Sequence[str]) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)", (list(names),)
        ).fetchone()
    return int(row[0]) if row else 0


def reclaim_sweep(dsn: str, n: int, tables: int, workdir: Path) -> dict[str, Any]:
    run_id = secrets.token_hex(4)
    names = [make_name(run_id, seq) for seq in range(1, n + 1)]
    create_schemas(dsn, names, tables)
    registry = open_registry(str(workdir / f"registry-{run_id}.sqlite3"))
    try:
        registry.open_run(run_id, dead_identity(), label="bench-sweep")
        backend = PostgresSchema(dsn)
        for name in names:
            record = backend.plan(name)
            rid = registry.plan(run_id, "bench", PostgresSchema.kind, name, record)
            registry.mark_acquired(rid, record)
        with TimedRelease(PostgresSchema) as timer:
            t0 = time.perf_counter_ns()
            report = sweep(registry, grace=0)
            elapsed = time.perf_counter_ns() - t0
    finally:
        registry.close()
    left = count_left(dsn, names)
    if report.released != n or left:
        raise RuntimeError(f"the sweep released {report.released} of {n}; {left} schemas left")
    return {
        "seconds": elapsed / 1e9,
        "schemas_per_second": n / (elapsed / 1e9),
        "in_backend_release_seconds": timer.ns / 1e9,
        "bookkeeping_seconds": (elapsed - timer.ns) / 1e9,
        "per_schema_us": {
            "total": elapsed / n / 1000,
            "backend_release": timer.ns / n / 1000,
            "reclaim_bookkeeping": (elapsed - timer.ns) / n / 1000,
        },
    }


def raw_drops(dsn: str, n: int, tables: int) -> dict[str, Any]:
    names = [f"bench_raw_{secrets.token_hex(4)}_{seq}" for seq in range(1, n + 1)]
    create_schemas(dsn, names, tables)
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter_ns()
        for name in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        elapsed = time.perf_counter_ns() - t0
    left = count_left(dsn, names)
    if left:
        raise RuntimeError(f"{left} schemas left after the raw drops")
    return {
        "seconds": elapsed / 1e9,
        "schemas_per_second": n / (elapsed / 1e9),
        "per_schema_us": {"total": elapsed / n / 1000},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="schemas per sweep (default 2000)")
    parser.add_argument("--tables", type=int, default=0, help="tables in each schema")
    parser.add_argument("--repeat", type=int, default=2, help="alternations (default 2)")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("RECLAIM_TEST_POSTGRES", DEFAULT_DSN),
        help="the server (default: RECLAIM_TEST_POSTGRES or the local one)",
    )
    parser.add_argument(
        "--save", action="store_true", help="also write the JSON result into bench/results/"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.tables < 0:
        parser.error("--n and --repeat must be at least 1, --tables at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="reclaim-bench-"))
    sweeps: list[dict[str, Any]] = []
    raws: list[dict[str, Any]] = []
    try:
        for r in range(args.repeat):  # alternate, so drift on the server hits both
            if r % 2 == 0:
                sweeps.append(reclaim_sweep(args.dsn, args.n, args.tables, workdir))
                raws.append(raw_drops(args.dsn, args.n, args.tables))
            else:
                raws.append(raw_drops(args.dsn, args.n, args.tables))
                sweeps.append(reclaim_sweep(args.dsn, args.n, args.tables, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reclaim_rate = statistics.median(s["schemas_per_second"] for s in sweeps)
    raw_rate = statistics.median(s["schemas_per_second"] for s in raws)
    with psycopg.connect(args.dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    report = {
        "schemas": args.n,
        "tables_per_schema": args.tables,
        "repeat": args.repeat,
        "server_version": row[0] if row else None,
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reclaim_sweep": sweeps,
        "raw_drop_schema": raws,
        "reclaim_schemas_per_second": round(reclaim_rate, 1),
        "raw_schemas_per_second": round(raw_rate, 1),
        "reclaim_over_raw": round(reclaim_rate / raw_rate, 3),
    }
    per = statistics.median(s["per_schema_us"]["reclaim_bookkeeping"] for s in sweeps)
    inside = statistics.median(s["per_schema_us"]["backend_release"] for s in sweeps)
    print(
        f"{args.n} schemas ({args.tables} tables each), {args.repeat} repeats, PostgreSQL"
        f" {report['server_version']}, {report['machine']}\n\n"
        "| variant | schemas/s | µs per schema |\n|---|---:|---:|\n"
        f"| reclaim sweep | {reclaim_rate:.0f} | {1e6 / reclaim_rate:.0f} |\n"
        f"| raw DROP SCHEMA, one connection | {raw_rate:.0f} | {1e6 / raw_rate:.0f} |\n\n"
        f"reclaim / raw: {reclaim_rate / raw_rate:.2f}; of reclaim's time per schema,"
        f" {inside:.0f} µs are the backend's DROP and {per:.0f} µs reclaim's bookkeeping"
    )
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        out = (
            RESULTS
            if args.tables == 0
            else RESULTS.with_name(f"sweep_postgres_t{args.tables}.json")
        )
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
