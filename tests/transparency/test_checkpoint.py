"""C2SP tlog-checkpoint text, signed per tenant under the tenant's origin."""

from __future__ import annotations

import base64
import hashlib

import pytest

from audit_core.transparency import (
    Checkpoint,
    CheckpointError,
    NoteError,
    Signer,
    open_checkpoint,
    sign_checkpoint,
    tenant_of_origin,
    tenant_origin,
)

ROOT = hashlib.sha256(b"root").digest()


def test_a_checkpoint_is_origin_size_and_base64_root_each_on_a_line() -> None:
    checkpoint = Checkpoint("vigil.example/log/acme", 20852163, ROOT)
    assert checkpoint.text() == (
        f"vigil.example/log/acme\n20852163\n{base64.b64encode(ROOT).decode()}\n"
    )
    assert Checkpoint.parse(checkpoint.text()) == checkpoint


def test_the_spec_example_parses() -> None:
    text = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN"
        "7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    )
    checkpoint = Checkpoint.parse(text)
    assert (checkpoint.origin, checkpoint.size) == ("example.com/behind-the-sofa", 20852163)
    assert checkpoint.root_b64 == "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("origin\n10\n", "at least three lines"),
        ("origin\n010\nAAAA\n", "leading zeros"),
        ("origin\n-1\nAAAA\n", "not a decimal"),
        ("origin\n1\n!!\n", "not base64"),
        ("origin\n1\nAAAA\n", "32 bytes"),
        ("\n1\nAAAA\n", "origin"),
        ("origin\n1\n" + base64.b64encode(ROOT).decode(), "ends with a newline"),
    ],
)
def test_malformed_checkpoints_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        Checkpoint.parse(text)


def test_extension_lines_are_kept() -> None:
    checkpoint = Checkpoint.parse(f"o\n0\n{base64.b64encode(ROOT).decode()}\nextra\n")
    assert checkpoint.extensions == ("extra",)
    assert checkpoint.text().endswith("extra\n")


def test_each_tenant_has_its_own_origin_under_the_log_origin() -> None:
    assert tenant_origin("vigil.example/log/", "acme") == "vigil.example/log/acme"
    assert tenant_of_origin("vigil.example/log", "vigil.example/log/acme") == "acme"
    assert tenant_of_origin("vigil.example/log", "elsewhere.example/log/acme") is None
    assert tenant_of_origin("vigil.example/log", "vigil.example/log/a/b") is None


def test_a_checkpoint_is_signed_under_its_origin_and_opens_with_the_log_key() -> None:
    signer = Signer.generate("vigil.example/log")
    checkpoint = Checkpoint("vigil.example/log/acme", 5, ROOT)
    note = sign_checkpoint(checkpoint, signer)
    assert note.startswith(checkpoint.text() + "\n— vigil.example/log/acme ")
    assert open_checkpoint(note, [signer.verifier]) == checkpoint


def test_a_forged_or_foreign_checkpoint_does_not_open() -> None:
    signer = Signer.generate("vigil.example/log")
    note = sign_checkpoint(Checkpoint("vigil.example/log/acme", 5, ROOT), signer)
    with pytest.raises(NoteError, match="does not verify"):
        open_checkpoint(note.replace("\n5\n", "\n6\n"), [signer.verifier])
    with pytest.raises(NoteError, match="no signature by a trusted key"):
        open_checkpoint(note, [Signer.generate("vigil.example/log").verifier])
    with pytest.raises(CheckpointError, match="not a signed checkpoint"):
        open_checkpoint(Checkpoint("o", 1, ROOT).text(), [signer.verifier])
