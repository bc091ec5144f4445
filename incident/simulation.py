"""Simulated activity of one tenant: its directory, ordinary working days, and the
attacks the shipped detection rules target.

The shapes are those ``docs/detection.md`` describes (``auth.login`` with the account as
target, ``role.grant`` with ``changes.role``, exports with ``metadata.row_count``,
integrations acting with ``actor.type: integration``, profile edits with
``changes.email``/``phone``/``external_account_id``). Everything is drawn from a seeded
``random.Random``, so a day is the same every time it is made: the tests check that the
shipped rules stay silent on it, ``bench/detect.py`` measures on it, and a demo can
record it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from audit_core.schema import format_timestamp

Event = dict[str, Any]

OFFICE_IPS = ("203.0.113.10", "203.0.113.11", "198.51.100.20")
"""The offices' NAT addresses: many users' logins come from each."""


@dataclass(frozen=True)
class User:
    id: str
    email: str
    phone: str
    external_account_id: str
    home_ip: str
    admin: bool = False


@dataclass(frozen=True)
class Integration:
    id: str
    ips: tuple[str, ...]
    """Its egress addresses (all in one /24)."""
    actions: tuple[str, ...]


@dataclass
class Tenant:
    """The people and integrations of a simulated tenant."""

    name: str
    users: list[User]
    integrations: list[Integration]
    seed: int
    _counter: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def make(cls, name: str = "acme", *, users: int = 200, seed: int = 7) -> Tenant:
        rng = random.Random(seed)
        people = []
        for number in range(1, users + 1):
            people.append(
                User(
                    id=f"u-{number:04d}",
                    email=f"user{number:04d}@{name}.example",
                    phone=f"+4420{rng.randrange(10**7, 10**8)}",
                    external_account_id=f"gh-{rng.randrange(10**6, 10**7)}",
                    home_ip=f"{rng.choice((81, 82, 86, 92))}.{rng.randrange(1, 255)}."
                    f"{rng.randrange(0, 255)}.{rng.randrange(1, 255)}",
                    admin=number <= 5,
                )
            )
        integrations = [
            Integration("int-crm-sync", ("52.16.40.11", "52.16.40.12"), ("contact.sync",)),
            Integration("int-helpdesk", ("34.240.7.80",), ("conversation.import", "ticket.sync")),
            Integration("int-billing", ("18.200.1.5", "18.200.1.6"), ("invoice.sync",)),
        ]
        return cls(name, people, integrations, seed)

    def _id(self) -> str:
        self._counter[0] += 1
        return f"{self.name}-sim-{self.seed}-{self._counter[0]}"

    def event(
        self,
        at: datetime,
        actor: dict[str, Any],
        action: str,
        target: dict[str, Any] | None = None,
        *,
        outcome: str = "success",
        source: str = "console",
        metadata: dict[str, Any] | None = None,
        changes: dict[str, Any] | None = None,
    ) -> Event:
        event: Event = {
            "id": self._id(),
            "occurred_at": format_timestamp(at),
            "actor": actor,
            "action": action,
            "outcome": outcome,
            "source": source,
        }
        if target is not None:
            event["target"] = target
        if metadata:
            event["metadata"] = metadata
        if changes:
            event["changes"] = changes
        return event

    # -- the directory ------------------------------------------------------------------

    def directory(self, at: datetime) -> list[Event]:
        """Every user's account, created by a directory sync: who holds which e-mail
        address, phone number and external account id."""
        sync = {"id": "scim-directory", "type": "service", "ip": "20.50.2.10"}
        events = []
        for offset, user in enumerate(self.users):
            events.append(
                self.event(
                    at + timedelta(seconds=offset),
                    sync,
                    "user.create",
                    {"type": "user", "id": user.id},
                    source="api",
                    changes={
                        "email": {"from": None, "to": user.email},
                        "phone": {"from": None, "to": user.phone},
                        "external_account_id": {"from": None, "to": user.external_account_id},
                    },
                )
            )
        return events

    # -- an ordinary day ----------------------------------------------------------------

    def ordinary_day(self, day: date) -> list[Event]:
        """A working day's console, app and integration activity, in time order."""
        rng = random.Random(f"{self.seed}:{day.isoformat()}")
        start = datetime.combine(day, time(0, 0), UTC)
        events: list[Event] = []
        new_users = 0
        for user in self.users:
            if rng.random() < 0.15:
                continue  # off today
            ip = rng.choice(OFFICE_IPS) if rng.random() < 0.7 else user.home_ip
            actor = {"id": user.id, "type": "user", "ip": ip, "session_id": f"s-{rng.random():.8f}"}
            at = start + timedelta(hours=rng.uniform(7.5, 10.0))
            # A mistyped password now and then, then the right one.
            for _ in range(rng.choice((0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3))):
                events.append(
                    self.event(
                        at,
                        {"id": user.email, "type": "user", "ip": ip},
                        "auth.login",
                        {"type": "user", "id": user.id},
                        outcome="failure",
                        metadata={"reason": "bad_password"},
                    )
                )
                at += timedelta(seconds=rng.uniform(4, 40))
            events.append(self.event(at, actor, "auth.login", {"type": "user", "id": user.id}))
            for _ in range(rng.randrange(10, 40)):
                at += timedelta(minutes=rng.uniform(1, 14))
                events.append(self._work(rng, at, actor, user))
            if rng.random() < 0.05:
                at += timedelta(minutes=rng.uniform(1, 30))
                events.extend(self._profile_edit(rng, at, actor, user))
            if user.admin and rng.random() < 0.5:
                at += timedelta(minutes=rng.uniform(1, 30))
                events.extend(self._admin_work(rng, at, actor, day))
            if user.admin and rng.random() < 0.3:
                new_users += 1
                at += timedelta(minutes=rng.uniform(1, 30))
                number = f"{day:%m%d}{new_users:02d}"
                events.append(
                    self.event(
                        at,
                        actor,
                        "user.create",
                        {"type": "user", "id": f"u-new-{number}"},
                        changes={
                            "email": {"from": None, "to": f"new{number}@{self.name}.example"},
                            "phone": {"from": None, "to": f"+4479{rng.randrange(10**7, 10**8)}"},
                        },
                    )
                )
            at += timedelta(minutes=rng.uniform(5, 60))
            events.append(self.event(at, actor, "auth.logout", {"type": "user", "id": user.id}))
        for integration in self.integrations:
            actor_type = "integration"
            for minute in range(0, 24 * 60, 15):
                at = start + timedelta(minutes=minute, seconds=rng.uniform(0, 50))
                actor = {
                    "id": integration.id,
                    "type": actor_type,
                    "ip": rng.choice(integration.ips),
                }
                events.append(
                    self.event(
                        at,
                        actor,
                        rng.choice(integration.actions),
                        {"type": "batch", "id": f"b-{rng.randrange(10**9)}"},
                        source="api",
                        metadata={"items": rng.randrange(0, 300)},
                    )
                )
        # The nightly backup exports everything, as a service.
        events.append(
            self.event(
                start + timedelta(hours=2, minutes=5),
                {"id": "svc-backup", "type": "service", "ip": "10.20.0.5"},
                "account.export",
                {"type": "account", "id": self.name},
                source="system",
                metadata={"row_count": 480_000, "format": "jsonl"},
            )
        )
        events.sort(key=lambda event: event["occurred_at"])
        return events

    def _work(self, rng: random.Random, at: datetime, actor: dict[str, Any], user: User) -> Event:
        roll = rng.random()
        conversation = {"type": "conversation", "id": f"c-{rng.randrange(1, 50_000)}"}
        contact = {"type": "contact", "id": f"ct-{rng.randrange(1, 80_000)}"}
        if roll < 0.35:
            return self.event(at, actor, "conversation.reply", conversation)
        if roll < 0.55:
            return self.event(at, actor, "contact.view", contact)
        if roll < 0.70:
            assignee = rng.choice(self.users).id
            return self.event(
                at,
                actor,
                "conversation.assign",
                conversation,
                changes={"assignee": {"from": None, "to": assignee}},
            )
        if roll < 0.80:
            return self.event(at, actor, "conversation.close", conversation, source="app")
        if roll < 0.88:
            return self.event(
                at,
                actor,
                "contact.update",
                contact,
                changes={"company": {"from": None, "to": f"Company {rng.randrange(1, 500)}"}},
            )
        if roll < 0.95:
            file = {"type": "file", "id": f"f-{rng.randrange(1, 9_000)}"}
            return self.event(at, actor, "file.download", file)
        if roll < 0.985:
            return self.event(
                at,
                actor,
                "report.export",
                {"type": "report", "id": f"r-{rng.randrange(1, 40)}"},
                metadata={"row_count": rng.randrange(20, 4_000), "format": "csv"},
            )
        return self.event(
            at,
            actor,
            "conversation.export",
            conversation,
            metadata={"row_count": rng.randrange(1, 300), "format": "pdf"},
        )

    def _profile_edit(
        self, rng: random.Random, at: datetime, actor: dict[str, Any], user: User
    ) -> list[Event]:
        """A user changes their own phone number or e-mail to a fresh value of theirs."""
        if rng.random() < 0.5:
            changes = {"phone": {"from": user.phone, "to": f"+4477{rng.randrange(10**7, 10**8)}"}}
        else:
            local = user.email.split("@")[0]
            changes = {
                "email": {"from": user.email, "to": f"{local}.{rng.randrange(99)}@mail.example"}
            }
        return [
            self.event(
                at, actor, "profile.update", {"type": "user", "id": user.id}, changes=changes
            )
        ]

    def _admin_work(
        self, rng: random.Random, at: datetime, actor: dict[str, Any], day: date
    ) -> list[Event]:
        """Role grants of ordinary roles, and admin grants only inside the change
        window (Tuesday and Thursday, 18:00-20:00 UTC)."""
        member = rng.choice(self.users[5:])
        events = [
            self.event(
                at,
                actor,
                "role.grant",
                {"type": "user", "id": member.id},
                changes={"role": {"from": "viewer", "to": rng.choice(("agent", "supervisor"))}},
            )
        ]
        if day.weekday() in (1, 3):
            window = datetime.combine(day, time(18, rng.randrange(0, 59)), UTC)
            events.append(
                self.event(
                    window,
                    actor,
                    "role.grant",
                    {"type": "user", "id": rng.choice(self.users[5:]).id},
                    changes={"role": {"from": "agent", "to": "admin"}},
                    metadata={"change_request": f"CHG-{rng.randrange(1000, 9999)}"},
                )
            )
        return events

    # -- attacks ----------------------------------------------------------------------------

    def brute_force(self, start: datetime, victim: User, attempts: int = 30) -> list[Event]:
        """Password guessing against one account from a handful of addresses."""
        rng = random.Random(f"{self.seed}:brute:{start.isoformat()}")
        ips = [f"45.155.205.{rng.randrange(1, 255)}" for _ in range(5)]
        return [
            self.event(
                start + timedelta(seconds=10 * n),
                {"id": victim.email, "type": "user", "ip": rng.choice(ips)},
                "auth.login",
                {"type": "user", "id": victim.id},
                outcome="failure",
                metadata={"reason": "bad_password"},
            )
            for n in range(attempts)
        ]

    def credential_stuffing(self, start: datetime, accounts: int = 60) -> list[Event]:
        """One address trying a leaked list of accounts, one password each."""
        ip = "185.100.87.41"
        return [
            self.event(
                start + timedelta(seconds=7 * n),
                {"id": user.email, "type": "user", "ip": ip, "user_agent": "python-requests/2.31"},
                "auth.login",
                {"type": "user", "id": user.id},
                outcome="failure",
                metadata={"reason": "bad_password"},
            )
            for n, user in enumerate(self.users[:accounts])
        ]

    def privilege_escalation(self, at: datetime, granter: User, member: User) -> list[Event]:
        """An admin role granted at 02:30 on a Saturday (outside every change window)."""
        return [
            self.event(
                at,
                {"id": granter.id, "type": "user", "ip": granter.home_ip},
                "role.grant",
                {"type": "user", "id": member.id},
                changes={"role": {"from": "agent", "to": "admin"}},
            )
        ]

    def bulk_export(self, start: datetime, actor: User, objects: int = 120) -> list[Event]:
        """One user exporting contact after contact, faster than anyone reads them."""
        ip = actor.home_ip
        return [
            self.event(
                start + timedelta(seconds=1.5 * n),
                {"id": actor.id, "type": "user", "ip": ip},
                "contact.export",
                {"type": "contact", "id": f"ct-{10_000 + n}"},
                metadata={"row_count": 1, "format": "vcf"},
            )
            for n in range(objects)
        ]

    def large_export(self, at: datetime, actor: User) -> list[Event]:
        return [
            self.event(
                at,
                {"id": actor.id, "type": "user", "ip": actor.home_ip},
                "report.export",
                {"type": "report", "id": "r-all-contacts"},
                metadata={"row_count": 250_000, "format": "csv"},
            )
        ]

    def leaked_token(self, start: datetime, integration: Integration) -> list[Event]:
        """The integration's token replayed from an unknown network."""
        ip = "91.219.236.77"
        return [
            self.event(
                start + timedelta(minutes=n),
                {"id": integration.id, "type": "integration", "ip": ip},
                action,
                {"type": "batch", "id": f"b-x-{n}"},
                source="api",
                metadata={"items": 1000},
            )
            for n, action in enumerate(("contact.sync", "contact.export", "contact.export"))
        ]

    def identity_takeover(self, at: datetime, attacker: User, victim: User) -> list[Event]:
        """The attacker sets their own e-mail to the victim's (in other capitals): a
        password reset or SSO login by e-mail would now reach the attacker's record."""
        return [
            self.event(
                at,
                {"id": attacker.id, "type": "user", "ip": attacker.home_ip},
                "profile.update",
                {"type": "user", "id": attacker.id},
                changes={"email": {"from": attacker.email, "to": victim.email.upper()}},
            )
        ]

    def forged_incident_record(self, at: datetime, forger: User) -> list[Event]:
        """A client recording an incident action as if Vigil had: closing an incident
        that does not exist, to muddy the incident history."""
        return [
            self.event(
                at,
                {"id": "vigil", "type": "vigil", "ip": forger.home_ip},
                "incident.close",
                {"type": "incident", "id": "9b2f6c1e-4d3a-4f5b-8c7d-1e2f3a4b5c6d"},
                source="system",
                metadata={"origin": "vigil.incident", "note": "false positive"},
            )
        ]
