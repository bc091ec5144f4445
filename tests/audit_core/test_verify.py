"""The verifier recomputes chains from storage and names the first bad seq and why."""

from __future__ import annotations

import base64
import sys
import uuid
from collections.abc import Sequence

import orjson
import pytest

from audit_core import DamagedLogError, Reason, TenantNotFoundError, verify, verify_tenant
from audit_core.transparency.merkle import record_leaf_hash
from tests.events import audit_events
from tests.stores import Store
from tests.tampering import Tampering, seed, tamperings

KEY = base64.b64encode(b"k" * 32).decode()


def test_an_untouched_log_verifies_up_to_its_head(store: Store) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    report = verify_tenant(ledger, "acme")
    assert report.ok
    assert report.problem is None
    assert (report.records, report.head_hash) == (6, ledger.head("acme")[1])


def test_a_tenant_with_nothing_stored_is_not_found(store: Store) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    with pytest.raises(TenantNotFoundError, match="'acme-typo' has no audit log"):
        verify_tenant(ledger, "acme-typo")
    with pytest.raises(TenantNotFoundError):
        verify(ledger, ["acme", "acme-typo"])
    assert not ledger.has_log("acme-typo")


@tamperings
def test_tampering_in_the_database_is_reported_at_the_seq_where_it_happened(
    store: Store, tampering: Tampering
) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    tampering.apply(store)

    report = verify_tenant(ledger, "acme")

    assert report.problem is not None, f"{tampering.name} went unnoticed"
    assert (report.problem.seq, report.problem.reason) == (tampering.seq, Reason(tampering.reason))
    assert report.records == tampering.seq, "records before the break were all good"
    assert not report.ok


@tamperings
def test_tampering_is_also_found_by_a_ledger_opened_afterwards(
    store: Store, tampering: Tampering
) -> None:
    seed(store.open_ledger())
    tampering.apply(store)

    reports = verify(store.open_ledger())

    found = {
        r.tenant: (r.problem.seq, r.problem.reason.value) if r.problem else None for r in reports
    }
    assert found == tampering.every_log()


def test_the_report_details_say_what_is_wrong(store: Store) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    store.delete_seqs("acme", 1, 2)
    store.delete_seqs("acme", 5)
    problem = verify_tenant(ledger, "acme").problem
    assert problem is not None
    assert problem.detail == "seq 1 to 2 missing from storage"


def test_truncation_is_reported_with_the_last_seq_the_ledger_wrote(store: Store) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    store.delete_seqs("acme", 3, 4, 5)
    problem = verify_tenant(ledger, "acme").problem
    assert problem is not None
    assert (problem.seq, problem.reason) == (3, Reason.TRUNCATED)
    assert "wrote up to seq 5 but storage ends at seq 2" in problem.detail


def test_truncation_shows_through_a_snapshot_even_when_the_id_index_is_cut_too(
    store: Store,
) -> None:
    ledger = store.open_ledger()
    ledger.snapshot_every = 3
    ledger.record("acme", audit_events(3, prefix="a"))
    ledger.record("acme", audit_events(3, prefix="b"))
    store.delete_seqs("acme", 4, 5)
    store.delete_indexed_ids("acme", 4)
    problem = verify_tenant(store.open_ledger(), "acme").problem
    assert problem is not None
    assert (problem.seq, problem.reason) == (4, Reason.TRUNCATED)


def test_with_encryption_a_flipped_byte_in_a_stored_payload_is_caught(store: Store) -> None:
    ledger = store.open_ledger(encryption_key=KEY)
    seed(ledger)
    assert verify_tenant(ledger, "acme").ok
    state = bytearray(store.stored_state("acme", 2))
    state[len(state) // 2] ^= 0x01
    store.set_stored_state("acme", 2, bytes(state))
    problem = verify_tenant(ledger, "acme").problem
    assert problem is not None
    assert (problem.seq, problem.reason) == (2, Reason.UNDECODABLE)


def test_progress_is_told_every_record_checked(store: Store) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    counted: list[int] = []
    verify(ledger, progress=counted.append)
    assert sum(counted) == 9


@pytest.mark.parametrize("tenants", [["globex"], ["acme", "globex"]])
def test_verify_checks_only_the_named_tenants(store: Store, tenants: list[str]) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    assert [report.tenant for report in verify(ledger, tenants)] == tenants


def test_a_log_longer_than_a_page_of_storage_verifies_and_a_late_break_is_found(
    store: Store,
) -> None:
    ledger = store.open_ledger()
    for batch in range(6):
        ledger.record("acme", audit_events(1000, prefix=f"b{batch}"))
    assert verify_tenant(ledger, "acme").records == 6000
    store.delete_seqs("acme", 5500)
    problem = verify_tenant(ledger, "acme").problem
    assert problem is not None
    assert (problem.seq, problem.reason) == (5500, Reason.GAP)


def test_a_gap_wider_than_a_page_of_storage_is_reported_where_it_starts(store: Store) -> None:
    ledger = store.open_ledger()
    for batch in range(5):
        ledger.record("acme", audit_events(1000, prefix=f"b{batch}"))
    store.delete_seq_range("acme", 100, 4499)
    problem = verify_tenant(ledger, "acme").problem
    assert problem is not None
    assert (problem.seq, problem.reason) == (100, Reason.GAP)
    assert problem.detail == "seq 100 to 4499 missing from storage"


def test_a_log_that_fills_whole_pages_verifies_to_its_last_record(store: Store) -> None:
    ledger = store.open_ledger()
    for batch in range(4):
        ledger.record("acme", audit_events(1000, prefix=f"b{batch}"))
    report = verify_tenant(ledger, "acme")
    assert (report.ok, report.records) == (True, 4000)
    store.delete_seq_range("acme", 3999, 3999)
    problem = verify_tenant(ledger, "acme").problem
    assert problem is not None
    assert (problem.seq, problem.reason) == (3999, Reason.TRUNCATED)


def test_a_log_whose_opened_event_is_deleted_is_still_listed_and_verified(store: Store) -> None:
    seed(store.open_ledger())
    store.delete_seqs("acme", -1)
    ledger = store.open_ledger()
    assert ledger.tenants() == ["acme", "globex"]
    problem = verify_tenant(ledger, "acme").problem
    assert problem is not None
    assert problem.reason is Reason.OPENED_MISSING
    assert "the 6 records themselves chain intact" in problem.detail


def test_appending_to_a_log_whose_opened_event_is_gone_is_refused_naming_the_damage(
    store: Store,
) -> None:
    seed(store.open_ledger())
    store.delete_seqs("acme", -1)
    ledger = store.open_ledger()
    with pytest.raises(DamagedLogError, match="vigil verify --tenant acme"):
        ledger.record("acme", audit_events(1, prefix="late"))
    with pytest.raises(DamagedLogError):
        ledger.head("acme")
    assert store.stored_versions("acme") == [1, 2, 3, 4, 5, 6]
    assert ledger.record("globex", audit_events(1, prefix="late"))[0]["seq"] == 3


def test_appending_after_the_opened_event_names_another_tenant_is_refused(store: Store) -> None:
    seed(store.open_ledger())
    opened = orjson.loads(store.stored_state("acme", -1))
    store.set_stored_state("acme", -1, orjson.dumps({**opened, "tenant": "globex"}))
    with pytest.raises(DamagedLogError, match="names another tenant"):
        store.open_ledger().record("acme", audit_events(1, prefix="late"))


def test_rows_of_a_log_that_no_row_names_are_a_finding(store: Store) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    stray = uuid.uuid4()
    store.insert_row(stray, 1, "audit_core.domain:TenantLog.Recorded", b"\x00garbage")

    reports = {report.tenant: report for report in verify(ledger)}

    assert reports["acme"].ok
    assert reports["globex"].ok
    problem = reports[f"log:{stray}"].problem
    assert problem is not None
    assert problem.reason is Reason.UNNAMED_LOG
    assert str(stray) in problem.detail
    assert ledger.tenants() == ["acme", "globex"]


def test_a_read_by_id_that_the_id_index_points_elsewhere_is_refused(store: Store) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    store._run(
        f"UPDATE {store.ids_table} SET seq = 4 WHERE originator_id = ? AND seq = 1",
        (store._log_key("acme"),),
    )
    with pytest.raises(DamagedLogError, match="points id 'a-1' at seq 4"):
        ledger.get("acme", "a-1")


@pytest.fixture
def short_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges of two records, so that a six-record log is read by worker processes."""
    monkeypatch.setattr(sys.modules["audit_core.verify"], "_RANGE", 2)


@pytest.mark.usefixtures("short_ranges")
def test_an_intact_log_read_in_ranges_by_processes_reports_as_one_process_does(
    store: Store,
) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    leaves = RecordedLeaves()
    report = verify_tenant(ledger, "acme", leaves=leaves, jobs=2)
    assert report == verify_tenant(ledger, "acme")
    assert (report.records, report.head_hash) == (6, ledger.head("acme")[1])
    assert leaves.taken == [record_leaf_hash(r) for r in ledger.read("acme")]
    assert leaves.restarts == 0


@tamperings
@pytest.mark.usefixtures("short_ranges")
def test_tampering_found_in_a_range_is_reported_as_one_process_reports_it(
    store: Store, tampering: Tampering
) -> None:
    ledger = store.open_ledger()
    seed(ledger)
    tampering.apply(store)
    counted_alone: list[int] = []
    alone = verify_tenant(store.open_ledger(), "acme", counted_alone.append)

    leaves = RecordedLeaves()
    counted: list[int] = []
    report = verify_tenant(store.open_ledger(), "acme", counted.append, leaves=leaves, jobs=2)

    assert report == alone
    assert leaves.restarts <= 1, "the leaves are given again from seq 0 once, at most"
    assert sum(counted) == sum(counted_alone), "progress read again is taken back first"


class RecordedLeaves:
    """A LeafCheck that keeps what it is given."""

    def __init__(self) -> None:
        self.taken: list[bytes] = []
        self.restarts = 0

    def add(self, leaf_hashes: Sequence[bytes]) -> bool:
        self.taken += leaf_hashes
        return True

    def unreadable(self) -> None:
        pass

    def restart(self) -> None:
        self.taken.clear()
        self.restarts += 1
