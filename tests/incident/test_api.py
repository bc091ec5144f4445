"""``/v1/incidents`` over the real HTTP stack: responders act, analysts and auditors
read, other tenants see nothing, and every action lands in the tenant's ledger."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from incident import Incidents, is_incident_record
from tests.events import audit_event
from tests.incident.conftest import Api

URL = "/v1/incidents"


def _desk(api: Api) -> Incidents:
    incidents: Incidents = api.client.app.state.incidents  # type: ignore[attr-defined]
    return incidents


def _open(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body = {"title": "Bulk export by u-7", "severity": "SEV2", **body}
    response = api.client.post(URL, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_responder_runs_an_incident_from_open_to_close(api: Api) -> None:
    responder = api.headers("acme", "responder")
    api.client.post(
        "/v1/events",
        json=[audit_event(f"x{i}", action="report.export") for i in range(3)],
        headers=api.headers("acme", "ingest"),
    )
    opened = _open(api, responder, evidence=[0, 2])
    incident_id = opened["id"]
    assert [e["seq"] for e in opened["evidence"]] == [0, 2]
    for path, body in [
        ("acknowledge", None),
        ("notes", {"text": "looking at the export job"}),
        ("assign", {"commander": "carol"}),
        ("mitigate", {"note": "token revoked"}),
        ("resolve", {"note": "no data left the tenant"}),
        ("close", {}),
    ]:
        response = api.client.post(f"{URL}/{incident_id}/{path}", json=body, headers=responder)
        assert response.status_code == 200, (path, response.text)
    shown = api.client.get(f"{URL}/{incident_id}", headers=api.headers("acme", "analyst")).json()
    assert shown["status"] == "closed"
    assert shown["commander"] == "carol"
    assert "looking at the export job" in [e["text"] for e in shown["timeline"]]
    actions = [r["action"] for r in api.trail("acme") if is_incident_record(r)]
    assert actions == [
        "incident.open", "incident.acknowledge", "incident.note", "incident.assign",
        "incident.mitigate", "incident.resolve", "incident.close",
    ]  # fmt: skip


def test_analysts_and_auditors_read_but_may_not_act(api: Api) -> None:
    opened = _open(api, api.headers("acme", "responder"))
    for role in ("analyst", "auditor"):
        headers = api.headers("acme", role)
        assert api.client.get(URL, headers=headers).json()["items"][0]["id"] == opened["id"]
        refused = api.client.post(f"{URL}/{opened['id']}/acknowledge", headers=headers)
        assert refused.status_code == 403
        assert "may not act on incidents" in refused.json()["detail"]
    ingest = api.headers("acme", "ingest")
    assert api.client.get(URL, headers=ingest).status_code == 403
    denied = [r for r in api.trail("acme") if r["action"] == "access.denied"]
    assert len(denied) == 3


def test_another_tenants_incident_is_not_found(api: Api) -> None:
    opened = _open(api, api.headers("acme", "responder"))
    other = api.headers("globex", "responder")
    assert api.client.get(f"{URL}/{opened['id']}", headers=other).status_code == 404
    assert api.client.post(f"{URL}/{opened['id']}/acknowledge", headers=other).status_code == 404
    assert api.client.get(URL, headers=other).json() == {"items": []}


def test_an_illegal_transition_is_a_409_that_says_what_to_do(api: Api) -> None:
    responder = api.headers("acme", "responder")
    opened = _open(api, responder)
    response = api.client.post(f"{URL}/{opened['id']}/close", json={}, headers=responder)
    assert response.status_code == 409
    assert "resolve it first" in response.json()["detail"]
    bad = api.client.post(f"{URL}/{opened['id']}/notes", json={"text": ""}, headers=responder)
    assert bad.status_code == 422


def test_filters_and_mean_times(api: Api) -> None:
    responder = api.headers("acme", "responder")
    _open(api, responder, severity="SEV1", title="one")
    two = _open(api, responder, severity="SEV3", title="two")
    api.client.post(f"{URL}/{two['id']}/acknowledge", headers=responder)
    listed = api.client.get(URL, params={"severity": "SEV3"}, headers=responder).json()
    assert [i["title"] for i in listed["items"]] == ["two"]
    listed = api.client.get(URL, params={"status": "triggered"}, headers=responder).json()
    assert [i["title"] for i in listed["items"]] == ["one"]
    metrics = api.client.get(f"{URL}/metrics", headers=responder).json()
    assert metrics["by_severity"]["SEV3"]["count"] == 1
    assert metrics["by_severity"]["SEV3"]["mtta"] is not None
    assert metrics["by_severity"]["SEV1"]["mtta"] is None


def test_the_post_mortem_renders_and_publishing_puts_its_hash_in_the_ledger(api: Api) -> None:
    responder = api.headers("acme", "responder")
    opened = _open(api, responder)
    incident_id = opened["id"]
    api.client.post(f"{URL}/{incident_id}/acknowledge", headers=responder)
    api.client.post(f"{URL}/{incident_id}/resolve", json={}, headers=responder)
    edited = api.client.patch(
        f"{URL}/{incident_id}/postmortem",
        json={
            "root_cause": "A support tool exported <all> tickets",
            "action_items": [{"title": "Rate-limit exports", "owner": "dana", "due": "2026-12-31"}],
        },
        headers=responder,
    )
    assert edited.status_code == 200, edited.text
    markdown = api.client.get(f"{URL}/{incident_id}/postmortem", headers=responder)
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "A support tool exported <all> tickets" in markdown.text
    assert "| Rate-limit exports | dana | 2026-12-31 | no |" in markdown.text
    html = api.client.get(f"{URL}/{incident_id}/postmortem?format=html", headers=responder)
    assert "exported &lt;all&gt; tickets" in html.text
    published = api.client.post(f"{URL}/{incident_id}/postmortem/publish", headers=responder)
    assert published.status_code == 200
    digests = published.json()["sha256"]
    record = [r for r in api.trail("acme") if r["action"] == "incident.publish_postmortem"][-1]
    assert record["metadata"]["sha256"] == digests
    shown = _desk(api).get("acme", UUID(incident_id))
    assert shown["postmortem"]["published"][0]["sha256"] == digests
