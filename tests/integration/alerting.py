"""Real notification receivers for the alerts tests: an aiohttp webhook receiver on
127.0.0.1 and an SMTP server (aiosmtpd) with STARTTLS and AUTH."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ssl
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import web

from rateguard.embedded.servers import free_port


class Receiver:
    """Records every POST by path. ``fail[path] = n`` answers 500 n times first;
    ``delay[path] = s`` answers after s seconds."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: dict[str, list[dict]] = defaultdict(list)
        self.attempts: dict[str, list[float]] = defaultdict(list)
        self.fail: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        self.runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        self.attempts[path].append(time.monotonic())
        if self.delay.get(path):
            await asyncio.sleep(self.delay[path])
        if self.fail.get(path, 0) > 0:
            self.fail[path] -= 1
            return web.Response(status=500, text="try again")
        self.received[path].append({"at": time.monotonic(), "headers": dict(request.headers),
                                    "body": body})
        return web.Response(text="ok")

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Mailbox:
    """aiosmtpd SMTP server requiring STARTTLS and AUTH (user/password given)."""

    def __init__(self, workdir: Path, username: str, password: str) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.username, self.password = username, password
        self.port = free_port()
        self.workdir = workdir
        self.controller = None

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(email.message_from_bytes(envelope.content,
                                                      policy=email.policy.default))
        return "250 Message accepted"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and \
            auth_data.login.decode() == self.username and \
            auth_data.password.decode() == self.password
        return AuthResult(success=ok)

    def start(self) -> "Mailbox":
        from aiosmtpd.controller import Controller

        cert, key = self_signed(self.workdir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, tls_context=context,
            require_starttls=True, authenticator=self._authenticate, auth_required=True,
            auth_require_tls=True)
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
