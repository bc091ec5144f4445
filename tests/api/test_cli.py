"""The ``vigil`` command line, in process through CliRunner and as a real process.

Exit codes: 0 done, 1 a chain failed verification, 2 bad input or usage, 3 not found,
4 an id reused with other content, 5 storage unavailable.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import app
from api.settings import Settings
from audit_core import Ledger
from tests.events import assert_valid_chain, audit_event, audit_events
from tests.followers import OpenedReadModel
from tests.stores import SQLiteStore, Store
from tests.tampering import Tampering, seed, tamperings

SAMPLES = Path(__file__).parents[2] / "samples" / "actions.jsonl"
VIGIL = Path(sys.executable).with_name("vigil")


def jsonl(events: list[Any]) -> str:
    return "".join(orjson.dumps(event).decode() + "\n" for event in events)


class Vigil:
    """``vigil`` run in process against one store, as a user with VIGIL_* set would."""

    def __init__(self, store: Store, tmp_path: Path):
        self.store = store
        self.tmp_path = tmp_path
        self.runner = CliRunner()

    def __call__(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        return self.runner.invoke(
            app,
            list(args),
            input=stdin,
            env={"VIGIL_DATABASE_URL": self.store.url, **env},
            catch_exceptions=False,
        )

    def file(self, text: str, name: str = "events.jsonl") -> str:
        path = self.tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def ledger(self, **settings: Any) -> Ledger:
        return self.store.open_ledger(**settings)


@pytest.fixture
def vigil(sqlite_store: SQLiteStore, tmp_path: Path) -> Vigil:
    return Vigil(sqlite_store, tmp_path)


def run_vigil(store: Store, cwd: Path, *args: str, stdin: str | None = None) -> Any:
    """The installed ``vigil`` script in a process of its own."""
    if not VIGIL.exists():
        pytest.fail(f"{VIGIL} is missing: install the package with pip install -e '.[test]'")
    env = {name: value for name, value in os.environ.items() if not name.startswith("VIGIL_")}
    env["VIGIL_DATABASE_URL"] = store.url
    return subprocess.run(
        [str(VIGIL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


# -- vigil record ---------------------------------------------------------------------------


def test_record_reads_json_lines_from_a_file(vigil: Vigil) -> None:
    result = vigil("record", "--tenant", "default", vigil.file(jsonl(audit_events(3))))
    assert result.exit_code == 0, result.output
    assert "recorded 3 new event(s), 0 already present; tenant default last seq 2" in result.stdout
    records = vigil.ledger().read("default")
    assert [r["id"] for r in records] == ["evt-0", "evt-1", "evt-2"]
    assert f"hash {records[-1]['hash']}" in result.stdout


def test_record_reads_a_json_array_from_stdin(vigil: Vigil) -> None:
    result = vigil("record", "--tenant", "globex", stdin=orjson.dumps(audit_events(2)).decode())
    assert result.exit_code == 0, result.output
    assert "recorded 2 new event(s)" in result.stdout
    assert vigil.ledger().size("globex") == 2


def test_record_reads_a_single_pretty_printed_object(vigil: Vigil) -> None:
    text = orjson.dumps(audit_event("solo"), option=orjson.OPT_INDENT_2).decode()
    result = vigil("record", "--tenant", "default", "-", stdin=text)
    assert result.exit_code == 0, result.output
    assert vigil.ledger().get("default", "solo")["seq"] == 0


def test_recording_the_sample_file_again_records_nothing_new(vigil: Vigil) -> None:
    first = vigil("record", "--tenant", "default", str(SAMPLES))
    assert first.exit_code == 0, first.output
    assert "recorded 48 new event(s), 0 already present" in first.stdout
    head = vigil.ledger().head("default")

    again = vigil("record", "--tenant", "default", str(SAMPLES))

    assert again.exit_code == 0, again.output
    assert "recorded 0 new event(s), 48 already present" in again.stdout
    assert vigil.ledger().head("default") == head
    assert_valid_chain(vigil.ledger().read("default"), "default")


def test_a_line_of_malformed_json_exits_2_naming_the_line_and_records_nothing(
    vigil: Vigil,
) -> None:
    text = jsonl(audit_events(1)) + '{"id": "evt-1", "action":\n' + jsonl(audit_events(1, "x"))
    result = vigil("record", "--tenant", "default", path := vigil.file(text))
    assert result.exit_code == 2
    assert f"{path}: line 2: not valid JSON" in result.stderr
    assert vigil.ledger().tenants() == []


def test_a_malformed_json_array_exits_2(vigil: Vigil) -> None:
    result = vigil("record", "--tenant", "default", stdin='[{"id": "evt-1"},')
    assert result.exit_code == 2
    assert "stdin: line 1: not valid JSON" in result.stderr
    assert vigil.ledger().tenants() == []


def test_an_invalid_field_exits_2_naming_line_and_field_and_records_nothing(vigil: Vigil) -> None:
    events = [*audit_events(2), audit_event("bad", actor={"id": "u-1", "ip": "10.0.0.300"})]
    result = vigil("record", "--tenant", "default", path := vigil.file(jsonl(events)))
    assert result.exit_code == 2
    assert "nothing recorded" in result.stderr
    assert f"{path}: line 3, field 'actor.ip'" in result.stderr
    assert vigil.ledger().size("default") == 0


def test_an_integer_beyond_64_bits_is_refused_not_rounded_to_a_float(vigil: Vigil) -> None:
    text = orjson.dumps(audit_event("big", metadata={"n": 0})).decode()
    big = text.replace('"n":0', '"n":[12345678901234567890123]')
    result = vigil("record", "--tenant", "default", stdin=big)
    assert result.exit_code == 2, result.output
    assert "field 'metadata'" in result.stderr
    assert "send it as a string" in result.stderr
    assert vigil.ledger().tenants() == []


def test_blank_lines_do_not_shift_the_line_numbers_in_errors(vigil: Vigil) -> None:
    text = jsonl(audit_events(1)) + "\n   \n" + jsonl([audit_event("bad", outcome="meh")])
    result = vigil("record", "--tenant", "default", vigil.file(text))
    assert result.exit_code == 2
    assert "line 4, field 'outcome'" in result.stderr


def test_without_tenant_each_event_goes_to_the_tenant_it_names(vigil: Vigil) -> None:
    events = [
        audit_event("a-1", tenant="acme"),
        audit_event("g-1", tenant="globex"),
        audit_event("a-2", tenant="acme"),
    ]
    result = vigil("record", vigil.file(jsonl(events)))
    assert result.exit_code == 0, result.output
    assert "recorded 2 new event(s), 0 already present; tenant acme last seq 1" in result.stdout
    assert "recorded 1 new event(s), 0 already present; tenant globex last seq 0" in result.stdout
    ledger = vigil.ledger()
    assert [r["id"] for r in ledger.read("acme")] == ["a-1", "a-2"]
    assert [r["id"] for r in ledger.read("globex")] == ["g-1"]


def test_without_tenant_an_event_naming_none_is_refused_and_nothing_recorded(
    vigil: Vigil,
) -> None:
    events = [audit_event("a-1", tenant="acme"), audit_event("x-1")]
    result = vigil("record", path := vigil.file(jsonl(events)))
    assert result.exit_code == 2
    assert f"{path}: line 2: the event names no tenant; give --tenant T" in result.stderr
    assert vigil.ledger().tenants() == []


def test_without_tenant_a_bad_tenant_name_is_named_by_its_line(vigil: Vigil) -> None:
    events = [audit_event("a-1", tenant="acme"), audit_event("x-1", tenant="Big Corp")]
    result = vigil("record", vigil.file(jsonl(events)))
    assert result.exit_code == 2
    assert "line 2" in result.stderr
    assert vigil.ledger().tenants() == []


def test_an_invalid_array_element_is_named_by_its_position(vigil: Vigil) -> None:
    events = [audit_event("ok"), audit_event("bad", action="Delete")]
    result = vigil("record", "--tenant", "default", stdin=orjson.dumps(events).decode())
    assert result.exit_code == 2
    assert "stdin: element 1, field 'action'" in result.stderr


def test_an_invalid_event_in_a_later_batch_stops_the_whole_input(vigil: Vigil) -> None:
    events = [*audit_events(4), audit_event("late", occurred_at="2024-05-01T12:00:00")]
    result = vigil("record", "--tenant", "default", "--batch-size", "2", vigil.file(jsonl(events)))
    assert result.exit_code == 2
    assert "line 5, field 'occurred_at'" in result.stderr
    assert vigil.ledger().size("default") == 0


def test_a_reused_id_with_other_content_exits_4_and_records_nothing_of_the_input(
    vigil: Vigil,
) -> None:
    first = vigil("record", "--tenant", "default", stdin=jsonl([audit_event("evt-1")]))
    assert first.exit_code == 0
    events = [audit_event("evt-2"), audit_event("evt-1", outcome="denied")]
    result = vigil("record", "--tenant", "default", path := vigil.file(jsonl(events)))
    assert result.exit_code == 4
    assert f"{path}: line 2: event 1, field 'id': id 'evt-1'" in result.stderr
    assert vigil.ledger().size("default") == 1


@pytest.mark.parametrize(("text", "message"), [("", "no events"), ("  \n\n", "no events")])
def test_empty_input_exits_2(vigil: Vigil, text: str, message: str) -> None:
    result = vigil("record", "--tenant", "default", stdin=text)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_missing_file_exits_2(vigil: Vigil, tmp_path: Path) -> None:
    result = vigil("record", "--tenant", "default", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_a_malformed_tenant_name_exits_2(vigil: Vigil) -> None:
    result = vigil("record", "-t", "Big Corp", stdin=jsonl(audit_events(1)))
    assert result.exit_code == 2
    assert "'Big Corp'" in result.stderr


# -- reading commands -----------------------------------------------------------------------


def test_tail_prints_the_newest_records_as_json_lines_oldest_first(vigil: Vigil) -> None:
    records = vigil.ledger().record("acme", audit_events(5))
    result = vigil("tail", "-t", "acme", "-n", "3")
    assert result.exit_code == 0, result.output
    assert [orjson.loads(line) for line in result.stdout.splitlines()] == records[2:]


@pytest.mark.parametrize(
    "args", [["tail"], ["show", "evt-0"], ["show", "--seq", "0"]], ids=["tail", "show", "seq"]
)
def test_reading_an_unknown_tenant_exits_3_naming_it(vigil: Vigil, args: list[str]) -> None:
    seed(vigil.ledger())
    result = vigil(*args, "-t", "acme-typo")
    assert (result.exit_code, result.stdout) == (3, "")
    assert "tenant 'acme-typo' has no audit log" in result.stderr
    assert vigil.ledger().tenants() == ["acme", "globex"]


def test_show_prints_a_record_by_id_or_by_seq(vigil: Vigil) -> None:
    records = vigil.ledger().record("default", audit_events(3))
    by_id = vigil("show", "evt-1")
    by_seq = vigil("show", "--seq", "2")
    assert (by_id.exit_code, by_seq.exit_code) == (0, 0)
    assert orjson.loads(by_id.stdout) == records[1]
    assert orjson.loads(by_seq.stdout) == records[2]


@pytest.mark.parametrize("args", [["evt-9"], ["--seq", "7"]], ids=["id", "seq"])
def test_show_of_an_unknown_record_exits_3(vigil: Vigil, args: list[str]) -> None:
    vigil.ledger().record("default", audit_events(2))
    result = vigil("show", *args)
    assert result.exit_code == 3
    assert "no event" in result.stderr


@pytest.mark.parametrize("args", [[], ["evt-1", "--seq", "0"]], ids=["neither", "both"])
def test_show_needs_exactly_one_of_id_and_seq(vigil: Vigil, args: list[str]) -> None:
    result = vigil("show", *args)
    assert result.exit_code == 2
    assert "give either an event id or --seq" in result.stderr


def test_tenants_lists_each_log_with_its_size_and_head(vigil: Vigil) -> None:
    ledger = vigil.ledger()
    seed(ledger)
    result = vigil("tenants")
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["acme", "6", ledger.head("acme")[1]],
        ["globex", "3", ledger.head("globex")[1]],
    ]


# -- vigil verify ---------------------------------------------------------------------------


def test_verify_json_reports_each_intact_tenant(vigil: Vigil) -> None:
    ledger = vigil.ledger()
    seed(ledger)
    result = vigil("verify", "--json")
    assert result.exit_code == 0, result.output
    reports = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert reports == [
        {
            "tenant": tenant,
            "ok": True,
            "records": size,
            "head_hash": ledger.head(tenant)[1],
            "first_bad_seq": None,
            "reason": None,
            "detail": None,
        }
        for tenant, size in [("acme", 6), ("globex", 3)]
    ]


def test_verify_json_names_the_first_bad_seq_and_exits_1(vigil: Vigil) -> None:
    seed(vigil.ledger())
    vigil.store.delete_seqs("acme", 2)
    result = vigil("verify", "--json", "--tenant", "acme")
    assert result.exit_code == 1
    [report] = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert (report["ok"], report["first_bad_seq"], report["reason"]) == (False, 2, "gap")
    assert report["records"] == 2


def test_verify_with_jobs_reads_logs_in_ranges_and_reports_the_same(
    vigil: Vigil, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules["audit_core.verify"], "_RANGE", 2)
    seed(vigil.ledger())
    intact = vigil("verify", "--json", "--jobs", "2")
    assert intact.exit_code == 0, intact.output
    assert intact.stdout == vigil("verify", "--json").stdout
    vigil.store.delete_seqs("acme", 3)
    broken = vigil("verify", "--json", "--jobs", "2")
    assert broken.exit_code == 1
    assert broken.stdout == vigil("verify", "--json").stdout
    assert '"first_bad_seq":3,"reason":"gap"' in broken.stdout


def test_verify_with_no_logs_says_so_and_succeeds(vigil: Vigil) -> None:
    vigil.ledger()  # a store with a ledger in it, and no log yet
    result = vigil("verify")
    assert result.exit_code == 0
    assert "no tenant logs to verify" in result.stderr


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql://db/vigil", "ledger.db"])
def test_an_unsupported_database_url_exits_2_naming_the_setting(vigil: Vigil, url: str) -> None:
    result = vigil("tenants", VIGIL_DATABASE_URL=url)
    assert result.exit_code == 2
    assert "bad configuration: VIGIL_DATABASE_URL" in result.stderr
    assert "is not supported" in result.stderr


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("definitely not base64", "not valid base64"),
        (base64.b64encode(b"short").decode(), "decodes to 5 bytes; AES-256 needs 32"),
    ],
)
def test_a_bad_encryption_key_exits_2_naming_the_setting(
    vigil: Vigil, key: str, message: str
) -> None:
    result = vigil("verify", VIGIL_ENCRYPTION_KEY=key)
    assert result.exit_code == 2
    assert "bad configuration: VIGIL_ENCRYPTION_KEY" in result.stderr
    assert message in result.stderr


def test_a_new_encryption_key_encrypts_what_the_cli_records(vigil: Vigil) -> None:
    made = vigil("new-encryption-key")
    key = made.stdout.strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert vigil("new-encryption-key").stdout.strip() != key
    Settings(encryption_key=key)

    secret = audit_event("evt-1", metadata={"note": "quarterly-payroll-export"})
    recorded = vigil("record", "-t", "default", stdin=jsonl([secret]), VIGIL_ENCRYPTION_KEY=key)
    assert recorded.exit_code == 0

    assert b"quarterly-payroll-export" not in vigil.store.everything_stored()
    shown = vigil("show", "evt-1", VIGIL_ENCRYPTION_KEY=key)
    assert orjson.loads(shown.stdout)["metadata"] == {"note": "quarterly-payroll-export"}
    assert vigil("verify", VIGIL_ENCRYPTION_KEY=key).exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["verify"],
        ["tenants"],
        ["tail"],
        ["show", "--seq", "0"],
    ],
    ids=["verify", "tenants", "tail", "show"],
)
def test_reading_an_encrypted_log_without_its_key_exits_2_pointing_at_the_key(
    vigil: Vigil, args: list[str]
) -> None:
    key = base64.b64encode(b"s" * 32).decode()
    events = jsonl(audit_events(2))
    assert vigil("record", "-t", "default", stdin=events, VIGIL_ENCRYPTION_KEY=key).exit_code == 0
    result = vigil.runner.invoke(
        app, args, env={"VIGIL_DATABASE_URL": vigil.store.url}, catch_exceptions=True
    )
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2
    assert "VIGIL_ENCRYPTION_KEY" in result.stderr


def test_a_sqlite_path_that_cannot_be_created_exits_2_naming_the_setting(
    vigil: Vigil, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    url = f"sqlite:///{tmp_path / 'a-file' / 'ledger.db'}"
    result = vigil("record", "-t", "acme", stdin=jsonl(audit_events(1)), VIGIL_DATABASE_URL=url)
    assert result.exit_code == 2
    assert "VIGIL_DATABASE_URL" in result.stderr


# -- as a real process, on both backends --------------------------------------------------


def test_the_sample_file_piped_into_vigil_record_verifies(store: Store, tmp_path: Path) -> None:
    samples = SAMPLES.read_text("utf-8")
    recorded = run_vigil(store, tmp_path, "record", "--tenant", "default", "-", stdin=samples)
    assert recorded.returncode == 0, recorded.stderr
    assert "recorded 48 new event(s), 0 already present" in recorded.stdout

    verified = run_vigil(store, tmp_path, "verify")
    assert verified.returncode == 0, verified.stderr
    head = store.open_ledger().head("default")[1]
    assert verified.stdout.strip() == f"ok      default: 48 records, head {head}"
    assert run_vigil(store, tmp_path, "tenants").stdout.split() == ["default", "48", head]


@tamperings
def test_vigil_verify_exits_1_naming_the_tampered_seq_and_why(
    store: Store, tmp_path: Path, tampering: Tampering
) -> None:
    seed(store.open_ledger())
    tampering.apply(store)

    result = run_vigil(store, tmp_path, "verify")

    assert result.returncode == 1, result.stderr
    for name, finding in tampering.every_log().items():
        if finding is None:
            assert f"ok      {name}: " in result.stdout
        else:
            assert f"BROKEN  {name}: first bad seq {finding[0]} ({finding[1]}): " in result.stdout
    assert "Traceback" not in result.stderr


def test_a_log_whose_opened_event_is_deleted_is_listed_verified_and_refuses_records(
    vigil: Vigil,
) -> None:
    seed(vigil.ledger())
    vigil.store.delete_seqs("acme", -1)

    listed = vigil("tenants")
    assert listed.exit_code == 0, listed.output
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["acme", "globex"]
    assert "damaged" in listed.stdout.splitlines()[0]
    verified = vigil("verify", "--tenant", "acme")
    assert verified.exit_code == 1
    assert "BROKEN  acme: first bad seq 0 (opened_missing)" in verified.stdout
    refused = vigil("record", "--tenant", "acme", stdin=jsonl(audit_events(1, prefix="late")))
    assert refused.exit_code == 1
    assert "vigil verify --tenant acme" in refused.stderr
    assert vigil.store.stored_versions("acme") == [1, 2, 3, 4, 5, 6]


def test_verify_of_an_unknown_tenant_exits_3_naming_it_and_creates_nothing(vigil: Vigil) -> None:
    seed(vigil.ledger())
    result = vigil("verify", "--tenant", "acme", "--tenant", "acme-typo")
    assert result.exit_code == 3
    assert "no audit log for tenant 'acme-typo'" in result.stderr
    assert result.stdout == ""
    assert vigil.ledger().tenants() == ["acme", "globex"]


@pytest.mark.parametrize("command", [["rebuild", "readmodel"], ["rebuild-read-model"]])
def test_rebuild_refills_a_follower_from_the_ledger(
    store: Store, tmp_path: Path, command: list[str]
) -> None:
    vigil = Vigil(store, tmp_path)
    ledger = vigil.ledger()
    ledger.record("acme", audit_events(25))
    ledger.record("globex", audit_events(5, "g"))
    opened = OpenedReadModel(store.settings().ledger_env())
    try:
        opened.runner(ledger, page_size=10).run_once()  # a partial read model
        assert opened.view.count("acme") == 10

        assert opened.store.leadership.try_lead("readmodel")  # as a running follower does
        refused = vigil(*command)
        assert refused.exit_code == 4
        assert "follower readmodel is running" in refused.stderr
        opened.store.leadership.resign("readmodel")

        rebuilt = vigil(*command)
        assert rebuilt.exit_code == 0, rebuilt.stderr
        assert "readmodel rebuilt: 30 records" in rebuilt.stdout
        assert (opened.view.count("acme"), opened.view.count("globex")) == (25, 5)
        status = opened.runner(ledger).status()
        assert status.lag_events == 0  # and a follower resumes after the rebuild's end
    finally:
        opened.close()


def test_rebuild_of_an_unknown_follower_names_the_known_ones(store: Store, tmp_path: Path) -> None:
    result = Vigil(store, tmp_path)("rebuild", "readmodl")
    assert result.exit_code == 3
    assert "no follower is named 'readmodl'" in result.stderr
    assert "readmodel" in result.stderr
