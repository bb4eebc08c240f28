"""The webhook channel: one signed POST per attempt, following Standard Webhooks.

Each attempt posts the message's JSON object (`Message.payload`; when it is empty,
`{"type": kind, "timestamp": ..., "data": {"subject", "text"}}`) to the recipient's
address with the spec's headers:

- `webhook-id`: the delivery id, the same on every retry, so a receiver dedupes;
- `webhook-timestamp`: Unix seconds of this attempt (receivers refuse old ones);
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per
  secret, space-separated. With two secrets during a rotation (the new one first,
  the old one until every receiver has the new), a receiver holding either verifies.

Signing is the spec's reference library (`standardwebhooks`), so what we send is
what its verifiers in every language accept. Secrets are `whsec_<base64>` as the spec
writes them. What an attempt comes to (services.notifier.channel):

- 2xx: `delivered`, `ref` the status;
- 410 Gone: `disabled` (the endpoint asked never to be called again; the loop marks
  it and stops sending to it until a person enables it);
- 429, 408 and 5xx: `retry`, with the `Retry-After` the receiver gave (seconds or a
  date), else the schedule's (services.notifier.retries);
- a refused connection, a timeout, a reset: `retry`;
- other 4xx, and 3xx (redirects are not followed: a signed body must not go to where
  a redirect points, and the endpoint's URL should be corrected instead): `failed`,
  quoting the status and the start of the receiver's answer;
- an address that is not an http(s) URL: `failed`.

Settings (`WebhookSettings`, variables QM_NOTIFIER_WEBHOOK_*): see each field. Secrets
never appear in a log line or a reason, nor does an endpoint's path or query (a reason
names its origin: some endpoints carry a token in their URL).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated

import aiohttp
from pydantic import AfterValidator, Field, SecretStr
from pydantic_settings import SettingsConfigDict
from standardwebhooks.webhooks import Webhook
from yarl import URL

from quartermaster.redact import mask_url
from quartermaster.settings import Settings
from services.notifier.channel import Message, Outcome, Recipient
from services.notifier.retries import parse_retry_after

_RETRY_STATUSES = frozenset({408, 429})
_EXCERPT = 200


def parse_secrets(spec: str) -> tuple[str, ...]:
    """`whsec_a,whsec_b` → ("whsec_a", "whsec_b"); ValueError naming the position of a
    secret that is not whsec_ and strict base64 of at least 16 bytes (never its value:
    the reference library would skip stray characters and sign with another key)."""
    secrets = tuple(s.strip() for s in spec.split(",") if s.strip())
    for n, secret in enumerate(secrets, 1):
        body = secret.removeprefix("whsec_").rstrip("=")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except binascii.Error:
            key = b""
        if not secret.startswith("whsec_") or len(key) < 16:
            raise ValueError(f"secret {n} is not whsec_<base64 of 16+ bytes>")
    return secrets


_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def parse_endpoints(spec: str) -> dict[str, str]:
    """`ops=https://a.example/hook,audit=https://b.example/in` → {name: url}: every
    intent and request event is posted to each. ValueError naming the endpoint (by
    its name or position, never its URL: some carry a token) that is not
    `name=http(s)://host...`, or a name given twice."""
    out: dict[str, str] = {}
    for n, item in enumerate((i.strip() for i in spec.split(",") if i.strip()), 1):
        name, eq, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not eq or not _NAME.fullmatch(name):
            raise ValueError(f"endpoint {n} is not name=URL (name: a-z, 0-9, _ -; ≤ 40)")
        try:
            parsed = URL(url)
        except ValueError:
            parsed = URL()
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"endpoint {name!r}: its URL is not http(s)://host...")
        if name in out:
            raise ValueError(f"endpoint {name!r} is given twice")
        out[name] = url
    return out


def _valid_endpoints(spec: SecretStr) -> SecretStr:
    parse_endpoints(spec.get_secret_value())
    return spec


def _valid_secrets(spec: SecretStr) -> SecretStr:
    parse_secrets(spec.get_secret_value())
    return spec


class WebhookSettings(Settings):
    """Webhook delivery: variables QM_NOTIFIER_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="QM_NOTIFIER_")

    webhook_secrets: Annotated[SecretStr, AfterValidator(_valid_secrets)] = SecretStr("")
    """Signing secrets, whsec_<base64>,... (each signs every request: during a rotation
    give the new and the old, then drop the old); empty: requests go unsigned"""
    webhooks: Annotated[SecretStr, AfterValidator(_valid_endpoints)] = SecretStr("")
    """Endpoints every notice is posted to, name=URL,... (a secret: URLs may carry a
    token); an endpoint that answers 410 is disabled until
    `python -m services.notifier.cli webhooks enable NAME`; empty: no webhooks"""
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=120)
    """One attempt (connect, send, the answer) gives up after this long (then: retry)"""


SecretsFor = Callable[[Recipient], Sequence[str]]
"""The signing secrets of one endpoint (whsec_<base64>), newest first."""


def sign(secrets: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` value: one `v1,<base64>` per secret, space-separated
    ("" for no secrets). `timestamp` is aware UTC."""
    return " ".join(Webhook(s).sign(msg_id, timestamp, body) for s in secrets)


def body_of(message: Message) -> str:
    """The JSON body: compact, keys sorted, nothing of the attempt in it, so every retry
    sends the same bytes (the attempt's time is the webhook-timestamp header)."""
    payload = dict(message.payload) or {
        "type": message.kind,
        "data": {"subject": message.subject, "text": message.text},
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


class WebhookChannel:
    """`Channel` "webhook": `send` POSTs one signed message to `recipient.address`.

    `secrets_for` gives an endpoint's secrets (default: QM_NOTIFIER_WEBHOOK_SECRETS for
    every endpoint); `now` the current UTC instant (tests); `session` an aiohttp
    session to share (default: one of its own, closed by `close()`)."""

    name = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        secrets_for: SecretsFor | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        shared = parse_secrets(settings.webhook_secrets.get_secret_value())
        self._secrets_for = secrets_for or (lambda _r: shared)
        self._now = now
        self._timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)
        self._session = session
        self._own_session = session is None

    async def close(self) -> None:
        """Closes the session this channel made (not one it was given)."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, recipient: Recipient, message: Message, delivery_id: str) -> Outcome:
        """One attempt (see the module docstring for what each answer comes to)."""
        try:
            url = URL(recipient.address)
        except ValueError:
            url = URL()
        if url.scheme not in ("http", "https") or not url.host:
            shown = mask_url(recipient.address)
            return Outcome("failed", reason=f"not an http(s) URL: {shown!r}")
        now = self._now()
        body = body_of(message)
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        secrets = self._secrets_for(recipient)
        if secrets:
            headers["webhook-signature"] = sign(secrets, delivery_id, now, body)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url,
                data=body.encode(),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                # The start of the answer only: a receiver's 1 GB error page is not read.
                head = await response.content.read(4 * _EXCERPT)
                answer = head.decode("utf-8", errors="replace")[:_EXCERPT]
                return self._outcome(response, answer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Refused, reset or slow: the receiver may be back soon. The reason names the
            # origin only: some endpoints carry a secret in their path or query.
            said = str(exc).replace(str(url), str(url.origin()))
            return Outcome("retry", reason=f"{url.origin()}: {type(exc).__name__} {said}".strip())

    def _outcome(self, response: aiohttp.ClientResponse, answer: str) -> Outcome:
        status = response.status
        said = f"HTTP {status} {' '.join(answer.split())}".strip()
        if 200 <= status < 300:
            return Outcome("delivered", ref=str(status))
        if status == 410:
            return Outcome("disabled", reason=said)
        if status in _RETRY_STATUSES or status >= 500:
            after = parse_retry_after(response.headers.get("Retry-After"), self._now())
            return Outcome("retry", reason=said, retry_after_seconds=after)
        if 300 <= status < 400:
            where = response.headers.get("Location", "")
            return Outcome("failed", reason=f"{said} (redirects are not followed: {where})")
        return Outcome("failed", reason=said)
