"""Post-mortem templates a user overrides, refused with file and line when wrong, and
kept in their sandbox; the secrets vault's key binding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from incident import Actor, ConfigurationError, Incidents
from incident.postmortem import render
from incident.runbooks import Vault


def _resolved(incidents: Incidents) -> object:
    opened = incidents.open("acme", "Export <b>storm</b>", "SEV3")
    incidents.acknowledge("acme", opened.incident_id, Actor("alice"))
    incidents.resolve("acme", opened.incident_id, Actor("alice"))
    return incidents.incident("acme", opened.incident_id)


def test_a_users_template_overrides_the_shipped_one(incidents: Incidents, tmp_path: Path) -> None:
    incident = _resolved(incidents)
    (tmp_path / "postmortem.md.j2").write_text(
        "# {{ incident.ref }} for the board\nTTR {{ durations.ttr | duration }}\n"
    )
    text = render(incident, "md", tmp_path)  # type: ignore[arg-type]
    assert text.startswith("# INC-")
    assert text.endswith("for the board\nTTR 0s\n")
    # The HTML one is not overridden: the shipped one, escaped.
    html = render(incident, "html", tmp_path)  # type: ignore[arg-type]
    assert "Export &lt;b&gt;storm&lt;/b&gt;" in html


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "line one\n{{ incident.no_such_field }}\n",
            r"postmortem\.md\.j2:2: template error: .* no attribute .no_such_field.",
        ),
        ("{{ incident.__class__.__mro__ }}", "template error"),
        ("{% for x in %}", r"postmortem\.md\.j2:1: template error"),
    ],
)
def test_a_broken_or_unsafe_template_is_refused_naming_it(
    incidents: Incidents, tmp_path: Path, template: str, message: str
) -> None:
    incident = _resolved(incidents)
    (tmp_path / "postmortem.md.j2").write_text(template)
    with pytest.raises(ConfigurationError, match=message):
        render(incident, "md", tmp_path)  # type: ignore[arg-type]


def test_secrets_open_only_under_their_key_and_name() -> None:
    store: dict[str, str] = {}

    def save(name: str, value: str | None) -> None:
        if value is None:
            store.pop(name, None)
        else:
            store[name] = value

    first = Vault(os.urandom(32), lambda: store, save)
    first.set("edge_token", "tok-1")
    assert "tok-1" not in store["edge_token"]
    assert first.values() == {"edge_token": "tok-1"}
    other = Vault(os.urandom(32), lambda: store, save)
    assert other.values() == {}  # sealed under another key: left out, not an error
    assert other.listing() == {"edge_token": False}
    store["idp_token"] = store["edge_token"]  # a ciphertext moved to another name
    with pytest.raises(ConfigurationError, match="fails authentication"):
        first.values()
    with pytest.raises(ConfigurationError, match="32"):
        Vault(b"short", lambda: store, save)
