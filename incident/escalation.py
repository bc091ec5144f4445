"""Escalation policies as data, and the scheduler that pages their levels in turn.

A policy is ordered levels, each with targets (users, or an on-call rotation) and an
acknowledgement timeout, plus how many times to run through the levels again when
nobody acknowledges. It is frozen into the incident when the incident opens (as the
plain dict :meth:`EscalationPolicy.as_dict` returns), so editing a policy file never
changes an incident in flight.

Every step the scheduler takes is an ``Escalated`` event of the incident, numbered;
the aggregate refuses a step number already taken, so two ticks (two workers, or a
duplicate) page once, and a worker restarted mid-escalation finds the next step due
from the incident's own state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from incident.exceptions import ConfigurationError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, where: str) -> timedelta:
    """``90s``, ``5m``, ``2h``, ``7d`` or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigurationError(where, f"{value!r} is not a duration (e.g. 5m)")
    if isinstance(value, int | float) and value > 0:
        return timedelta(seconds=float(value))
    match = _DURATION.match(str(value))
    if not match or int(match.group(1)) <= 0:
        raise ConfigurationError(where, f"{value!r} is not a duration such as 90s, 5m, 2h or 7d")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _instant(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigurationError(where, f"{value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ConfigurationError(where, f"{value!r} needs a time zone offset (e.g. Z)")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Override:
    user: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Rotation:
    """Users on call in turn: ``users[0]`` from ``start`` for ``handoff_every``, then the
    next, and so on; an override puts someone else on call for its window."""

    name: str
    users: tuple[str, ...]
    start: datetime
    handoff_every: timedelta
    overrides: tuple[Override, ...] = ()

    def on_call(self, at: datetime) -> str:
        for override in self.overrides:
            if override.start <= at < override.end:
                return override.user
        turns = int((at - self.start) // self.handoff_every)
        return self.users[turns % len(self.users)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "users": list(self.users),
            "start": self.start.isoformat(),
            "handoff_every": self.handoff_every.total_seconds(),
            "overrides": [
                {"user": o.user, "start": o.start.isoformat(), "end": o.end.isoformat()}
                for o in self.overrides
            ],
        }


@dataclass(frozen=True)
class Level:
    users: tuple[str, ...]
    rotations: tuple[Rotation, ...]
    ack_timeout: timedelta

    def targets(self, at: datetime) -> list[str]:
        """Who this level pages at ``at``: its users, and whoever each rotation has on call."""
        found: list[str] = []
        for who in [*self.users, *(r.on_call(at) for r in self.rotations)]:
            if who not in found:
                found.append(who)
        return found


@dataclass(frozen=True)
class EscalationPolicy:
    name: str
    levels: tuple[Level, ...]
    repeat: int = 0
    """How many more times to page the levels from the first when nobody acknowledged."""
    channels: tuple[str, ...] = field(default=())
    """Notification channels to use (configured webhooks' names, ``email``); empty: all."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "policy") -> EscalationPolicy:
        if not isinstance(data, Mapping):
            raise ConfigurationError(where, "a policy is a mapping with name and levels")
        unknown = set(data) - {"name", "levels", "repeat", "ack_timeout", "rotations", "channels"}
        if unknown:
            raise ConfigurationError(where, f"unknown key {sorted(unknown)[0]!r}")
        name = str(data.get("name") or "").strip()
        if not name:
            raise ConfigurationError(where, "the policy needs a name")
        default_timeout = data.get("ack_timeout", "5m")
        rotations: dict[str, Rotation] = {}
        raw_rotations = data.get("rotations") or {}
        if not isinstance(raw_rotations, Mapping):
            raise ConfigurationError(f"{where}: rotations", "a mapping of name to rotation")
        for rotation_name, raw in raw_rotations.items():
            rotations[str(rotation_name)] = _rotation(
                str(rotation_name), raw, f"{where}: rotations.{rotation_name}"
            )
        raw_levels = data.get("levels")
        if not isinstance(raw_levels, list) or not raw_levels:
            raise ConfigurationError(where, "levels: give at least one level")
        levels = []
        for index, raw_level in enumerate(raw_levels):
            at = f"{where}: levels[{index}]"
            if not isinstance(raw_level, Mapping):
                raise ConfigurationError(at, "a level is a mapping with targets")
            extra = set(raw_level) - {"targets", "ack_timeout"}
            if extra:
                raise ConfigurationError(at, f"unknown key {sorted(extra)[0]!r}")
            users: list[str] = []
            level_rotations: list[Rotation] = []
            targets = raw_level.get("targets")
            if not isinstance(targets, list) or not targets:
                raise ConfigurationError(at, "targets: give at least one user or rotation")
            for target in targets:
                if isinstance(target, str):
                    users.append(target)
                elif isinstance(target, Mapping) and set(target) == {"user"}:
                    users.append(str(target["user"]))
                elif isinstance(target, Mapping) and set(target) == {"rotation"}:
                    if isinstance(target["rotation"], Mapping):
                        level_rotations.append(_rotation("inline", target["rotation"], at))
                    elif str(target["rotation"]) in rotations:
                        level_rotations.append(rotations[str(target["rotation"])])
                    else:
                        raise ConfigurationError(at, f"no rotation named {target['rotation']!r}")
                else:
                    raise ConfigurationError(
                        at, f"target {target!r}: give {{user: id}} or {{rotation: name}}"
                    )
            timeout = parse_duration(
                raw_level.get("ack_timeout", default_timeout), f"{at}.ack_timeout"
            )
            levels.append(Level(tuple(users), tuple(level_rotations), timeout))
        repeat = data.get("repeat", 0)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or not 0 <= repeat <= 10:
            raise ConfigurationError(f"{where}: repeat", "a whole number from 0 to 10")
        channels = data.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ConfigurationError(f"{where}: channels", "a list of channel names")
        return cls(name, tuple(levels), repeat, tuple(channels))

    def as_dict(self) -> dict[str, Any]:
        """The frozen form stored in the incident; ``from_dict`` reads it back."""
        return {
            "name": self.name,
            "repeat": self.repeat,
            "channels": list(self.channels),
            "levels": [
                {
                    "targets": [{"user": u} for u in level.users]
                    + [{"rotation": r.as_dict()} for r in level.rotations],
                    "ack_timeout": level.ack_timeout.total_seconds(),
                }
                for level in self.levels
            ],
        }


def _rotation(name: str, raw: Any, where: str) -> Rotation:
    if not isinstance(raw, Mapping):
        raise ConfigurationError(where, "a rotation is a mapping with users, start, handoff_every")
    extra = set(raw) - {"name", "users", "start", "handoff_every", "overrides"}
    if extra:
        raise ConfigurationError(where, f"unknown key {sorted(extra)[0]!r}")
    users = raw.get("users")
    if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
        raise ConfigurationError(where, "users: give the users on call in turn")
    overrides = []
    for index, item in enumerate(raw.get("overrides") or []):
        at = f"{where}.overrides[{index}]"
        if not isinstance(item, Mapping) or not {"user", "start", "end"} <= set(item):
            raise ConfigurationError(at, "an override needs user, start and end")
        start, end = _instant(item["start"], at), _instant(item["end"], at)
        if end <= start:
            raise ConfigurationError(at, "end must be after start")
        overrides.append(Override(str(item["user"]), start, end))
    return Rotation(
        name=str(raw.get("name") or name),
        users=tuple(users),
        start=_instant(raw.get("start", "2026-01-05T09:00:00Z"), f"{where}.start"),
        handoff_every=parse_duration(raw.get("handoff_every", "7d"), f"{where}.handoff_every"),
        overrides=tuple(overrides),
    )


def load_policies(directory: Path) -> dict[str, EscalationPolicy]:
    """Every ``*.yaml`` policy in ``directory`` by name; a bad file is refused by name."""
    policies: dict[str, EscalationPolicy] = {}
    if not directory.is_dir():
        return policies
    for path in sorted(directory.glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigurationError(f"{path}{line}", f"not valid YAML: {error}") from None
        policy = EscalationPolicy.from_dict(data, str(path))
        if policy.name in policies:
            raise ConfigurationError(str(path), f"a second policy named {policy.name!r}")
        policies[policy.name] = policy
    return policies


@dataclass(frozen=True)
class Step:
    """The escalation step due for an incident: page ``level`` (in ``round``) now,
    and expect an acknowledgement by ``next_at``; ``exhausted`` when none is left."""

    number: int
    level: int
    round: int
    targets: list[str]
    next_at: datetime | None
    exhausted: bool = False


def next_step(policy: EscalationPolicy, state: Mapping[str, Any], now: datetime) -> Step | None:
    """The step due at ``now`` for an incident's escalation ``state``, or None.

    The first step is due at once; each next one when the level's timeout has passed.
    A late tick takes only the step that is due, timed from ``now``, rather than every
    step it missed: paging three levels in one burst helps nobody.
    """
    if not state.get("active"):
        return None
    number = int(state["steps"])
    level = state.get("level")
    if level is not None:
        due = state.get("next_at")
        if due is None or (isinstance(due, datetime) and due > now):
            return None
    if level is None:
        next_level, round_ = 0, 0
    elif level + 1 < len(policy.levels):
        next_level, round_ = level + 1, int(state["round"])
    elif int(state["round"]) < policy.repeat:
        next_level, round_ = 0, int(state["round"]) + 1
    else:
        return Step(number, int(level), int(state["round"]), [], None, exhausted=True)
    chosen = policy.levels[next_level]
    return Step(number, next_level, round_, chosen.targets(now), now + chosen.ack_timeout)


def manual_step(policy: EscalationPolicy, state: Mapping[str, Any], now: datetime) -> Step:
    """A responder's "escalate": page the level after the current one at once (the last
    level again when there is none after it)."""
    number = int(state["steps"])
    level = state.get("level")
    next_level = 0 if level is None else min(int(level) + 1, len(policy.levels) - 1)
    chosen = policy.levels[next_level]
    return Step(
        number,
        next_level,
        int(state.get("round") or 0),
        chosen.targets(now),
        now + chosen.ack_timeout,
    )


Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told: for tests, the demo and replays."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now
