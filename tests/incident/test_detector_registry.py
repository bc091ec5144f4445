"""The detector in the follower registry: built from settings when enabled, refused at
start when a rule names a runbook that does not exist."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.followers import build_followers
from audit_core.followers import FollowerRunner, FollowerStore, open_store
from incident.rules import RuleError, load_rules
from incident.simulation import Tenant
from tests.incident.test_detector_follower import ATTACK_AT
from tests.stores import SQLiteStore

RULES = Path(__file__).resolve().parents[2] / "runbooks" / "rules"


def write_runbooks(directory: Path, names: set[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.yaml").write_text(
            f"name: {name}\ntitle: Respond to {name}\nsteps:\n"
            "  - id: look\n    title: Look at the evidence\n    kind: manual\n"
        )


@pytest.fixture
def follower_store(sqlite_store: SQLiteStore) -> Iterator[FollowerStore]:
    store = open_store(sqlite_store.settings().ledger_env())
    yield store
    store.close()


def test_the_detector_is_off_unless_enabled(
    sqlite_store: SQLiteStore, follower_store: FollowerStore
) -> None:
    ledger = sqlite_store.open_ledger()
    followers = build_followers(sqlite_store.settings(), ledger, follower_store)
    try:
        assert "incident-detector" not in [f.name for f in followers]
    finally:
        for follower in followers:
            follower.close()


def test_enabled_it_runs_the_configured_rules_with_their_runbooks(
    sqlite_store: SQLiteStore, follower_store: FollowerStore, tmp_path: Path
) -> None:
    runbooks = tmp_path / "runbooks"
    write_runbooks(runbooks, {rule.runbook for rule in load_rules(RULES) if rule.runbook})
    settings = sqlite_store.settings(
        incident_detector=True, incident_runbooks_dir=str(runbooks), incident_rules_dir=str(RULES)
    )
    ledger = sqlite_store.open_ledger()
    tenant = Tenant.make("acme", users=20)
    ledger.record("acme", tenant.brute_force(ATTACK_AT, tenant.users[3]))
    [detector] = build_followers(settings, ledger, follower_store, only=["incident-detector"])
    try:
        FollowerRunner(ledger, detector, follower_store).drain()
        opened = [r for r in ledger.latest("acme", 200) if r["action"] == "incident.open"]
        [record] = opened
        assert record["metadata"]["rule"] == "brute-force-login"
        assert record["metadata"]["runbook"] == "credential-stuffing"
    finally:
        detector.close()


def test_a_rule_naming_a_missing_runbook_is_refused_at_start(
    sqlite_store: SQLiteStore, follower_store: FollowerStore, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    runbooks = tmp_path / "runbooks"
    wanted = {rule.runbook for rule in load_rules(rules) if rule.runbook}
    write_runbooks(runbooks, wanted - {"bulk-data-export"})
    settings = sqlite_store.settings(
        incident_detector=True, incident_runbooks_dir=str(runbooks), incident_rules_dir=str(rules)
    )
    with pytest.raises(RuleError) as caught:
        build_followers(settings, sqlite_store.open_ledger(), follower_store)
    # The first rule file, by name, that names it; and the line of its runbook key.
    assert (Path(caught.value.path).name, caught.value.line) == ("bulk-export-large.yaml", 21)
    assert "no runbook named 'bulk-data-export'" in str(caught.value)
