"""Errors of the transparency log. ``api/`` maps them to HTTP statuses and exit codes.

TransparencyError
├── ProofError              an inclusion or consistency proof does not verify
├── NoteError               a signed note or key is malformed, or no trusted signature
│                           on it verifies
├── CheckpointError         a checkpoint's text is not a C2SP tlog-checkpoint
├── SizeError               a tree size or index outside what the latest checkpoint covers
├── TileNotFoundError       no such tile (yet) in a tenant's tree
├── NotConfiguredError      no signing key configured
└── EvidenceError           an evidence bundle is malformed or does not prove what it says
"""

from __future__ import annotations

from audit_core.exceptions import LedgerError


class TransparencyError(LedgerError):
    """Base of every error the transparency log raises on purpose."""


class ProofError(TransparencyError):
    """A Merkle proof does not lead to the root it should."""


class NoteError(TransparencyError):
    """A signed note or a key in the signed-note formats is malformed or untrusted."""


class CheckpointError(TransparencyError):
    """Text that should be a checkpoint is not one."""


class SizeError(TransparencyError):
    """A request for a tree size or leaf index that the log cannot prove (yet)."""


class TileNotFoundError(TransparencyError):
    """The tile asked for is not part of any checkpointed tree of the tenant."""


class NotConfiguredError(TransparencyError):
    """The transparency log needs a signing key and has none."""


class EvidenceError(TransparencyError):
    """An evidence bundle is malformed, or what it holds does not check out."""
