"""Notification channels: a signed JSON webhook, a Slack-compatible incoming webhook and
email over SMTP. One call, :func:`deliver`, makes one attempt and reports how it went;
retries, backoff and the record of attempts are the dispatcher's (worker.py).

Webhook: ``POST`` of the JSON payload with ``X-RateGuard-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body bytes with the channel's secret, and
``X-RateGuard-Delivery: <id>``, the same on every retry of one notification, so a
receiver can drop a repeat. Any 2xx is success.

Slack: ``POST {"text": ...}`` to the incoming-webhook URL (itself a credential, so it is
stored encrypted). SMTP: a plain-text mail, optionally upgraded with STARTTLS and
authenticated with the channel's username and (encrypted) password.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import urlsplit

import aiohttp
import orjson

from rateguard import __version__
from rateguard.net.egress import ALWAYS, Refused
from rateguard.net.egress import EgressPolicy as UpstreamGuard

SIGNATURE_HEADER = "X-RateGuard-Signature"
DELIVERY_HEADER = "X-RateGuard-Delivery"
EVENT_HEADER = "X-RateGuard-Event"
USER_AGENT = f"RateGuard-Alerts/{__version__}"
KINDS = ("webhook", "slack", "smtp")


def secret_aad(channel_id: str) -> str:
    """What a channel's secret is bound to when encrypted (see crypto.py)."""
    return f"channel:{channel_id}:secret"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature or "")


@dataclass(slots=True)
class Channel:
    id: str
    workspace_id: str
    name: str
    kind: str
    config: dict
    secret: str | None = None  # decrypted: webhook signing secret, Slack URL, SMTP password


@dataclass(slots=True)
class Result:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    extra: dict = field(default_factory=dict)


def summary(payload: dict) -> str:
    """One line for people: '[FIRING] checkout errors: error_rate 42.0% (above 10.0%)...'"""
    if payload.get("event") == "test":
        return f"[TEST] RateGuard test notification for channel '{payload.get('channel', '')}'"
    return payload.get("summary") or orjson.dumps(payload).decode()


_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]*@")


def without_credentials(text: str) -> str:
    """An error message as stored with a delivery, readable by every member: a URL's
    ``user:password@`` (a webhook's credentials are secrets) masked."""
    return _CREDENTIALS.sub("***:***@", text)


async def refused_destination(url: str, guard: UpstreamGuard = ALWAYS) -> str | None:
    """Why the server must not call ``url`` (the egress policy on its host and every
    address the host resolves to), or None. Metadata and link-local addresses are never
    called; with the production policy, private ones neither (ALLOW_PRIVATE_UPSTREAMS)."""
    try:
        await guard.resolve(urlsplit(url).hostname or "", 0)
    except Refused as exc:
        return str(exc)
    return None


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict,
                timeout: float) -> Result:
    async with session.post(url, data=body, headers=headers, allow_redirects=False,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        if 200 <= response.status < 300:
            return Result(True, response.status)
        # never the body: what a destination answers is not for the people who read
        # deliveries (it may be an internal service's page)
        return Result(False, response.status, f"HTTP {response.status}")


async def _webhook(channel: Channel, payload: dict, delivery_id: str,
                   session: aiohttp.ClientSession, timeout: float) -> Result:
    body = orjson.dumps(payload)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               DELIVERY_HEADER: delivery_id, EVENT_HEADER: payload.get("event", "")}
    if channel.secret:
        headers[SIGNATURE_HEADER] = sign(channel.secret, body)
    return await _post(session, channel.config["url"], body, headers, timeout)


async def _slack(channel: Channel, payload: dict, delivery_id: str,
                 session: aiohttp.ClientSession, timeout: float) -> Result:
    body = orjson.dumps({"text": summary(payload)})
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    return await _post(session, channel.secret or "", body, headers, timeout)


def email_message(channel: Channel, payload: dict, delivery_id: str) -> EmailMessage:
    config = channel.config
    message = EmailMessage()
    message["From"] = config["from"]
    message["To"] = ", ".join(config["to"])
    message["Subject"] = summary(payload)
    message["Message-ID"] = make_msgid(domain="rateguard")
    message[DELIVERY_HEADER] = delivery_id
    message[EVENT_HEADER] = payload.get("event", "")
    message.set_content(summary(payload) + "\n\n"
                        + orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
    return message


async def _smtp(channel: Channel, payload: dict, delivery_id: str,
                session: aiohttp.ClientSession, timeout: float,
                guard: UpstreamGuard = ALWAYS) -> Result:
    """One message. The host is resolved once, by the egress policy, and the connection
    goes to the address it checked (a name cannot pass the check and then resolve
    elsewhere); STARTTLS still verifies the certificate against the host's name."""
    import ssl

    import aiosmtplib

    config = channel.config
    host, port = config["host"], int(config["port"])
    try:
        address = (await guard.resolve(host, port))[0]
    except Refused as exc:
        return Result(False, None, f"refused: {exc}")
    tls_context = None
    if config.get("starttls"):
        tls_context = ssl.create_default_context()
        if not config.get("tls_verify", True):
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
    client = aiosmtplib.SMTP(hostname=address, port=port, start_tls=False, use_tls=False,
                             timeout=timeout)
    await client.connect()
    try:
        if config.get("starttls"):
            await client.starttls(server_hostname=host, tls_context=tls_context)
        if config.get("username"):
            await client.login(config["username"], channel.secret or "")
        errors, response = await client.send_message(
            email_message(channel, payload, delivery_id))
    finally:
        try:
            await client.quit()
        except Exception:  # the server went away meanwhile: nothing left to say
            client.close()
    if errors:
        refused = ", ".join(f"{rcpt}: {code} {text}" for rcpt, (code, text) in errors.items())
        return Result(False, None, f"recipients refused: {refused}"[:500])
    return Result(True, 250, extra={"response": response})


SENDERS = {"webhook": _webhook, "slack": _slack, "smtp": _smtp}


def generic_error(result: Result) -> str:
    """A short error for a test send: the status or the kind of failure, nothing the
    destination said (a refusal by the egress policy keeps its reason)."""
    error = result.error or ""
    if error.startswith("refused: "):
        return error
    if result.status_code is not None:
        return f"the destination answered HTTP {result.status_code}"
    if error.startswith("timed out"):
        return error
    return "could not deliver (connection or protocol error)"


async def deliver(channel: Channel, payload: dict, delivery_id: str,
                  session: aiohttp.ClientSession, timeout: float = 10.0,
                  guard: UpstreamGuard = ALWAYS) -> Result:
    """One attempt, never longer than ``timeout`` seconds; never raises (but on cancel)."""
    started = time.perf_counter()
    try:
        if channel.kind == "smtp":
            # the sender resolves the host once, by the same policy, and connects to
            # what it checked (a refusal comes back as "refused: ...")
            send = _smtp(channel, payload, delivery_id, session, timeout, guard)
        else:
            url = channel.config.get("url", "") if channel.kind == "webhook" else channel.secret
            refused = await refused_destination(url or "", guard)
            if refused is not None:
                result = Result(False, None, f"refused: {refused}")
                result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
                return result
            send = SENDERS[channel.kind](channel, payload, delivery_id, session, timeout)
        result = await asyncio.wait_for(send, timeout)
    except asyncio.TimeoutError:
        result = Result(False, None, f"timed out after {timeout:g}s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # connection refused, TLS, SMTP errors, a bad URL ...
        result = Result(False, None, without_credentials(f"{type(exc).__name__}: {exc}")[:500])
    result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    return result
