"""OpenFGA: a store per test (``OpenFgaStore``), or a test's tuples in a shared store
(``OpenFgaTuples``).

``OpenFgaStore`` creates a store named with reclaim's name and deletes it at release. Its id is
known only once ``POST /stores`` has answered, so release finds a store whose id was never
recorded by its name, paging through ``GET /stores`` (I1); OpenFGA allows several stores with
one name, and each of them carrying this exact reclaim name is deleted. ``DELETE
/stores/{id}`` answers 204 even for a store that is gone (I3), so ``exists`` asks ``GET
/stores/{id}`` (404 once deleted).

``OpenFgaTuples`` is for suites that share one store (with the application's authorization
model) between tests. The tuples a test writes are its resource. They are found again *by
content*, not by a list in the record: every tuple's object id or user id must start with
reclaim's name right after its type (``document:{name}-budget``, ``user:{name}``), and
``FgaTuples.write`` refuses one that does not; ``document:myapp_{name}`` is not the test's.
Release reads the store's tuples and deletes those that carry the name, with ``on_missing:
"ignore"`` (OpenFGA 1.10 or later), so a tuple the test wrote a moment before it was killed is
found although no record mentions it, and a second release is a no-op. The cost: release reads
every tuple of the store (100 a page).

The API token (OpenFGA's pre-shared key, ``Authorization: Bearer``) is a secret field. Needs
httpx: ``pip install 'reclaim[http]'``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from reclaim.backends import (
    Backend,
    BackendError,
    Leftover,
    Record,
    refuse,
)
from reclaim.backends._http import (
    Context,
    Flow,
    FlowBackend,
    FlowValue,
    ProtocolError,
    Request,
    check_url,
    json_object,
    leftover_probe,
    send,
    send_or_gone,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["FgaStore", "FgaTuples", "OpenFgaStore", "OpenFgaTuples", "TupleLike"]

#: OpenFGA's HTTP port on a development machine (``openfga run``).
DEFAULT_API_URL: Final = "http://localhost:8080"
#: Store and model ids are ULIDs: 26 characters of Crockford's base 32.
_ULID: Final = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
#: A reclaim name, to check the shape of tuple templates with.
_SAMPLE: Final = "rc_00000000_0_1"
#: OpenFGA's default limits: tuples per write call, and page size of reads and store lists.
_BATCH: Final = 100
#: The answers to a delete that mean it was done.
_DONE: Final = range(200, 300)

#: A tuple as the value's helpers take it: ``("user:anne", "viewer", "document:x")``, or a
#: mapping with ``user``, ``relation``, ``object`` (and ``condition`` when written).
TupleLike = Mapping[str, Any] | tuple[str, str, str]


class _Handle(FlowValue):
    """What the values share: the store's address and the HTTP calls on it."""

    def __init__(self, context: Context, store_id: str, model_id: str | None) -> None:
        super().__init__(context)
        self._record: Record = dict(context.record)
        self.name: str = self._record["name"]
        self.api_url: str = self._record["api_url"]
        self.store_id = store_id
        self.model_id = model_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} store={self.store_id} at {self.api_url}>"

    def write(self, *tuples: TupleLike) -> None:
        """Write tuples (100 a call; more are several calls, not one transaction)."""
        keys = [_tuple_key(t, with_condition=True) for t in tuples]
        flow = _write_tuples(self._record, self.store_id, self.model_id, keys)
        self._run(flow, "could not write tuples")

    def delete(self, *tuples: TupleLike) -> None:
        """Delete tuples; one that does not exist is skipped (``on_missing: "ignore"``)."""
        keys = [_tuple_key(t, with_condition=False) for t in tuples]
        self._run(_delete_tuples(self._record, self.store_id, keys), "could not delete tuples")

    def check(self, user: str, relation: str, object: str) -> bool:
        """Is ``user`` related to ``object`` by ``relation`` (``POST .../check``)?"""
        body: dict[str, Any] = {"tuple_key": {"user": user, "relation": relation, "object": object}}
        if self.model_id:
            body["authorization_model_id"] = self.model_id
        url = f"{_store_url(self._record, self.store_id)}/check"
        flow = send(_fga_request(self._record, "POST", url, json=body, creates=False))
        return json_object(self._run(flow, "could not check")).get("allowed") is True

    def _tuples(self) -> list[dict[str, Any]]:
        return self._run(_read_tuples(self._record, self.store_id), "could not read tuples")


class FgaStore(_Handle):
    """The store a test gets (``OpenFgaStore``): ``id``, ``name``, ``model_id`` (when a model
    was written), and ``write``/``delete``/``check``/``read`` on it."""

    @property
    def id(self) -> str:
        """The store's id (a ULID)."""
        return self.store_id

    def read(self) -> list[dict[str, Any]]:
        """Every tuple of the store (their ``key``s)."""
        return self._tuples()


class FgaTuples(_Handle):
    """A test's tuples in a shared store (``OpenFgaTuples``). Every tuple written through it
    must carry :attr:`name` in its object or user id: that is how release finds it."""

    def ref(self, type_: str, suffix: str = "") -> str:
        """``"<type>:<name><suffix>"``, an object or user id that carries the name.

        ``suffix`` must not start with a digit (``_1`` + ``2`` would be another name's).
        """
        if suffix[:1].isdigit():
            raise ValueError(f"suffix {suffix!r} must not start with a digit")
        return f"{type_}:{self.name}{suffix}"

    def write(self, *tuples: TupleLike) -> None:
        """Write tuples, each carrying :attr:`name` in its object or user (else ValueError)."""
        _check_carried(self.name, tuples)
        super().write(*tuples)

    def read(self) -> list[dict[str, Any]]:
        """The tuples of the store that carry :attr:`name` (their ``key``s)."""
        return [k for k in self._tuples() if _carries(self.name, k)]


class OpenFgaStore(FlowBackend[FgaStore]):
    """An OpenFGA store of its own, deleted at release.

    ::

        store = persona.acquire(OpenFgaStore("http://127.0.0.1:8080", model=MODEL))
        store.write(("user:anne", "viewer", "document:budget"))
        assert store.check("user:anne", "viewer", "document:budget")

    Args:
        api_url: OpenFGA's HTTP API; ``FGA_API_URL``, else ``http://localhost:8080``.
        api_token: the pre-shared key, when the server has one; ``FGA_API_TOKEN`` by default.
        model: an authorization model (the JSON of ``POST /stores/{id}/authorization-models``:
            ``schema_version``, ``type_definitions``...) written into the new store.
        timeout: seconds per HTTP call.
    """

    kind = "openfga.store"
    secret_fields = frozenset({"api_token"})
    url_schemes = ("openfga+http", "openfga+https")

    def __init__(
        self,
        api_url: str | None = None,
        *,
        api_token: str | None = None,
        model: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> None:
        url = api_url or os.environ.get("FGA_API_URL") or DEFAULT_API_URL
        self.api_url = check_url(url.rstrip("/"), "api_url")
        self.api_token = api_token if api_token is not None else os.environ.get("FGA_API_TOKEN")
        self.model = dict(model) if model is not None else None
        self.timeout = timeout

    def plan(self, name: str) -> Record:
        return {
            "name": name,
            "id": None,
            "api_url": self.api_url,
            "api_token": self.api_token,
            "timeout": self.timeout,
        }

    def _create_flow(self, record: Record) -> Flow[tuple[str, str | None]]:
        url = f"{self.api_url}/stores"
        body = {"name": record["name"]}
        response = yield from send(
            _fga_request(record, "POST", url, json=body), 200, 201, proof=True
        )
        store_id = _check_ulid(json_object(response).get("id"), "store id")
        record["id"] = store_id
        if self.model is None:
            return store_id, None
        url = f"{_store_url(record, store_id)}/authorization-models"
        response = yield from send(_fga_request(record, "POST", url, json=self.model), 200, 201)
        found = json_object(response).get("authorization_model_id")
        return store_id, _check_ulid(found, "authorization model id")

    def _acquired(self, record: Record, ids: tuple[str, str | None]) -> tuple[FgaStore, Record]:
        return FgaStore(Context(type(self), record), *ids), record

    def adapt_name(self, proposed: str) -> str:
        return self.name_style.spell(proposed)

    @classmethod
    def _context(cls, record: Record) -> Context:
        if record.get("id"):
            _store_url(record, record["id"])  # checked before anything is sent: a ULID
        return Context(cls, record)

    @classmethod
    def _ids_flow(cls, record: Record) -> Flow[list[str]]:
        if record.get("id"):
            # Delete the id only once OpenFGA says the store behind it has this record's name
            # (I8); gone already: done (I3).
            return [record["id"]] if (yield from _store_owned(cls, record)) else []
        return (yield from _stores_named(record))

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        for store_id in (yield from cls._ids_flow(record)):
            # 204, also for a store deleted before (delete_store.go); a 404 is gone only when
            # OpenFGA itself says so.
            yield from send_or_gone(
                _fga_request(record, "DELETE", _store_url(record, store_id)),
                *_DONE,
                gone=(404,),
                is_gone=_store_not_found,
            )

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        return bool((yield from cls._ids_flow(record)))

    @classmethod
    def describe(cls, record: Record) -> str:
        ident = f" ({record['id']})" if record.get("id") else ""
        return f"OpenFGA store {record.get('name')}{ident} at {record.get('api_url')}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Stores whose name is a reclaim name, at ``openfga+http://HOST:PORT`` (the API URL
        with ``openfga+`` before its scheme). The token is ``FGA_API_TOKEN``, or the URL's
        password (``openfga+https://:TOKEN@fga.test``)."""
        template = leftover_probe(cls, target, ("api_url", "api_token"), "FGA_API_TOKEN")
        stores = Context(cls, template, where=template["api_url"]).run(
            _list_stores(template), BackendError, "could not list the stores"
        )
        for store in stores:
            name, store_id = store.get("name"), store.get("id")
            if not isinstance(name, str) or not isinstance(store_id, str):
                continue
            parsed = cls.name_style.parse(name)
            if parsed is None:
                continue  # never anything without reclaim's whole name
            yield Leftover.of({**template, "name": name, "id": store_id}, parsed)


class OpenFgaTuples(FlowBackend[FgaTuples]):
    """The tuples one test writes into a store it shares with others, deleted at release.

    ::

        fga = persona.acquire(OpenFgaTuples(store_id, tuples=[
            {"user": "user:{name}", "relation": "owner", "object": "document:{name}-1"},
        ]))
        fga.write(("user:anne", "viewer", fga.ref("document", "-1")))

    Every tuple must carry reclaim's name (``{name}`` in ``tuples`` is replaced by it) in its
    object or user id: release finds the tuples by it, with no list in the record (see the
    module's text).

    Args:
        store_id: the shared store; ``FGA_STORE_ID`` by default.
        api_url: ``FGA_API_URL``, else ``http://localhost:8080``.
        api_token: ``FGA_API_TOKEN`` by default; a secret field.
        tuples: written by acquire.
        model_id: the authorization model to write against (``FGA_MODEL_ID``; default: the
            store's latest).
        timeout: seconds per HTTP call.
    """

    kind = "openfga.tuples"
    secret_fields = frozenset({"api_token"})

    def __init__(
        self,
        store_id: str | None = None,
        *,
        api_url: str | None = None,
        api_token: str | None = None,
        tuples: Sequence[TupleLike] = (),
        model_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        store = store_id or os.environ.get("FGA_STORE_ID", "")
        if not _ULID.fullmatch(store):
            raise ValueError(
                f"OpenFgaTuples needs the id of the shared store (a ULID), not {store!r}:"
                " pass store_id or set FGA_STORE_ID"
            )
        model = model_id or os.environ.get("FGA_MODEL_ID") or None
        if model is not None and not _ULID.fullmatch(model):
            raise ValueError(f"model_id {model!r} is not an OpenFGA id (a ULID)")
        url = api_url or os.environ.get("FGA_API_URL") or DEFAULT_API_URL
        self.api_url = check_url(url.rstrip("/"), "api_url")
        self.api_token = api_token if api_token is not None else os.environ.get("FGA_API_TOKEN")
        self.store_id = store
        self.model_id = model
        self.tuples = [_tuple_key(t, with_condition=True) for t in tuples]
        for key in self.tuples:
            if not _carries(_SAMPLE, _fill(key, _SAMPLE)):
                raise ValueError(
                    f"tuple {key} must carry '{{name}}' right after the type of its user or"
                    " object id: release finds a test's tuples by reclaim's name, e.g."
                    " 'document:{name}-1'"
                )
        self.timeout = timeout

    def plan(self, name: str) -> Record:
        return {
            "name": name,
            "api_url": self.api_url,
            "store_id": self.store_id,
            "model_id": self.model_id,
            "api_token": self.api_token,
            "timeout": self.timeout,
        }

    def _create_flow(self, record: Record) -> Flow[None]:
        tuples = [_fill(t, record["name"]) for t in self.tuples]
        _check_carried(record["name"], tuples)
        # NotCreatedError when its first write call wrote nothing.
        yield from _write_tuples(record, self.store_id, self.model_id, tuples)

    def _acquired(self, record: Record, _made: None) -> tuple[FgaTuples, Record]:
        return FgaTuples(Context(type(self), record), self.store_id, self.model_id), record

    @classmethod
    def _mine_flow(cls, record: Record) -> Flow[list[dict[str, Any]]]:
        store_id = _check_ulid(record["store_id"], "store id")
        keys = yield from _read_tuples(record, store_id)
        return [_tuple_key(k, with_condition=False) for k in keys if _carries(record["name"], k)]

    @classmethod
    def _release_flow(cls, record: Record) -> Flow[None]:
        mine = yield from cls._mine_flow(record)
        yield from _delete_tuples(record, record["store_id"], mine)

    @classmethod
    def _exists_flow(cls, record: Record) -> Flow[bool]:
        return bool((yield from cls._mine_flow(record)))

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"OpenFGA tuples of {record.get('name')} in store {record.get('store_id')}"


# --- OpenFGA calls ---------------------------------------------------------------------------


def _fga_request(record: Record, method: str, url: str, **options: Any) -> Request:
    headers = {"Accept": "application/json"}
    if record.get("api_token"):
        headers["Authorization"] = f"Bearer {record['api_token']}"
    return Request(method, url, headers=headers, **options)


def _store_url(record: Record, store_id: str) -> str:
    # Only a ULID reaches the path: checked here whatever the record says.
    if not _ULID.fullmatch(str(store_id)):
        raise ValueError(f"{store_id!r} is not an OpenFGA store id (a ULID)")
    return f"{record['api_url']}/stores/{store_id}"


def _store_owned(cls: type[Backend[Any]], record: Record) -> Flow[bool]:
    """Is the store with the record's id there (False: gone), and reclaim's? Refused
    (``ForeignNameError``) when OpenFGA says that store has another name."""
    url = _store_url(record, record["id"])
    response = yield from send_or_gone(
        _fga_request(record, "GET", url, creates=False), gone=(404,), is_gone=_store_not_found
    )
    if response is None:
        return False
    found = json_object(response).get("name")
    if found != record["name"]:
        shown = repr(found)[:80] if found is not None else "none"
        raise refuse(
            cls.kind,
            "id",
            record.get("id"),
            f"the id of the store {record['name']!r} (OpenFGA's store {record.get('id')} is"
            f" named {shown})",
            name=cls.name_style.parse(record["name"]),
        )
    return True


def _store_not_found(response: httpx.Response) -> bool:
    """A 404 that OpenFGA gave for a missing store, not one of a wrong URL: a proxy's 404 must
    not make a release look done."""
    return json_object(response).get("code") == "store_id_not_found"


def _check_ulid(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ULID.fullmatch(value):
        raise ProtocolError(f"the server gave no valid {what} (a ULID): {str(value)[:40]!r}")
    return value


def _paged(record: Record, method: str, url: str, field: str) -> Flow[list[dict[str, Any]]]:
    """The items of every page, following ``continuation_token`` until it is empty; none when
    OpenFGA says the store is gone."""
    items: list[dict[str, Any]] = []
    token, seen = "", set()
    while True:
        page: dict[str, Any] = {"page_size": _BATCH}
        if token:
            page["continuation_token"] = token
        if method == "GET":
            options: dict[str, Any] = {"params": {k: str(v) for k, v in page.items()}}
        else:
            options = {"json": page}
        req = _fga_request(record, method, url, creates=False, **options)
        response = yield from send_or_gone(req, gone=(404,), is_gone=_store_not_found)
        if response is None:
            return items
        data = json_object(response)
        items.extend(item for item in data.get(field) or [] if isinstance(item, dict))
        token = str(data.get("continuation_token") or "")
        if not token or token in seen:  # the end, or a server that repeats itself
            return items
        seen.add(token)


def _list_stores(record: Record) -> Flow[list[dict[str, Any]]]:
    return _paged(record, "GET", f"{record['api_url']}/stores", "stores")


def _stores_named(record: Record) -> Flow[list[str]]:
    """The ids of the stores called exactly this record's name (I1: the id was not recorded)."""
    stores = yield from _list_stores(record)
    return [
        str(s["id"])
        for s in stores
        if s.get("name") == record["name"]
        and isinstance(s.get("id"), str)
        and _ULID.fullmatch(s["id"])
    ]


def _read_tuples(record: Record, store_id: str) -> Flow[list[dict[str, Any]]]:
    """The key of every tuple in the store; none when the store is gone."""
    items = yield from _paged(record, "POST", f"{_store_url(record, store_id)}/read", "tuples")
    return [item["key"] for item in items if isinstance(item.get("key"), dict)]


def _write_tuples(
    record: Record, store_id: str, model_id: str | None, keys: list[dict[str, Any]]
) -> Flow[None]:
    url = f"{_store_url(record, store_id)}/write"
    for index, batch in enumerate(_batches(keys)):
        body: dict[str, Any] = {"writes": {"tuple_keys": batch}}
        if model_id:
            body["authorization_model_id"] = model_id
        # A write call is one transaction: the first one refused (a 400 for a tuple that
        # exists already: not ours) or never sent wrote nothing.
        yield from send(_fga_request(record, "POST", url, json=body), proof=index == 0)


def _delete_tuples(record: Record, store_id: str, keys: list[dict[str, Any]]) -> Flow[None]:
    url = f"{_store_url(record, store_id)}/write"
    for batch in _batches(keys):
        body = {"deletes": {"tuple_keys": batch, "on_missing": "ignore"}}
        req = _fga_request(record, "POST", url, json=body)
        if (yield from send_or_gone(req, gone=(404,), is_gone=_store_not_found)) is None:
            return  # the whole store went meanwhile, and its tuples with it


def _tuple_key(t: TupleLike | Mapping[str, Any], *, with_condition: bool) -> dict[str, Any]:
    if isinstance(t, tuple):
        user, relation, obj = t
        key: dict[str, Any] = {"user": user, "relation": relation, "object": obj}
    else:
        key = {k: t.get(k) for k in ("user", "relation", "object")}
        if with_condition and t.get("condition") is not None:
            key["condition"] = t["condition"]
    for part in ("user", "relation", "object"):
        if not isinstance(key[part], str) or not key[part]:
            raise ValueError(f"a tuple needs a non-empty string {part!r}: {t!r}")
    return key


def _fill(key: Mapping[str, Any], name: str) -> dict[str, Any]:
    filled = dict(key)
    for part in ("user", "object"):
        filled[part] = str(filled[part]).replace("{name}", name)
    return filled


def _check_carried(name: str, tuples: Sequence[TupleLike]) -> None:
    for t in tuples:
        key = _tuple_key(t, with_condition=False)
        if not _carries(name, key):
            raise ValueError(
                f"tuple {key} does not carry {name!r} in its object or user id, so a crash"
                " would leave it where release cannot find it: write e.g."
                f" {{'object': 'document:{name}-1', ...}} (see FgaTuples.ref)"
            )


def _carries(name: str, key: Mapping[str, Any]) -> bool:
    """Does the tuple's user or object id start with this exact name (``type:<name><suffix>``,
    as :meth:`FgaTuples.ref` makes them)? Not a longer name (``..._1`` is not found in
    ``..._12``), nor one inside a user's id (``document:myapp_<name>``)."""
    pattern = re.compile(r"[^:#\s]+:" + re.escape(name) + r"(?![0-9])")
    return any(pattern.match(str(key.get(part, ""))) for part in ("user", "object"))


def _batches(keys: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    return (keys[i : i + _BATCH] for i in range(0, len(keys), _BATCH))
