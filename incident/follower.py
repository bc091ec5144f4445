"""The detector as a view follower of the ledger: rules in, incidents out.

One transaction per page holds all three of what the detector writes: the incidents it
opens or adds evidence to, the correlation state it carries to the next page, and the
position it reached. The choice, and why it is sound:

- Incidents are aggregates of :class:`~incident.application.Incidents`, whose recorder
  is a library *process recorder*: saving aggregates with a ``Tracking`` inserts the
  events and the position in one transaction (and the tracking row refuses a position
  already passed, so a page written twice by two processes fails whole on the second).
- The correlation state is a table beside the incidents' events
  (``incident_detector_state``), written by a subclass of that process recorder from
  within the same ``insert_events`` transaction: the state changes ride along as a
  keyword of ``save``, as the tracking does. Keeping the state as aggregates instead
  would add an event for every counted record and never shrink.

So after a crash the position, the state and the incidents all stand at the end of the
same page, and the page after it is processed exactly once. The state in memory may run
ahead of the database only while a page is being written; when a write fails, or the
runner reloads (an error, a change of leader), it is read again from the table.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

import orjson
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import Recording, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore
from eventsourcing.utils import Environment, EnvType, get_topic
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from audit_core.followers.follower import Page, PoisonRecordError, View
from incident.application import Detection as IncidentDetection
from incident.application import Incidents, IncidentSQLiteRecorder, is_incident_record
from incident.detector import (
    Detection,
    Detector,
    IncidentSink,
    StateChanges,
    StateKey,
    coalesce,
)
from incident.exceptions import IncidentError
from incident.rules import Record, Rule

FOLLOWER_NAME = "incident-detector"
STATE_TABLE = "incident_detector_state"
_STATE_KWARG = "detector_state"


def _rows(changes: StateChanges) -> tuple[list[tuple[str, str, str, bytes]], list[StateKey]]:
    upserts: list[tuple[str, str, str, bytes]] = []
    deletes: list[StateKey] = []
    for key, value in changes.values.items():
        if value is None:
            deletes.append(key)
        else:
            upserts.append((*key, orjson.dumps(value)))
    return upserts, deletes


class SQLiteDetectorRecorder(IncidentSQLiteRecorder):
    """The incidents' SQLite process recorder, writing the detector's state too."""

    def __init__(self, datastore: SQLiteDatastore, *, events_table_name: str = "incident_events"):
        super().__init__(datastore, events_table_name=events_table_name)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (rule TEXT NOT NULL, tenant TEXT NOT "
            "NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (rule, tenant, key)) "
            "WITHOUT ROWID",
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[Any], **kwargs: Any
    ) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        changes: StateChanges | None = kwargs.get(_STATE_KWARG)
        if changes:
            upserts, deletes = _rows(changes)
            if deletes:
                c.executemany(
                    f"DELETE FROM {STATE_TABLE} WHERE rule = ? AND tenant = ? AND key = ?",
                    deletes,
                )
            if upserts:
                c.executemany(
                    f"INSERT INTO {STATE_TABLE} (rule, tenant, key, value) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (rule, tenant, key) DO UPDATE SET value = excluded.value",
                    upserts,
                )
        return returning

    def select_detector_state(self) -> dict[StateKey, Any]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT rule, tenant, key, value FROM {STATE_TABLE}")
            return {(row[0], row[1], row[2]): orjson.loads(row[3]) for row in c.fetchall()}

    def clear_detector(self, name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"DELETE FROM {STATE_TABLE}")
            c.execute("DELETE FROM tracking WHERE application_name = ?", (name,))


class PostgresDetectorRecorder(PostgresProcessRecorder):
    """The incidents' PostgreSQL process recorder, writing the detector's state too."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ):
        super().__init__(
            datastore, events_table_name=events_table_name, tracking_table_name=tracking_table_name
        )
        # The library's function-based insert would bypass _insert_events below.
        if datastore.enable_db_functions:
            raise TypeError("the detector needs POSTGRES_ENABLE_DB_FUNCTIONS off")
        self._state = SQL("{}.{}").format(Identifier(datastore.schema), Identifier(STATE_TABLE))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {} (rule text NOT NULL, tenant text NOT NULL, "
                "key text NOT NULL, value bytea NOT NULL, PRIMARY KEY (rule, tenant, key))"
            ).format(self._state)
        )

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[Any], **kwargs: Any
    ) -> None:
        # The position first, as on SQLite. The library writes it with a RETURNING
        # insert on this cursor and reads the row back, in pipeline mode: statements
        # queued on the cursor before it (the state's, whose results nothing reads)
        # may have their results delivered while the position's insert is sent, and
        # the read then finds one of theirs ("INSERT 0 1", no rows) instead of its own.
        # After it, the state's writes are only queued; they fail the transaction at
        # its sync like any other statement of it.
        super()._insert_events(curs, stored_events, **kwargs)
        changes: StateChanges | None = kwargs.get(_STATE_KWARG)
        if changes:
            upserts, deletes = _rows(changes)
            if deletes:
                curs.executemany(
                    SQL("DELETE FROM {} WHERE rule = %s AND tenant = %s AND key = %s").format(
                        self._state
                    ),
                    deletes,
                )
            if upserts:
                curs.executemany(
                    SQL(
                        "INSERT INTO {} (rule, tenant, key, value) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (rule, tenant, key) DO UPDATE SET value = excluded.value"
                    ).format(self._state),
                    upserts,
                )

    def select_detector_state(self) -> dict[StateKey, Any]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT rule, tenant, key, value FROM {}").format(self._state))
            return {
                (row["rule"], row["tenant"], row["key"]): orjson.loads(row["value"])
                for row in curs.fetchall()
            }

    def clear_detector(self, name: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SQL("DELETE FROM {}").format(self._state))
            curs.execute(
                SQL("DELETE FROM {}.{} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
                ),
                [name],
            )


DetectorRecorder = SQLiteDetectorRecorder | PostgresDetectorRecorder

_RECORDERS = {
    "eventsourcing.sqlite": SQLiteDetectorRecorder,
    "eventsourcing.postgres": PostgresDetectorRecorder,
}


class DetectingIncidents(Incidents):
    """The incidents application as the detector uses it: on the recorder above, and
    saving the state changes it is given with the incidents and the position."""

    name = Incidents.name
    """The same tables as the incidents application's (the library names them after
    the application, and would otherwise take this subclass's name)."""
    env: ClassVar[dict[str, str]] = {}

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        environment = super().construct_env(name, env)
        recorder = _RECORDERS.get(environment.get("PERSISTENCE_MODULE") or "")
        if recorder is None:
            raise TypeError("the detector needs eventsourcing.sqlite or eventsourcing.postgres")
        environment["PROCESS_RECORDER_TOPIC"] = get_topic(recorder)
        return environment

    _pending_state: StateChanges | None = None

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        if self._pending_state is not None:
            processing_event.saved_kwargs[_STATE_KWARG] = self._pending_state
        return super()._record(processing_event)

    @property
    def detector_recorder(self) -> DetectorRecorder:
        recorder = self.recorder
        assert isinstance(recorder, SQLiteDetectorRecorder | PostgresDetectorRecorder)
        return recorder

    def apply_with_state(
        self, detections: Sequence[IncidentDetection], changes: StateChanges, tracking: Tracking
    ) -> list[Any]:
        """``apply_detections`` with the detector's state changes in its transaction."""
        self._pending_state = changes
        try:
            return self.apply_detections(detections, tracking=tracking)
        finally:
            self._pending_state = None


class IncidentsSink(IncidentSink):
    """The detector's port, implemented by the incidents application."""

    def __init__(self, incidents: DetectingIncidents):
        self.incidents = incidents

    def load_state(self) -> dict[StateKey, Any]:
        return self.incidents.detector_recorder.select_detector_state()

    def open_or_attach(
        self, detections: Sequence[Detection], changes: StateChanges, tracking: Tracking | None
    ) -> list[tuple[Detection, UUID, bool]]:
        if tracking is None:
            raise ValueError("the incidents sink writes a follower's position with each page")
        merged = coalesce(detections)
        handed = [_handed_over(detection) for detection in merged]
        results = self.incidents.apply_with_state(handed, changes, tracking)
        by_key = {
            (detection.tenant, detection.dedup_key): (result.incident_id, result.opened)
            for detection, result in zip(merged, results, strict=True)
        }
        answered: list[tuple[Detection, UUID, bool]] = []
        seen: set[tuple[str, str]] = set()
        for detection in detections:
            key = (detection.tenant, detection.dedup_key)
            incident_id, opened = by_key[key]
            answered.append((detection, incident_id, opened and key not in seen))
            seen.add(key)
        return answered

    def clear(self, name: str = FOLLOWER_NAME) -> None:
        self.incidents.detector_recorder.clear_detector(name)


def _handed_over(detection: Detection) -> IncidentDetection:
    return IncidentDetection(
        tenant=detection.tenant,
        title=detection.title,
        severity=detection.severity,
        rule=detection.rule_id,
        dedup_key=detection.dedup_key,
        evidence=[{"tenant": e.tenant, "seq": e.seq, "hash": e.hash} for e in detection.evidence],
        runbook=detection.runbook,
        detected_at=datetime.fromisoformat(detection.first_at.replace("Z", "+00:00")),
        description=detection.summary[:8000],
        incident_id=detection.incident_id,
    )


_AUDIT_ID = re.compile(r"^incident-([0-9a-f-]{36})-([1-9][0-9]{0,9})$")


class OwnRecords:
    """Recognises the incident module's audit records by what is stored, not only by
    what they say: a client may record an ``incident.*`` action as ``system`` and
    ``vigil`` too (to hide from the rules), but not the incident event its id names.

    A record is the module's own when it looks like one (``is_incident_record``), its
    id is ``incident-<incident id>-<version>``, that version of that incident is stored,
    and the incident is of the record's tenant. A record that fails this feeds the
    rules like any client's."""

    def __init__(self, incidents: Incidents, remembered: int = 10_000):
        self.incidents = incidents
        self.remembered = remembered
        self._tenants: dict[UUID, str | None] = {}

    def __call__(self, record: Record) -> bool:
        if not is_incident_record(record):
            return False
        match = _AUDIT_ID.fullmatch(str(record.get("id") or ""))
        if match is None:
            return False
        try:
            incident_id = UUID(match[1])
        except ValueError:
            return False
        version = int(match[2])
        if self._tenant(incident_id) != record.get("tenant"):
            return False
        stored = self.incidents.recorder.select_events(
            incident_id, gt=version - 1, lte=version, limit=1
        )
        return bool(stored)

    def _tenant(self, incident_id: UUID) -> str | None:
        if incident_id not in self._tenants:
            if len(self._tenants) >= self.remembered:
                self._tenants.clear()
            first = self.incidents.recorder.select_events(incident_id, lte=1, limit=1)
            tenant = None
            if first:
                opened = self.incidents.mapper.to_domain_event(first[0])
                tenant = getattr(opened, "tenant", None)
            self._tenants[incident_id] = tenant
        return self._tenants[incident_id]


class DetectorFollower(View):
    """Runs the detection rules over every new page of the ledger."""

    def __init__(
        self,
        incidents: DetectingIncidents,
        rules: Sequence[Rule],
        name: str = FOLLOWER_NAME,
    ):
        self.name = name
        self.incidents = incidents
        self.rules = list(rules)
        self.sink = IncidentsSink(incidents)
        self.tracking = incidents.process_recorder
        # Keyed with the storage cipher's key when there is one, like the ledger's index
        # of event ids, so that the state table does not reveal the values it compares.
        self.secret = (incidents.env.get("CIPHER_KEY") or "").encode()
        self.own = OwnRecords(incidents)
        self.detector = self._detector()

    def _detector(self) -> Detector:
        return Detector(self.rules, self.sink.load_state(), self.secret, self.own)

    @classmethod
    def open(
        cls,
        env: Mapping[str, str],
        ledger: Any,
        rules: Sequence[Rule],
        *,
        name: str = FOLLOWER_NAME,
        **incident_options: Any,
    ) -> DetectorFollower:
        """The follower on the ledger's database; ``incident_options`` go to
        :class:`~incident.application.Incidents` (policies, runbooks, clock...)."""
        incidents = DetectingIncidents(dict(env), ledger, **incident_options)
        try:
            return cls(incidents, rules, name)
        except BaseException:
            incidents.close()
            raise

    def reload(self) -> None:
        self.detector = self._detector()

    def handle(self, page: Page) -> None:
        records = page.records
        try:
            detections = self.detector.process(records)
        except Exception as error:
            # Rules are pure functions of the records: what fails once fails every time.
            self.reload()
            raise PoisonRecordError(f"a rule failed on this page: {error!r}") from error
        try:
            self.sink.open_or_attach(detections, self.detector.take_changes(), page.tracking)
        except IncidentError as error:
            # The incidents refuse what these records make (a rule's runbook missing,
            # say): no retry will change that. The runner narrows it to one record.
            self.reload()
            raise PoisonRecordError(f"cannot open the incident: {error}") from error
        except BaseException:
            self.reload()
            raise

    def clear(self) -> None:
        self.sink.clear(self.name)
        self.reload()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.incidents.close()
