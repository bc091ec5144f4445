"""C2SP signed notes and Go ``sumdb/note`` keys, against the reference implementation's
own test vector (golang.org/x/mod/sumdb/note)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from audit_core.transparency import NoteError, Signer, Verifier, sign_note, verify_note
from audit_core.transparency.note import key_id, parse_note, parse_vkeys

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_keys_read_and_write_the_go_formats() -> None:
    signer = Signer.from_skey(GO_SKEY)
    assert signer.skey == GO_SKEY
    assert signer.verifier.vkey == GO_VKEY
    assert Verifier.from_vkey(GO_VKEY) == signer.verifier
    assert signer.verifier.key_id.hex() == "c74f20a3"


def test_signing_gives_the_go_reference_note_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, Signer.from_skey(GO_SKEY)) == GO_NOTE


def test_the_reference_note_verifies_and_an_altered_one_does_not() -> None:
    verified = verify_note(GO_NOTE, [Verifier.from_vkey(GO_VKEY)])
    assert verified.text == GO_TEXT
    assert [v.name for v in verified.verified_by] == ["PeterNeumann"]
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(GO_NOTE.replace("cryptography", "cryptographY"), [Verifier.from_vkey(GO_VKEY)])


def test_a_note_signed_only_by_unknown_keys_is_refused_naming_the_signers() -> None:
    other = Signer.generate("Other")
    with pytest.raises(NoteError, match=r"no signature by a trusted key.*PeterNeumann\+c74f20a3"):
        verify_note(GO_NOTE, [other.verifier])


def test_a_key_with_the_right_name_but_another_id_is_ignored_not_trusted() -> None:
    impostor = Signer.generate("PeterNeumann")
    with pytest.raises(NoteError, match="no signature by a trusted key"):
        verify_note(GO_NOTE, [impostor.verifier])


def test_unknown_signatures_beside_a_trusted_one_are_ignored() -> None:
    stranger = Signer.generate("stranger.example/log")
    note = GO_NOTE + stranger.signature_line(GO_TEXT)
    verified = verify_note(note, [Verifier.from_vkey(GO_VKEY)])
    assert verified.text == GO_TEXT


def test_one_key_signs_under_several_names_with_distinct_key_ids() -> None:
    signer = Signer.generate("vigil.example/log")
    acme, globex = signer.named("vigil.example/log/acme"), signer.named("vigil.example/log/globex")
    assert acme.verifier.public_key == globex.verifier.public_key
    assert acme.verifier.key_id != globex.verifier.key_id
    note = sign_note("hello\n", acme)
    verify_note(note, [signer.verifier.named("vigil.example/log/acme")])
    with pytest.raises(NoteError):
        verify_note(note, [globex.verifier])


@pytest.mark.parametrize(
    ("note", "problem"),
    [
        ("no newline", "end with a newline"),
        ("text\n", "blank line"),
        ("text\n\n", "no signature lines"),
        ("text\n\n- PeterNeumann AAAA\n", "does not start with"),
        ("text\n\n— PeterNeumann\n", "not '— <key name> <base64>'"),
        ("text\n\n— PeterNeumann !!!!\n", "not valid base64"),
        ("text\n\n— PeterNeumann AAAA\n", "too short"),
        ("te\x01xt\n\n— PeterNeumann AAAAAAA=\n", "control characters"),
    ],
)
def test_malformed_notes_are_refused_with_the_reason(note: str, problem: str) -> None:
    with pytest.raises(NoteError, match=problem):
        parse_note(note)


@pytest.mark.parametrize(
    ("vkey", "problem"),
    [
        ("PeterNeumann", "is not <name>"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a3+AhpcMQ==", "not an Ed25519 key"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name"),
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str, problem: str) -> None:
    with pytest.raises(NoteError, match=problem):
        Verifier.from_vkey(vkey)


def test_the_key_id_is_sha256_of_name_newline_type_and_key() -> None:
    raw = base64.b64decode(GO_VKEY.split("+")[2])
    assert key_id("PeterNeumann", raw[1:]).hex() == "c74f20a3"


def test_a_key_file_is_private_never_overwritten_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    signer = Signer.generate("vigil.example/log")
    signer.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Signer.from_file(path).skey == signer.skey
    with pytest.raises(FileExistsError):
        Signer.generate("other").write(path)
    assert Signer.from_file(path).skey == signer.skey
    assert "PRIVATE" not in repr(signer)


def test_an_unreadable_or_bad_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(NoteError, match="cannot read the signing key file"):
        Signer.from_file(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_text(GO_VKEY)
    with pytest.raises(NoteError, match=r"bad\.key: a signer key reads PRIVATE\+KEY"):
        Signer.from_file(bad)


def test_verifier_key_lists_take_lines_or_commas_and_skip_comments() -> None:
    other = Signer.generate("other").verifier.vkey
    assert len(parse_vkeys(f"# old keys\n{GO_VKEY}\n\n{other}\n")) == 2
    assert len(parse_vkeys(f"{GO_VKEY},{other}")) == 2
    assert parse_vkeys("") == []
