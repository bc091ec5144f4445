"""Runbooks: files refused with file and line; automated steps call a local HTTP server,
and are refused for a host off the allowlist, a private address reached through DNS or
a redirect, a redirect to another host, and a response that fails its schema; secrets
are encrypted at rest and never appear in API responses, logs or the ledger."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from incident import Actor, ConfigurationError, Incidents
from incident.runbooks import NetworkPolicy, RunbookCatalogue, StepRunner, parse_runbook
from tests.incident.conftest import Api, OpenApi, OpenIncidents, record_attack
from tests.incident.peers import Received, http_peer, json_answer
from tests.stores import PostgresStore, Store

ALICE = Actor("alice")
KEY = os.urandom(32)
SECRET = "tok-5f2b9c0e-not-for-your-eyes"

RUNBOOK = """\
name: block
title: Block the source
allowlist: [{host}]
steps:
  - id: look
    title: Look at the trail
  - id: block
    title: Block the address
    kind: http
    http:
      method: POST
      url: "http://{host}:{port}/v1/blocks?incident={{{{ incident.ref }}}}"
      headers: {{X-Api-Key: "{{{{ secrets.edge_token }}}}"}}
      body: {{ip: "{{{{ record.actor.ip }}}}", reason: "{{{{ incident.title }}}}"}}
      timeout: 2
      response_schema:
        type: object
        required: [id, status]
        properties:
          id: {{type: string}}
          status: {{enum: [active]}}
"""


def _resolver(table: dict[str, str]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        return [table.get(host, host)]

    return resolve


def _incidents(
    open_incidents: OpenIncidents,
    tmp_path: Path,
    host: str,
    port: int,
    *,
    resolve: dict[str, str] | None = None,
    allowed: str = "127.0.0.1/32",
) -> Incidents:
    (tmp_path / "block.yaml").write_text(RUNBOOK.format(host=host, port=port))
    network = NetworkPolicy.parse(allowed)
    if resolve is not None:
        network = NetworkPolicy(network.allowed_networks, _resolver(resolve))
    incidents = open_incidents(
        runbooks=RunbookCatalogue.load(tmp_path),
        step_runner=StepRunner(network, timeout_cap=5),
        secrets_key=KEY,
    )
    assert incidents.vault is not None
    incidents.vault.set("edge_token", SECRET)
    return incidents


def _acknowledged(incidents: Incidents) -> Any:
    evidence = record_attack(incidents.ledger)
    opened = incidents.open(
        "acme", "Stuffing from 203.0.113.10", "SEV2", runbook="block", evidence=evidence
    )
    incidents.acknowledge("acme", opened.incident_id, ALICE)
    return opened.incident_id


def test_an_automated_step_calls_the_endpoint_with_the_rendered_request(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    with http_peer(lambda r: json_answer(201, {"id": "blk-1", "status": "active"})) as edge:
        incidents = _incidents(
            open_incidents, tmp_path, "edge.test", edge.port, resolve={"edge.test": "127.0.0.1"}
        )
        incident_id = _acknowledged(incidents)
        shown = incidents.run_step("acme", incident_id, "block", ALICE)
    [request] = edge.received
    assert request.path.startswith("/v1/blocks?incident=INC-")
    assert request.headers["host"] == f"edge.test:{edge.port}"
    assert request.headers["x-api-key"] == SECRET
    assert request.json() == {"ip": "203.0.113.10", "reason": "Stuffing from 203.0.113.10"}
    assert shown["step_outcome"] == {"ok": True, "reason": "answered 201"}
    assert shown["status"] == "mitigating"
    [step] = [s for s in shown["runbook_steps"] if s["id"] == "block"]
    assert step["status"]["outcome"] == "succeeded"
    assert step["status"]["result"]["response"] == {"id": "blk-1", "status": "active"}
    assert shown["durations"]["ttm"] is not None


def _failed_reason(incidents: Incidents, incident_id: Any) -> str:
    shown = incidents.run_step("acme", incident_id, "block", ALICE)
    assert shown["step_outcome"]["ok"] is False
    [step] = [s for s in shown["runbook_steps"] if s["id"] == "block"]
    assert step["status"]["outcome"] == "failed"
    [record] = [
        r for r in incidents.ledger.read("acme", limit=100) if r["action"] == "incident.run_step"
    ]
    assert record["outcome"] == "failure"
    return str(shown["step_outcome"]["reason"])


def test_a_response_that_fails_its_schema_is_not_used(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    answer = {"id": 7, "status": "active", "script": "<script>"}
    with http_peer(lambda r: json_answer(200, answer)) as edge:
        incidents = _incidents(open_incidents, tmp_path, "127.0.0.1", edge.port)
        incident_id = _acknowledged(incidents)
        reason = _failed_reason(incidents, incident_id)
    assert reason.startswith("response fails its schema at id: 7 is not of type 'string'")
    shown = incidents.get("acme", incident_id)
    assert "<script>" not in json.dumps(shown)


def test_a_host_off_the_allowlist_is_refused(open_incidents: OpenIncidents, tmp_path: Path) -> None:
    with http_peer(lambda r: json_answer(200, {})) as edge:
        incidents = _incidents(open_incidents, tmp_path, "127.0.0.1", edge.port)
        # The runbook allows 127.0.0.1; a template that sends it elsewhere is refused.
        runbook = incidents.runbooks.get("block")  # type: ignore[union-attr]
        assert runbook.allowlist == ("127.0.0.1",)
        (tmp_path / "block.yaml").write_text(
            RUNBOOK.format(host="127.0.0.1", port=edge.port).replace(
                "allowlist: [127.0.0.1]", "allowlist: [partner.example.com]"
            )
        )
        incidents.runbooks = RunbookCatalogue.load(tmp_path)
        incident_id = _acknowledged(incidents)
        reason = _failed_reason(incidents, incident_id)
    assert reason.startswith("host 127.0.0.1 is not on the runbook's allowlist")
    assert edge.received == []


def test_a_name_that_resolves_to_a_private_address_is_refused(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    with http_peer(lambda r: json_answer(200, {})) as edge:
        incidents = _incidents(
            open_incidents, tmp_path, "edge.test", edge.port, resolve={"edge.test": "10.1.2.3"}
        )
        incident_id = _acknowledged(incidents)
        reason = _failed_reason(incidents, incident_id)
    assert "edge.test resolves to 10.1.2.3, a loopback, private or link-local address" in reason


def test_loopback_is_refused_unless_its_network_is_allowed(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    with http_peer(lambda r: json_answer(200, {})) as edge:
        incidents = _incidents(open_incidents, tmp_path, "127.0.0.1", edge.port, allowed="")
        incident_id = _acknowledged(incidents)
        reason = _failed_reason(incidents, incident_id)
    assert "127.0.0.1 resolves to 127.0.0.1, a loopback" in reason
    assert edge.received == []


def test_metadata_addresses_are_refused_even_inside_an_allowed_network() -> None:
    from incident import StepRefusedError

    network = NetworkPolicy.parse("169.254.0.0/16")
    with pytest.raises(StepRefusedError, match="cloud metadata"):
        network.check_address("metadata.internal", "169.254.169.254")
    with pytest.raises(StepRefusedError, match="link-local"):
        NetworkPolicy.parse("").check_address("x", "fe80::1")
    with pytest.raises(StepRefusedError, match="private"):
        NetworkPolicy.parse("").check_address("x", "::ffff:192.168.1.1")


def test_a_redirect_to_another_host_is_not_followed(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    with http_peer(lambda r: json_answer(200, {"id": "x", "status": "active"})) as inside:

        def redirect(request: Received) -> Any:
            return 307, {"Location": f"http://169.254.169.254:{inside.port}/latest/meta-data/"}, b""

        with http_peer(redirect) as edge:
            incidents = _incidents(open_incidents, tmp_path, "127.0.0.1", edge.port)
            incident_id = _acknowledged(incidents)
            reason = _failed_reason(incidents, incident_id)
    assert reason == "redirected to another host (169.254.169.254): not followed"
    assert inside.received == []


def test_a_redirect_on_the_same_name_is_checked_again(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    # The name resolves to loopback (allowed) for the first request, then to a private
    # address: every connection is checked on the address it goes to.
    answers = iter(["127.0.0.1", "192.168.7.7"])

    def resolve(host: str, port: int) -> list[str]:
        return [next(answers)]

    with http_peer(lambda r: (302, {"Location": "/elsewhere"}, b"")) as edge:
        incidents = _incidents(open_incidents, tmp_path, "edge.test", edge.port)
        assert incidents.step_runner is not None
        incidents.step_runner.network = NetworkPolicy(
            incidents.step_runner.network.allowed_networks, resolve
        )
        incident_id = _acknowledged(incidents)
        reason = _failed_reason(incidents, incident_id)
    assert "resolves to 192.168.7.7" in reason
    assert len(edge.received) == 1


def test_oauth2_client_credentials_are_fetched_before_the_call(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    def respond(request: Received) -> Any:
        if request.path == "/oauth2/token":
            expected = base64.b64encode(f"vigil:{SECRET}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {expected}":
                return json_answer(401, {"error": "invalid_client"})
            return json_answer(200, {"access_token": "at-123", "token_type": "Bearer"})
        return json_answer(200, {"id": "r1", "status": "active"})

    with http_peer(respond) as idp:
        runbook = RUNBOOK.replace(
            '      headers: {{X-Api-Key: "{{{{ secrets.edge_token }}}}"}}\n',
            "      token:\n        type: oauth2\n"
            '        token_url: "http://{host}:{port}/oauth2/token"\n'
            "        client_id: vigil\n"
            '        client_secret: "{{{{ secrets.edge_token }}}}"\n'
            "        scope: blocks.write\n",
        )
        (tmp_path / "block.yaml").write_text(runbook.format(host="127.0.0.1", port=idp.port))
        incidents = open_incidents(
            runbooks=RunbookCatalogue.load(tmp_path),
            step_runner=StepRunner(NetworkPolicy.parse("127.0.0.1/32")),
            secrets_key=KEY,
        )
        assert incidents.vault is not None
        incidents.vault.set("edge_token", SECRET)
        incident_id = _acknowledged(incidents)
        shown = incidents.run_step("acme", incident_id, "block", ALICE)
    token_request, call = idp.received
    assert token_request.body == b"grant_type=client_credentials&scope=blocks.write"
    assert call.headers["authorization"] == "Bearer at-123"
    assert shown["step_outcome"]["ok"] is True


def test_a_manual_step_is_marked_done_with_a_note(
    open_incidents: OpenIncidents, tmp_path: Path
) -> None:
    incidents = _incidents(open_incidents, tmp_path, "127.0.0.1", 9)
    incident_id = _acknowledged(incidents)
    shown = incidents.complete_step("acme", incident_id, "look", ALICE, "20 accounts tried")
    assert shown["timeline"][-1]["text"] == "step look (Look at the trail) done: 20 accounts tried"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("name: x\nsteps: [\n", "x.yaml:3", "not valid YAML"),
        ("name: x\nsteps:\n  - id: a\n    kind: shell\n", "x.yaml:3", "kind 'shell'"),
        (
            "name: x\nsteps:\n  - id: a\n    kind: http\n    http: {url: 'ftp://h'}\n",
            "x.yaml",
            "url",
        ),
        ("name: x\nowner: me\nsteps: []\n", "x.yaml:2", "unknown key 'owner'"),
        (
            "name: x\nallowlist: [h]\nsteps:\n  - id: a\n    kind: http\n    http:\n"
            "      url: 'https://h'\n      response_schema: {type: 12}\n",
            "x.yaml:8",
            "not a JSON Schema",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    kind: http\n    http: {url: 'https://h'}\n",
            "x.yaml:2",
            "allowlist",
        ),
        ("---\nname: x\nsteps: [1, 2\n---\n# body\n", "x.md:3", "not valid YAML"),
    ],
)
def test_a_bad_runbook_is_refused_with_file_and_line(text: str, where: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        parse_runbook(text, where.split(":")[0])
    assert str(refused.value).startswith(where)
    assert message in str(refused.value)


def test_the_shipped_runbooks_load() -> None:
    catalogue = RunbookCatalogue.load(Path(__file__).parents[2] / "runbooks")
    assert sorted(catalogue.runbooks) == [
        "bulk-data-export", "credential-stuffing", "identity-attribute-takeover",
        "leaked-integration-token", "privilege-escalation",
    ]  # fmt: skip
    for runbook in catalogue.runbooks.values():
        assert any(step.kind == "http" for step in runbook.steps)


def test_secrets_are_sealed_at_rest_and_never_in_responses_logs_or_the_ledger(
    caplog: pytest.LogCaptureFixture,
    open_api: OpenApi,
    store: Store,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    with http_peer(lambda r: json_answer(200, {"id": "b", "status": "active"})) as edge:
        (tmp_path / "block.yaml").write_text(RUNBOOK.format(host="127.0.0.1", port=edge.port))
        api: Api = open_api(
            incident_runbooks_dir=str(tmp_path),
            incident_allowed_networks="127.0.0.1/32",
            incident_secrets_key=base64.b64encode(KEY).decode(),
        )
        responder = api.headers("acme", "responder")
        api.client.post(
            "/v1/events",
            json=[
                {
                    "id": "l1",
                    "occurred_at": "2026-11-30T08:00:00Z",
                    "actor": {"id": "u", "ip": "203.0.113.10"},
                    "action": "auth.login",
                    "outcome": "failure",
                    "source": "app",
                }
            ],
            headers=api.headers("acme", "ingest"),
        )
        opened = api.client.post(
            "/v1/incidents",
            json={"title": "Stuffing", "severity": "SEV2", "runbook": "block", "evidence": [0]},
            headers=responder,
        ).json()
        desk: Incidents = api.client.app.state.incidents  # type: ignore[attr-defined]
        assert desk.vault is not None
        desk.vault.set("edge_token", SECRET)
        url = f"/v1/incidents/{opened['id']}"
        responses = [api.client.post(f"{url}/acknowledge", headers=responder)]
        responses.append(api.client.post(f"{url}/steps/block/run", headers=responder))
        responses.append(api.client.get(url, headers=responder))
        responses.append(api.client.get(f"{url}/postmortem?format=html", headers=responder))
    assert edge.received[0].headers["x-api-key"] == SECRET  # it was used...
    assert responses[1].json()["step_outcome"]["ok"] is True
    for response in responses:  # ...and never shown
        assert response.status_code == 200
        assert SECRET not in response.text
        assert "x-api-key" not in response.text.lower()
    # Every library's log, at DEBUG: httpx and httpcore log each request they send.
    assert "/v1/blocks" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET.encode() not in json.dumps(api.trail("acme")).encode()
    table = "incident_events"
    if isinstance(store, PostgresStore):
        table = f'"{store.schema}".incidents_events'
    stored = store.cells(table)
    assert b"Sealed" in stored  # the vault's events are there...
    assert SECRET.encode() not in stored  # ...sealed


def test_a_sealed_step_keeps_its_whole_configuration_encrypted(
    open_incidents: OpenIncidents, store: Store, tmp_path: Path
) -> None:
    (tmp_path / "sealed.yaml").write_text(
        "name: sealed\nallowlist: [127.0.0.1]\nsteps:\n"
        "  - {id: block, title: Block, kind: http, sealed: edge_block}\n"
    )
    with http_peer(lambda r: json_answer(200, {"ok": True})) as edge:
        incidents = open_incidents(
            runbooks=RunbookCatalogue.load(tmp_path),
            step_runner=StepRunner(NetworkPolicy.parse("127.0.0.1/32")),
            secrets_key=KEY,
        )
        opened = incidents.open("acme", "x", "SEV2", runbook="sealed")
        incidents.acknowledge("acme", opened.incident_id, ALICE)
        missing = incidents.run_step("acme", opened.incident_id, "block", ALICE)
        assert missing["step_outcome"]["reason"] == "no secret 'edge_block' holds its configuration"
        assert incidents.vault is not None
        incidents.vault.set(
            "edge_block",
            f"method: POST\nurl: http://127.0.0.1:{edge.port}/hidden-path\n"
            f"headers: {{X-Api-Key: {SECRET}}}\nbody: {{ip: '{{{{ incident.ref }}}}'}}\n",
        )
        ran = incidents.run_step("acme", opened.incident_id, "block", ALICE)
    assert ran["step_outcome"]["ok"] is True
    [request] = edge.received
    assert request.path == "/hidden-path"
    assert request.headers["x-api-key"] == SECRET
    table = "incident_events"
    if isinstance(store, PostgresStore):
        table = f'"{store.schema}".incidents_events'
    assert b"hidden-path" not in store.cells(table)
