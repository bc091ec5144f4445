"""Each tenant's log as a transparency log: RFC 6962 Merkle tree in C2SP tlog-tiles,
C2SP tlog-checkpoint checkpoints signed as C2SP signed notes (Ed25519), proofs, and
evidence bundles that auditors verify offline.

The pure parts (hashes, proofs, notes, checkpoints) need no database, so that the S3
archive and an auditor's machine use exactly the same checks.
"""

from audit_core.transparency.checkpoint import (
    Checkpoint,
    open_checkpoint,
    sign_checkpoint,
    tenant_of_origin,
    tenant_origin,
)
from audit_core.transparency.exceptions import (
    CheckpointError,
    EvidenceError,
    NotConfiguredError,
    NoteError,
    ProofError,
    SizeError,
    TileNotFoundError,
    TransparencyError,
)
from audit_core.transparency.merkle import (
    EMPTY_ROOT,
    Frontier,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    record_leaf,
    record_leaf_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from audit_core.transparency.note import (
    Signer,
    Verifier,
    parse_vkeys,
    sign_note,
    verify_note,
)

__all__ = [
    "EMPTY_ROOT",
    "Checkpoint",
    "CheckpointError",
    "EvidenceError",
    "Frontier",
    "MemoryTree",
    "NotConfiguredError",
    "NoteError",
    "ProofError",
    "Signer",
    "SizeError",
    "TileNotFoundError",
    "TransparencyError",
    "Verifier",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "parse_vkeys",
    "record_leaf",
    "record_leaf_hash",
    "sign_checkpoint",
    "sign_note",
    "tenant_of_origin",
    "tenant_origin",
    "tree_hash",
    "verify_consistency",
    "verify_inclusion",
    "verify_note",
]
