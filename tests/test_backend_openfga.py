"""OpenFGA stores and tuples against a local stand-in of OpenFGA's HTTP API
(``tests/providers/openfga.py``).

Proves: a store whose id was never recorded is found by its exact name across pages of
``GET /stores``, and only it is deleted; ``exists`` asks ``GET`` since ``DELETE`` answers 204
for a store that is gone; a 404 that is not OpenFGA's never counts as released; tuples written
after the record was journaled are found by the name they carry, never another test's (``_1``
is not ``_12``), and a tuple without the name is refused; ids from the server or the registry
cannot leave their URL; the API token stays out of errors, the registry and ``reclaim status``;
429 is retried; the registry-less sweep lists only reclaim names. An acquire that provably made
nothing (no connection, a refused key, a tuple that exists already) leaves no entry and deletes
nothing.

The kits run both kinds on this stand-in: ``check_backend`` (a store bare and with a model, and
tuples in a store others' tuples share) in tests/test_conformance.py; ``check_crash`` (a
SIGKILLed owner's store, whose release waits out a 429, and tuples are released by its
watchdog, or by a sweep when the watchdog died too) and ``check_outage`` (a server that is down
keeps the entry failed, no token shown, until a later sweep) in tests/test_crash_kit.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import reclaim
from _services import closed_port
from conftest import reclaim_cli, registry_is_empty
from providers.openfga import MODEL, OpenFgaServer, new_ulid
from reclaim import AcquireError, ForeignNameError, NotCreatedError, ReleaseError, sweep
from reclaim._registry import open_registry
from reclaim.backends import Backend, _http, load_backend
from reclaim.backends import make_name as _make_name
from reclaim.backends.openfga import FgaStore, FgaTuples, OpenFgaStore, OpenFgaTuples, TupleLike
from reclaim.testing import dead_identity

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
