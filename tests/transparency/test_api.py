"""The transparency routes over the real HTTP stack, on each backend: checkpoints,
keys, proofs and tiles that a client checks itself, tenant scoping, and 4xx beyond the
latest checkpoint."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import pytest

from audit_core.transparency import (
    Checkpoint,
    Signer,
    Verifier,
    open_checkpoint,
    record_leaf,
    record_leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from audit_core.transparency.evidence import verify_bundle
from audit_core.transparency.merkle import MemoryTree, leaf_hash, tree_hash
from audit_core.transparency.tiles import TILE_BYTES, Tile, TileHashes, hashes_only, tiles_of
from tests.api.conftest import Api, OpenApi
from tests.events import audit_events

ORIGIN = "vigil.test/log"


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    signer = Signer.generate(ORIGIN)
    signer.write(tmp_path / "signing.key")
    return signer


@pytest.fixture
def tlog_api(open_api: OpenApi, signer: Signer, tmp_path: Path) -> Api:
    return open_api(
        signing_key_file=str(tmp_path / "signing.key"),
        log_origin=ORIGIN,
        checkpoint_every_records=1,
    )


def record(api: Api, tenant: str, count: int, prefix: str = "evt") -> list[dict[str, Any]]:
    headers = api.headers(tenant, "ingest")
    records: list[dict[str, Any]] = []
    for start in range(0, count, 500):
        events = audit_events(min(500, count - start), prefix=f"{prefix}-{start}")
        response = api.client.post("/v1/events", json=events, headers=headers)
        assert response.status_code == 201, response.text
        records += response.json()["records"]
    return records


def signed_up_to(api: Api, tenant: str, headers: dict[str, str]) -> Checkpoint:
    """The latest checkpoint once it covers every record of the tenant."""
    api.catch_up()
    for _ in range(500):
        response = api.client.get("/v1/transparency/checkpoint", headers=headers)
        if response.status_code == 200:
            signer_keys = keys(api, headers)
            checkpoint = open_checkpoint(response.text, signer_keys)
            if checkpoint.size >= api.size(tenant):
                return checkpoint
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint covers {api.size(tenant)} records of {tenant}")


def keys(api: Api, headers: dict[str, str]) -> list[Verifier]:
    response = api.client.get("/v1/transparency/keys", headers=headers)
    assert response.status_code == 200
    return [Verifier.from_vkey(vkey) for vkey in response.json()["keys"]]


def b64(values: list[str]) -> list[bytes]:
    return [base64.b64decode(value) for value in values]


def test_the_checkpoint_is_the_signed_note_under_the_tenants_origin(
    tlog_api: Api, signer: Signer
) -> None:
    records = record(tlog_api, "acme", 12)
    headers = tlog_api.headers("acme", "auditor")
    checkpoint = signed_up_to(tlog_api, "acme", headers)
    response = tlog_api.client.get("/v1/transparency/checkpoint", headers=headers)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith(f"{ORIGIN}/acme\n")
    # The published key is the signer's key under the tenant's origin.
    published = tlog_api.client.get("/v1/transparency/keys", headers=headers).json()
    assert published["keys"] == [signer.verifier.named(f"{ORIGIN}/acme").vkey]
    expected = MemoryTree(record_leaf_hash(r) for r in records)
    assert checkpoint.size >= 12
    hashes = TileHashes(hashes_only(_tiles(tlog_api, headers)))
    assert expected.root(12) == tree_hash(12, hashes.read)


def _tiles(api: Api, headers: dict[str, str]) -> Any:
    def read(keys: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        found: dict[tuple[int, int], bytes] = {}
        checkpoint = Checkpoint.parse(
            api.client.get("/v1/transparency/log/acme/checkpoint", headers=headers).text
        )
        by_key = {(t.level, t.index): t for t in tiles_of(checkpoint.size)}
        for key in keys:
            tile = by_key[key]
            response = api.client.get(f"/v1/transparency/log/acme/{tile.path}", headers=headers)
            assert response.status_code == 200, response.text
            found[key] = response.content
        return found

    return read


def test_a_tlog_tiles_client_computes_the_checkpoints_root_from_the_tiles(tlog_api: Api) -> None:
    record(tlog_api, "acme", 600)
    headers = tlog_api.headers("acme", "analyst")
    checkpoint = signed_up_to(tlog_api, "acme", headers)
    hashes = TileHashes(hashes_only(_tiles(tlog_api, headers)))
    assert tree_hash(checkpoint.size, hashes.read) == checkpoint.root
    full = tlog_api.client.get("/v1/transparency/log/acme/tile/0/001", headers=headers)
    assert len(full.content) == TILE_BYTES
    assert full.headers["content-type"] == "application/octet-stream"
    beyond = Tile(0, checkpoint.size // 256, checkpoint.size % 256 + 1)
    response = tlog_api.client.get(f"/v1/transparency/log/acme/{beyond.path}", headers=headers)
    assert response.status_code == 404
    assert "not complete in the latest checkpoint" in response.json()["detail"]
    bad = tlog_api.client.get("/v1/transparency/log/acme/tile/0/x000/001", headers=headers)
    assert bad.status_code == 404


def test_inclusion_proofs_by_seq_and_by_event_id_verify_against_the_checkpoint(
    tlog_api: Api,
) -> None:
    records = record(tlog_api, "acme", 40)
    headers = tlog_api.headers("acme", "auditor")
    checkpoint = signed_up_to(tlog_api, "acme", headers)
    for seq in (0, 17, 39):
        body = tlog_api.client.get(
            "/v1/transparency/proof/inclusion", params={"seq": seq}, headers=headers
        ).json()
        assert base64.b64decode(body["leaf_hash"]) == record_leaf_hash(records[seq])
        signed = open_checkpoint(body["checkpoint"], keys(tlog_api, headers))
        verify_inclusion(
            seq, body["tree_size"], record_leaf_hash(records[seq]), b64(body["hashes"]), signed.root
        )
    by_id = tlog_api.client.get(
        "/v1/transparency/proof/inclusion",
        params={"event_id": records[5]["id"], "size": 10},
        headers=headers,
    ).json()
    assert (by_id["seq"], by_id["tree_size"]) == (5, 10)
    expected = MemoryTree(record_leaf_hash(r) for r in records)
    verify_inclusion(5, 10, record_leaf_hash(records[5]), b64(by_id["hashes"]), expected.root(10))
    assert checkpoint.size >= 40


def test_a_consistency_proof_links_an_older_checkpoint_to_the_latest(tlog_api: Api) -> None:
    record(tlog_api, "acme", 30)
    headers = tlog_api.headers("acme", "auditor")
    old = signed_up_to(tlog_api, "acme", headers)
    record(tlog_api, "acme", 45, prefix="more")
    new = signed_up_to(tlog_api, "acme", headers)
    body = tlog_api.client.get(
        "/v1/transparency/proof/consistency", params={"old": old.size}, headers=headers
    ).json()
    assert (body["old_size"], body["new_size"]) == (old.size, new.size)
    verify_consistency(old.size, new.size, old.root, new.root, b64(body["hashes"]))


def _entries(bundle: bytes) -> list[bytes]:
    """Split an entry bundle as a tlog-tiles client does."""
    entries, at = [], 0
    while at < len(bundle):
        length = int.from_bytes(bundle[at : at + 2], "big")
        entries.append(bundle[at + 2 : at + 2 + length])
        at += 2 + length
    assert at == len(bundle)
    return entries


def test_entry_bundles_hold_the_records_that_the_level_0_tiles_hash(tlog_api: Api) -> None:
    records = record(tlog_api, "acme", 300)
    headers = tlog_api.headers("acme", "analyst")
    checkpoint = signed_up_to(tlog_api, "acme", headers)
    prefix = "/v1/transparency/log/acme/tile"
    width = checkpoint.size - 256
    for path, first, count in (("entries/000", 0, 256), (f"entries/001.p/{width}", 256, width)):
        response = tlog_api.client.get(f"{prefix}/{path}", headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        entries = _entries(response.content)
        assert entries[:44] == [record_leaf(r) for r in records[first : first + 44]]
        tile = tlog_api.client.get(f"{prefix}/{path.replace('entries', '0')}", headers=headers)
        assert b"".join(leaf_hash(entry) for entry in entries) == tile.content
        assert len(entries) == count
    # Each read of records is recorded, as a query of the trail is.
    reads = [r for r in tlog_api.trail("acme") if r["action"] == "audit.query"]
    assert [r["target"]["id"] for r in reads] == [
        "acme/tile/entries/000",
        f"acme/tile/entries/001.p/{width}",
    ]
    # Not covered yet, misspelt, or another tenant's: refused, and nothing is recorded.
    for path, status in (("entries/001", 404), ("entries/1", 404), ("entries/000.p/256", 404)):
        response = tlog_api.client.get(f"{prefix}/{path}", headers=headers)
        assert response.status_code == status, (path, response.text)
        assert "tile" in response.json()["detail"]
    other = tlog_api.headers("globex", "analyst")
    assert tlog_api.client.get(f"{prefix}/entries/000", headers=other).status_code == 403
    assert len([r for r in tlog_api.trail("acme") if r["action"] == "audit.query"]) == 2


def test_sizes_beyond_the_latest_checkpoint_are_a_clear_4xx(tlog_api: Api) -> None:
    record(tlog_api, "acme", 5)
    headers = tlog_api.headers("acme", "auditor")
    checkpoint = signed_up_to(tlog_api, "acme", headers)
    beyond = checkpoint.size + 1000
    for path, params in (
        ("/v1/transparency/proof/inclusion", {"seq": 0, "size": beyond}),
        ("/v1/transparency/proof/consistency", {"old": 1, "new": beyond}),
        ("/v1/transparency/proof/inclusion", {"seq": beyond}),
    ):
        response = tlog_api.client.get(path, params=params, headers=headers)
        assert response.status_code == 422, response.text
        assert str(checkpoint.size) in response.json()["detail"]


def test_keys_see_only_their_tenants_log(tlog_api: Api) -> None:
    record(tlog_api, "acme", 3)
    record(tlog_api, "globex", 3)
    signed_up_to(tlog_api, "acme", tlog_api.headers("acme", "auditor"))
    globex = tlog_api.headers("globex", "auditor")
    response = tlog_api.client.get("/v1/transparency/log/acme/checkpoint", headers=globex)
    assert response.status_code == 403
    response = tlog_api.client.get(
        "/v1/transparency/checkpoint", params={"tenant": "acme"}, headers=globex
    )
    assert response.status_code == 403
    ingest = tlog_api.headers("acme", "ingest")
    assert tlog_api.client.get("/v1/transparency/checkpoint", headers=ingest).status_code == 403
    assert tlog_api.client.get("/v1/transparency/checkpoint").status_code == 401


def test_without_a_signing_key_the_routes_say_how_to_configure_one(api: Api) -> None:
    response = api.client.get("/v1/transparency/checkpoint", headers=api.headers("acme", "auditor"))
    assert response.status_code == 404
    assert "VIGIL_SIGNING_KEY_FILE" in response.json()["detail"]


def test_an_auditor_downloads_an_evidence_bundle_that_verifies_offline(
    tlog_api: Api, signer: Signer
) -> None:
    record(tlog_api, "acme", 50)
    headers = tlog_api.headers("acme", "auditor")
    signed_up_to(tlog_api, "acme", headers)
    response = tlog_api.client.get(
        "/v1/transparency/evidence", params={"from_seq": 10, "to_seq": 29}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    report = verify_bundle(io.BytesIO(response.content), [signer.verifier])
    assert (report.count, report.first_seq, report.last_seq, report.contiguous) == (
        20, 10, 29, True,
    )  # fmt: skip
    exported = [r for r in tlog_api.trail("acme") if r["action"] == "audit.evidence_export"]
    assert exported[-1]["metadata"]["records"] == 20
    analyst = tlog_api.headers("acme", "analyst")
    refused = tlog_api.client.get(
        "/v1/transparency/evidence", params={"from_seq": 0}, headers=analyst
    )
    assert refused.status_code == 403


def test_earlier_verifier_keys_stay_published_after_a_rotation(
    open_api: OpenApi, signer: Signer, tmp_path: Path
) -> None:
    old = Signer.generate("whatever.example/old")
    api = open_api(
        signing_key_file=str(tmp_path / "signing.key"),
        log_origin=ORIGIN,
        verifier_keys=old.verifier.vkey,
    )
    published = api.client.get(
        "/v1/transparency/keys", headers=api.headers("acme", "analyst")
    ).json()
    assert published["origin"] == f"{ORIGIN}/acme"
    assert published["keys"] == [
        signer.verifier.named(f"{ORIGIN}/acme").vkey,
        old.verifier.named(f"{ORIGIN}/acme").vkey,
    ]


def test_a_bundle_of_a_query_holds_exactly_the_matching_records(
    tlog_api: Api, signer: Signer
) -> None:
    ingest = tlog_api.headers("acme", "ingest")
    events = [
        {**event, "action": "user.login" if index % 3 == 0 else "user.logout"}
        for index, event in enumerate(audit_events(12, prefix="q"))
    ]
    assert tlog_api.client.post("/v1/events", json=events, headers=ingest).status_code == 201
    headers = tlog_api.headers("acme", "auditor")
    signed_up_to(tlog_api, "acme", headers)
    response = tlog_api.client.get(
        "/v1/transparency/evidence", params={"action": "user.login"}, headers=headers
    )
    assert response.status_code == 200, response.text
    report = verify_bundle(io.BytesIO(response.content), [signer.verifier])
    assert (report.count, report.first_seq, report.last_seq) == (4, 0, 9)
    assert not report.contiguous
    assert report.selection["query"]["action"] == "user.login"
