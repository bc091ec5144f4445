"""``vigil graylog destinations`` and ``vigil graylog hmac``: what the shipper sends
where, and the value to search Graylog for in place of a sensitive one."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from api.cli import fail, load_settings, out
from audit_core.graylog import hmac_value, open_transport
from audit_core.graylog.exceptions import GraylogConfigError

graylog_app = typer.Typer(help="The Graylog shipper: its destinations, and HMACs to search by.")


def register(app: typer.Typer) -> None:
    app.add_typer(graylog_app, name="graylog")


@graylog_app.command("destinations")
def destinations() -> None:
    """Each destination: its follower, address (no credentials) and what delivery means."""
    settings = load_settings()
    try:
        targets, options = settings.graylog()
    except GraylogConfigError as error:
        fail(str(error), 2)
    if not targets:
        out.print("no Graylog destination: set VIGIL_GRAYLOG_DESTINATIONS (see docs/graylog.md)")
        return
    for target in targets:
        try:
            transport = open_transport(target)
        except GraylogConfigError as error:
            fail(str(error), 2)
        out.print(
            f"{target.follower_name:<24} {target.address}  delivered = {transport.guarantee}",
            markup=False,
        )
        transport.close()
    fields = ", ".join(options.hmac_fields) or "none"
    out.print(f"GELF host {options.host}; metadata sent as HMAC-SHA256: {fields}", markup=False)


@graylog_app.command("hmac")
def hmac(
    values: Annotated[list[str], typer.Argument(help="Values to search Graylog for.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Each value is JSON (a number, object...), not text.")
    ] = False,
) -> None:
    """Print the HMAC-SHA256 that the shipper sends instead of each sensitive value:
    search Graylog for it (e.g. ``_meta_email:<hmac>``)."""
    settings = load_settings()
    if settings.graylog_hmac_key is None:
        fail("VIGIL_GRAYLOG_HMAC_KEY is not set: use the key the shipper runs with", 2)
    key = settings.graylog_hmac_key.get_secret_value().encode()
    for value in values:
        try:
            parsed = orjson.loads(value) if as_json else value
        except orjson.JSONDecodeError as error:
            fail(f"{value!r} is not JSON ({error}); drop --json to take it as text", 2)
        out.print(hmac_value(key, parsed), markup=False)
