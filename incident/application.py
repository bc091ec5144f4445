"""The incidents service layer: verbs over :class:`~incident.domain.Incident` aggregates
that return plain values, and record every action in the tenant's audit ledger.

Incidents are stored by eventsourcing in the ledger's database, in tables of their own
(``incidents_events`` on PostgreSQL, ``incident_events`` on SQLite), so the ledger's
notification log, which the followers read, holds audit records only. The recorder is
a process recorder: the detector saves the incidents it opens together with its
position (``tracking``) in one transaction.

Each incident event becomes an audit record in the tenant's ledger (action
``incident.<verb>``, source ``system``, the responder as actor) with the id
``incident-<incident id>-<version>``. A command records it right after saving;
:meth:`Incidents.sync_audit` records any that a crash in between left out, and, the ids
being idempotent, records nothing twice.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, cast
from uuid import UUID, uuid4

import orjson
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, ProcessRecorder, Recording, Tracking
from eventsourcing.sqlite import SQLiteDatastore, SQLiteProcessRecorder
from eventsourcing.utils import Environment, EnvType, get_topic

from audit_core import Ledger, LedgerError
from audit_core.schema import format_timestamp, is_tenant_name
from incident.domain import (
    SECRETS_ID,
    SYSTEM,
    Actor,
    DedupSlot,
    Evidence,
    Incident,
    SealedSecrets,
    Status,
    check_severity,
    ref_of,
    slot_id,
)
from incident.escalation import (
    Clock,
    EscalationPolicy,
    Step,
    manual_step,
    next_step,
    system_clock,
)
from incident.exceptions import (
    IllegalTransitionError,
    IncidentNotFoundError,
    InvalidIncidentError,
    StepNotFoundError,
    StepRefusedError,
)
from incident.runbooks import RunbookCatalogue, StepRunner, Vault

AUDIT_ACTION_PREFIX = "incident."
"""Every audit record the incident module writes has an action under this prefix,
source ``system`` and actor type :data:`AUDIT_ACTOR_TYPE`; the detector skips such
records, so no rule feeds on the incident module's own output."""
AUDIT_ACTOR_TYPE = "vigil"
"""``actor.type`` of those records; ``actor.id`` is the responder (or ``vigil`` for the
scheduler and the detector), and ``metadata.actor_type`` what kind of actor they are."""
AUDIT_ORIGIN = "vigil.incident"
"""``metadata.origin`` of those records."""

_AUDIT_ACTIONS = {
    "Triggered": "open",
    "EvidenceAttached": "attach_evidence",
    "Acknowledged": "acknowledge",
    "MitigationStarted": "mitigate",
    "Resolved": "resolve",
    "Closed": "close",
    "Reopened": "reopen",
    "Declined": "decline",
    "Merged": "merge",
    "Assigned": "assign",
    "ParticipantAdded": "add_participant",
    "SeverityChanged": "change_severity",
    "Noted": "note",
    "Escalated": "escalate",
    "EscalationExhausted": "escalation_exhausted",
    "Notified": "notify",
    "StepCompleted": "run_step",
    "PostmortemWritten": "edit_postmortem",
    "PostmortemPublished": "publish_postmortem",
}


def is_incident_record(record: Mapping[str, Any]) -> bool:
    """Whether an audit record was written by the incident module (the detector must
    not let rules match its own output)."""
    actor = record.get("actor") or {}
    return (
        record.get("source") == "system"
        and actor.get("type") == AUDIT_ACTOR_TYPE
        and str(record.get("action") or "").startswith(AUDIT_ACTION_PREFIX)
    )


class IncidentSQLiteRecorder(SQLiteProcessRecorder):
    """The library's SQLite process recorder on a table of its own: its default,
    ``stored_events``, is the ledger's."""

    def __init__(self, datastore: SQLiteDatastore, *, events_table_name: str = "incident_events"):
        super().__init__(datastore, events_table_name=events_table_name)


class RunbookSource(Protocol):
    """What opening an incident needs of the runbook catalogue (``incident.runbooks``)."""

    def frozen(self, name: str) -> dict[str, Any]:
        """The runbook's name, digest and steps (id, title, kind), or raise
        :class:`~incident.exceptions.ConfigurationError` naming the problem."""
        ...


class Notifier(Protocol):
    """Sends an escalation step's notifications; returns one delivery report per
    channel and target: ``{"channel", "target", "ok", "reason"?}``."""

    def notify(self, incident: Mapping[str, Any], step: Step) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Opened:
    """What ``open`` did: opened a new incident, or attached the evidence to the open one
    that holds the dedup key."""

    incident_id: UUID
    ref: str
    opened: bool
    attached: int
    """Evidence records newly linked."""


@dataclass(frozen=True)
class Detection:
    """One match of a rule, as the detector hands it over."""

    tenant: str
    title: str
    severity: str
    rule: str | None = None
    dedup_key: str | None = None
    evidence: Sequence[Evidence | Mapping[str, Any]] = ()
    runbook: str | None = None
    policy: str | Mapping[str, Any] | EscalationPolicy | None = None
    detected_at: datetime | None = None
    description: str = ""
    incident_id: UUID | None = None
    """The id to open the incident under (the detector derives it from the detection's
    first record, so a replay opens the same one); a new random id if None."""


@dataclass(frozen=True)
class _Prepared:
    detection: Detection
    evidence: list[dict[str, Any]]
    runbook: dict[str, Any] | None
    policy: dict[str, Any] | None


@dataclass
class _Work:
    """Aggregates loaded and changed by one command, saved together."""

    app: Incidents
    loaded: dict[UUID, Any] = field(default_factory=dict)

    def incident(self, incident_id: UUID) -> Incident:
        if incident_id not in self.loaded:
            self.loaded[incident_id] = self.app.repository.get(incident_id)
        return cast(Incident, self.loaded[incident_id])

    def slot(self, tenant: str, dedup_key: str) -> DedupSlot:
        key = slot_id(tenant, dedup_key)
        if key not in self.loaded:
            try:
                self.loaded[key] = self.app.repository.get(key)
            except AggregateNotFoundError:
                self.loaded[key] = DedupSlot(tenant, dedup_key)
        return cast(DedupSlot, self.loaded[key])

    def add(self, aggregate: Any) -> None:
        self.loaded[aggregate.id] = aggregate


class Incidents(Application[UUID]):
    """Incidents of every tenant, in the ledger's database, audited into its ledger."""

    name = "Incidents"
    env: ClassVar[dict[str, str]] = {}
    max_attempts = 5

    def __init__(
        self,
        env: EnvType | None,
        ledger: Ledger,
        *,
        clock: Clock = system_clock,
        policies: Mapping[str, EscalationPolicy] | None = None,
        default_policy: str | None = None,
        runbooks: RunbookSource | None = None,
        notifier: Notifier | None = None,
        step_runner: StepRunner | None = None,
        secrets_key: bytes | None = None,
    ):
        super().__init__(env)
        self.ledger = ledger
        self.clock = clock
        self.policies = dict(policies or {})
        self.default_policy = default_policy
        self.runbooks = runbooks
        self.notifier = notifier
        self.step_runner = step_runner
        self.vault = (
            None
            if secrets_key is None
            else Vault(secrets_key, self._sealed_secrets, self._save_secret)
        )
        self._index_lock = threading.Lock()
        self._position = 0
        self._summaries: dict[UUID, dict[str, Any]] = {}
        """Every incident's summary as of the last refresh, for lists without loading."""
        self._due: dict[UUID, datetime | None] = {}
        """Escalating incidents and when their next step is due (None: at once)."""

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        values = dict(type(self).env)
        values.update(env or {})
        if values.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
            values["PROCESS_RECORDER_TOPIC"] = get_topic(IncidentSQLiteRecorder)
        else:
            # A process holds several of these (the API's, the scheduler's, the
            # detector's) for a small share of its traffic: one connection each, a few
            # more in a burst, rather than the ledger's pool size each.
            values["POSTGRES_POOL_SIZE"] = "1"
            values["POSTGRES_MAX_OVERFLOW"] = "4"
        return Environment(name, values)

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    @property
    def process_recorder(self) -> ProcessRecorder:
        """Where a follower that opens incidents keeps its position (``tracking``)."""
        return cast(ProcessRecorder, self.recorder)

    # -- opening ----------------------------------------------------------------------

    def open(
        self,
        tenant: str,
        title: str,
        severity: str,
        *,
        rule: str | None = None,
        dedup_key: str | None = None,
        evidence: Iterable[Evidence | Mapping[str, Any]] = (),
        runbook: str | None = None,
        policy: str | Mapping[str, Any] | EscalationPolicy | None = None,
        detected_at: datetime | None = None,
        description: str = "",
        incident_id: UUID | None = None,
        actor: Actor = SYSTEM,
        tracking: Tracking | None = None,
    ) -> Opened:
        """Open an incident, or, when an open incident holds ``dedup_key`` in the tenant,
        link the evidence to that one instead. ``tracking`` is saved in the same
        transaction (a follower's position)."""
        detection = Detection(
            tenant, title, severity, rule, dedup_key, list(evidence), runbook, policy,
            detected_at, description, incident_id,
        )  # fmt: skip
        [result] = self.apply_detections([detection], tracking=tracking, actor=actor)
        return result

    def apply_detections(
        self,
        detections: Sequence[Detection],
        *,
        tracking: Tracking | None = None,
        actor: Actor = SYSTEM,
        also: Sequence[Any] = (),
    ) -> list[Opened]:
        """Open or attach for each detection, all saved in one transaction with
        ``tracking`` (which is saved even when ``detections`` is empty) and the
        aggregates in ``also`` (a follower's own state, if it keeps it as aggregates)."""
        prepared = [self._prepare(d) for d in detections]
        for attempt in range(1, self.max_attempts + 1):
            work = _Work(self)
            for aggregate in also:
                work.add(aggregate)
            results = [self._open_in(work, p, actor=actor) for p in prepared]
            try:
                recordings = self._save(work, tracking)
            except IntegrityError:
                if attempt == self.max_attempts:
                    raise
                continue
            self._audit([r.domain_event for r in recordings], work.loaded)
            return results
        raise AssertionError("unreachable")

    def _prepare(self, d: Detection) -> _Prepared:
        if not is_tenant_name(d.tenant):
            raise InvalidIncidentError("tenant", f"{d.tenant!r} is not a tenant name")
        title = d.title.strip()
        if not title or len(title) > 300:
            raise InvalidIncidentError("title", "give a title of 1 to 300 characters")
        if len(d.description) > 8000:
            raise InvalidIncidentError("description", "at most 8000 characters")
        dedup_key = d.dedup_key.strip() if d.dedup_key else None
        if dedup_key is not None and len(dedup_key) > 512:
            raise InvalidIncidentError("dedup_key", "at most 512 characters")
        runbook = None
        if d.runbook:
            runbook = (
                self.runbooks.frozen(d.runbook)
                if self.runbooks
                else {"name": d.runbook, "steps": []}
            )
        return _Prepared(
            replace(d, title=title, severity=check_severity(d.severity), dedup_key=dedup_key),
            [self._evidence(d.tenant, e) for e in d.evidence],
            runbook,
            self._policy(d.policy),
        )

    @staticmethod
    def _evidence(tenant: str, item: Evidence | Mapping[str, Any]) -> dict[str, Any]:
        value = item.as_dict() if isinstance(item, Evidence) else dict(item)
        if value.get("tenant", tenant) != tenant:
            raise InvalidIncidentError(
                "evidence.tenant",
                f"evidence of tenant {value['tenant']!r} cannot back an incident of {tenant!r}",
            )
        seq, digest = value.get("seq"), value.get("hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InvalidIncidentError("evidence.seq", f"{seq!r} is not a position in the log")
        if not isinstance(digest, str) or len(digest) != 64:
            raise InvalidIncidentError("evidence.hash", "give the record's 64 hex digit hash")
        return {
            "tenant": tenant,
            "seq": seq,
            "hash": digest,
            "event_id": value.get("event_id"),
            "action": value.get("action"),
            "occurred_at": value.get("occurred_at"),
        }

    def _policy(
        self, policy: str | Mapping[str, Any] | EscalationPolicy | None
    ) -> dict[str, Any] | None:
        if policy is None:
            policy = self.default_policy
        if policy is None:
            return None
        if isinstance(policy, EscalationPolicy):
            return policy.as_dict()
        if isinstance(policy, str):
            if policy not in self.policies:
                known = ", ".join(sorted(self.policies)) or "none configured"
                raise InvalidIncidentError("policy", f"no escalation policy {policy!r} ({known})")
            return self.policies[policy].as_dict()
        return EscalationPolicy.from_dict(policy).as_dict()

    def _open_in(self, work: _Work, prepared: _Prepared, *, actor: Actor) -> Opened:
        d, evidence = prepared.detection, prepared.evidence
        at = self.clock()
        if d.incident_id is not None:
            # Opened before (a replay, or a retried page): add what is new to it.
            with contextlib.suppress(AggregateNotFoundError):
                known = self._check_tenant(d.tenant, work.incident(d.incident_id), d.incident_id)
                attached = known.attach_evidence(evidence, at, actor) if known.is_open else 0
                return Opened(known.id, known.ref, False, attached)
        slot = work.slot(d.tenant, d.dedup_key) if d.dedup_key else None
        if slot is not None and slot.holder is not None:
            holder = work.incident(UUID(slot.holder))
            if holder.is_open:
                attached = holder.attach_evidence(evidence, at, actor)
                return Opened(holder.id, holder.ref, False, attached)
        detected_at = d.detected_at
        if detected_at is None and evidence:
            times = [e["occurred_at"] for e in evidence if e.get("occurred_at")]
            if times:
                detected_at = datetime.fromisoformat(min(times).replace("Z", "+00:00"))
        incident = Incident(  # type: ignore[call-arg]  # ``id``: see Incident
            id=d.incident_id or uuid4(),
            tenant=d.tenant,
            title=d.title,
            description=d.description,
            severity=d.severity,
            rule=d.rule,
            dedup_key=d.dedup_key,
            evidence=evidence,
            runbook=prepared.runbook,
            policy=prepared.policy,
            detected_at=detected_at,
            at=at,
            actor=actor.as_dict(),
        )
        work.add(incident)
        if slot is not None:
            slot.claim(str(incident.id))
        return Opened(incident.id, incident.ref, True, len(incident.evidence))

    def find_open(self, tenant: str, dedup_key: str) -> UUID | None:
        """The open incident that holds ``dedup_key`` in ``tenant``, if any."""
        try:
            slot: DedupSlot = self.repository.get(slot_id(tenant, dedup_key))
        except AggregateNotFoundError:
            return None
        if slot.holder is None:
            return None
        incident = self._load(tenant, UUID(slot.holder))
        return incident.id if incident.is_open else None

    # -- responders' verbs --------------------------------------------------------------

    def attach_evidence(
        self,
        tenant: str,
        incident_id: UUID,
        evidence: Iterable[Evidence | Mapping[str, Any]],
        actor: Actor = SYSTEM,
        tracking: Tracking | None = None,
    ) -> int:
        """Link more audit records; returns how many were not linked already."""
        items = [self._evidence(tenant, e) for e in evidence]
        count = 0

        def attach(incident: Incident, at: datetime) -> None:
            nonlocal count
            count = incident.attach_evidence(items, at, actor)

        self._act(tenant, incident_id, attach, tracking=tracking)
        return count

    def acknowledge(self, tenant: str, incident_id: UUID, actor: Actor) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.acknowledge(at, actor))

    def start_mitigation(
        self, tenant: str, incident_id: UUID, actor: Actor, note: str = ""
    ) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.start_mitigation(at, actor, note))

    def resolve(
        self, tenant: str, incident_id: UUID, actor: Actor, note: str = ""
    ) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.resolve(at, actor, note))

    def close_incident(
        self, tenant: str, incident_id: UUID, actor: Actor, note: str = ""
    ) -> dict[str, Any]:
        """``close`` of an incident (``close()`` itself is the library's: it releases
        the database)."""
        return self._act(tenant, incident_id, lambda i, at: i.close(at, actor, note))

    def reopen(self, tenant: str, incident_id: UUID, actor: Actor, reason: str) -> dict[str, Any]:
        def reopen(incident: Incident, at: datetime, work: _Work) -> None:
            if incident.dedup_key:
                slot = work.slot(tenant, incident.dedup_key)
                if slot.holder not in (None, str(incident.id)):
                    other = work.incident(UUID(slot.holder))
                    if other.is_open:
                        raise IllegalTransitionError(
                            incident.ref,
                            incident.status.value,
                            "reopen",
                            f"{other.ref} is open for the same dedup key; note or merge there",
                        )
                slot.claim(str(incident.id))
            incident.reopen(at, actor, reason)

        return self._act(tenant, incident_id, reopen, with_work=True)

    def decline(self, tenant: str, incident_id: UUID, actor: Actor, reason: str) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.decline(at, actor, reason))

    def merge(self, tenant: str, incident_id: UUID, into: UUID, actor: Actor) -> dict[str, Any]:
        """Merge an incident into another open one of the tenant; its evidence goes along."""

        def merge(incident: Incident, at: datetime, work: _Work) -> None:
            other = self._check_tenant(tenant, work.incident(into), into)
            incident.merge_into(other, at, actor)
            other.attach_evidence(incident.evidence, at, actor)
            other.note(f"{incident.ref} ({incident.title}) merged into this incident", at, actor)

        return self._act(tenant, incident_id, merge, with_work=True)

    def assign(
        self, tenant: str, incident_id: UUID, commander: str, actor: Actor
    ) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.assign(commander, at, actor))

    def add_participant(
        self, tenant: str, incident_id: UUID, who: str, actor: Actor
    ) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.add_participant(who, at, actor))

    def change_severity(
        self, tenant: str, incident_id: UUID, severity: str, actor: Actor
    ) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.change_severity(severity, at, actor))

    def note(self, tenant: str, incident_id: UUID, text: str, actor: Actor) -> dict[str, Any]:
        return self._act(tenant, incident_id, lambda i, at: i.note(text, at, actor))

    def complete_step(
        self,
        tenant: str,
        incident_id: UUID,
        step_id: str,
        actor: Actor,
        note: str = "",
        *,
        outcome: str = "done",
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Mark a runbook step done (manual steps), or record an automated step's
        outcome (``succeeded``/``failed``, by the runbook executor)."""

        def complete(incident: Incident, at: datetime) -> None:
            if incident.runbook_step(step_id) is None:
                raise StepNotFoundError(incident.ref, step_id)
            incident.complete_step(step_id, outcome, note, at, actor, result)

        return self._act(tenant, incident_id, complete)

    def run_step(
        self, tenant: str, incident_id: UUID, step_id: str, actor: Actor
    ) -> dict[str, Any]:
        """Run an automated runbook step now, from the backend, and record its outcome
        (succeeded, or failed with the reason). Returns the incident and the outcome."""
        incident = self._load(tenant, incident_id)
        incident.check_can_run_steps()
        if incident.runbook_step(step_id) is None or not isinstance(
            self.runbooks, RunbookCatalogue
        ):
            raise StepNotFoundError(incident.ref, step_id)
        runbook = self.runbooks.get(incident.runbook["name"] if incident.runbook else "")
        step = runbook.step(step_id)
        if step is None:
            raise StepNotFoundError(incident.ref, step_id)
        if step.kind != "http":
            raise InvalidIncidentError(
                "step", f"{step_id} is a manual step: mark it done (complete) with a note"
            )
        if self.step_runner is None:
            raise StepRefusedError(step_id, "automated steps are not configured here")
        context = self.step_context(incident)
        secrets = self.vault.values() if self.vault is not None else {}
        outcome = self.step_runner.run(runbook, step, context, secrets)
        details = self.complete_step(
            tenant,
            incident_id,
            step_id,
            actor,
            outcome.reason,
            outcome="succeeded" if outcome.ok else "failed",
            result={**outcome.result, "runbook_digest": runbook.digest},
        )
        return {**details, "step_outcome": {"ok": outcome.ok, "reason": outcome.reason}}

    def step_context(self, incident: Incident) -> dict[str, Any]:
        """What a step's templates see: the incident and its first evidence records."""
        evidence = incident.evidence[:20]
        records: list[dict[str, Any]] = []
        with contextlib.suppress(LedgerError):
            records = self.ledger.records_at(incident.tenant, [e["seq"] for e in evidence])
        summary = incident.summary()
        return {"incident": summary, "records": records, "record": records[0] if records else {}}

    def _sealed_secrets(self) -> dict[str, str]:
        try:
            sealed: SealedSecrets = self.repository.get(SECRETS_ID)
        except AggregateNotFoundError:
            return {}
        return dict(sealed.sealed)

    def _save_secret(self, name: str, value: str | None) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                box: SealedSecrets = self.repository.get(SECRETS_ID)
            except AggregateNotFoundError:
                box = SealedSecrets()
            if value is None:
                box.remove(name)
            else:
                box.seal(name, value)
            try:
                self.save(box)
                return
            except IntegrityError:
                if attempt == self.max_attempts:
                    raise

    def write_postmortem(
        self, tenant: str, incident_id: UUID, fields: Mapping[str, Any], actor: Actor
    ) -> dict[str, Any]:
        """Set post-mortem fields: summary, impact, root_cause, lessons, action_items."""
        return self._act(
            tenant, incident_id, lambda i, at: i.write_postmortem(dict(fields), at, actor)
        )

    def record_publication(
        self, tenant: str, incident_id: UUID, sha256: Mapping[str, str], actor: Actor
    ) -> dict[str, Any]:
        """Record the SHA-256 of each rendering of a published post-mortem; the audit
        record of it puts them in the tenant's hash chain."""
        digests = dict(sha256)
        return self._act(
            tenant, incident_id, lambda i, at: i.publish_postmortem(digests, at, actor)
        )

    # -- escalation -------------------------------------------------------------------

    def escalate(self, tenant: str, incident_id: UUID, actor: Actor) -> dict[str, Any]:
        """Page the next level now (a responder asking for help)."""
        taken: list[tuple[Step, dict[str, Any]]] = []

        def escalate(incident: Incident, at: datetime) -> None:
            if incident.policy is None:
                raise InvalidIncidentError(
                    "policy",
                    f"{incident.ref} has no escalation policy to page; add a participant "
                    "or assign a commander instead",
                )
            policy = EscalationPolicy.from_dict(incident.policy)
            step = manual_step(policy, incident.escalation, at)
            incident.take_escalation_step(
                step.number, step.level, step.round, step.targets, step.next_at, at,
                manual=True, actor=actor,
            )  # fmt: skip
            taken.append((step, incident.summary()))

        details = self._act(tenant, incident_id, escalate)
        for step, summary in taken:
            self._send(tenant, incident_id, step, summary)
        return self.get(tenant, incident_id) if taken else details

    def tick(
        self, now: datetime | None = None, *, tenants: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Take every escalation step due at ``now`` (the clock's time by default) and
        send its notifications. Safe to call from several workers at once, late, or
        twice: a step already taken is skipped. Returns what was done."""
        now = now or self.clock()
        self._refresh()
        done: list[dict[str, Any]] = []
        with self._index_lock:  # API threads refresh the index too
            due = sorted(
                (i, self._summaries[i]["tenant"])
                for i, at in self._due.items()
                if at is None or at <= now
            )
        for incident_id, tenant in due:
            if tenants is not None and tenant not in tenants:
                continue
            taken: list[tuple[Step, dict[str, Any]]] = []
            step_due = functools.partial(_take_due_step, now=now, taken=taken)
            try:
                self._act(tenant, incident_id, step_due, attempts=1)
            except (IllegalTransitionError, IntegrityError):
                continue  # another worker took this step first
            for step, summary in taken:
                if not step.exhausted:
                    self._send(tenant, incident_id, step, summary)
                done.append(
                    {
                        "incident": summary["ref"],
                        "step": step.number,
                        "level": step.level,
                        "round": step.round,
                        "targets": step.targets,
                        "exhausted": step.exhausted,
                    }
                )
        self._refresh()
        return done

    def _send(self, tenant: str, incident_id: UUID, step: Step, summary: dict[str, Any]) -> None:
        if self.notifier is None or not step.targets:
            return
        deliveries = self.notifier.notify(summary, step)
        if deliveries:
            with contextlib.suppress(IllegalTransitionError, IntegrityError):
                self._act(
                    tenant,
                    incident_id,
                    lambda i, at: i.record_notifications(step.number, deliveries, at),
                )

    def _refresh(self) -> None:
        """Read new incident events and load again the incidents they changed: their
        summaries (for lists) and when their next escalation step is due (for ticks)."""
        with self._index_lock:
            changed: set[UUID] = set()
            while True:
                page = self.recorder.select_notifications(self._position + 1, 500)
                for notification in page:
                    if notification.topic.startswith(_INCIDENT_TOPIC):
                        changed.add(cast(UUID, notification.originator_id))
                    self._position = notification.id
                if len(page) < 500:
                    break
            for incident_id in changed:
                incident: Incident = self.repository.get(incident_id)
                self._summaries[incident_id] = incident.summary()
                if incident.status == Status.TRIGGERED and incident.escalation["active"]:
                    self._due[incident_id] = incident.escalation["next_at"]
                else:
                    self._due.pop(incident_id, None)

    # -- reading ----------------------------------------------------------------------

    def _incident_ids(self, tenant: str) -> list[UUID]:
        with self._index_lock:
            return [i for i, summary in self._summaries.items() if summary["tenant"] == tenant]

    def get(self, tenant: str, incident_id: UUID) -> dict[str, Any]:
        """One incident with its timeline, evidence, runbook steps and escalation."""
        return self._load(tenant, incident_id).details()

    def incident(self, tenant: str, incident_id: UUID) -> Incident:
        """The aggregate itself, for the post-mortem and the runbook executor."""
        return self._load(tenant, incident_id)

    def list_incidents(
        self,
        tenant: str,
        *,
        status: Sequence[str] = (),
        severity: Sequence[str] = (),
        rule: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The tenant's incidents, newest first, as summaries."""
        self._refresh()
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        with self._index_lock:
            summaries = [s for s in self._summaries.values() if s["tenant"] == tenant]
        found = []
        for summary in summaries:
            if status and summary["status"] not in status:
                continue
            if severity and summary["severity"] not in severity:
                continue
            if rule is not None and summary["rule"] != rule:
                continue
            if since is not None and datetime.fromisoformat(summary["triggered_at"]) < since:
                continue
            found.append(summary)
        found.sort(key=lambda s: (datetime.fromisoformat(s["triggered_at"]), s["id"]), reverse=True)
        return copy.deepcopy(found[:limit])

    def resolve_ref(self, tenant: str, ref: str) -> UUID:
        """An incident id from its UUID, its INC- reference or a unique hex prefix."""
        text = ref.strip().lower().removeprefix("inc-")
        with contextlib.suppress(ValueError):
            return UUID(text)
        self._refresh()
        matches = [i for i in self._incident_ids(tenant) if i.hex.startswith(text)]
        if len(matches) != 1 or len(text) < 4:
            raise IncidentNotFoundError(tenant, ref)
        return matches[0]

    def metrics(self, tenant: str) -> dict[str, Any]:
        """Mean time to detect, acknowledge, mitigate and resolve, in seconds, per
        severity and per rule, over the tenant's incidents that reached each point."""
        incidents = [
            i
            for i in self.list_incidents(tenant, limit=1_000_000)
            if i["status"] not in ("declined", "merged")
        ]

        def means(group: list[dict[str, Any]]) -> dict[str, Any]:
            result: dict[str, Any] = {"count": len(group)}
            for name in ("ttd", "tta", "ttm", "ttr"):
                values = [i["durations"][name] for i in group if i["durations"][name] is not None]
                result[f"m{name}"] = sum(values) / len(values) if values else None
            return result

        by_severity: dict[str, list[dict[str, Any]]] = {}
        by_rule: dict[str, list[dict[str, Any]]] = {}
        for item in incidents:
            by_severity.setdefault(item["severity"], []).append(item)
            by_rule.setdefault(item["rule"] or "(manual)", []).append(item)
        return {
            "tenant": tenant,
            "overall": means(incidents),
            "by_severity": {k: means(v) for k, v in sorted(by_severity.items())},
            "by_rule": {k: means(v) for k, v in sorted(by_rule.items())},
        }

    # -- internals --------------------------------------------------------------------

    def _load(self, tenant: str, incident_id: UUID) -> Incident:
        try:
            incident: Incident = self.repository.get(incident_id)
        except AggregateNotFoundError:
            raise IncidentNotFoundError(tenant, incident_id) from None
        return self._check_tenant(tenant, incident, incident_id)

    @staticmethod
    def _check_tenant(tenant: str, incident: Any, incident_id: UUID) -> Incident:
        # Another tenant's incident is "not found", never "forbidden": its existence
        # is not this tenant's business.
        if not isinstance(incident, Incident) or incident.tenant != tenant:
            raise IncidentNotFoundError(tenant, incident_id)
        return incident

    def _act(
        self,
        tenant: str,
        incident_id: UUID,
        command: Callable[..., None],
        *,
        with_work: bool = False,
        tracking: Tracking | None = None,
        attempts: int | None = None,
    ) -> dict[str, Any]:
        """Load, run ``command(incident, at[, work])``, save, audit; a save that lost a
        race with another writer is run again on fresh state."""
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
            work = _Work(self)
            incident = self._check_tenant(
                tenant, self._get_or_404(work, tenant, incident_id), incident_id
            )
            at = self.clock()
            if with_work:
                command(incident, at, work)
            else:
                command(incident, at)
            if tracking is None and not any(a.pending_events for a in work.loaded.values()):
                return incident.details()
            try:
                recordings = self._save(work, tracking)
            except IntegrityError:
                if attempt == attempts:
                    raise
                continue
            self._release_slots(work, recordings)
            self._audit([r.domain_event for r in recordings], work.loaded)
            return incident.details()
        raise AssertionError("unreachable")

    def _save(self, work: _Work, tracking: Tracking | None) -> list[Recording[UUID]]:
        """``save`` of every aggregate of ``work``, with ``tracking`` in the same
        transaction (the library's ``save`` takes it only through a processing event)."""
        processing = ProcessingEvent[UUID](tracking=tracking)
        processing.collect_events(*work.loaded.values())
        recordings = self._record(processing)
        self._notify(recordings)
        return recordings

    def _get_or_404(self, work: _Work, tenant: str, incident_id: UUID) -> Incident:
        try:
            return work.incident(incident_id)
        except AggregateNotFoundError:
            raise IncidentNotFoundError(tenant, incident_id) from None

    def _release_slots(self, work: _Work, recordings: Sequence[Any]) -> None:
        """Free the dedup key of incidents that just left the open states, so the next
        match opens a new incident. A separate save: a crash before it leaves the slot
        pointing at a closed incident, which ``open`` treats as free anyway."""
        slots = []
        for incident in work.loaded.values():
            if isinstance(incident, Incident) and incident.dedup_key and not incident.is_open:
                with contextlib.suppress(AggregateNotFoundError):
                    slot: DedupSlot = self.repository.get(
                        slot_id(incident.tenant, incident.dedup_key)
                    )
                    if slot.holder == str(incident.id):
                        slot.release(str(incident.id))
                        slots.append(slot)
        if slots:
            with contextlib.suppress(IntegrityError):
                self.save(*slots)

    # -- audit ------------------------------------------------------------------------

    def _audit(
        self, events: Sequence[DomainEventProtocol[UUID]], loaded: Mapping[UUID, Any]
    ) -> None:
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for domain_event in events:
            incident = loaded.get(domain_event.originator_id)
            if not isinstance(incident, Incident):
                continue
            record = audit_event(domain_event, incident.tenant, incident.title)
            if record is not None:
                by_tenant.setdefault(incident.tenant, []).append(record)
        for tenant, records in by_tenant.items():
            self.ledger.record(tenant, records)

    def sync_audit(self) -> int:
        """Record in the ledger every incident event not recorded there yet (after a
        crash between saving an incident and auditing it); returns events checked."""
        name = "incident-audit"
        position = self.process_recorder.max_tracking_id(name) or 0
        checked = 0
        while True:
            page = self.recorder.select_notifications(position + 1, 500)
            if not page:
                return checked
            by_tenant: dict[str, list[dict[str, Any]]] = {}
            for notification in page:
                if notification.topic.startswith(_INCIDENT_TOPIC):
                    domain_event = self.mapper.to_domain_event(notification)
                    incident: Incident = self.repository.get(
                        cast(UUID, notification.originator_id), version=1
                    )
                    record = audit_event(domain_event, incident.tenant, incident.title)
                    if record is not None:
                        by_tenant.setdefault(incident.tenant, []).append(record)
                    checked += 1
            for tenant, records in by_tenant.items():
                self.ledger.record(tenant, records)
            position = page[-1].id
            self.process_recorder.insert_tracking(Tracking(name, position))


def _take_due_step(
    incident: Incident, at: datetime, *, now: datetime, taken: list[tuple[Step, dict[str, Any]]]
) -> None:
    """Take the escalation step due at ``now``, if any, noting it in ``taken``."""
    if incident.policy is None or incident.status != Status.TRIGGERED:
        return
    step = next_step(EscalationPolicy.from_dict(incident.policy), incident.escalation, now)
    if step is None:
        return
    if step.exhausted:
        incident.exhaust_escalation(step.number, now)
    else:
        incident.take_escalation_step(
            step.number, step.level, step.round, step.targets, step.next_at, now
        )
    taken.append((step, incident.summary()))


_INCIDENT_TOPIC = get_topic(Incident) + "."

_QUIET = frozenset(
    {"originator_id", "originator_version", "timestamp", "originator_topic", "at", "actor"}
)


def _bounded(value: Any, budget: int = 2000) -> Any:
    """``value`` if its JSON is within ``budget`` bytes, else a note of its size: audit
    metadata is bounded, and the incident keeps the whole of it."""
    encoded = orjson.dumps(value, default=str)
    if len(encoded) <= budget:
        return orjson.loads(encoded)
    return {"truncated": True, "bytes": len(encoded)}


def audit_event(domain_event: Any, tenant: str, title: str) -> dict[str, Any] | None:
    """The audit record of one incident event, made from the event alone (and the
    incident's tenant and title, which never change), so that making it again gives
    the same content and the ledger's idempotent ids recognise it."""
    kind = type(domain_event).__name__
    verb = _AUDIT_ACTIONS.get(kind)
    if verb is None:
        return None
    incident_id: UUID = domain_event.originator_id
    details: dict[str, Any] = {}
    for name, value in vars(domain_event).items():
        if name in _QUIET:
            continue
        if name == "evidence":
            value = [{"seq": e["seq"], "hash": e["hash"]} for e in value[:50]]
        elif name in ("runbook", "policy"):
            value = value.get("name") if isinstance(value, dict) else value
        elif name == "deliveries":
            value = [
                {k: d.get(k) for k in ("channel", "target", "ok", "reason")} for d in value[:20]
            ]
        details[name.rstrip("_")] = _bounded(value)
    outcome = "success"
    if kind == "StepCompleted" and details.get("outcome") == "failed":
        outcome = "failure"
    if kind == "Notified" and any(not d.get("ok") for d in details.get("deliveries", [])):
        outcome = "failure"
    actor = dict(getattr(domain_event, "actor", SYSTEM.as_dict()))
    at = getattr(domain_event, "at", None)
    return {
        "id": f"incident-{incident_id}-{domain_event.originator_version}",
        "occurred_at": format_timestamp(domain_event.timestamp),
        "actor": {"id": actor["id"][:256], "type": AUDIT_ACTOR_TYPE},
        "action": AUDIT_ACTION_PREFIX + verb,
        "target": {"type": "incident", "id": str(incident_id), "name": title[:512]},
        "outcome": outcome,
        "source": "system",
        "metadata": {
            "origin": AUDIT_ORIGIN,
            "actor_type": actor.get("type") or "user",
            "incident": ref_of(incident_id),
            "at": at.isoformat() if isinstance(at, datetime) else None,
            **details,
        },
    }
