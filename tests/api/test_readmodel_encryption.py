"""With VIGIL_ENCRYPTION_KEY set, the database holds no plaintext of what events say:
markers sent in every field of an event and of the queries about it are searched for in
a dump of the whole database (and, on SQLite, in its files)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.api.conftest import Api, OpenApi
from tests.events import audit_event
from tests.stores import PostgresStore, SQLiteStore, Store

KEY = base64.b64encode(b"e" * 32).decode()

EVENT_MARKERS = {
    "id": "zqevt-1",
    "actor.id": "zqactor",
    "actor.user_agent": "ZqAgent/7.1",
    "actor.session_id": "zqsession",
    "actor.ip": "198.51.100.77",
    "target.id": "zqtarget",
    "target.name": "Zqtargetname",
    "request_id": "zqrequest",
    "metadata key": "zqmetakey",
    "metadata value": "Zqmetavalue",
    "metadata word": "zqsecondword",
    "metadata nested": "zqnested",
    "metadata number": "987654321",
    "changes key": "zqchangekey",
    "changes value": "zqchangevalue",
}
QUERY_MARKERS = {
    "actor_id": "zqqueryactor",
    "target_id": "zqquerytarget",
    "q": "zqqueryword",
    "session_id": "zqquerysession",
    "request_id": "zqqueryrequest",
    "actor_ip": "2001:db8:7a7a::99",
    "user agent": "ZqClient/2",
    "event id read": "zqreadid",
}


def marked_event() -> dict[str, Any]:
    m = EVENT_MARKERS
    return audit_event(
        m["id"],
        actor={
            "id": m["actor.id"],
            "type": "user",
            "ip": m["actor.ip"],
            "user_agent": m["actor.user_agent"],
            "session_id": m["actor.session_id"],
        },
        target={"type": "conversation", "id": m["target.id"], "name": m["target.name"]},
        request_id=m["request_id"],
        metadata={
            m["metadata key"]: f"{m['metadata value']} {m['metadata word']}",
            "nested": {"list": [m["metadata nested"], int(m["metadata number"])]},
        },
        changes={m["changes key"]: m["changes value"]},
    )


def database_dump(store: Store) -> bytes:
    """Every cell of every table of the store, and on SQLite its files as they are on
    disk (free pages and the write-ahead log included)."""
    if isinstance(store, SQLiteStore):
        tables = [row[0] for row in store._run("SELECT name FROM sqlite_master WHERE type='table'")]
        files = [Path(f"{store.path}{suffix}") for suffix in ("", "-wal", "-journal")]
        raw = b"".join(path.read_bytes() for path in files if path.exists())
        return raw + b"".join(store.cells(f'"{table}"') for table in tables)
    assert isinstance(store, PostgresStore)
    rows = store._run(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
        [store.schema],
    )
    return b"\x00".join(store.cells(f'"{store.schema}"."{row[0]}"') for row in rows)


def assert_no_marker_in(dump: bytes, markers: dict[str, str]) -> None:
    for field, marker in markers.items():
        for form in {marker, marker.lower()}:
            assert form.encode() not in dump, f"{field} ({form!r}) is stored in clear"


def record_and_query(api: Api) -> None:
    ingest = api.headers("acme", "ingest")
    assert api.client.post("/v1/events", json=marked_event(), headers=ingest).status_code == 201
    api.catch_up()
    reader = {
        **api.headers("acme", "analyst", "auditor"),
        "User-Agent": QUERY_MARKERS["user agent"],
    }
    filters = ("actor_id", "target_id", "q", "session_id", "request_id", "actor_ip")
    params = {name: QUERY_MARKERS[name] for name in filters}
    assert api.client.get("/v1/events", params=params, headers=reader).status_code == 200
    export = api.client.get("/v1/events/export", params=params, headers=reader)
    assert export.status_code == 200
    missing = api.client.get(f"/v1/events/{QUERY_MARKERS['event id read']}", headers=reader)
    assert missing.status_code == 404
    api.catch_up()


def test_markers_sent_in_every_field_are_nowhere_in_the_encrypted_database(
    open_api: OpenApi, store: Store
) -> None:
    api = open_api(encryption_key=KEY)
    record_and_query(api)
    dump = database_dump(store)
    assert_no_marker_in(dump, EVENT_MARKERS)
    assert_no_marker_in(dump, QUERY_MARKERS)
    assert bytes([198, 51, 100, 77]) not in dump  # the address as packed bytes
    # The check can see: the same requests without the key leave the markers in clear.
    assert b"conversation.assign" in dump  # the action, listed as kept in clear


def test_without_the_key_the_same_dump_shows_the_markers(open_api: OpenApi, store: Store) -> None:
    # The check above would pass vacuously if the dump missed the tables that hold them.
    api = open_api()
    record_and_query(api)
    dump = database_dump(store)
    for marker in ("zqactor", "zqtarget", "zqsecondword", "zqqueryword", "zqqueryactor"):
        assert marker.encode() in dump


def test_equality_and_whole_words_still_find_an_encrypted_event(open_api: OpenApi) -> None:
    api = open_api(encryption_key=KEY)
    ingest = api.headers("acme", "ingest")
    other = audit_event("other", actor={"id": "someone-else"}, metadata={"note": "unrelated"})
    api.client.post("/v1/events", json=[marked_event(), other], headers=ingest)
    api.catch_up()
    reader = api.headers("acme", "analyst")

    def ids(**params: str) -> list[str]:
        response = api.client.get("/v1/events", params=params, headers=reader)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert ids(actor_id="zqactor") == ["zqevt-1"]
    assert ids(target_type="conversation", target_id="zqtarget") == ["zqevt-1"]
    assert ids(q="ZQSECONDWORD") == ["zqevt-1"]
    assert ids(q="zqmetavalue zqsecondword") == ["zqevt-1"]
    assert ids(q="zqnested") == ["zqevt-1"]
    assert ids(q="987654321") == ["zqevt-1"]
    assert ids(session_id="zqsession") == ["zqevt-1"]
    assert ids(request_id="zqrequest") == ["zqevt-1"]
    assert ids(actor_ip="198.51.100.77") == ["zqevt-1"]
    assert ids(actor_ip="198.51.100.77/32") == ["zqevt-1"]
    assert ids(q="zqsecond") == []  # a part of a word: not findable in a keyed read model
    assert ids(actor_id="zqact") == []
    refused = api.client.get("/v1/events", params={"q": "%%"}, headers=reader)
    assert refused.status_code == 422
    assert "whole words" in refused.text
    assert refused.json()["problems"][0]["field"] == "q"
    network = api.client.get("/v1/events", params={"actor_ip": "198.51.100.0/24"}, headers=reader)
    assert network.status_code == 422
    assert network.json()["problems"][0]["field"] == "actor_ip"
    assert "single address" in network.text
    auditor = api.headers("acme", "auditor")
    for params, field in (({"q": "%%"}, "q"), ({"actor_ip": "198.51.100.0/24"}, "actor_ip")):
        export = api.client.get("/v1/events/export", params=params, headers=auditor)
        assert export.status_code == 422  # before the export starts, not midway
        assert export.json()["problems"][0]["field"] == field
