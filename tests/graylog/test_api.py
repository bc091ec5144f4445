"""The shipper inside the API process: ingest never waits for Graylog, and the
shipper's lag shows in /readyz and /metrics."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Api, OpenApi
from tests.api.conftest import open_api as open_api  # the fixture
from tests.events import audit_events
from tests.graylog.receivers import TcpReceiver


def follower(api: Api, name: str) -> dict[str, Any]:
    followers: dict[str, Any] = api.client.get("/readyz").json()["followers"]
    return followers[name]


def metric(api: Api, sample: str) -> float:
    """The value of one sample of /metrics, e.g. ``vigil_follower_lag_events{...}``."""
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"/metrics has no {sample}")


def test_ingest_goes_on_while_graylog_is_down_and_the_lag_shows(
    open_api: OpenApi, tcp_receiver: TcpReceiver
) -> None:
    api = open_api(graylog_destinations=f"siem=tcp://127.0.0.1:{tcp_receiver.port}")
    headers = api.headers("acme", "ingest")
    assert api.client.post("/v1/events", json=audit_events(5), headers=headers).status_code == 201
    api.catch_up()
    assert len(tcp_receiver.wait_for(5)) == 5
    assert follower(api, "graylog:siem")["lag_events"] == 0

    tcp_receiver.stop()
    during = api.client.post("/v1/events", json=audit_events(7, prefix="down"), headers=headers)
    assert during.status_code == 201
    errors = 'vigil_follower_errors_total{follower="graylog:siem"}'
    tcp_receiver.wait_until(lambda: metric(api, errors) > 0)
    assert follower(api, "graylog:siem")["lag_events"] == 7
    assert metric(api, 'vigil_follower_lag_events{follower="graylog:siem"}') == 7

    tcp_receiver.start()
    api.services.catch_up(timeout=60)
    arrived = tcp_receiver.by_event_id()
    assert {f"down-{index}" for index in range(7)} <= set(arrived)
    assert follower(api, "graylog:siem")["lag_events"] == 0
