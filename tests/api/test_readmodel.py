"""The read model follows the ledger's notification log and resumes where it stopped."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
from eventsourcing.persistence import MapperDeserialisationError, Tracking

from audit_core import readmodel
from audit_core.readmodel import TrailQuery
from tests.events import audit_event, audit_events
from tests.followers import OpenedReadModel
from tests.stores import Store


def collide_tenant_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tenant gets the same key, wherever the read model computes it."""
    for module in (readmodel.rows, readmodel.query, readmodel.store):
        monkeypatch.setattr(module, "tenant_key", lambda tenant: 42)


def _seqs(view: object, tenant: str) -> list[int]:
    query = TrailQuery(tenant=tenant, order="asc", limit=100_000)
    return [seq for page in view.iter_seqs(query) for seq in page]  # type: ignore[attr-defined]


def assert_pages_through_matches(
    view: object,
    records: list[dict[str, Any]],
    matches: Callable[[dict[str, Any]], bool],
    order: str,
    filters: dict[str, str],
    page_size: int,
) -> None:
    """Paging through the query of ``filters`` in acme yields the matching records'
    seqs, each once, in order."""
    expected = [r["seq"] for r in records if matches(r)]
    if order == "desc":
        expected.reverse()
    query = TrailQuery(tenant="acme", order=order, limit=page_size, **filters)  # type: ignore[arg-type]
    pages = view.iter_seqs(query, page_size=page_size)  # type: ignore[attr-defined]
    assert [seq for page in pages for seq in page] == expected


def test_a_restarted_follower_resumes_without_skipping_or_repeating(store: Store) -> None:
    ledger = store.open_ledger()
    env = store.settings().ledger_env()
    ledger.record("acme", audit_events(30, "a"))
    opened = OpenedReadModel(env)
    view = opened.view
    follower = opened.runner(ledger, page_size=10)
    applied = follower.run_once()
    position = opened.follower.position()
    assert applied == 10
    opened.close()  # a crash after the first page

    ledger.record("acme", audit_events(5, "b"))
    opened = OpenedReadModel(env)
    view = opened.view
    follower = opened.runner(ledger, page_size=10)
    assert opened.follower.position() == position
    follower.start()
    follower.catch_up(timeout=30)
    follower.stop()
    assert _seqs(view, "acme") == list(range(35))
    assert view.count("acme") == 35
    opened.close()


def test_a_page_that_fails_leaves_neither_rows_nor_position(store: Store) -> None:
    ledger = store.open_ledger()
    ledger.record("acme", audit_events(5))
    opened = OpenedReadModel(store.settings().ledger_env())
    view = opened.view
    follower = opened.runner(ledger)
    follower.run_once()
    before = opened.follower.position()
    ledger.record("acme", audit_events(3, "more"))
    # A page that holds rows already written (as a second writer's would) fails whole.
    states = ledger.ledger_recorder.recorded_after(0, 100).states
    rows = readmodel.rows_of(states, ledger.ledger_mapper)
    with pytest.raises(Exception):  # noqa: B017, PT011 - backend-specific integrity error
        view.project(rows, Tracking(opened.follower.name, 100))
    assert opened.follower.position() == before
    assert view.count("acme") == 5
    follower.run_once()
    assert view.count("acme") == 8
    opened.close()


def test_tenants_are_kept_apart_in_the_read_model(store: Store) -> None:
    ledger = store.open_ledger()
    ledger.record("acme", audit_events(3))
    ledger.record("globex", audit_events(2))
    opened = OpenedReadModel(store.settings().ledger_env())
    view = opened.view
    follower = opened.runner(ledger)
    follower.run_once()
    assert _seqs(view, "acme") == [0, 1, 2]
    assert _seqs(view, "globex") == [0, 1]
    opened.close()


def test_with_encryption_the_read_model_holds_keyed_hashes_and_no_record(
    store: Store,
) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    ledger = store.open_ledger(encryption_key=key)
    event = audit_event(
        "payroll-1",
        actor={"id": "u-7", "user_agent": "PayrollAgent/9"},
        target={"type": "report", "id": "r-1", "name": "quarterly-payroll-export"},
        metadata={"reason": "Salary Review"},
    )
    ledger.record("acme", [event])
    opened = OpenedReadModel(store.settings(encryption_key=key).ledger_env())
    view = opened.view
    opened.runner(ledger).run_once()
    stored = store.cells(store.trail_index_table.replace(readmodel.TABLE, readmodel.KEYED_TABLE))
    for clear in (b"u-7", b"r-1", b"salary", b"review", b"quarterly", b"PayrollAgent"):
        assert clear not in stored
    assert b"report" in stored  # the target's type is listed as kept in clear

    def found(**filters: str) -> list[int]:
        return view.query(TrailQuery(tenant="acme", **filters)).seqs  # type: ignore[arg-type]

    assert found(actor_id="u-7") == [0]
    assert found(target_type="report", target_id="r-1") == [0]
    assert found(text="SALARY") == [0]
    assert found(text="salary review") == [0]
    assert found(actor_id="u-8") == []
    assert found(text="sala") == []  # a part of a word is not found: only its hash is held
    assert found(text="review salary") == []  # words in another order are another phrase
    [record] = ledger.records_at("acme", found())
    assert record["target"]["name"] == "quarterly-payroll-export"
    opened.close()


def test_a_query_without_a_word_is_refused_when_the_read_model_is_keyed(store: Store) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    opened = OpenedReadModel(store.settings(encryption_key=key).ledger_env())
    with pytest.raises(readmodel.InvalidQueryError, match="whole words") as refused:
        opened.view.query(TrailQuery(tenant="acme", text="%-"))
    assert refused.value.field == "q"
    opened.close()


def test_a_read_model_built_in_clear_is_dropped_and_rebuilt_keyed_when_the_key_is_set(
    store: Store,
) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    ledger = store.open_ledger()
    ledger.record("acme", [audit_event(f"e-{n}", actor={"id": "alice-clear"}) for n in range(3)])
    opened = OpenedReadModel(store.settings().ledger_env())
    opened.runner(ledger).run_once()
    assert b"alice-clear" in store.cells(store.trail_index_table)
    opened.close()

    keyed = OpenedReadModel(store.settings(encryption_key=key).ledger_env())
    keyed.runner(ledger).run_once()
    with pytest.raises(Exception):  # noqa: B017, PT011 - backend-specific "no such table"
        store.cells(store.trail_index_table)
    by_actor = TrailQuery(tenant="acme", actor_id="alice-clear", order="asc")
    assert keyed.view.query(by_actor).seqs == [0, 1, 2]
    keyed.close()

    # Another key: another shape, rebuilt again from the first event.
    other = base64.b64encode(b"o" * 32).decode()
    rekeyed = OpenedReadModel(store.settings(encryption_key=other).ledger_env())
    rekeyed.runner(ledger).run_once()
    assert rekeyed.view.query(by_actor).seqs == [0, 1, 2]
    assert rekeyed.view.count("acme") == 3
    rekeyed.close()


def test_free_text_matches_metadata_values_not_their_keys(store: Store) -> None:
    ledger = store.open_ledger()
    ledger.record(
        "acme",
        [
            audit_event("a", metadata={"reason": "GDPR erasure", "count": 3, "flag": True}),
            audit_event("b", metadata={"note": {"nested": ["Refund approved"]}}),
        ],
    )
    opened = OpenedReadModel(store.settings().ledger_env())
    view = opened.view
    opened.runner(ledger).run_once()

    def found(text: str) -> list[int]:
        return view.query(TrailQuery(tenant="acme", text=text, order="asc")).seqs

    assert found("gdpr ERA") == [0]
    assert found("refund") == [1]
    assert found("true") == [0]
    assert found("reason") == []
    assert found("nested") == []
    opened.close()


def test_one_follower_leads_and_another_takes_over_when_it_stops(store: Store) -> None:
    ledger = store.open_ledger()
    env = store.settings().ledger_env()
    first_opened, second_opened = OpenedReadModel(env), OpenedReadModel(env)
    second_view = second_opened.view
    first = first_opened.runner(ledger, poll_interval=0.02)
    second = second_opened.runner(ledger, poll_interval=0.02)
    second.leadership_check_seconds = 0.05
    first.start()
    deadline = time.monotonic() + 10
    while not first.leading:
        assert time.monotonic() < deadline, "the first follower never led"
        time.sleep(0.01)
    second.start()
    ledger.record("acme", audit_events(5))
    first.catch_up(timeout=30)
    time.sleep(0.2)
    assert (first.leading, second.leading) == (True, False)  # it stands by

    first.stop()
    ledger.record("acme", audit_events(3, "more"))
    second.catch_up(timeout=30)  # written by the second follower, now leading
    assert second.leading
    assert _seqs(second_view, "acme") == list(range(8))
    second.stop()
    first_opened.close()
    second_opened.close()


@pytest.mark.parametrize("previous", readmodel.store._PREVIOUS_TABLES)
def test_a_read_model_of_an_earlier_version_is_replaced_and_rebuilt(
    store: Store, previous: str
) -> None:
    ledger = store.open_ledger()
    env = store.settings().ledger_env()
    ledger.record("acme", audit_events(12))
    opened = OpenedReadModel(env)
    view = opened.view
    follower = opened.runner(ledger)
    follower.run_once()
    opened.close()
    # As an earlier version left it: its own table, and a position tracked for it.
    table = store.trail_index_table.replace(readmodel.TABLE, previous)
    store._run(f"CREATE TABLE {table} (tenant TEXT, seq INTEGER)")
    store._run(f"INSERT INTO {table} VALUES ('acme', 0)")

    opened = OpenedReadModel(env)
    view = opened.view
    follower = opened.runner(ledger)
    follower.start()
    follower.catch_up(timeout=30)
    follower.stop()
    assert _seqs(view, "acme") == list(range(12))
    opened.close()
    with pytest.raises(Exception):  # noqa: B017, PT011 - backend-specific "no such table"
        store._run(f"SELECT * FROM {table}")


def test_tenants_whose_keys_collide_still_see_only_their_own(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    collide_tenant_keys(monkeypatch)
    ledger = store.open_ledger()
    ledger.record("acme", audit_events(3, "a"))
    ledger.record("globex", audit_events(5, "g"))
    opened = OpenedReadModel(store.settings().ledger_env())
    view = opened.view
    follower = opened.runner(ledger)
    follower.run_once()
    assert _seqs(view, "acme") == [0, 1, 2]
    assert _seqs(view, "globex") == [0, 1, 2, 3, 4]
    by_actor = TrailQuery(tenant="acme", actor_id=audit_event("x")["actor"]["id"])
    assert len(view.query(by_actor).seqs) == 3
    opened.close()


@pytest.mark.parametrize("encrypted", [False, True])
def test_rows_read_from_storage_are_the_rows_of_the_records(store: Store, encrypted: bool) -> None:
    # The follower decodes only the indexed fields of each stored record; its rows must
    # be what the whole record gives.
    key = base64.b64encode(b"k" * 32).decode() if encrypted else None
    ledger = store.open_ledger(encryption_key=key)
    events = audit_events(4)
    events[0]["target"] = None
    events[1]["metadata"] = {"ratio": 1.5, "nested": {"list": ["Ünïcode", 7, None, True]}}
    events[2]["metadata"] = {}
    events[3]["action"] = "conversation.message.sent"
    records = ledger.record("acme", events)
    states = ledger.ledger_recorder.recorded_after(0, 100).states
    assert readmodel.rows_of(states, ledger.ledger_mapper) == [
        readmodel.to_row(record) for record in records
    ]


def test_a_stored_record_that_cannot_be_decoded_is_named(store: Store) -> None:
    ledger = store.open_ledger()
    with pytest.raises(MapperDeserialisationError, match="cannot decode a stored audit record"):
        readmodel.rows_of([b'{"record": {"tenant": 1}}'], ledger.ledger_mapper)


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("prefix", ["conversation.*", "conversation.message.*", "zzz.*"])
def test_an_action_prefix_pages_through_every_match_in_order(
    store: Store, order: str, prefix: str
) -> None:
    actions = [
        "conversation.assign",
        "conversation.close",
        "conversation.message.sent",
        "user.login",
        "conversationx.odd",
        "conversation.message.deleted",
    ]
    events = [
        audit_event(
            f"e-{n}",
            action=actions[n * 7 % len(actions)],
            outcome="failure" if n % 5 else "success",
        )
        for n in range(60)
    ]
    ledger = store.open_ledger()
    records = ledger.record("acme", events)
    ledger.record("globex", events)  # the same actions in another tenant
    opened = OpenedReadModel(store.settings().ledger_env())
    view = opened.view
    opened.runner(ledger).run_once()
    stem = prefix[:-1]
    for filters in ({}, {"outcome": "failure"}):
        expected = [
            r["seq"]
            for r in records
            if r["action"].startswith(stem)
            and all(r[name] == value for name, value in filters.items())
        ]
        if order == "desc":
            expected.reverse()
        query = TrailQuery(tenant="acme", action=prefix, order=order, limit=7, **filters)  # type: ignore[arg-type]
        assert [seq for page in view.iter_seqs(query, page_size=7) for seq in page] == expected
        first = view.query(query)
        assert first.seqs == expected[:7]
        assert (first.next_cursor is not None) == (len(expected) > 7)
    opened.close()


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize(
    "filters",
    [
        {"outcome": "denied"},
        {"outcome": "success"},
        {"source": "app"},
        {"source": "system"},  # no record has it
        {"outcome": "failure", "source": "console"},
        {"outcome": "failure", "text": "emea"},
        {"source": "api", "since": "2024-05-01T00:20:00.000000Z"},
    ],
)
def test_outcome_and_source_queries_page_through_every_match_in_order(
    store: Store, order: str, filters: dict[str, str]
) -> None:
    outcomes, sources = ("success", "failure", "denied"), ("console", "app", "api")
    events = [
        audit_event(
            f"e-{n}",
            outcome=outcomes[n * 5 % 7 % 3],
            source=sources[n * 3 % 5 % 3],
            occurred_at=f"2024-05-01T00:{n % 60:02d}:00Z",
            metadata={"region": "emea" if n % 4 else "apac"},
        )
        for n in range(70)
    ]
    ledger = store.open_ledger()
    records = ledger.record("acme", events)
    ledger.record("globex", events)
    opened = OpenedReadModel(store.settings().ledger_env())
    view = opened.view
    opened.runner(ledger).run_once()

    def matches(record: dict[str, Any]) -> bool:
        for name, value in filters.items():
            if name == "text":
                if value not in str(record["metadata"]):
                    return False
            elif name == "since":
                if str(record["occurred_at"]) < value:
                    return False
            elif record[name] != value:
                return False
        return True

    assert_pages_through_matches(view, records, matches, order, filters, page_size=6)
    opened.close()


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize(
    "filters",
    [
        {"text": "emea"},  # most records
        {"text": "needle"},  # two records, far apart
        {"text": "emea\nsupport-apac"},  # spans two texts of a block, in no record
        {"text": "emea", "outcome": "failure"},
        {"text": "support", "since": "2024-05-01T00:30:00.000000Z"},
        {"text": "absent"},
    ],
)
def test_free_text_pages_through_every_match_in_order(
    store: Store, monkeypatch: pytest.MonkeyPatch, order: str, filters: dict[str, str]
) -> None:
    monkeypatch.setattr(readmodel.PostgresTrailView, "text_block_rows", 4)
    collide_tenant_keys(monkeypatch)  # tenants collide
    events = [
        audit_event(
            f"e-{n}",
            outcome="failure" if n % 3 else "success",
            occurred_at=f"2024-05-01T00:{n % 60:02d}:00Z",
            metadata={
                "team": "support-emea" if n % 5 else "support-apac",
                **({"note": "Needle in row"} if n in (2, 57) else {}),
            },
        )
        for n in range(60)
    ]
    ledger = store.open_ledger()
    ledger.record("globex", events[:30])
    records = ledger.record("acme", events[:30])
    ledger.record("globex", events[30:])
    records += ledger.record("acme", events[30:])
    opened = OpenedReadModel(store.settings().ledger_env())
    view = opened.view
    follower = opened.runner(ledger, page_size=25)  # blocks cut across pages
    while follower.run_once():
        pass

    def matches(record: dict[str, Any]) -> bool:
        text = filters["text"]
        if not any(text in value.lower() for value in record["metadata"].values()):
            return False
        if "since" in filters and record["occurred_at"] < filters["since"]:
            return False
        return "outcome" not in filters or record["outcome"] == filters["outcome"]

    assert_pages_through_matches(view, records, matches, order, filters, page_size=5)
    opened.close()


def test_text_blocks_hold_each_tenants_distinct_texts_in_runs() -> None:
    def row(tenant: str, seq: int, search: str) -> readmodel.Row:
        return (tenant, seq, "", "", "", "", None, None, "", "", search, 7, None, None, None)

    rows = [
        row("acme", 0, "emea"),
        row("globex", 0, "apac"),
        row("acme", 1, "emea"),
        row("acme", 2, ""),
        row("acme", 3, "apac"),
        row("globex", 1, ""),
    ]
    assert readmodel.text_blocks(rows, 3) == [
        (7, "acme", 0, 2, "emea"),
        (7, "acme", 3, 3, "apac"),
        (7, "globex", 0, 1, "apac"),
    ]
