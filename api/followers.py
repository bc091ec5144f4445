"""The registry of the ledger's followers: every entry point loops over it.

``vigil serve``, ``vigil worker``, ``vigil status``, ``vigil rebuild``, ``/readyz`` and
``/metrics`` know followers only through :func:`build_followers`. A new consumer is one
:class:`FollowerSpec` here (and its ``VIGIL_*`` settings); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from api.settings import Settings
from audit_core import Ledger
from audit_core.followers import Follower, FollowerStore


@dataclass(frozen=True)
class FollowerSpec:
    name: str
    """The follower's name, or the prefix of its names (``graylog`` for
    ``graylog:<destination>``)."""
    build: Callable[[Settings, Ledger, FollowerStore], list[Follower]]
    """The followers the settings enable (none when the consumer is not configured)."""


def _read_model(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    from audit_core.readmodel import open_read_model

    return [open_read_model(store, settings.ledger_env())]


def _transparency(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    from api.transparency import build_followers as build_transparency

    return build_transparency(settings, ledger, store)


def _graylog(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    from audit_core.graylog import GraylogShipper, MessageBuilder

    destinations, options = settings.graylog()
    builder = MessageBuilder(options)
    return [GraylogShipper(target, builder, store.positions) for target in destinations]


def _archive(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    from api.archive import build_archivers

    return build_archivers(settings, ledger, store)


def _detector(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    from api.detection import build_detector

    return build_detector(settings, ledger, store)


def _escalation(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    from api.incident_desk import build_escalation

    return build_escalation(settings, ledger, store)


REGISTRY: list[FollowerSpec] = [
    FollowerSpec("archive", _archive),
    FollowerSpec("graylog", _graylog),
    FollowerSpec("incident-detector", _detector),
    FollowerSpec("incident-escalation", _escalation),
    FollowerSpec("readmodel", _read_model),
    FollowerSpec("transparency", _transparency),
]


class UnknownFollowerError(ValueError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(
            f"no follower is named {name!r}; the configured ones are: {', '.join(known)}"
        )


def _named_by(spec: FollowerSpec, names: list[str]) -> bool:
    return any(name == spec.name or name.startswith(f"{spec.name}:") for name in names)


def build_followers(
    settings: Settings, ledger: Ledger, store: FollowerStore, only: list[str] | None = None
) -> list[Follower]:
    """The followers the settings enable, or those of them named in ``only`` (only their
    consumers are built, so another consumer's configuration cannot stand in the way)."""
    specs = [spec for spec in REGISTRY if not only or _named_by(spec, only)]
    followers = [follower for spec in specs for follower in spec.build(settings, ledger, store)]
    if only:
        known = [follower.name for follower in followers]
        missing = [name for name in only if name not in known]
        if missing:
            for follower in followers:
                follower.close()
            everything = [
                f.name for spec in REGISTRY for f in _built(spec, settings, ledger, store)
            ]
            raise UnknownFollowerError(missing[0], everything)
        for follower in followers:
            if follower.name not in only:
                follower.close()
        followers = [follower for follower in followers if follower.name in only]
    return followers


def _built(
    spec: FollowerSpec, settings: Settings, ledger: Ledger, store: FollowerStore
) -> list[Follower]:
    """A consumer's followers, closed at once: only their names are wanted."""
    try:
        followers = spec.build(settings, ledger, store)
    except Exception:
        return []
    for follower in followers:
        follower.close()
    return followers
