"""Writer processes for the concurrency tests: each opens its own ledger, as a server would.

Kept apart from the test module so a spawned process imports only what it needs.
"""

from __future__ import annotations

from multiprocessing.synchronize import Barrier
from typing import Any

from api.settings import Settings
from audit_core import DuplicateEventIdError, Ledger
from tests.events import audit_event

TENANT = "acme"


def _open(url: str) -> Ledger:
    settings = Settings(database_url=url)
    # The parent created the tables. Creating them again from processes starting at the
    # same instant fails in PostgreSQL's catalog ("tuple concurrently updated" from the
    # library's CREATE OR REPLACE FUNCTION), which is not what these tests are about.
    return Ledger({**settings.ledger_env(), "CREATE_TABLE": "n"}, settings.limits())


def append_batches(
    url: str, writer: int, batches: int, batch_size: int, start: Barrier
) -> list[dict[str, Any]]:
    """Append ``batches`` batches of distinct events; return every record it got back."""
    ledger = _open(url)
    try:
        start.wait(timeout=60)
        records: list[dict[str, Any]] = []
        for batch in range(batches):
            events = [
                audit_event(f"w{writer}-b{batch}-e{index}", metadata={"writer": writer})
                for index in range(batch_size)
            ]
            records += ledger.record(TENANT, events)
        return records
    finally:
        ledger.close()


def record_batch(
    url: str, events: list[dict[str, Any]], start: Barrier
) -> list[dict[str, Any]] | str:
    """Record one batch; a refused id comes back as the error's message."""
    ledger = _open(url)
    try:
        start.wait(timeout=60)
        try:
            return ledger.record(TENANT, events)
        except DuplicateEventIdError as error:
            return f"refused: {error}"
    finally:
        ledger.close()


def run(target: str, args: tuple[Any, ...], start: Barrier, results: Any, slot: int) -> None:
    """Process entry point: call ``target`` and put (slot, result or error text) on results."""
    try:
        outcome: Any = globals()[target](*args, start)
    except BaseException as error:  # reported to the parent, which fails the test
        start.abort()  # release the other writers at once instead of at their timeout
        outcome = RuntimeError(f"{type(error).__name__}: {error}")
    results.put((slot, outcome))
