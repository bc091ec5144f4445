"""Runbooks: ordered mitigation steps, manual (an on-call marks it done) or automated (an
outbound HTTP request the backend makes, never a client).

A runbook is a YAML file, or Markdown whose front matter holds the same keys and whose
body is the runbook's instructions. An automated step's URL, headers and body are
Jinja2 templates rendered in a sandbox from the incident, its evidence records and the
runbook secrets. Secrets (tokens, client secrets) live only in the :class:`Vault`,
encrypted with AES-256-GCM; runbook files name them (``{{ secrets.waf_token }}``) and
the API never returns a step's HTTP configuration.

What an automated step may reach is checked before every connection, on the address
the name resolves to: only hosts on the runbook's allowlist, never loopback, private,
link-local, multicast or cloud metadata addresses unless the operator allowed their
network, no redirects to another host, bounded timeouts, and a response that must
match the step's JSON Schema before anything in it is used.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema
import orjson
import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from incident.exceptions import ConfigurationError, InvalidIncidentError, StepRefusedError

STEP_KINDS = ("manual", "http")
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_RUNBOOK_KEYS = {"name", "title", "description", "severity", "allowlist", "steps", "policy"}
_STEP_KEYS = {"id", "title", "kind", "instructions", "http", "sealed"}
_HTTP_KEYS = {
    "method",
    "url",
    "headers",
    "body",
    "token",
    "timeout",
    "response_schema",
    "expect_status",
}

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
"""Cloud instance metadata endpoints (AWS, ECS, AWS IPv6, Alibaba): refused always, even
inside an allowed network, since they hand out the host's credentials."""

MAX_RESPONSE_BYTES = 1024 * 1024


# -- loading ------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpStep:
    method: str
    url: str
    headers: Mapping[str, str]
    body: Any
    token: Mapping[str, Any] | None
    timeout: float
    response_schema: Mapping[str, Any] | None
    expect_status: tuple[int, ...]


@dataclass(frozen=True)
class RunbookStep:
    id: str
    title: str
    kind: str
    instructions: str = ""
    http: HttpStep | None = field(default=None, repr=False)
    sealed: str | None = None
    """The name of the vault secret that holds the whole ``http`` configuration (YAML),
    for a step whose URL or headers must not sit in a file in clear."""

    def public(self) -> dict[str, Any]:
        """What the API shows of the step: never its HTTP configuration."""
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "instructions": self.instructions,
        }


@dataclass(frozen=True)
class Runbook:
    name: str
    title: str
    description: str
    allowlist: tuple[str, ...]
    steps: tuple[RunbookStep, ...]
    source: str
    digest: str
    """SHA-256 of the file: which version an incident was opened with."""
    severity: str | None = None
    policy: str | None = None

    def step(self, step_id: str) -> RunbookStep | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def frozen(self) -> dict[str, Any]:
        """What an incident keeps of its runbook when it opens."""
        return {
            "name": self.name,
            "title": self.title,
            "digest": self.digest,
            "steps": [{"id": s.id, "title": s.title, "kind": s.kind} for s in self.steps],
        }

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "digest": self.digest,
            "allowlist": list(self.allowlist),
            "steps": [s.public() for s in self.steps],
        }


def _front_matter(text: str, where: str) -> tuple[str, str, int]:
    """(YAML, Markdown body, line of the YAML's first line) of a Markdown runbook."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise ConfigurationError(f"{where}:1", "a Markdown runbook starts with --- front matter")
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return "\n".join(lines[1:index]), "\n".join(lines[index + 1 :]).strip(), 2
    raise ConfigurationError(f"{where}:1", "the front matter has no closing ---")


def _yaml(text: str, where: str, first_line: int = 1) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + first_line if mark is not None else first_line
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigurationError(f"{where}:{line}", f"not valid YAML: {problem}") from None


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return 1


def parse_runbook(text: str, where: str) -> Runbook:
    """A runbook from a file's text; ``where`` (its path) names it in errors, with the line."""
    body = ""
    offset = 1
    if where.endswith(".md"):
        raw, body, offset = _front_matter(text, where)
        data = _yaml(raw, where, offset)
    else:
        data = _yaml(text, where)

    def fail(message: str, needle: str | None = None) -> ConfigurationError:
        line = _line_of(text, needle) if needle else 1
        return ConfigurationError(f"{where}:{line}", message)

    if not isinstance(data, dict):
        raise fail("a runbook is a mapping with name and steps")
    unknown = set(data) - _RUNBOOK_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(f"unknown key {key!r}; use {', '.join(sorted(_RUNBOOK_KEYS))}", f"{key}:")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("the runbook needs a name", "name:")
    allowlist = data.get("allowlist") or []
    if not isinstance(allowlist, list) or not all(isinstance(h, str) and h for h in allowlist):
        raise fail("allowlist: a list of host names", "allowlist:")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail("steps: give at least one step", "steps:")
    steps: list[RunbookStep] = []
    for index, raw in enumerate(raw_steps):
        steps.append(_parse_step(raw, index, fail, [s.id for s in steps]))
    if any(s.kind == "http" for s in steps) and not allowlist:
        raise fail("an automated step needs the hosts it calls in allowlist", "steps:")
    return Runbook(
        name=name.strip(),
        title=str(data.get("title") or name),
        description=str(data.get("description") or body),
        allowlist=tuple(h.lower().rstrip(".") for h in allowlist),
        steps=tuple(steps),
        source=where,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        severity=data.get("severity"),
        policy=data.get("policy"),
    )


def _parse_step(
    raw: Any, index: int, fail: Callable[[str, str | None], ConfigurationError], seen: list[str]
) -> RunbookStep:
    if not isinstance(raw, dict):
        raise fail(f"steps[{index}]: a step is a mapping with id, title and kind", None)
    step_id = raw.get("id")
    needle = f"id: {step_id}" if step_id else None
    if not isinstance(step_id, str) or not step_id.replace("-", "").replace("_", "").isalnum():
        raise fail(f"steps[{index}].id: letters, digits, - and _ only", needle)
    if step_id in seen:
        raise fail(f"steps[{index}].id: {step_id!r} is used twice", needle)
    unknown = set(raw) - _STEP_KEYS
    if unknown:
        raise fail(f"step {step_id}: unknown key {sorted(unknown)[0]!r}", f"{sorted(unknown)[0]}:")
    kind = raw.get("kind", "manual")
    if kind not in STEP_KINDS:
        raise fail(f"step {step_id}: kind {kind!r} is not manual or http", needle)
    http, sealed = None, raw.get("sealed")
    if kind == "http" and sealed is not None:
        if "http" in raw or not isinstance(sealed, str) or not sealed:
            raise fail(f"step {step_id}: give either http or sealed (a secret's name)", needle)
    elif kind == "http":
        http = _parse_http(raw.get("http"), step_id, fail)
    elif "http" in raw or sealed is not None:
        raise fail(f"step {step_id}: a manual step has no http", needle)
    return RunbookStep(
        step_id,
        str(raw.get("title") or step_id),
        kind,
        str(raw.get("instructions") or ""),
        http,
        sealed,
    )


def unseal_http(step: RunbookStep, secrets: Mapping[str, str]) -> HttpStep:
    """The configuration of a ``sealed`` step, from the vault; a missing or invalid one
    refuses the step (its reason names the secret, never its content)."""
    assert step.sealed is not None
    text = secrets.get(step.sealed)
    if text is None:
        raise StepRefusedError(step.id, f"no secret {step.sealed!r} holds its configuration")

    def fail(message: str, needle: str | None) -> ConfigurationError:
        return ConfigurationError(f"secret {step.sealed!r}", message)

    try:
        data = yaml.safe_load(text)
        return _parse_http(data, step.id, fail)
    except (yaml.YAMLError, ConfigurationError) as error:
        reason = str(error) if isinstance(error, ConfigurationError) else "not valid YAML"
        raise StepRefusedError(step.id, f"sealed configuration refused: {reason}") from None


def _parse_http(
    raw: Any, step_id: str, fail: Callable[[str, str | None], ConfigurationError]
) -> HttpStep:
    where = f"step {step_id}: http"
    if not isinstance(raw, dict):
        raise fail(f"{where}: give method, url and response_schema", f"id: {step_id}")
    unknown = set(raw) - _HTTP_KEYS
    if unknown:
        raise fail(f"{where}: unknown key {sorted(unknown)[0]!r}", f"{sorted(unknown)[0]}:")
    method = str(raw.get("method", "POST")).upper()
    if method not in _METHODS:
        raise fail(f"{where}.method: {method!r} is not one of {', '.join(_METHODS)}", "method:")
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise fail(f"{where}.url: an http(s) URL (a template)", "url:")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise fail(f"{where}.headers: a mapping of header to text", "headers:")
    token = raw.get("token")
    if token is not None:
        if not isinstance(token, dict) or token.get("type") not in ("fixed", "oauth2"):
            raise fail(
                f"{where}.token: type fixed (value) or oauth2 "
                "(token_url, client_id, client_secret)",
                "token:",
            )
        needed = {"fixed": {"value"}, "oauth2": {"token_url", "client_id", "client_secret"}}[
            token["type"]
        ]
        if not needed <= set(token):
            raise fail(
                f"{where}.token: {token['type']} needs {', '.join(sorted(needed))}", "token:"
            )
    timeout = raw.get("timeout", 10)
    if not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise fail(f"{where}.timeout: seconds, more than 0 and at most 60", "timeout:")
    schema = raw.get("response_schema")
    if schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise fail(
                f"{where}.response_schema: not a JSON Schema: {error.message}", "response_schema:"
            ) from None
    expect = raw.get("expect_status", [200, 201, 202, 204])
    if not isinstance(expect, list) or not all(isinstance(s, int) for s in expect):
        raise fail(f"{where}.expect_status: a list of status codes", "expect_status:")
    return HttpStep(
        method, url, headers, raw.get("body"), token, float(timeout), schema, tuple(expect)
    )


class RunbookCatalogue:
    """Every runbook of a directory, by name; a bad file is refused naming file and line."""

    def __init__(self, runbooks: Mapping[str, Runbook]):
        self.runbooks = dict(runbooks)

    @classmethod
    def load(cls, directory: Path) -> RunbookCatalogue:
        found: dict[str, Runbook] = {}
        if directory.is_dir():
            for path in sorted(
                [*directory.glob("*.yaml"), *directory.glob("*.yml"), *directory.glob("*.md")]
            ):
                if path.name.lower() == "readme.md":
                    continue
                runbook = parse_runbook(path.read_text(encoding="utf-8"), str(path))
                if runbook.name in found:
                    raise ConfigurationError(
                        str(path),
                        f"a second runbook named {runbook.name!r} "
                        f"(first: {found[runbook.name].source})",
                    )
                found[runbook.name] = runbook
        return cls(found)

    def get(self, name: str) -> Runbook:
        try:
            return self.runbooks[name]
        except KeyError:
            known = ", ".join(sorted(self.runbooks)) or "none"
            raise InvalidIncidentError(
                "runbook", f"no runbook named {name!r} (known: {known})"
            ) from None

    def frozen(self, name: str) -> dict[str, Any]:
        return self.get(name).frozen()


# -- secrets ------------------------------------------------------------------------


class Vault:
    """Runbook secrets, each AES-256-GCM encrypted under the vault key with its name as
    associated data (a ciphertext moved to another name does not decrypt). ``store``
    keeps only ciphertexts: a mapping persisted by the caller.

    Each ciphertext is tagged with its key's id (a hash of the key), so that secrets
    sealed under another key (an old one, or a demo's) are recognised and left out
    rather than failing every step."""

    def __init__(
        self,
        key: bytes,
        store: Callable[[], Mapping[str, str]],
        save: Callable[[str, str | None], None],
    ):
        if len(key) != 32:
            raise ConfigurationError(
                "VIGIL_INCIDENT_SECRETS_KEY", f"{len(key)} bytes; AES-256 needs 32"
            )
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"vigil runbook secrets\x00" + key).hexdigest()[:16]
        self._store = store
        self._save = save

    def seal(self, name: str, value: str) -> str:
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, value.encode(), name.encode())
        return f"{self.key_id}:{base64.b64encode(sealed).decode()}"

    def open(self, name: str, sealed: str) -> str:
        key_id, _, text = sealed.partition(":")
        if key_id != self.key_id:
            raise ConfigurationError(f"secret {name!r}", "was sealed under another key")
        raw = base64.b64decode(text)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], name.encode()).decode()
        except InvalidTag:
            raise ConfigurationError(f"secret {name!r}", "fails authentication") from None

    def set(self, name: str, value: str) -> None:
        if not name.replace("_", "").isalnum() or len(name) > 64:
            raise InvalidIncidentError("name", "letters, digits and _ only, at most 64")
        self._save(name, self.seal(name, value))

    def delete(self, name: str) -> None:
        self._save(name, None)

    def listing(self) -> dict[str, bool]:
        """Each secret's name, and whether the current key opens it (never values)."""
        return {
            name: sealed.partition(":")[0] == self.key_id
            for name, sealed in sorted(self._store().items())
        }

    def values(self) -> dict[str, str]:
        """The secrets this key opens, for rendering a step (never logged or returned)."""
        return {
            name: self.open(name, sealed)
            for name, sealed in self._store().items()
            if sealed.partition(":")[0] == self.key_id
        }


# -- executing ----------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkPolicy:
    """Where automated steps may connect, beyond the runbook's allowlist of names."""

    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    resolve: Callable[[str, int], list[str]] | None = None
    """Name → addresses; the system resolver when None (tests give their own)."""

    @classmethod
    def parse(cls, networks: str) -> NetworkPolicy:
        parsed = []
        for entry in (e.strip() for e in networks.split(",")):
            if entry:
                try:
                    parsed.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ConfigurationError(
                        "VIGIL_INCIDENT_ALLOWED_NETWORKS", f"{entry!r} is not a network"
                    ) from None
        return cls(tuple(parsed))

    def addresses(self, host: str, port: int) -> list[str]:
        if self.resolve is not None:
            return self.resolve(host, port)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise StepRefusedError("", f"cannot resolve {host}: {error.strerror}") from None
        return sorted({str(info[4][0]) for info in infos})

    def check_address(self, host: str, address: str) -> None:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip in METADATA_ADDRESSES:
            raise StepRefusedError(
                "", f"{host} resolves to {ip}, a cloud metadata address: refused"
            )
        special = (
            ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global
        )  # fmt: skip
        if special and not any(ip in network for network in self.allowed_networks):
            raise StepRefusedError(
                "",
                f"{host} resolves to {ip}, a loopback, private or link-local address: refused "
                "(allow its network in VIGIL_INCIDENT_ALLOWED_NETWORKS if it is meant)",
            )


@dataclass
class StepOutcome:
    ok: bool
    status: int | None
    reason: str
    result: dict[str, Any]
    """The validated response (bounded), recorded in the incident."""


class _PinnedTransport(httpx.HTTPTransport):
    """Connects to the address checked, not to whatever a second lookup returns (a DNS
    rebinding between check and connect would otherwise reach a refused address)."""

    def __init__(
        self, policy: NetworkPolicy, allowlist: Sequence[str], verify: ssl.SSLContext | bool
    ):
        super().__init__(verify=verify, retries=0)
        self.policy = policy
        self.allowlist = allowlist

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.lower().rstrip(".")
        if not _host_allowed(host, self.allowlist):
            raise StepRefusedError(
                "", f"host {host} is not on the runbook's allowlist ({', '.join(self.allowlist)})"
            )
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = self.policy.addresses(host, port)
        if not addresses:
            raise StepRefusedError("", f"{host} has no address")
        for address in addresses:
            self.policy.check_address(host, address)
        # The TLS name stays the host's (SNI, certificate check); only the TCP peer is pinned.
        request.extensions = {**request.extensions, "sni_hostname": host}
        pinned = request.url.copy_with(host=addresses[0])
        request.url = pinned  # the Host header keeps the name, set before this
        return super().handle_request(request)


def _host_allowed(host: str, allowlist: Sequence[str]) -> bool:
    for allowed in allowlist:
        if allowed.startswith("*.") and host.endswith(allowed[1:]):
            return True
        if host == allowed:
            return True
    return False


class StepRunner:
    """Runs automated steps: renders, checks where it goes, calls, validates."""

    def __init__(
        self,
        network: NetworkPolicy,
        *,
        timeout_cap: float = 10.0,
        verify: ssl.SSLContext | bool = True,
        max_redirects: int = 3,
    ):
        self.network = network
        self.timeout_cap = timeout_cap
        self.verify = verify
        self.max_redirects = max_redirects
        self.env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

    def render(self, template: str, context: Mapping[str, Any], what: str) -> str:
        try:
            return self.env.from_string(template).render(context)
        except TemplateError as error:
            raise StepRefusedError("", f"{what}: template error: {error.message}") from None

    def _render_body(self, body: Any, context: Mapping[str, Any]) -> Any:
        if isinstance(body, str):
            return self.render(body, context, "body")
        if isinstance(body, dict):
            return {k: self._render_body(v, context) for k, v in body.items()}
        if isinstance(body, list):
            return [self._render_body(v, context) for v in body]
        return body

    def run(
        self,
        runbook: Runbook,
        step: RunbookStep,
        context: Mapping[str, Any],
        secrets: Mapping[str, str],
    ) -> StepOutcome:
        """Run one automated step; a refusal or failure is an outcome with its reason,
        never an exception, so that it is recorded in the incident."""
        try:
            http = step.http or unseal_http(step, secrets)
            return self._run(runbook, http, {**context, "secrets": dict(secrets)})
        except StepRefusedError as refused:
            return StepOutcome(False, None, refused.reason, {})
        except httpx.TimeoutException:
            return StepOutcome(
                False, None, f"timed out after {min(http.timeout, self.timeout_cap)} s", {}
            )
        except httpx.HTTPError as error:
            return StepOutcome(False, None, f"request failed: {type(error).__name__}", {})

    def _run(self, runbook: Runbook, http: HttpStep, context: Mapping[str, Any]) -> StepOutcome:
        url = self.render(http.url, context, "url")
        headers = {
            name: self.render(value, context, f"header {name}")
            for name, value in http.headers.items()
        }
        body = self._render_body(http.body, context)
        timeout = min(http.timeout, self.timeout_cap)
        transport = _PinnedTransport(self.network, runbook.allowlist, self.verify)
        with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False) as client:
            if http.token is not None:
                headers["Authorization"] = "Bearer " + self._token(client, http.token, context)
            content = (
                None
                if body is None
                else (orjson.dumps(body) if not isinstance(body, str) else body.encode())
            )
            if content is not None and not any(h.lower() == "content-type" for h in headers):
                headers["Content-Type"] = (
                    "application/json" if not isinstance(body, str) else "text/plain"
                )
            response = self._send(client, http.method, url, headers, content)
        if response.status_code not in http.expect_status:
            expected = ", ".join(map(str, http.expect_status))
            return StepOutcome(
                False,
                response.status_code,
                f"answered {response.status_code}, expected {expected}",
                {},
            )
        if len(response.content) > MAX_RESPONSE_BYTES:
            return StepOutcome(
                False, response.status_code, f"response larger than {MAX_RESPONSE_BYTES} bytes", {}
            )
        result: Any = None
        if response.content:
            try:
                result = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                if http.response_schema is not None:
                    return StepOutcome(
                        False,
                        response.status_code,
                        "response is not JSON; its schema cannot be checked",
                        {},
                    )
        if http.response_schema is not None:
            validator = jsonschema.Draft202012Validator(http.response_schema)
            error = jsonschema.exceptions.best_match(validator.iter_errors(result))
            if error is not None:
                path = "/".join(map(str, error.absolute_path)) or "(root)"
                return StepOutcome(
                    False,
                    response.status_code,
                    f"response fails its schema at {path}: {error.message[:300]}",
                    {},
                )
        kept = result if http.response_schema is not None else None
        return StepOutcome(
            True,
            response.status_code,
            f"answered {response.status_code}",
            {"status": response.status_code, "response": kept},
        )

    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> httpx.Response:
        """Send, following at most ``max_redirects`` redirects on the same host (each
        checked again by the transport); a redirect elsewhere is refused."""
        origin = urlsplit(url).hostname
        for _ in range(self.max_redirects + 1):
            response = client.request(method, url, headers=headers, content=content)
            if not response.is_redirect:
                return response
            target = urljoin(url, response.headers.get("location", ""))
            if urlsplit(target).hostname != origin:
                raise StepRefusedError(
                    "", f"redirected to another host ({urlsplit(target).hostname}): not followed"
                )
            url = target
            if response.status_code in (301, 302, 303):
                method, content = "GET", None
        raise StepRefusedError("", f"more than {self.max_redirects} redirects")

    def _token(
        self, client: httpx.Client, token: Mapping[str, Any], context: Mapping[str, Any]
    ) -> str:
        if token["type"] == "fixed":
            return self.render(str(token["value"]), context, "token")
        # OAuth2 client credentials (RFC 6749 §4.4), fetched before each call: the
        # endpoint goes through the same allowlist and address checks.
        token_url = self.render(str(token["token_url"]), context, "token_url")
        form = {"grant_type": "client_credentials"}
        if token.get("scope"):
            form["scope"] = self.render(str(token["scope"]), context, "scope")
        response = client.post(
            token_url,
            data=form,
            auth=(
                self.render(str(token["client_id"]), context, "client_id"),
                self.render(str(token["client_secret"]), context, "client_secret"),
            ),
        )
        if response.status_code != 200:
            raise StepRefusedError("", f"token endpoint answered {response.status_code}")
        try:
            payload = response.json()
        except ValueError:
            raise StepRefusedError("", "token endpoint did not answer JSON") from None
        access = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(access, str) or not access:
            raise StepRefusedError("", "token endpoint's answer has no access_token")
        return access
