"""OpenFGA stores and tuples against a local stand-in of OpenFGA's HTTP API
(``tests/providers/openfga.py``).

Proves: both kinds pass the conformance kit; a store whose id was never recorded is found by its
exact name across pages of ``GET /stores``, and only it is deleted; ``exists`` asks ``GET`` since
``DELETE`` answers 204 for a store that is gone; a 404 that is not OpenFGA's never counts as
released; tuples written after the record was journaled are found by the name they carry, never
another test's (``_1`` is not ``_12``), and a tuple without the name is refused; ids from the
server or the registry cannot leave their URL; the API token stays out of errors, the registry and
``reclaim status``; 429 is retried; a SIGKILLed owner's store and tuples are released by its
watchdog, or by ``reclaim sweep`` when the watchdog died too; a server that is down keeps the
entries failed until a sweep after it is back; the registry-less sweep lists only reclaim names.
An acquire that provably made nothing (no connection, a refused key, a tuple that exists
already) leaves no entry and deletes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import reclaim
from _services import closed_port
from conftest import CHILD_TIMEOUT, Spawner, kill, reclaim_cli, registry_is_empty, wait_until
from providers.openfga import MODEL, OpenFgaServer, new_ulid
from reclaim import AcquireError, ForeignNameError, NotCreatedError, ReleaseError, sweep
from reclaim._registry import open_registry
from reclaim.backends import Backend, Record, _http, load_backend
from reclaim.backends import make_name as _make_name
from reclaim.backends.openfga import FgaStore, FgaTuples, OpenFgaStore, OpenFgaTuples, TupleLike
from reclaim.testing import check_backend, dead_identity

RUN = "0a1b2c3d"
NOW = 1_800_000_000  # one creation time for every name made here: the same name, every call
API_TOKEN = "fga-preshared-key-4c3b2a"


@pytest.fixture
def fga() -> Iterator[OpenFgaServer]:
    with OpenFgaServer(token=API_TOKEN) as server:
        yield server


@pytest.fixture
def shared(fga: OpenFgaServer) -> str:
    """A store other tests share, with the model, and tuples that are not ours."""
    store_id = fga.make_store("shared-e2e")
    fga.put(
        store_id,
        ("user:anne", "viewer", "document:budget"),
        ("user:bob", "owner", f"document:{make_name(RUN, 12)}"),
        ("user:carl", "viewer", f"document:x{make_name(RUN, 1)}"),
    )
    return store_id


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits the backend asks for, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(_http, "_pause", seen.append)
    return seen


def make_name(run_id: str, seq: int) -> str:
    return _make_name(run_id, seq, now=NOW)


def store_backend(server: OpenFgaServer, model: Mapping[str, Any] | None = None) -> OpenFgaStore:
    return OpenFgaStore(server.url, api_token=API_TOKEN, model=model)


def tuples_backend(server: OpenFgaServer, store_id: str) -> OpenFgaTuples:
    mine: list[TupleLike] = [
        ("user:{name}", "owner", "document:{name}-1"),
        {"user": "user:anne", "relation": "viewer", "object": "document:{name}-1"},
    ]
    return OpenFgaTuples(store_id, api_url=server.url, api_token=API_TOKEN, tuples=mine)


def test_kinds_load_through_entry_points() -> None:
    assert load_backend("openfga.store") is OpenFgaStore
    assert load_backend("openfga.tuples") is OpenFgaTuples


# --- the conformance kit -----------------------------------------------------------------------


@pytest.mark.parametrize("model", [False, True], ids=["bare", "with-model"])
def test_store_conformance(
    model: bool, fga: OpenFgaServer, tmp_path: Path, registry_path: str
) -> None:
    def delete_outside(record: Record) -> None:
        fga.stores[record["id"]]["deleted"] = True

    check_backend(
        lambda: store_backend(fga, model=MODEL if model else None),
        registry=tmp_path / "kit.sqlite3",
        delete_outside=delete_outside,
    )
    assert fga.live_stores() == {}


def test_tuples_conformance(
    fga: OpenFgaServer, shared: str, tmp_path: Path, registry_path: str
) -> None:
    before = fga.keys(shared)

    def delete_outside(record: Record) -> None:
        for key in fga.keys(shared) - before:
            del fga.tuples[shared][key]

    check_backend(
        lambda: tuples_backend(fga, shared),
        registry=tmp_path / "kit.sqlite3",
        delete_outside=delete_outside,
    )
    assert fga.keys(shared) == before, "only our tuples went, the others' stayed"


# --- stores ------------------------------------------------------------------------------------


def test_store_value_writes_checks_and_reads(fga: OpenFgaServer) -> None:
    store, record = store_backend(fga, model=MODEL).acquire(make_name(RUN, 1))
    assert isinstance(store, FgaStore)
    assert store.id == record["id"]
    assert store.model_id is not None
    store.write(("user:anne", "viewer", "document:budget"))
    assert store.check("user:anne", "viewer", "document:budget")
    assert not store.check("user:bob", "viewer", "document:budget")
    assert store.read() == [
        {"user": "user:anne", "relation": "viewer", "object": "document:budget"}
    ]
    store.delete(("user:anne", "viewer", "document:budget"), ("user:x", "viewer", "document:y"))
    assert store.read() == []
    assert API_TOKEN not in repr(store)
    OpenFgaStore.release(record)
    OpenFgaStore.release(record)
    deletes = [s for m, _, s in fga.answered if m == "DELETE"]
    assert deletes == [204], "the second release heard 404 store_id_not_found: nothing to do"
    assert not OpenFgaStore.exists(record)


def test_planned_store_found_by_exact_name_across_pages(fga: OpenFgaServer) -> None:
    name = make_name(RUN, 1)
    strangers = [f"{name}2", f"{name}-prod", f"x{name}", "team-store"]
    for n in range(130):  # more than a page of 100
        fga.make_store(f"other-{n:03d}", model=False)
    for stranger in strangers:
        fga.make_store(stranger, model=False)
    backend = store_backend(fga)
    planned = backend.plan(name)
    assert not OpenFgaStore.exists(planned)
    backend.acquire(name)
    fga.make_store(name, model=False)  # OpenFGA allows a second store of the same name
    assert OpenFgaStore.exists(planned)
    OpenFgaStore.release(planned)
    assert name not in fga.live_stores().values()
    assert set(strangers) <= set(fga.live_stores().values())
    assert len(fga.live_stores()) == 130 + len(strangers)
    listing = [r for r in fga.requests if r.method == "GET" and r.path == "/stores"]
    assert any(r.arg("continuation_token") for r in listing), "it followed the pages"


def test_the_id_of_a_users_store_is_refused(fga: OpenFgaServer, shared: str) -> None:
    """I8: a record with a reclaim name but the id of a user's store deletes nothing."""
    hostile = {**store_backend(fga).plan(make_name(RUN, 1)), "id": shared}
    for call in (OpenFgaStore.release, OpenFgaStore.exists):
        with pytest.raises(ForeignNameError, match=r"refused.*'shared"):
            call(hostile)
    assert shared in fga.live_stores()
    assert not [r for r in fga.requests if r.method == "DELETE"]


def test_a_404_that_is_not_openfgas_is_not_released(fga: OpenFgaServer) -> None:
    _, record = store_backend(fga).acquire(make_name(RUN, 2))
    wrong = {**record, "api_url": f"{fga.url}/wrong-prefix"}
    with pytest.raises(ReleaseError, match=r"HTTP 404 \(undefined_endpoint: Not Found\)"):
        OpenFgaStore.release(wrong)
    assert record["id"] in fga.live_stores()
    OpenFgaStore.release(record)


def test_ids_cannot_leave_their_url(fga: OpenFgaServer) -> None:
    record = store_backend(fga).plan(make_name(RUN, 3))
    record["id"] = "../../stores"  # a tampered registry
    with pytest.raises(ValueError, match="not an OpenFGA store id"):
        OpenFgaStore.release(record)
    assert fga.requests == []
    fga.inject(1, 201, {"id": "../x", "name": make_name(RUN, 3)}, method="POST")
    with pytest.raises(AcquireError, match="no valid store id"):
        store_backend(fga).acquire(make_name(RUN, 3))
    with pytest.raises(ValueError, match="ULID"):
        OpenFgaTuples("../../stores", api_url=fga.url)


def test_wrong_token_is_clear_and_secret_free(fga: OpenFgaServer) -> None:
    wrong = "wrong-fga-key-0f1e2d"
    with pytest.raises(AcquireError) as refused:
        OpenFgaStore(fga.url, api_token=wrong).acquire(make_name(RUN, 4))
    text = str(refused.value)
    assert "HTTP 401 (unauthenticated: unauthenticated)" in text
    assert wrong not in text
    _, record = store_backend(fga).acquire(make_name(RUN, 4))
    fga.inject(1, 403, {"code": "forbidden", "message": f"key {API_TOKEN}"}, method="DELETE")
    with pytest.raises(ReleaseError, match=r"HTTP 403 \(forbidden: key \*\*\*\)") as info:
        OpenFgaStore.release(record)  # called directly: no reaper redacts after it
    assert API_TOKEN not in str(info.value)
    OpenFgaStore.release(record)


def test_a_failed_model_write_leaves_no_store(fga: OpenFgaServer, registry_path: str) -> None:
    with reclaim.Fixture("half") as fixture, pytest.raises(AcquireError, match="type_definitions"):
        fixture.acquire(store_backend(fga, model={"schema_version": "1.1"}))
    assert fga.live_stores() == {}


def test_429_is_retried(fga: OpenFgaServer, waits: list[float]) -> None:
    fga.throttle(2, retry_after="5")
    _, record = store_backend(fga).acquire(make_name(RUN, 5))
    OpenFgaStore.release(record)
    assert waits == [5.0, 5.0]
    assert fga.live_stores() == {}


def test_environment_defaults(fga: OpenFgaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGA_API_URL", fga.url)
    monkeypatch.setenv("FGA_API_TOKEN", API_TOKEN)
    store, record = OpenFgaStore().acquire(make_name(RUN, 6))
    monkeypatch.setenv("FGA_STORE_ID", store.id)
    fga.models[store.id].append({**MODEL, "id": new_ulid()})
    value, tuples_record = OpenFgaTuples(tuples=[("user:{name}", "owner", "document:a")]).acquire(
        make_name(RUN, 7)
    )
    assert value.read() == [
        {"user": f"user:{make_name(RUN, 7)}", "relation": "owner", "object": "document:a"}
    ]
    OpenFgaTuples.release(tuples_record)
    OpenFgaStore.release(record)
    assert fga.live_stores() == {}


def test_missing_httpx_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from reclaim.backends.openfga import OpenFgaStore\n"
        "try:\n"
        "    OpenFgaStore('http://127.0.0.1:1').acquire('rc_0a1b2c3d_a_1')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.startswith("MissingExtraError")
    assert "pip install 'reclaim[http]'" in out.stdout


# --- tuples ------------------------------------------------------------------------------------


def test_tuples_written_later_are_found_by_the_name(fga: OpenFgaServer, shared: str) -> None:
    """I1 without updating the record: what the value writes after acquire carries the name,
    and the planned record's release finds it."""
    others = fga.keys(shared)
    backend = tuples_backend(fga, shared)
    name = make_name(RUN, 1)
    planned = backend.plan(name)
    value, record = backend.acquire(name)
    assert isinstance(value, FgaTuples)
    assert record == planned, "nothing about the tuples is in the record"
    many = [("user:anne", "viewer", value.ref("document", f"-{n}")) for n in range(2, 160)]
    value.write(*many)
    value.write(("user:" + name, "viewer", "document:budget"))  # the name as the user
    assert len(value.read()) == 2 + len(many) + 1
    assert value.check("user:anne", "viewer", f"document:{name}-2")
    OpenFgaTuples.release(planned)
    assert fga.keys(shared) == others
    writes = [r.json() for r in fga.requests if r.path.endswith("/write")]
    deletes = [w["deletes"] for w in writes if "deletes" in w]
    assert all(d["on_missing"] == "ignore" for d in deletes)
    assert max(len(d["tuple_keys"]) for d in deletes) == 100, "batches of at most 100"
    assert not OpenFgaTuples.exists(planned)
    OpenFgaTuples.release(planned)


def test_a_tuple_without_the_name_is_refused(fga: OpenFgaServer, shared: str) -> None:
    value, record = tuples_backend(fga, shared).acquire(make_name(RUN, 1))
    before = fga.keys(shared)
    for stranger in (
        ("user:anne", "viewer", "document:budget"),
        ("user:anne", "viewer", f"document:{value.name}2"),  # another name: ..._12
        ("user:anne", "viewer", f"document:x{value.name}"),
    ):
        with pytest.raises(ValueError, match="does not carry"):
            value.write(stranger)
    with pytest.raises(ValueError, match="must not start with a digit"):
        value.ref("document", "2")
    with pytest.raises(ValueError, match=r"must carry '\{name\}'"):
        OpenFgaTuples(shared, api_url=fga.url, tuples=[("user:anne", "viewer", "document:x")])
    assert fga.keys(shared) == before
    OpenFgaTuples.release(record)


def test_only_tuples_that_start_with_the_name_are_released(fga: OpenFgaServer, shared: str) -> None:
    """A user's ``document:myapp_<name>`` only contains the name: it is not the test's."""
    name = make_name(RUN, 1)
    theirs = ("user:anne", "viewer", f"document:myapp_{name}")
    fga.put(shared, theirs)
    OpenFgaTuples.release(tuples_backend(fga, shared).plan(name))
    assert theirs in fga.keys(shared)


def test_tuples_of_a_deleted_store_are_released(fga: OpenFgaServer, shared: str) -> None:
    _, record = tuples_backend(fga, shared).acquire(make_name(RUN, 1))
    fga.stores[shared]["deleted"] = True
    assert not OpenFgaTuples.exists(record)
    OpenFgaTuples.release(record)


def test_sweeper_releases_tuples_and_keeps_the_token_secret(
    fga: OpenFgaServer, shared: str, registry_path: str
) -> None:
    others = fga.keys(shared)
    backend = tuples_backend(fga, shared)
    reg = open_registry(registry_path)
    try:
        reg.open_run(RUN, dead_identity(), label="fga")
        name = make_name(RUN, 1)
        rid = reg.plan(RUN, "fga", backend.kind, name, backend.plan(name))
        _, record = backend.acquire(name)
        reg.mark_acquired(rid, record)
        echo = {"code": "internal_error", "message": f"key {API_TOKEN} is read-only"}
        fga.inject(3, 500, echo, method="POST")
        assert sweep(reg, grace=0).failed == 1
        kept = reg.get_resource(rid)
        assert kept is not None
        assert kept.last_error is not None
        assert "HTTP 500 (internal_error: key *** is read-only)" in kept.last_error
        for args in (("status", "--json"), ("status",)):
            out = reclaim_cli(*args).stdout
            assert "failed" in out
            assert API_TOKEN not in out
        fga.heal()
        assert sweep(reg, grace=0).released == 1
        assert fga.keys(shared) == others
    finally:
        reg.close()


# --- the registry-less sweep -------------------------------------------------------------------


def test_leftovers_are_reclaim_names_only(fga: OpenFgaServer) -> None:
    ours = [make_name(RUN, n) for n in (1, 2, 3)]
    foreign = [f"{make_name(RUN, 4)}-prod", f"team-{make_name(RUN, 5)}", "rc_admin", "prod"]
    for n in range(105):
        fga.make_store(f"filler-{n}", model=False)
    for name in ours + foreign:
        fga.make_store(name, model=False)
    target = f"openfga+http://:{API_TOKEN}@127.0.0.1:{fga.port}"
    found = list(OpenFgaStore.list_leftovers(target))
    assert sorted(f.record["name"] for f in found) == ours
    assert {f.run_id for f in found} == {RUN}
    for leftover in found:
        OpenFgaStore.release(leftover.record)
    assert set(fga.live_stores().values()) >= set(foreign)
    assert not set(fga.live_stores().values()) & set(ours)


# --- crashes -----------------------------------------------------------------------------------

HOLDER = """
import json, os, sys, time
import reclaim
from reclaim.backends.openfga import OpenFgaStore, OpenFgaTuples
from reclaim._run import current_run

go = sys.argv[1] if len(sys.argv) > 1 else None
try:
    with reclaim.Fixture("sarah") as f:
        store = f.acquire(OpenFgaStore())
        mine = f.acquire(OpenFgaTuples(tuples=[("user:{name}", "owner", "document:{name}")]))
        mine.write(("user:anne", "viewer", mine.ref("document", "-late")))  # after the record
        run = current_run()
        watchdog = run.watchdog.pid if run.watchdog else None
        print(json.dumps({"run": run.id, "watchdog": watchdog, "store": store.id,
                          "name": mine.name}), flush=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (go and os.path.exists(go)):
            time.sleep(0.01)
except BaseException as exc:
    notes = [str(e) for e in getattr(exc, "exceptions", [])]
    print(json.dumps({"error": str(exc), "notes": notes}), flush=True)
"""


@pytest.fixture
def env(fga: OpenFgaServer, shared: str, monkeypatch: pytest.MonkeyPatch) -> OpenFgaServer:
    """The stand-in, named in the environment the child processes inherit."""
    monkeypatch.setenv("FGA_API_URL", fga.url)
    monkeypatch.setenv("FGA_API_TOKEN", API_TOKEN)
    monkeypatch.setenv("FGA_STORE_ID", shared)
    return fga


def test_sigkill_then_the_watchdog_releases(
    spawn: Spawner, env: OpenFgaServer, shared: str, registry_path: str
) -> None:
    others = env.keys(shared)
    proc, held = spawn(HOLDER)
    assert held["store"] in env.live_stores()
    assert len(env.keys(shared) - others) == 2
    env.throttle(1, retry_after="1")  # the watchdog meets a rate limit, and waits it out
    kill(proc)
    wait_until(lambda: held["store"] not in env.live_stores() and env.keys(shared) == others)
    assert [s for _, _, s in env.injected] == [429]
    reg = open_registry(registry_path)
    try:
        wait_until(lambda: reg.get_run(held["run"]) is None)
        by = {e.detail.get("by") for e in reg.events() if e.event == "resource.released"}
        assert by == {"watchdog"}
    finally:
        reg.close()


def test_watchdog_killed_too_then_sweep(
    spawn: Spawner, env: OpenFgaServer, shared: str, registry_path: str
) -> None:
    others = env.keys(shared)
    proc, held = spawn(HOLDER)
    os.kill(held["watchdog"], signal.SIGKILL)
    kill(proc)
    time.sleep(0.3)
    assert held["store"] in env.live_stores(), "nobody released anything yet"
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 2
    assert held["store"] not in env.live_stores()
    assert env.keys(shared) == others


def test_server_down_keeps_the_entries_failed_until_a_later_sweep(
    spawn: Spawner, env: OpenFgaServer, shared: str, registry_path: str, tmp_path: Path
) -> None:
    others = env.keys(shared)
    go = tmp_path / "go"
    proc, held = spawn(HOLDER, str(go))
    env.down()
    try:
        go.write_text("")
        proc.wait(timeout=CHILD_TIMEOUT)
        assert proc.stdout is not None
        out = proc.stdout.read()
        outcome = json.loads(out)
        assert len(outcome["notes"]) == 2
        assert all("stays in state failed" in n for n in outcome["notes"])
        status = reclaim_cli("status", "--json").stdout
        (run,) = json.loads(status)["runs"]
        assert [r["condition"] for r in run["resources"]] == ["failed", "failed"]
        assert all("is the server up" in r["last_error"] for r in run["resources"])
        assert API_TOKEN not in status
        assert API_TOKEN not in out
    finally:
        env.up()
    assert held["store"] in env.live_stores()
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert (swept["released"], swept["failed"]) == (2, 0)
    assert held["store"] not in env.live_stores()
    assert env.keys(shared) == others


# --- an acquire that made nothing (issue 11) ---------------------------------------------------


def test_an_unreachable_server_leaves_no_entry(registry_path: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    backends: list[Backend[Any]] = [
        OpenFgaStore(url, api_token=API_TOKEN),
        OpenFgaTuples(
            new_ulid(),
            api_url=url,
            api_token=API_TOKEN,
            tuples=[("user:{name}", "owner", "document:{name}-1")],
        ),
    ]
    for backend in backends:
        with pytest.raises(NotCreatedError, match="ConnectError"):
            backend.acquire(make_name(RUN, 40))
        with reclaim.Fixture("down") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert not isinstance(caught.value, ReleaseError)
        assert "ConnectError" in str(caught.value), "the cause is named"
        assert API_TOKEN not in str(caught.value)
    assert registry_is_empty(registry_path)


def test_a_refused_key_leaves_no_entry(fga: OpenFgaServer, shared: str, registry_path: str) -> None:
    wrong = "wrong-fga-key-9d8c"
    backends: list[Backend[Any]] = [
        OpenFgaStore(fga.url, api_token=wrong),
        OpenFgaTuples(
            shared,
            api_url=fga.url,
            api_token=wrong,
            tuples=[("user:{name}", "owner", "document:{name}-1")],
        ),
    ]
    for backend in backends:
        with reclaim.Fixture("wrong") as fixture, pytest.raises(AcquireError) as caught:
            fixture.acquire(backend)
        assert "HTTP 401" in str(caught.value)
        assert "nothing was created" in str(caught.value)
        assert wrong not in str(caught.value)
        assert wrong not in "".join(getattr(caught.value, "__notes__", []))
    assert registry_is_empty(registry_path)
    assert [m for m, _ in fga.calls] == ["POST", "POST"], "no compensating read or delete"


def test_a_tuple_that_exists_already_is_left_alone(
    fga: OpenFgaServer, shared: str, registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenFGA refuses the whole write (400): nothing of ours was written, and the tuple that
    carries the (colliding) name is somebody else's. Before, the compensating release deleted
    every tuple carrying the name."""
    name = make_name(RUN, 45)
    theirs = ("user:anne", "viewer", f"document:{name}-1")
    fga.put(shared, theirs)
    before = fga.keys(shared)
    monkeypatch.setattr(OpenFgaTuples, "adapt_name", lambda _self, _proposed: name)
    with reclaim.Fixture("collide") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(tuples_backend(fga, shared))
    assert "already exists" in str(caught.value)
    assert "nothing was created" in str(caught.value)
    assert fga.keys(shared) == before
    assert registry_is_empty(registry_path)


def test_a_later_batch_that_fails_is_not_proof(fga: OpenFgaServer, shared: str) -> None:
    """101 tuples are two write calls: when the second is refused the first is written."""
    tuples: list[TupleLike] = [
        ("user:{name}", "viewer", f"document:{{name}}-{chr(97 + i % 26)}{i}") for i in range(101)
    ]
    name = make_name(RUN, 46)
    fga.put(shared, ("user:" + name, "viewer", f"document:{name}-w100"))
    backend = OpenFgaTuples(shared, api_url=fga.url, api_token=API_TOKEN, tuples=tuples)
    with pytest.raises(AcquireError, match="already exists") as caught:
        backend.acquire(name)
    assert not isinstance(caught.value, NotCreatedError)
    OpenFgaTuples.release(backend.plan(name))


def test_a_server_error_on_create_is_not_proof(fga: OpenFgaServer) -> None:
    fga.inject(1, 500, {"code": "internal_error", "message": "boom"}, method="POST")
    with pytest.raises(AcquireError, match="HTTP 500") as caught:
        store_backend(fga).acquire(make_name(RUN, 47))
    assert not isinstance(caught.value, NotCreatedError)
