"""``vigil rules check`` and ``vigil rules test`` on a real ledger."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner, Result

from api.cli import app
from incident.simulation import Tenant
from tests.stores import SQLiteStore

RULES = Path(__file__).resolve().parents[2] / "runbooks" / "rules"
ATTACK_AT = datetime(2026, 11, 17, 11, 0, tzinfo=UTC)


def vigil(store: SQLiteStore, *args: str, **env: str) -> Result:
    return CliRunner().invoke(
        app, list(args), env={"VIGIL_DATABASE_URL": store.url, **env}, catch_exceptions=False
    )


def test_check_lists_every_valid_rule(sqlite_store: SQLiteStore) -> None:
    result = vigil(sqlite_store, "rules", "check", str(RULES), "--no-runbooks")
    assert result.exit_code == 0, result.output
    assert "brute-force-login  SEV2  count >= 10 within 10m group by target.id" in result.stdout
    assert "8 rule(s) valid" in result.stdout


def test_check_refuses_bad_files_naming_file_and_line(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    (tmp_path / "ok.yaml").write_text(
        "id: ok\ntitle: t\nlevel: low\ndetection: {s: {outcome: failure}, condition: s}\n"
    )
    (tmp_path / "typo.yaml").write_text(
        textwrap.dedent(
            """\
            id: typo
            title: t
            level: low
            detection:
              s:
                actor.ip|cidr: 10.0.0.0/33
              condition: s
            """
        )
    )
    result = vigil(sqlite_store, "rules", "check", str(tmp_path), "--no-runbooks")
    assert result.exit_code == 2
    assert f"{tmp_path / 'typo.yaml'}:6: |cidr: '10.0.0.0/33' is not an IP network" in (
        result.stderr.replace("\n", "")
    )


def test_check_refuses_a_rule_whose_runbook_is_missing(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    result = vigil(
        sqlite_store,
        "rules",
        "check",
        str(RULES / "brute-force-login.yaml"),
        VIGIL_INCIDENT_RUNBOOKS_DIR=str(runbooks),
    )
    assert result.exit_code == 2
    assert "brute-force-login.yaml:" in result.stderr
    assert "no runbook named 'credential-stuffing'" in result.stderr.replace("\n", "")


def test_test_prints_what_a_rule_would_open_and_writes_nothing(sqlite_store: SQLiteStore) -> None:
    ledger = sqlite_store.open_ledger()
    tenant = Tenant.make("acme", users=30)
    victim = tenant.users[4]
    before = tenant.brute_force(datetime(2026, 11, 10, 9, 0, tzinfo=UTC), victim)
    attack = tenant.brute_force(ATTACK_AT, victim, attempts=12)
    ledger.record("acme", before)
    recorded = ledger.record("acme", attack)
    ledger.record("globex", Tenant.make("globex").brute_force(ATTACK_AT, victim))
    size = ledger.size("acme")
    rule = str(RULES / "brute-force-login.yaml")

    result = vigil(sqlite_store, "rules", "test", rule, "--since", "2026-11-17", "--tenant", "acme")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "SEV2  brute-force-login  tenant acme  key brute-force-login:u-0005  "
        f"from {attack[0]['occurred_at']}: 10 matching records within 10m"
    )
    assert lines[0].endswith("; 12 record(s)")
    assert lines[1].startswith(f"    seq {recorded[0]['seq']}  {recorded[0]['occurred_at']}  ")
    assert "... and 7 more" in lines[6]
    assert "12 record(s) read from 1 tenant(s); 12 matched" in result.stderr
    assert "1 incident(s) would open (nothing was written)" in result.stderr
    assert ledger.size("acme") == size

    as_json = vigil(
        sqlite_store, "rules", "test", rule, "--since", "2026-11-01", "-t", "acme", "--json"
    )
    incidents = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    # Nobody resolves anything in a dry run: the second attack joins the first incident.
    [incident] = incidents
    assert len(incident["evidence"]) == 30 + 12
    assert incident["first_at"] == before[0]["occurred_at"]

    every_tenant = vigil(sqlite_store, "rules", "test", rule, "--since", "2026-11-17", "--json")
    assert {orjson.loads(line)["tenant"] for line in every_tenant.stdout.splitlines()} == {
        "acme",
        "globex",
    }


def test_test_refuses_a_bad_since(sqlite_store: SQLiteStore) -> None:
    result = vigil(
        sqlite_store, "rules", "test", str(RULES / "credential-stuffing.yaml"), "--since", "soon"
    )
    assert result.exit_code == 2
    assert "--since 'soon': give a time" in result.stderr


def test_warm_up_fills_what_rules_learn_before_since_without_reporting_it(
    sqlite_store: SQLiteStore,
) -> None:
    ledger = sqlite_store.open_ledger()
    tenant = Tenant.make("acme", users=30)
    ledger.record("acme", tenant.directory(datetime(2026, 11, 1, 6, 0, tzinfo=UTC)))
    # 25 attempts from 23:57:00 to 00:01:00, seven of them after midnight.
    late = datetime(2026, 11, 16, 23, 57, tzinfo=UTC)
    attempts = ledger.record("acme", tenant.brute_force(late, tenant.users[1], attempts=25))
    [claim] = ledger.record(
        "acme", tenant.identity_takeover(ATTACK_AT, tenant.users[5], tenant.users[6])
    )
    rules = str(RULES)

    def incidents(*options: str) -> list[dict[str, Any]]:
        result = vigil(
            sqlite_store, "rules", "test", rules, "--since", "2026-11-17", "--json", *options
        )
        assert result.exit_code == 0, result.output
        return [orjson.loads(line) for line in result.stdout.splitlines()]

    # By default the longest window (here a day) is read first: the brute force that
    # began before --since crossed its threshold there, and is reported from midnight.
    by_default = incidents()
    assert [i["rule"] for i in by_default] == ["brute-force-login"]
    # Who holds which e-mail address was learnt from the directory, weeks before.
    everything = incidents("--warm-up", "all")
    assert [i["rule"] for i in everything] == ["brute-force-login", "identity-attribute-takeover"]
    assert everything[1]["evidence"] == [{"seq": claim["seq"], "hash": claim["hash"]}]
    assert [e["seq"] for e in by_default[0]["evidence"]] == [r["seq"] for r in attempts[-7:]]
    # Per rule, what its condition let through after --since, and what it opened.
    summary = vigil(
        sqlite_store, "rules", "test", rules, "--since", "2026-11-17", "--warm-up", "all"
    )
    assert "  identity-attribute-takeover: 1 matched, 1 incident(s)" in summary.stderr
    assert "  brute-force-login: 7 matched, 1 incident(s)" in summary.stderr
    assert "  credential-stuffing: 7 matched, 0 incident(s)" in summary.stderr
    # Without the records before midnight, seven attempts are not enough.
    assert incidents("--warm-up", "1s") == []
