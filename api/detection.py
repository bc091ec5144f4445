"""Builds the detector follower from ``VIGIL_*`` settings (for the follower registry).

The rules are checked before anything runs: a bad rule file, or a rule naming a runbook
the catalogue does not hold, stops ``vigil serve`` and ``vigil worker`` at start with the
file and line, rather than stopping the detector at the first record it matches.
"""

from __future__ import annotations

from api.settings import Settings
from audit_core import Ledger
from audit_core.followers import Follower, FollowerStore
from incident.exceptions import IncidentError
from incident.follower import DetectorFollower
from incident.rules import Rule, RuleError, load_rules


def configured_rules(settings: Settings) -> list[Rule]:
    """The rules of VIGIL_INCIDENT_RULES_DIR; raises RuleError naming each bad file."""
    return load_rules(settings.rules_path())


def check_runbooks(rules: list[Rule], runbooks: object) -> None:
    """Refuse a rule whose runbook the catalogue does not hold, naming the rule file."""
    frozen = getattr(runbooks, "frozen", None)
    if frozen is None:
        return
    for rule in rules:
        if rule.runbook is None:
            continue
        try:
            frozen(rule.runbook)
        except IncidentError as error:
            raise RuleError(rule.path, rule.runbook_line, str(error)) from None


def build_detector(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    """The detector follower, or none when VIGIL_INCIDENT_DETECTOR is off."""
    if not settings.incident_detector:
        return []
    from api.incident_desk import build_incidents

    rules = configured_rules(settings)
    # The desk's application carries the configured runbooks and escalation policies;
    # the detector's own application (on its recorder) opens incidents with them.
    desk = build_incidents(settings, ledger)
    try:
        check_runbooks(rules, desk.runbooks)
        policies, default_policy, runbooks = desk.policies, desk.default_policy, desk.runbooks
    finally:
        desk.close()
    return [
        DetectorFollower.open(
            settings.ledger_env(),
            ledger,
            rules,
            policies=policies,
            default_policy=default_policy,
            runbooks=runbooks,
        )
    ]
