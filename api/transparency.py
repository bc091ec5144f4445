"""The transparency log wired from settings: its signer, its trusted keys, its follower.

Shared by the follower registry, the HTTP router and the CLI, so that all three read
``VIGIL_SIGNING_KEY_FILE``, ``VIGIL_VERIFIER_KEYS`` and ``VIGIL_LOG_ORIGIN`` the same
way.
"""

from __future__ import annotations

from api.settings import Settings
from audit_core import Ledger
from audit_core.followers import Follower, FollowerStore
from audit_core.transparency import NotConfiguredError, Signer, Verifier, parse_vkeys
from audit_core.transparency.follower import NAME, TransparencyLog
from audit_core.transparency.store import TreeStore, tree_store_class

NOT_CONFIGURED = (
    "the transparency log is not configured: make a signing key with "
    "`vigil keys signing-generate FILE` and set VIGIL_SIGNING_KEY_FILE to it"
)


def load_signer(settings: Settings) -> Signer | None:
    """The signing key (under the log origin's name), or None when none is configured.
    A configured key that cannot be read raises :class:`NoteError` naming the file."""
    if not settings.signing_key_file:
        return None
    return Signer.from_file(settings.signing_key_file).named(settings.log_origin)


def require_signer(settings: Settings) -> Signer:
    signer = load_signer(settings)
    if signer is None:
        raise NotConfiguredError(NOT_CONFIGURED)
    return signer


def trusted_keys(settings: Settings) -> list[Verifier]:
    """The current verifier key and every earlier one still trusted, without repeats."""
    keys: list[Verifier] = []
    signer = load_signer(settings)
    if signer is not None:
        keys.append(signer.verifier)
    for key in parse_vkeys(settings.verifier_keys):
        if all(key.public_key != known.public_key for known in keys):
            keys.append(key)
    return keys


def tree_store(store: FollowerStore, settings: Settings) -> TreeStore:
    return store.view_recorder(tree_store_class(settings.ledger_env()))


def build_log(
    settings: Settings, store: FollowerStore, signer: Signer | None = None
) -> TransparencyLog:
    """The tree follower (with ``signer``, or the configured key)."""

    def refused(message: str) -> None:
        store.states.record_error(NAME, message)

    return TransparencyLog(
        tree_store(store, settings),
        signer or load_signer(settings),
        settings.log_origin,
        every_records=settings.checkpoint_every_records,
        every_seconds=settings.checkpoint_every_seconds,
        on_refusal=refused,
    )


def build_followers(settings: Settings, ledger: Ledger, store: FollowerStore) -> list[Follower]:
    """The registry entry: the tree follower when a signing key is configured."""
    signer = load_signer(settings)
    return [] if signer is None else [build_log(settings, store, signer)]
