"""The incident: an event-sourced aggregate driven from detection to post-mortem.

States: triggered → acknowledged → mitigating → resolved → closed, with ``reopen`` back
to triggered, and ``declined`` (a false positive) or ``merged`` (into another incident)
as exits. Every command takes the moment it happens (``at``), so a test or a replay
controls time; the library's own timestamp is only the wall clock of recording.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, event

from incident.exceptions import IllegalTransitionError, InvalidIncidentError


class Status(enum.StrEnum):
    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    MITIGATING = "mitigating"
    RESOLVED = "resolved"
    CLOSED = "closed"
    DECLINED = "declined"
    MERGED = "merged"


OPEN_STATUSES = frozenset({Status.TRIGGERED, Status.ACKNOWLEDGED, Status.MITIGATING})
"""An incident in one of these holds its dedup key: matches are attached to it."""
EXITS = frozenset({Status.DECLINED, Status.MERGED})

SEVERITIES = ("SEV1", "SEV2", "SEV3", "SEV4")
"""SEV1 is the worst."""


def check_severity(value: str) -> str:
    severity = value.strip().upper()
    if severity not in SEVERITIES:
        raise InvalidIncidentError("severity", f"{value!r} is not one of {', '.join(SEVERITIES)}")
    return severity


@dataclass(frozen=True)
class Actor:
    """Who did something to an incident: a responder, a key, or Vigil itself."""

    id: str
    type: str = "user"

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "type": self.type}


SYSTEM = Actor("vigil", "system")


@dataclass(frozen=True)
class Evidence:
    """A link to one audit record: its tenant, position and hash prove which one."""

    tenant: str
    seq: int
    hash: str
    event_id: str | None = None
    action: str | None = None
    occurred_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "seq": self.seq,
            "hash": self.hash,
            "event_id": self.event_id,
            "action": self.action,
            "occurred_at": self.occurred_at,
        }

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> Evidence:
        return cls(
            tenant=record["tenant"],
            seq=record["seq"],
            hash=record["hash"],
            event_id=record.get("id"),
            action=record.get("action"),
            occurred_at=record.get("occurred_at"),
        )


_NAMESPACE = uuid.UUID("3c2b9a1e-7d4f-5b6a-8e9c-0a1b2c3d4e5f")


def ref_of(incident_id: uuid.UUID) -> str:
    """A short, human reference (INC-1a2b3c4d) for messages and lists."""
    return f"INC-{incident_id.hex[:8]}"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class Incident(Aggregate):
    """One incident of one tenant, with its timeline, evidence and escalation state.

    Created with an explicit ``id``: the detector derives it from the first record of a
    detection, so a replay of the log opens the same incident rather than another."""

    id: uuid.UUID  # tells the library that ``Incident(..., id=...)`` gives the id

    class Triggered(Aggregate.Created):
        tenant: str
        title: str
        description: str
        severity: str
        rule: str | None
        dedup_key: str | None
        evidence: list[dict[str, Any]]
        runbook: dict[str, Any] | None
        policy: dict[str, Any] | None
        detected_at: datetime | None
        at: datetime
        actor: dict[str, str]

    @event(Triggered)
    def __init__(
        self,
        tenant: str,
        title: str,
        description: str,
        severity: str,
        rule: str | None,
        dedup_key: str | None,
        evidence: list[dict[str, Any]],
        runbook: dict[str, Any] | None,
        policy: dict[str, Any] | None,
        detected_at: datetime | None,
        at: datetime,
        actor: dict[str, str],
    ):
        self.tenant = tenant
        self.title = title
        self.description = description
        self.severity = severity
        self.rule = rule
        self.dedup_key = dedup_key
        self.evidence: list[dict[str, Any]] = []
        self.runbook = runbook
        """Name, version digest and the steps' ids, titles and kinds, as opened."""
        self.policy = policy
        """The escalation policy frozen into the incident when it opened."""
        self.status = Status.TRIGGERED
        self.commander: str | None = None
        self.participants: list[str] = []
        self.timeline: list[dict[str, Any]] = []
        self.steps: dict[str, dict[str, Any]] = {}
        """Runbook step id → its latest outcome (done, succeeded, failed)."""
        self.postmortem: dict[str, Any] = {
            "summary": "",
            "impact": "",
            "root_cause": "",
            "lessons": "",
            "action_items": [],
        }
        self.published: list[dict[str, Any]] = []
        self.merged_into: str | None = None
        self.triggered_at = at
        self.detected_at = detected_at or at
        self.acknowledged_at: datetime | None = None
        self.mitigating_at: datetime | None = None
        self.mitigated_at: datetime | None = None
        self.resolved_at: datetime | None = None
        self.closed_at: datetime | None = None
        self.escalation: dict[str, Any] = {
            "steps": 0,
            "level": None,
            "round": 0,
            "next_at": None,
            "active": policy is not None,
            "exhausted": False,
        }
        self._add_evidence(evidence)
        self._log(at, "triggered", actor, f"{severity} incident opened: {title}", rule=rule)

    # -- helpers ----------------------------------------------------------------------

    @property
    def ref(self) -> str:
        return ref_of(self.id)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def _log(
        self, at: datetime, kind: str, actor: dict[str, str], text: str, **detail: Any
    ) -> None:
        self.timeline.append(
            {
                "at": at.isoformat(),
                "kind": kind,
                "actor": dict(actor),
                "text": text,
                "detail": {k: v for k, v in detail.items() if v is not None},
            }
        )

    def _add_evidence(self, evidence: list[dict[str, Any]]) -> int:
        known = {(e["tenant"], e["seq"]) for e in self.evidence}
        added = 0
        for item in evidence:
            if (item["tenant"], item["seq"]) not in known:
                known.add((item["tenant"], item["seq"]))
                self.evidence.append(dict(item))
                added += 1
        return added

    def _require(
        self, action: str, allowed: frozenset[Status] | set[Status], hint: str = ""
    ) -> None:
        if self.status not in allowed:
            raise IllegalTransitionError(self.ref, self.status.value, action, hint)

    def new_evidence(self, evidence: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Those of ``evidence`` not yet linked (by tenant and seq)."""
        known = {(e["tenant"], e["seq"]) for e in self.evidence}
        fresh, seen = [], set()
        for item in evidence:
            key = (item["tenant"], item["seq"])
            if key not in known and key not in seen:
                seen.add(key)
                fresh.append(item)
        return fresh

    # -- commands: each check_ then one event ----------------------------------------

    def attach_evidence(self, evidence: list[dict[str, Any]], at: datetime, actor: Actor) -> int:
        fresh = self.new_evidence(evidence)
        if fresh:
            self._evidence_attached(fresh, at, actor.as_dict())
        return len(fresh)

    @event("EvidenceAttached")
    def _evidence_attached(
        self, evidence: list[dict[str, Any]], at: datetime, actor: dict[str, str]
    ) -> None:
        self._add_evidence(evidence)
        seqs = ", ".join(str(e["seq"]) for e in evidence[:10])
        more = f" and {len(evidence) - 10} more" if len(evidence) > 10 else ""
        self._log(at, "evidence", actor, f"{len(evidence)} record(s) linked: seq {seqs}{more}")

    def acknowledge(self, at: datetime, actor: Actor) -> None:
        self._require(
            "acknowledge",
            {Status.TRIGGERED},
            "it is already acknowledged" if self.status in OPEN_STATUSES else "",
        )
        self._acknowledged(at, actor.as_dict())

    @event("Acknowledged")
    def _acknowledged(self, at: datetime, actor: dict[str, str]) -> None:
        self.status = Status.ACKNOWLEDGED
        if self.acknowledged_at is None:
            self.acknowledged_at = at
        if self.commander is None:
            self.commander = actor["id"]
        self._join(actor["id"])
        self.escalation["active"] = False
        self.escalation["next_at"] = None
        self._log(at, "acknowledged", actor, f"acknowledged by {actor['id']}; escalation stopped")

    def _join(self, who: str) -> None:
        if who not in self.participants:
            self.participants.append(who)

    def start_mitigation(self, at: datetime, actor: Actor, note: str = "") -> None:
        self._require("start mitigating", {Status.ACKNOWLEDGED}, "acknowledge it first")
        self._mitigation_started(note, at, actor.as_dict())

    @event("MitigationStarted")
    def _mitigation_started(self, note: str, at: datetime, actor: dict[str, str]) -> None:
        self.status = Status.MITIGATING
        if self.mitigating_at is None:
            self.mitigating_at = at
        self._join(actor["id"])
        self._log(at, "mitigating", actor, note or "mitigation started")

    def resolve(self, at: datetime, actor: Actor, note: str = "") -> None:
        self._require(
            "resolve",
            {Status.ACKNOWLEDGED, Status.MITIGATING},
            "acknowledge it first" if self.status == Status.TRIGGERED else "",
        )
        self._resolved(note, at, actor.as_dict())

    @event("Resolved")
    def _resolved(self, note: str, at: datetime, actor: dict[str, str]) -> None:
        self.status = Status.RESOLVED
        self.resolved_at = at
        if self.mitigated_at is None:
            self.mitigated_at = at
        self._log(at, "resolved", actor, note or f"resolved by {actor['id']}")

    def close(self, at: datetime, actor: Actor, note: str = "") -> None:
        self._require("close", {Status.RESOLVED}, "resolve it first")
        self._closed(note, at, actor.as_dict())

    @event("Closed")
    def _closed(self, note: str, at: datetime, actor: dict[str, str]) -> None:
        self.status = Status.CLOSED
        self.closed_at = at
        self._log(at, "closed", actor, note or f"closed by {actor['id']}")

    def reopen(self, at: datetime, actor: Actor, reason: str) -> None:
        self._require("reopen", {Status.RESOLVED, Status.CLOSED})
        if not reason.strip():
            raise InvalidIncidentError("reason", "say why the incident is reopened")
        self._reopened(reason, at, actor.as_dict())

    @event("Reopened")
    def _reopened(self, reason: str, at: datetime, actor: dict[str, str]) -> None:
        self.status = Status.TRIGGERED
        self.resolved_at = None
        self.closed_at = None
        # Paging starts again from the first level; step numbers go on counting.
        self.escalation.update(
            level=None, round=0, next_at=None, active=self.policy is not None, exhausted=False
        )
        self._log(at, "reopened", actor, f"reopened: {reason}")

    def decline(self, at: datetime, actor: Actor, reason: str) -> None:
        self._require("decline", {Status.TRIGGERED, Status.ACKNOWLEDGED})
        if not reason.strip():
            raise InvalidIncidentError("reason", "say why the incident is declined")
        self._declined(reason, at, actor.as_dict())

    @event("Declined")
    def _declined(self, reason: str, at: datetime, actor: dict[str, str]) -> None:
        self.status = Status.DECLINED
        self.escalation.update(active=False, next_at=None)
        self._log(at, "declined", actor, f"declined: {reason}")

    def merge_into(self, other: Incident, at: datetime, actor: Actor) -> None:
        self._require("merge", set(OPEN_STATUSES))
        if other.id == self.id:
            raise InvalidIncidentError("into", "an incident cannot be merged into itself")
        if other.tenant != self.tenant:
            raise InvalidIncidentError("into", f"{other.ref} belongs to another tenant")
        if other.status not in OPEN_STATUSES:
            raise IllegalTransitionError(
                other.ref, other.status.value, "merge into", "merge into an open incident"
            )
        self._merged(str(other.id), other.ref, at, actor.as_dict())

    @event("Merged")
    def _merged(self, into: str, into_ref: str, at: datetime, actor: dict[str, str]) -> None:
        self.status = Status.MERGED
        self.merged_into = into
        self.escalation.update(active=False, next_at=None)
        self._log(at, "merged", actor, f"merged into {into_ref}", into=into)

    def assign(self, commander: str, at: datetime, actor: Actor) -> None:
        self._require("assign", set(OPEN_STATUSES) | {Status.RESOLVED})
        commander = commander.strip()
        if not commander or len(commander) > 256:
            raise InvalidIncidentError("commander", "give a user id of 1 to 256 characters")
        self._assigned(commander, at, actor.as_dict())

    @event("Assigned")
    def _assigned(self, commander: str, at: datetime, actor: dict[str, str]) -> None:
        self.commander = commander
        self._join(commander)
        self._log(at, "assigned", actor, f"{commander} is incident commander")

    def add_participant(self, who: str, at: datetime, actor: Actor) -> None:
        self._require("add a participant to", set(OPEN_STATUSES) | {Status.RESOLVED})
        who = who.strip()
        if not who or len(who) > 256:
            raise InvalidIncidentError("participant", "give a user id of 1 to 256 characters")
        if who not in self.participants:
            self._participant_added(who, at, actor.as_dict())

    @event("ParticipantAdded")
    def _participant_added(self, who: str, at: datetime, actor: dict[str, str]) -> None:
        self._join(who)
        self._log(at, "participant", actor, f"{who} joined")

    def change_severity(self, severity: str, at: datetime, actor: Actor) -> None:
        self._require("change the severity of", set(OPEN_STATUSES) | {Status.RESOLVED})
        severity = check_severity(severity)
        if severity != self.severity:
            self._severity_changed(severity, self.severity, at, actor.as_dict())

    @event("SeverityChanged")
    def _severity_changed(
        self, severity: str, previous: str, at: datetime, actor: dict[str, str]
    ) -> None:
        self.severity = severity
        self._log(at, "severity", actor, f"severity {previous} → {severity}")

    def note(self, text: str, at: datetime, actor: Actor) -> None:
        text = text.strip()
        if not text or len(text) > 8000:
            raise InvalidIncidentError("text", "a note holds 1 to 8000 characters")
        self._noted(text, at, actor.as_dict())

    @event("Noted")
    def _noted(self, text: str, at: datetime, actor: dict[str, str]) -> None:
        self._log(at, "note", actor, text)

    # -- escalation -------------------------------------------------------------------

    def take_escalation_step(
        self,
        step: int,
        level: int,
        round_: int,
        targets: list[str],
        next_at: datetime | None,
        at: datetime,
        manual: bool = False,
        actor: Actor = SYSTEM,
    ) -> None:
        """Record escalation step number ``step``; refuses any other number, so that two
        ticks that both saw step n due record it once."""
        if step != self.escalation["steps"]:
            raise IllegalTransitionError(
                self.ref, self.status.value, f"take escalation step {step}", "already taken"
            )
        allowed = set(OPEN_STATUSES) if manual else {Status.TRIGGERED}
        self._require("escalate", allowed)
        if not manual and not self.escalation["active"]:
            raise IllegalTransitionError(
                self.ref, self.status.value, "escalate", "escalation stopped"
            )
        self._escalated(step, level, round_, targets, next_at, manual, at, actor.as_dict())

    @event("Escalated")
    def _escalated(
        self,
        step: int,
        level: int,
        round_: int,
        targets: list[str],
        next_at: datetime | None,
        manual: bool,
        at: datetime,
        actor: dict[str, str],
    ) -> None:
        self.escalation["steps"] = step + 1
        self.escalation["level"] = level
        self.escalation["round"] = round_
        if self.status == Status.TRIGGERED or not manual:
            self.escalation["next_at"] = next_at
            if next_at is None:
                self.escalation["active"] = False
        how = "escalated by " + actor["id"] if manual else "paged"
        self._log(
            at,
            "escalation",
            actor,
            f"{how}: level {level + 1}"
            + (f" (repeat {round_})" if round_ else "")
            + f" → {', '.join(targets) or 'nobody'}",
            step=step,
            level=level,
            round=round_,
            targets=targets,
        )

    def exhaust_escalation(self, step: int, at: datetime) -> None:
        if step != self.escalation["steps"]:
            raise IllegalTransitionError(
                self.ref, self.status.value, f"end escalation at step {step}", "already taken"
            )
        self._escalation_exhausted(step, at, SYSTEM.as_dict())

    @event("EscalationExhausted")
    def _escalation_exhausted(self, step: int, at: datetime, actor: dict[str, str]) -> None:
        self.escalation.update(steps=step + 1, active=False, next_at=None, exhausted=True)
        self._log(at, "escalation", actor, "every level and repeat paged; nobody acknowledged")

    def record_notifications(
        self, step: int, deliveries: list[dict[str, Any]], at: datetime
    ) -> None:
        self._notified(step, deliveries, at, SYSTEM.as_dict())

    @event("Notified")
    def _notified(
        self, step: int, deliveries: list[dict[str, Any]], at: datetime, actor: dict[str, str]
    ) -> None:
        failed = [d for d in deliveries if not d.get("ok")]
        text = f"{len(deliveries) - len(failed)} notification(s) delivered"
        if failed:
            text += f", {len(failed)} failed: " + "; ".join(
                f"{d['channel']} {d.get('reason', '')}".strip() for d in failed[:5]
            )
        self._log(at, "notified", actor, text, step=step)

    # -- runbook steps ----------------------------------------------------------------

    def runbook_step(self, step_id: str) -> dict[str, Any] | None:
        for step in (self.runbook or {}).get("steps", []):
            if step["id"] == step_id:
                return dict(step)
        return None

    def check_can_run_steps(self) -> None:
        self._require(
            "run a runbook step of",
            {Status.ACKNOWLEDGED, Status.MITIGATING},
            "acknowledge it first" if self.status == Status.TRIGGERED else "",
        )

    def complete_step(
        self,
        step_id: str,
        outcome: str,
        note: str,
        at: datetime,
        actor: Actor,
        result: dict[str, Any] | None = None,
    ) -> None:
        """``outcome``: done (manual), succeeded or failed (automated)."""
        self.check_can_run_steps()
        if outcome not in ("done", "succeeded", "failed"):
            raise InvalidIncidentError("outcome", f"{outcome!r} is not done, succeeded or failed")
        if self.status == Status.ACKNOWLEDGED:
            self._mitigation_started("", at, actor.as_dict())
        self._step_completed(step_id, outcome, note[:4000], result or {}, at, actor.as_dict())

    @event("StepCompleted")
    def _step_completed(
        self,
        step_id: str,
        outcome: str,
        note: str,
        result: dict[str, Any],
        at: datetime,
        actor: dict[str, str],
    ) -> None:
        step = self.runbook_step(step_id) or {"title": step_id}
        self.steps[step_id] = {
            "outcome": outcome,
            "at": at.isoformat(),
            "by": actor["id"],
            "note": note,
            "result": result,
        }
        if outcome != "failed" and self.mitigated_at is None:
            self.mitigated_at = at
        self._join(actor["id"])
        verb = {"done": "done", "succeeded": "ran", "failed": "FAILED"}[outcome]
        self._log(
            at,
            "step",
            actor,
            f"step {step_id} ({step['title']}) {verb}" + (f": {note}" if note else ""),
            step=step_id,
            outcome=outcome,
        )

    # -- post-mortem ------------------------------------------------------------------

    def write_postmortem(self, fields: dict[str, Any], at: datetime, actor: Actor) -> None:
        self._require(
            "write the post-mortem of",
            set(OPEN_STATUSES) | {Status.RESOLVED, Status.CLOSED},
        )
        unknown = set(fields) - set(self.postmortem)
        if unknown:
            raise InvalidIncidentError(
                sorted(unknown)[0], f"not a post-mortem field; use {', '.join(self.postmortem)}"
            )
        fields = dict(fields)
        for name, value in fields.items():
            if name == "action_items":
                _check_action_items(value)
                fields[name] = [
                    {
                        "title": item["title"],
                        "owner": item.get("owner"),
                        "due": None if item.get("due") is None else str(item["due"]),
                        "done": bool(item.get("done", False)),
                    }
                    for item in value
                ]
            elif not isinstance(value, str) or len(value) > 20_000:
                raise InvalidIncidentError(name, "text of at most 20000 characters")
        self._postmortem_written(fields, at, actor.as_dict())

    @event("PostmortemWritten")
    def _postmortem_written(
        self, fields: dict[str, Any], at: datetime, actor: dict[str, str]
    ) -> None:
        self.postmortem.update(fields)
        self._log(at, "postmortem", actor, f"post-mortem updated: {', '.join(sorted(fields))}")

    def publish_postmortem(self, sha256: dict[str, str], at: datetime, actor: Actor) -> None:
        """Record the SHA-256 of each published rendering (format → hex digest)."""
        self._require(
            "publish the post-mortem of", {Status.RESOLVED, Status.CLOSED}, "resolve it first"
        )
        self._postmortem_published(dict(sha256), at, actor.as_dict())

    @event("PostmortemPublished")
    def _postmortem_published(
        self, sha256: dict[str, str], at: datetime, actor: dict[str, str]
    ) -> None:
        self.published.append({"sha256": sha256, "at": at.isoformat()})
        shown = ", ".join(f"{fmt} {digest[:16]}…" for fmt, digest in sorted(sha256.items()))
        self._log(at, "published", actor, f"post-mortem published (sha256 {shown})")

    # -- reading ----------------------------------------------------------------------

    def durations(self) -> dict[str, float | None]:
        """Seconds to detect, acknowledge, mitigate and resolve (None until it happened)."""

        def between(start: datetime | None, end: datetime | None) -> float | None:
            if start is None or end is None:
                return None
            return max((end - start) / timedelta(seconds=1), 0.0)

        return {
            "ttd": between(self.detected_at, self.triggered_at),
            "tta": between(self.triggered_at, self.acknowledged_at),
            "ttm": between(self.triggered_at, self.mitigated_at),
            "ttr": between(self.triggered_at, self.resolved_at),
        }

    def summary(self) -> dict[str, Any]:
        """Plain values for lists: no timeline, no evidence."""
        return {
            "id": str(self.id),
            "ref": self.ref,
            "tenant": self.tenant,
            "title": self.title,
            "description": self.description,
            "severity": self.severity,
            "status": self.status.value,
            "rule": self.rule,
            "dedup_key": self.dedup_key,
            "commander": self.commander,
            "participants": list(self.participants),
            "evidence_count": len(self.evidence),
            "runbook": (self.runbook or {}).get("name"),
            "detected_at": _iso(self.detected_at),
            "triggered_at": _iso(self.triggered_at),
            "acknowledged_at": _iso(self.acknowledged_at),
            "mitigating_at": _iso(self.mitigating_at),
            "mitigated_at": _iso(self.mitigated_at),
            "resolved_at": _iso(self.resolved_at),
            "closed_at": _iso(self.closed_at),
            "merged_into": self.merged_into,
            "durations": self.durations(),
            "version": self.version,
        }

    def details(self) -> dict[str, Any]:
        """Everything a responder sees: the summary with timeline, evidence, runbook
        steps and their outcomes, escalation state and the post-mortem fields."""
        steps = []
        for step in (self.runbook or {}).get("steps", []):
            steps.append(
                {
                    **step,
                    **(
                        {"status": self.steps[step["id"]]}
                        if step["id"] in self.steps
                        else {"status": None}
                    ),
                }
            )
        next_at = self.escalation.get("next_at")
        return {
            **self.summary(),
            "timeline": [dict(entry) for entry in self.timeline],
            "evidence": [dict(e) for e in self.evidence],
            "runbook_steps": steps,
            "escalation": {
                **{k: v for k, v in self.escalation.items() if k != "next_at"},
                "next_at": _iso(next_at) if isinstance(next_at, datetime) else next_at,
                "policy": (self.policy or {}).get("name"),
            },
            "postmortem": {**self.postmortem, "published": list(self.published)},
        }


def _check_action_items(value: Any) -> None:
    if not isinstance(value, list) or len(value) > 200:
        raise InvalidIncidentError("action_items", "a list of at most 200 items")
    for index, item in enumerate(value):
        where = f"action_items[{index}]"
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("title"), str)
            or not item["title"]
        ):
            raise InvalidIncidentError(where, "each item needs a title")
        extra = set(item) - {"title", "owner", "due", "done"}
        if extra:
            raise InvalidIncidentError(f"{where}.{sorted(extra)[0]}", "use title, owner, due, done")
        due = item.get("due")
        if due is not None:
            try:
                datetime.fromisoformat(str(due))
            except ValueError:
                raise InvalidIncidentError(
                    f"{where}.due", f"{due!r} is not a date (YYYY-MM-DD)"
                ) from None


class DedupSlot(Aggregate):
    """Which incident holds a (tenant, dedup key) while it is open: claiming the slot in
    the same save as opening the incident makes "at most one open incident per key" hold
    between concurrent detectors (the loser's save conflicts on the slot's version)."""

    class Created(Aggregate.Created):
        tenant: str
        dedup_key: str

    @staticmethod
    def create_id(tenant: str, dedup_key: str) -> uuid.UUID:
        return slot_id(tenant, dedup_key)

    @event(Created)
    def __init__(self, tenant: str, dedup_key: str):
        self.tenant = tenant
        self.dedup_key = dedup_key
        self.holder: str | None = None

    @event("Claimed")
    def claim(self, incident_id: str) -> None:
        self.holder = incident_id

    @event("Released")
    def release(self, incident_id: str) -> None:
        if self.holder == incident_id:
            self.holder = None


def slot_id(tenant: str, dedup_key: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{tenant}\x00{dedup_key}")


class SealedSecrets(Aggregate):
    """Runbook secrets as AES-256-GCM ciphertexts (sealed by
    :class:`incident.runbooks.Vault`; the key never reaches the store). One per
    installation: secrets are the operator's, not a tenant's."""

    @staticmethod
    def create_id() -> uuid.UUID:
        return SECRETS_ID

    @event("Created")
    def __init__(self) -> None:
        self.sealed: dict[str, str] = {}

    @event("Sealed")
    def seal(self, name: str, sealed: str) -> None:
        self.sealed[name] = sealed

    @event("Removed")
    def remove(self, name: str) -> None:
        self.sealed.pop(name, None)


SECRETS_ID = uuid.uuid5(_NAMESPACE, "runbook secrets")
