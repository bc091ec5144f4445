"""Read-your-writes: a write answers with its position, and a query naming it waits
(bounded) until the read model holds that record."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from tests.api.conftest import Api, OpenApi
from tests.events import audit_event, audit_events
from tests.followers import OpenedReadModel
from tests.stores import Store


@contextlib.contextmanager
def following_after(store: Store, delay: float) -> Iterator[None]:
    """A read-model follower of the store, as `vigil worker` runs one, started after
    ``delay`` seconds: until then the read model lags the ledger."""
    opened = OpenedReadModel(store.settings().ledger_env())
    runner = opened.runner(store.open_ledger(), poll_interval=0.05)
    timer = threading.Timer(delay, runner.start)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        runner.stop()
        opened.close()


def _ids(api: Api, headers: dict[str, str], **params: object) -> list[str]:
    response = api.client.get("/v1/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_a_query_naming_a_writes_position_sees_the_write(open_api: OpenApi, store: Store) -> None:
    api = open_api(readmodel_follow=False)  # the read model is followed elsewhere
    ingest, reader = api.headers("acme", "ingest"), api.headers("acme", "analyst")
    written = api.client.post(
        "/v1/events", json=audit_event("mine", actor={"id": "writer"}), headers=ingest
    )
    assert written.status_code == 201
    assert written.headers["Vigil-Position"] == "0"
    assert _ids(api, reader, actor_id="writer") == []  # the read model trails the write

    with following_after(store, delay=0.3):
        position = written.headers["Vigil-Position"]
        assert _ids(api, reader, actor_id="writer", min_position=position) == ["mine"]


def test_a_batch_answers_with_the_position_of_its_last_record_and_exports_wait_too(
    open_api: OpenApi, store: Store
) -> None:
    api = open_api(readmodel_follow=False)
    ingest = api.headers("acme", "ingest")
    api.client.post("/v1/events", json=audit_events(3, "first"), headers=ingest)
    written = api.client.post("/v1/events", json=audit_events(4, "second"), headers=ingest)
    assert written.headers["Vigil-Position"] == "6"
    replayed = api.client.post("/v1/events", json=audit_events(4, "second"), headers=ingest)
    assert (replayed.status_code, replayed.headers["Vigil-Position"]) == (200, "6")

    with following_after(store, delay=0.3):
        response = api.client.get(
            "/v1/events/export",
            params={"min_position": "6", "source": "console"},
            headers=api.headers("acme", "auditor"),
        )
    assert response.status_code == 200
    assert response.text.count('"seq"') == 7


def test_a_query_whose_position_the_read_model_does_not_reach_in_time_answers_503(
    open_api: OpenApi,
) -> None:
    api = open_api(readmodel_follow=False, read_your_writes_timeout_seconds=0.3)
    written = api.client.post(
        "/v1/events", json=audit_event("mine"), headers=api.headers("acme", "ingest")
    )
    response = api.client.get(
        "/v1/events",
        params={"min_position": written.headers["Vigil-Position"]},
        headers=api.headers("acme", "analyst"),
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "has not reached record 0 of acme within 0.3 s" in response.text
    assert "VIGIL_READ_YOUR_WRITES_TIMEOUT_SECONDS" in response.text


def test_a_position_beyond_the_tenants_log_is_refused_naming_it(api: Api) -> None:
    api.client.post("/v1/events", json=audit_events(2), headers=api.headers("acme", "ingest"))
    api.catch_up()
    response = api.client.get(
        "/v1/events", params={"min_position": "99"}, headers=api.headers("acme", "analyst")
    )
    assert response.status_code == 422
    [problem] = response.json()["problems"]
    assert problem["field"] == "min_position"
    assert "holds 2 records" in problem["message"]


def test_with_the_follower_in_process_a_query_after_a_write_sees_it(api: Api) -> None:
    written = api.client.post(
        "/v1/events", json=audit_event("mine"), headers=api.headers("acme", "ingest")
    )
    params = {"min_position": written.headers["Vigil-Position"]}
    assert _ids(api, api.headers("acme", "analyst"), **params) == ["mine"]
