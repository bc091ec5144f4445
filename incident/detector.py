"""The correlation engine: audit records in, detections out, state carried between pages.

The engine is pure: :meth:`Detector.process` takes records in the ledger's notification
order and returns :class:`Detection` values; it reads no clock and no database. Windows
are measured on the records' own ``occurred_at``, and every decision depends only on the
records and their order, so replaying the same log gives the same detections (and, since
an incident's id is derived from its first detection, the same incidents).

What it remembers between records (counts in a window, values seen, who holds an
attribute's value) is a map of JSON values keyed by (rule, tenant, key); the keys a page
changed are handed to an :class:`IncidentSink` with the page's detections and position,
which writes all three in one transaction (see :mod:`incident.follower`).

Records that the incident module itself writes (its ``is_incident_record``: an
``incident.*`` action, source ``system``, actor type ``vigil``) never feed a rule:
otherwise opening an incident could match a rule and open another.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import Tracking

from audit_core.schema import format_timestamp
from incident.application import is_incident_record
from incident.rules import Correlation, Record, Rule, duration_text, get_field, parse_time

MAX_EVIDENCE = 200
"""Most records one detection carries as evidence; the count in its summary is exact."""
MAX_DEDUP_KEY = 512
"""Longest dedup key an incident takes; a longer rendering is cut."""
MAX_WINDOW = 10_000
"""Most records a group's window holds; beyond it the oldest are dropped."""
SWEEP_EVERY = 8192
"""Records of a tenant between two sweeps of its expired groups."""

_INCIDENT_NAMESPACE = uuid.UUID("9a3c1e52-7d0b-5f4e-8a61-2c9d7e0f4b13")

StateKey = tuple[str, str, str]
"""(rule id, tenant, key). Parts of a key are joined by U+001F, which PostgreSQL's text
accepts (it refuses NUL)."""


@dataclass(frozen=True)
class Evidence:
    """An audit record an incident links to."""

    tenant: str
    seq: int
    hash: str

    @classmethod
    def of(cls, record: Record) -> Evidence:
        return cls(record["tenant"], record["seq"], record["hash"])

    def as_tuple(self) -> tuple[str, int, str]:
        return (self.tenant, self.seq, self.hash)


@dataclass(frozen=True)
class Detection:
    """A rule matched: open an incident under ``dedup_key``, or attach to the open one."""

    rule_id: str
    title: str
    severity: str
    tenant: str
    dedup_key: str
    evidence: tuple[Evidence, ...]
    summary: str
    first_at: str
    last_at: str
    runbook: str | None = None
    matched: int = 1
    """Records this detection stands for (its evidence may hold fewer)."""

    @property
    def incident_id(self) -> uuid.UUID:
        """The id of the incident this detection opens if none is open for its key:
        derived from its first record, so a replay opens the same incident."""
        first = self.evidence[0]
        name = f"{self.tenant}\x00{self.rule_id}\x00{self.dedup_key}\x00{first.seq}"
        return uuid.uuid5(_INCIDENT_NAMESPACE, name)


@dataclass
class StateChanges:
    """State keys a page changed: their new JSON values, or None where removed."""

    values: dict[StateKey, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.values)


def coalesce(detections: Sequence[Detection]) -> list[Detection]:
    """One detection per (tenant, dedup key): the first of each, carrying the evidence
    of all of them. A page of a long attack then adds its records to the incident in one
    event, not one event (and one audit record) per record."""
    merged: dict[tuple[str, str], Detection] = {}
    for detection in detections:
        key = (detection.tenant, detection.dedup_key)
        first = merged.get(key)
        if first is None:
            merged[key] = detection
            continue
        known = set(first.evidence)
        merged[key] = replace(
            first,
            evidence=first.evidence + tuple(e for e in detection.evidence if e not in known),
            matched=first.matched + detection.matched,
            last_at=max(first.last_at, detection.last_at),
        )
    return list(merged.values())


class IncidentSink(ABC):
    """Where detections go: the port the detector's follower writes through."""

    @abstractmethod
    def load_state(self) -> dict[StateKey, Any]:
        """Every state value written so far."""

    @abstractmethod
    def open_or_attach(
        self, detections: Sequence[Detection], changes: StateChanges, tracking: Tracking | None
    ) -> list[tuple[Detection, uuid.UUID, bool]]:
        """In one transaction: for each detection, attach its evidence to the open
        incident of its (tenant, dedup key), or open one (``detection.incident_id``);
        write the state changes and the position. Returns (detection, incident id,
        opened) for each detection."""

    def clear(self) -> None:  # noqa: B027  (optional)
        """Forget the state and the position (incidents stay: they are history)."""


@dataclass
class _MemoryIncident:
    id: uuid.UUID
    detection: Detection
    evidence: list[Evidence]
    open: bool = True


class MemoryIncidentSink(IncidentSink):
    """Incidents kept in memory: what ``vigil rules test`` reports on without opening
    anything, and the unit tests' sink."""

    def __init__(self) -> None:
        self.incidents: dict[uuid.UUID, _MemoryIncident] = {}
        self.open_by_key: dict[tuple[str, str], uuid.UUID] = {}
        self.state: dict[StateKey, Any] = {}
        self.position: int | None = None

    def load_state(self) -> dict[StateKey, Any]:
        return dict(self.state)

    def open_or_attach(
        self, detections: Sequence[Detection], changes: StateChanges, tracking: Tracking | None
    ) -> list[tuple[Detection, uuid.UUID, bool]]:
        results: list[tuple[Detection, uuid.UUID, bool]] = []
        for detection in detections:
            key = (detection.tenant, detection.dedup_key)
            open_id = self.open_by_key.get(key)
            if open_id is not None:
                incident = self.incidents[open_id]
                known = set(incident.evidence)
                incident.evidence += [e for e in detection.evidence if e not in known]
                results.append((detection, open_id, False))
                continue
            incident_id = detection.incident_id
            if incident_id in self.incidents:
                # A replay of what opened it: nothing new.
                results.append((detection, incident_id, False))
                continue
            self.incidents[incident_id] = _MemoryIncident(
                incident_id, detection, list(detection.evidence)
            )
            self.open_by_key[key] = incident_id
            results.append((detection, incident_id, True))
        for state_key, value in changes.values.items():
            if value is None:
                self.state.pop(state_key, None)
            else:
                self.state[state_key] = value
        if tracking is not None:
            self.position = tracking.notification_id
        return results

    def resolve(self, incident_id: uuid.UUID) -> None:
        """What a responder resolving the incident does to deduplication."""
        incident = self.incidents[incident_id]
        incident.open = False
        key = (incident.detection.tenant, incident.detection.dedup_key)
        if self.open_by_key.get(key) == incident_id:
            del self.open_by_key[key]

    def clear(self) -> None:
        self.state.clear()
        self.position = None


# -- the engine ---------------------------------------------------------------------------


class Detector:
    """Runs rules over records; holds their correlation state.

    ``state`` is what :meth:`IncidentSink.load_state` returned: the engine continues
    from it exactly as if it had never stopped.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        state: Mapping[StateKey, Any] | None = None,
        secret: bytes = b"",
        is_own: Callable[[Record], bool] = is_incident_record,
    ):
        self.rules = list(rules)
        self.is_own = is_own
        # Attribute values (e-mail addresses, phone numbers) are remembered as keyed
        # digests: equality is all a value_claimed rule needs of them.
        self._secret = hashlib.blake2b(secret, digest_size=32, person=b"vigil-detect").digest()
        # With the ledger encrypted (a secret given), the state must not hold what the
        # records hold in clear: group keys and counted values are kept as keyed hashes
        # too, under a key derived with a context of its own (not the value_claimed
        # digests' key, nor the read model's), since equality is all the rules need.
        self._blind_key = (
            hashlib.blake2b(
                b"detector state v1", key=secret[:64], digest_size=32, person=b"vigil-det-state"
            ).digest()
            if secret
            else None
        )
        self.key_id = (
            ""
            if self._blind_key is None
            else hashlib.blake2b(self._blind_key, digest_size=8, person=b"key id").hexdigest()
        )
        """Names the blinding key without revealing it; part of each rule's state
        fingerprint, so that state written in clear (or under another key) is dropped."""
        ids = [rule.id for rule in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError("two rules share an id")
        self.state: dict[StateKey, Any] = dict(state or {})
        self._dirty: set[StateKey] = set()
        # Rules offered each action, and those whose condition does not name actions.
        self._by_action: dict[str, list[Rule]] = {}
        self._any_action: list[Rule] = []
        for rule in self.rules:
            if rule.actions is None:
                self._any_action.append(rule)
            else:
                for action in rule.actions:
                    self._by_action.setdefault(action, []).append(rule)
        # value_claimed rules learn from records their condition may not select.
        self._learners = [
            rule
            for rule in self.rules
            if rule.correlation is not None and rule.correlation.type == "value_claimed"
        ]
        self._learner_ids = frozenset(rule.id for rule in self._learners)
        self._windowed = {
            rule.id: rule.correlation.timespan
            for rule in self.rules
            if rule.correlation is not None
            and rule.correlation.type in ("event_count", "value_count")
        }
        # Each tenant's window groups, so that a sweep reads only them.
        self._groups: dict[str, set[StateKey]] = {}
        self._forget_what_rules_no_longer_mean()
        for key in self.state:
            if key[0] in self._windowed:
                self._groups.setdefault(key[1], set()).add(key)

    def _forget_what_rules_no_longer_mean(self) -> None:
        """Drop the state of rules that are gone, or whose correlation changed since it
        was written (its shape would not fit): they start again from the next record.
        The deletions are written with the next page."""
        suffix = f"+blind:{self.key_id}" if self.key_id else ""
        current = {rule.id: _fingerprint(rule) + suffix for rule in self.rules}
        stale = {
            key[2].removeprefix("rule\x1f")
            for key, value in self.state.items()
            if key[:2] == ("", "") and current.get(key[2].removeprefix("rule\x1f")) != value
        }
        known = set(current) | {""}
        for key in list(self.state):
            rule_id = key[2].removeprefix("rule\x1f") if key[:2] == ("", "") else key[0]
            if rule_id not in known or rule_id in stale:
                self.state.pop(key)
                self._dirty.add(key)
        for rule_id, fingerprint in current.items():
            mark: StateKey = ("", "", f"rule\x1f{rule_id}")
            if self.state.get(mark) != fingerprint:
                self.state[mark] = fingerprint
                self._dirty.add(mark)

    # -- state -----------------------------------------------------------------------

    def _get(self, key: StateKey) -> Any:
        return self.state.get(key)

    def _put(self, key: StateKey, value: Any) -> None:
        if value is None:
            self.state.pop(key, None)
        else:
            self.state[key] = value
        self._dirty.add(key)
        if key[0] in self._windowed:
            groups = self._groups.setdefault(key[1], set())
            if value is None:
                groups.discard(key)
            else:
                groups.add(key)

    def take_changes(self) -> StateChanges:
        """The state changed since the last call, to be written with the page."""
        changes = StateChanges({key: self.state.get(key) for key in self._dirty})
        self._dirty = set()
        return changes

    # -- processing ----------------------------------------------------------------------

    def process(self, records: Iterable[Record]) -> list[Detection]:
        detections: list[Detection] = []
        by_action, any_action, learners = self._by_action, self._any_action, self._learners
        claimed, is_own = self._learner_ids, self.is_own
        for record in records:
            if is_own(record):
                continue
            candidates = by_action.get(record.get("action"), ())  # type: ignore[arg-type]
            for rule in learners:
                detection = self._value_claimed(rule, record)
                if detection is not None:
                    detections.append(detection)
            if self._windowed:
                self._count_record(record)
            for rules in (candidates, any_action):
                for rule in rules:
                    if rule.id in claimed or not rule.condition(record):
                        continue
                    detection = self._fire(rule, record)
                    if detection is not None:
                        detections.append(detection)
        return detections

    def _fire(self, rule: Rule, record: Record) -> Detection | None:
        correlation = rule.correlation
        if correlation is None:
            return self._detection(rule, record, [Evidence.of(record)], _single_summary(record))
        if correlation.type in ("event_count", "value_count"):
            return self._windowed_match(rule, correlation, record)
        if correlation.type == "new_value":
            return self._new_value(rule, correlation, record)
        return None  # pragma: no cover  (value_claimed is handled before)

    def _detection(
        self,
        rule: Rule,
        record: Record,
        evidence: list[Evidence],
        summary: str,
        first_at: str | None = None,
        matched: int | None = None,
    ) -> Detection:
        return Detection(
            rule_id=rule.id,
            title=rule.title,
            severity=rule.severity,
            tenant=record["tenant"],
            dedup_key=rule.dedup.render(rule.id, record)[:MAX_DEDUP_KEY],
            evidence=tuple(evidence[:MAX_EVIDENCE]),
            summary=summary,
            first_at=first_at or record["occurred_at"],
            last_at=record["occurred_at"],
            runbook=rule.runbook,
            matched=matched if matched is not None else len(evidence),
        )

    # -- windows: event_count and value_count ------------------------------------------

    def _count_record(self, record: Record) -> None:
        """Advance the tenant's clock and, every SWEEP_EVERY records, forget groups
        whose window lies wholly behind it. Both depend on the records alone, so where
        pages start and end changes nothing."""
        tenant = record["tenant"]
        key: StateKey = ("", tenant, "clock")
        clock = self._get(key) or [0.0, 0]
        moment = parse_time(record["occurred_at"])
        clock = [max(clock[0], moment), clock[1] + 1]
        if clock[1] % SWEEP_EVERY == 0:
            self._sweep(tenant, clock[0])
        self._put(key, clock)

    def _sweep(self, tenant: str, now: float) -> None:
        expired = [
            key
            for key in self._groups.get(tenant, ())
            if self.state[key]["latest"] < now - self._windowed[key[0]]
        ]
        for key in expired:
            self._put(key, None)

    def _windowed_match(
        self, rule: Rule, correlation: Correlation, record: Record
    ) -> Detection | None:
        """Count the record in its group's window; fire once the threshold is reached,
        then pass each further match of the group straight on (to be attached) until
        the window passes without one."""
        values = [get_field(record, name) for name in correlation.group_by]
        key: StateKey = (rule.id, record["tenant"], self._group_key(record["tenant"], values))
        moment = parse_time(record["occurred_at"])
        span = correlation.timespan
        group = self._get(key) or {"entries": [], "fired": None, "latest": moment}
        latest = max(group["latest"], moment)
        evidence = Evidence.of(record)
        fired = group["fired"]
        if fired is not None and moment - fired <= span and fired - moment <= span:
            group = {**group, "fired": max(fired, moment), "latest": latest}
            self._put(key, group)
            return self._detection(
                rule, record, [evidence], f"continues: {_single_summary(record)}"
            )
        value = None
        if correlation.type == "value_count":
            value = get_field(record, correlation.field or "")
            if value is None:
                return None
            value = self._blind(record["tenant"], "value", _scalar_text(value))
        # What is older than the window of both the newest record of the group and this
        # one can never count again; a burst of late records still counts among itself.
        horizon = min(latest, moment) - span
        entries = [e for e in group["entries"] if e[0] >= horizon]
        entries.append([moment, value, evidence.seq, evidence.hash])
        if len(entries) > MAX_WINDOW:
            entries = entries[-MAX_WINDOW:]
        low = moment - span
        in_window = [e for e in entries if low <= e[0] <= moment]
        if correlation.type == "event_count":
            counted = in_window
            reached = len(counted) >= correlation.threshold
        else:
            distinct: dict[Any, list[Any]] = {}
            for entry in in_window:
                distinct[entry[1]] = entry
            counted = sorted(distinct.values(), key=lambda e: (e[0], e[2]))
            reached = len(distinct) >= correlation.threshold
        if not reached:
            self._put(key, {"entries": entries, "fired": None, "latest": latest})
            return None
        self._put(key, {"entries": [], "fired": moment, "latest": latest})
        counted.sort(key=lambda e: (e[0], e[2]))
        tenant = record["tenant"]
        groups = ", ".join(
            f"{name}={value}" for name, value in zip(correlation.group_by, values, strict=True)
        )
        what = (
            f"{len(counted)} matching records"
            if correlation.type == "event_count"
            else f"{len(counted)} distinct {correlation.field}"
        )
        return self._detection(
            rule,
            record,
            [Evidence(tenant, e[2], e[3]) for e in counted],
            f"{what} within {duration_text(span)}" + (f" ({groups})" if groups else ""),
            first_at=_stamp_of(counted[0][0], record),
            matched=len(counted),
        )

    # -- new_value ----------------------------------------------------------------------

    def _new_value(self, rule: Rule, correlation: Correlation, record: Record) -> Detection | None:
        raw = get_field(record, correlation.field or "")
        if raw is None:
            return None
        shown = _reduced(raw, correlation.network)
        value = self._blind(record["tenant"], "value", shown)
        group_values = [get_field(record, name) for name in correlation.group_by]
        key: StateKey = (
            rule.id,
            record["tenant"],
            self._group_key(record["tenant"], group_values),
        )
        moment = parse_time(record["occurred_at"])
        group = self._get(key)
        if group is None:
            self._put(key, {"since": moment, "values": {value: [moment, moment, 0]}})
            return None
        known: dict[str, list[Any]] = dict(group["values"])
        seen = known.get(value)
        detection = None
        groups = ", ".join(
            f"{name}={found}"
            for name, found in zip(correlation.group_by, group_values, strict=True)
        )
        if seen is None:
            flagged = 1 if moment - group["since"] >= correlation.learning else 0
            known[value] = [moment, moment, flagged]
            if flagged:
                detection = self._detection(
                    rule,
                    record,
                    [Evidence.of(record)],
                    f"{correlation.field} {raw} ({shown}) never seen before for {groups}",
                )
        else:
            first, last, flagged = seen
            known[value] = [first, max(last, moment), flagged]
            # Further use of the new value, within a day of its first, goes to the incident.
            if flagged and moment - first <= 86400:
                detection = self._detection(
                    rule, record, [Evidence.of(record)], f"continues: {_single_summary(record)}"
                )
        if len(known) > correlation.max_values:
            oldest = min(known, key=lambda name: (known[name][1], name))
            del known[oldest]
        self._put(key, {"since": min(group["since"], moment), "values": known})
        return detection

    # -- value_claimed ------------------------------------------------------------------

    def _value_claimed(self, rule: Rule, record: Record) -> Detection | None:
        """Fire when a record the rule's condition selects sets an attribute to a value
        another owner holds; learn who holds what from every record ``learn_from``
        selects (but not from a claim that fired: the value stays its holder's)."""
        correlation = rule.correlation
        assert correlation is not None
        assert correlation.learn_from is not None
        selected = rule.matches(record)
        learns = correlation.learn_from(record)
        if not (selected or learns):
            return None
        owner_value = get_field(record, correlation.owner or "")
        if owner_value is None:
            return None
        tenant = record["tenant"]
        owner = self._blind(tenant, "owner", _scalar_text(owner_value))
        detection = None
        for attribute, paths in correlation.values:
            found = None
            present = False
            for path in paths:
                found = _present(record, path)
                if found is not _ABSENT:
                    present = True
                    break
            if not present:
                continue
            text = None if found is None else _scalar_text(found).strip().casefold()
            value = self._digest(text) if text else None
            holder = None
            if value:
                holder = self._get((rule.id, tenant, f"value\x1f{attribute}\x1f{value}"))
            if selected and holder is not None and holder != owner:
                if detection is None:
                    # Blinded, the state knows the holder only by a digest: unnamed.
                    held = f"another {correlation.owner}" if self._blind_key else holder
                    detection = self._detection(
                        rule,
                        record,
                        [Evidence.of(record)],
                        f"{record['actor']['id']} set {attribute} of "
                        f"{_scalar_text(owner_value)} to a value that belongs to {held}",
                    )
                continue
            if learns:
                self._learn(rule.id, tenant, attribute, owner, value or None)
        return detection

    def _blind(self, tenant: str, kind: str, text: str) -> str:
        """``text`` as the state keeps it: itself, or its keyed hash when blinded (the
        tenant and the kind hashed in, so equal values elsewhere give other digests)."""
        if self._blind_key is None:
            return text
        hasher = hashlib.blake2b(key=self._blind_key, digest_size=16)
        hasher.update(f"{kind}\x1f{tenant}\x1f{text}".encode())
        return hasher.hexdigest()

    def _group_key(self, tenant: str, values: Sequence[Any]) -> str:
        """A group's key: its values joined, as one keyed hash when blinded."""
        joined = _group_key(values)
        if self._blind_key is None:
            return joined
        # One digest for the whole key, not one per part: a part's digest would repeat
        # across groups and tell which groups share an actor.
        return self._blind(tenant, "group", joined)

    def _digest(self, text: str) -> str:
        return hashlib.blake2b(text.encode(), key=self._secret, digest_size=16).hexdigest()

    def _learn(
        self, rule_id: str, tenant: str, attribute: str, owner: str, value: str | None
    ) -> None:
        owner_key: StateKey = (rule_id, tenant, f"owner\x1f{attribute}\x1f{owner}")
        previous = self._get(owner_key)
        if previous == value:
            return
        if previous is not None:
            previous_key: StateKey = (rule_id, tenant, f"value\x1f{attribute}\x1f{previous}")
            if self._get(previous_key) == owner:
                self._put(previous_key, None)
        if value is None:
            self._put(owner_key, None)
            return
        self._put((rule_id, tenant, f"value\x1f{attribute}\x1f{value}"), owner)
        self._put(owner_key, value)


_ABSENT: Any = object()


def _present(record: Record, path: str) -> Any:
    """The value at ``path`` (None included), or _ABSENT where the path is missing."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _fingerprint(rule: Rule) -> str:
    """What the shape of a rule's state depends on."""
    correlation = rule.correlation
    if correlation is None:
        return "none"
    parts = (
        correlation.type,
        correlation.group_by,
        correlation.field,
        correlation.network,
        correlation.owner,
        correlation.values,
    )
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _group_key(values: Sequence[Any]) -> str:
    return "\x1f".join("" if value is None else _scalar_text(value) for value in values)


def _scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _reduced(value: Any, network: tuple[int, int] | None) -> str:
    """An IP reduced to its network when ``network`` says so; other values as text."""
    text = _scalar_text(value)
    if network is None:
        return text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    length = network[0] if address.version == 4 else network[1]
    return str(ipaddress.ip_network(f"{address}/{length}", strict=False))


def _single_summary(record: Record) -> str:
    actor = record.get("actor") or {}
    target = record.get("target") or {}
    on = f" on {target.get('type')} {target.get('id')}" if target else ""
    ip = f" from {actor.get('ip')}" if actor.get("ip") else ""
    return f"{actor.get('id')} {record.get('action')}{on} ({record.get('outcome')}){ip}"


def _stamp_of(moment: float, record: Record) -> str:
    if moment == parse_time(record["occurred_at"]):
        return str(record["occurred_at"])
    return format_timestamp(datetime.fromtimestamp(moment, UTC))
