"""A stand-in for OpenFGA's HTTP API: stores, authorization models, tuples.

It stands in for an OpenFGA server (none runs on the test machines). It follows the documented
API for what reclaim uses: ``POST/GET /stores`` (paged with ``continuation_token``), ``GET`` and
``DELETE /stores/{id}`` (204 even when the store is gone; ``GET`` 404 ``store_id_not_found``
after), ``POST /stores/{id}/authorization-models``, ``/write`` (transactional; ``on_duplicate``
and ``on_missing``; a write needs a model and types and relations it defines), ``/read`` (paged)
and ``/check`` (direct tuples only: no usersets or rewrites). Ids are ULIDs. Errors are
``{"code", "message"}``. With ``token`` set, every call needs ``Authorization: Bearer`` (the
pre-shared key mode).
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from typing import Any, Final

from providers._server import JsonReply, JsonRequest, JsonStandIn

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID: Final = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def new_ulid() -> str:
    """A ULID: 48 bits of milliseconds, 80 random bits, in Crockford's base 32."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


#: A small model for the tests: users, and documents with owners and viewers.
MODEL: Final[dict[str, Any]] = {
    "schema_version": "1.1",
    "type_definitions": [
        {"type": "user"},
        {
            "type": "document",
            "relations": {"owner": {"this": {}}, "viewer": {"this": {}}},
            "metadata": {
                "relations": {
                    "owner": {"directly_related_user_types": [{"type": "user"}]},
                    "viewer": {"directly_related_user_types": [{"type": "user"}]},
                }
            },
        },
    ],
}

Key = tuple[str, str, str]


class OpenFgaServer(JsonStandIn):
    """OpenFGA in memory. ``stores`` maps id to the store (``deleted`` once deleted: OpenFGA
    soft-deletes), ``tuples`` maps store id to its tuples."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.token = token
        self.stores: dict[str, dict[str, Any]] = {}
        self.models: dict[str, list[dict[str, Any]]] = {}
        self.tuples: dict[str, dict[Key, dict[str, Any]]] = {}

    # --- what tests ask ---------------------------------------------------------------------

    def live_stores(self) -> dict[str, str]:
        """id -> name of every store not deleted."""
        with self.lock:
            return {i: s["name"] for i, s in self.stores.items() if not s.get("deleted")}

    def keys(self, store_id: str) -> set[Key]:
        with self.lock:
            return set(self.tuples.get(store_id, {}))

    def make_store(self, name: str, *, model: bool = True) -> str:
        """A store made behind reclaim's back (a shared one, or a stranger); its id."""
        with self.lock:
            store_id = self._new_store(name)["id"]
            if model:
                self.models[store_id].append({**MODEL, "id": new_ulid()})
            return str(store_id)

    def put(self, store_id: str, *keys: Key) -> None:
        """Tuples written behind reclaim's back."""
        with self.lock:
            for key in keys:
                self.tuples[store_id][key] = {"key": _key_json(key), "timestamp": _now()}

    # --- the API ----------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str) -> JsonReply:
        return JsonReply(status, {"code": code, "message": message})

    def _new_store(self, name: str) -> dict[str, Any]:
        store = {"id": new_ulid(), "name": name, "created_at": _now(), "updated_at": _now()}
        self.stores[store["id"]] = store
        self.models[store["id"]] = []
        self.tuples[store["id"]] = {}
        return store

    def route(self, request: JsonRequest) -> JsonReply:  # noqa: PLR0911, PLR0912  (a router)
        if self.token is not None and request.bearer() != self.token:
            return self._error(401, "unauthenticated", "unauthenticated")
        if request.path == "/stores":
            if request.method == "POST":
                body = request.json()
                name = body.get("name") if isinstance(body, dict) else None
                if not isinstance(name, str) or not 3 <= len(name) <= 64:
                    return self._error(400, "validation_error", "invalid CreateStoreRequest.Name")
                made = self._new_store(name)
                return JsonReply(201, {k: v for k, v in made.items() if k != "deleted"})
            if request.method == "GET":
                return self._list_stores(request)
        match = re.fullmatch(r"/stores/([^/]+)(?:/([a-z-]+))?", request.path)
        if match is None:
            return self._error(404, "undefined_endpoint", "Not Found")
        store_id, action = match.groups()
        if not _ULID.fullmatch(store_id):
            return self._error(400, "validation_error", "invalid StoreId: value does not match")
        store = self.stores.get(store_id)
        if action is None and request.method == "DELETE":
            if store is not None:
                store["deleted"] = True
            return JsonReply(204)  # also when it never existed or is gone already (delete_store.go)
        if store is None or store.get("deleted"):
            return self._error(404, "store_id_not_found", "store not found")
        if action is None and request.method == "GET":
            return JsonReply(200, {k: v for k, v in store.items() if k != "deleted"})
        if request.method != "POST":
            return self._error(405, "method_not_allowed", "Method Not Allowed")
        body = request.json()
        if not isinstance(body, dict):
            return self._error(400, "validation_error", "a JSON object is required")
        if action == "authorization-models":
            if not isinstance(body.get("type_definitions"), list):
                return self._error(400, "validation_error", "type_definitions are required")
            model_id = new_ulid()
            self.models[store_id].append({**body, "id": model_id})
            return JsonReply(201, {"authorization_model_id": model_id})
        if action == "write":
            return self._write(store_id, body)
        if action == "read":
            return self._read(store_id, body)
        if action == "check":
            key = body.get("tuple_key") or {}
            wanted = (key.get("user"), key.get("relation"), key.get("object"))
            return JsonReply(200, {"allowed": wanted in self.tuples[store_id]})
        return self._error(404, "undefined_endpoint", "Not Found")

    def _list_stores(self, request: JsonRequest) -> JsonReply:
        size = int(request.arg("page_size") or 50)
        if not 1 <= size <= 100:
            return self._error(400, "validation_error", "invalid page_size")
        live = sorted(
            (s for s in self.stores.values() if not s.get("deleted")), key=lambda s: s["id"]
        )
        offset = _offset(request.arg("continuation_token"))
        if offset is None:
            return self._error(400, "invalid_continuation_token", "invalid continuation token")
        page = live[offset : offset + size]
        more = offset + size < len(live)
        return JsonReply(
            200,
            {
                "stores": page,
                "continuation_token": _token(offset + size) if more else "",
            },
        )

    def _write(self, store_id: str, body: dict[str, Any]) -> JsonReply:
        writes = body.get("writes") or {}
        deletes = body.get("deletes") or {}
        stored = self.tuples[store_id]
        new: dict[Key, dict[str, Any]] = {}
        for key_json in writes.get("tuple_keys") or []:
            key = _key(key_json)
            error = self._validate(store_id, key, body.get("authorization_model_id"))
            if error is not None:
                return error
            if key in stored and writes.get("on_duplicate") != "ignore":
                return self._error(
                    400,
                    "write_failed_due_to_invalid_input",
                    f"cannot write a tuple which already exists: user: '{key[0]}'",
                )
            new[key] = {"key": _key_json(key), "timestamp": _now()}
        gone: list[Key] = []
        for key_json in deletes.get("tuple_keys") or []:
            key = _key(key_json)
            if key not in stored and deletes.get("on_missing") != "ignore":
                return self._error(
                    400,
                    "write_failed_due_to_invalid_input",
                    f"cannot delete a tuple which does not exist: user: '{key[0]}',"
                    f" relation: '{key[1]}', object: '{key[2]}'",
                )
            gone.append(key)
        if len(new) + len(gone) > 100:
            return self._error(400, "exceeded_entity_limit", "more than 100 tuples in a write")
        for key in gone:  # transactional: nothing changed until every check passed
            stored.pop(key, None)
        stored.update(new)
        return JsonReply(200, {})

    def _validate(self, store_id: str, key: Key, model_id: Any) -> JsonReply | None:
        models = self.models[store_id]
        if not models:
            return self._error(
                400, "latest_authorization_model_not_found", "no authorization model"
            )
        model = next((m for m in models if m["id"] == model_id), None) if model_id else models[-1]
        if model is None:
            return self._error(400, "authorization_model_not_found", f"no model {model_id}")
        types = {t["type"]: t for t in model["type_definitions"]}
        obj_type = key[2].partition(":")[0]
        user_type = key[0].partition(":")[0]
        relations = types.get(obj_type, {}).get("relations") or {}
        if user_type not in types or key[1] not in relations:
            return self._error(
                400,
                "validation_error",
                f"invalid tuple: type '{obj_type}' has no relation '{key[1]}' for '{user_type}'",
            )
        return None

    def _read(self, store_id: str, body: dict[str, Any]) -> JsonReply:
        size = int(body.get("page_size") or 50)
        if not 1 <= size <= 100:
            return self._error(400, "validation_error", "invalid page_size")
        items = sorted(self.tuples[store_id].items())
        wanted = body.get("tuple_key")
        if wanted:
            items = [(k, v) for k, v in items if _matches(k, wanted)]
        offset = _offset(body.get("continuation_token"))
        if offset is None:
            return self._error(400, "invalid_continuation_token", "invalid continuation token")
        page = [v for _, v in items[offset : offset + size]]
        more = offset + size < len(items)
        return JsonReply(
            200, {"tuples": page, "continuation_token": _token(offset + size) if more else ""}
        )


def _key(value: Any) -> Key:
    value = value if isinstance(value, dict) else {}
    return (str(value.get("user")), str(value.get("relation")), str(value.get("object")))


def _key_json(key: Key) -> dict[str, str]:
    return {"user": key[0], "relation": key[1], "object": key[2]}


def _matches(key: Key, wanted: dict[str, Any]) -> bool:
    obj = str(wanted.get("object") or "")
    if obj.endswith(":") and not key[2].startswith(obj):
        return False
    if not obj.endswith(":") and obj and key[2] != obj:
        return False
    if wanted.get("relation") and key[1] != wanted["relation"]:
        return False
    return not (wanted.get("user") and key[0] != wanted["user"])


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(token: Any) -> int | None:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(str(token)).decode()
    except ValueError:
        return None
    prefix, _, number = text.partition(":")
    return int(number) if prefix == "offset" and number.isdigit() else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
