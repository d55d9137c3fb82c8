"""Secrets at rest: AES-256-GCM with a key id, so keys can be rotated.

``ENCRYPTION_KEY`` holds one key or several, comma-separated. The first one encrypts;
every one of them decrypts. A key is 32 random bytes written as base64 or hex
(``openssl rand -base64 32``), or a passphrase of 32+ characters (stretched with
HKDF-SHA256). Its id is a fingerprint of the key itself, so nothing else has to be
configured and a value always names the key that sealed it::

    v1:<key id>:<base64url(nonce || ciphertext || tag)>

Every value is bound to where it is stored (``aad``, e.g. ``api:<id>:header:<name>``),
so a ciphertext copied into another row does not decrypt. To rotate: put the new key
first and keep the old one after it (``ENCRYPTION_KEY=new,old``), run
``rateguard secrets rotate`` (re-encrypts everything under the new key), then drop the old.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rateguard.errors import RateGuardError

VERSION = "v1"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class CryptoError(RateGuardError):
    """A key that cannot be used, or a value that does not decrypt."""


def _key_bytes(text: str) -> bytes:
    text = text.strip()
    if _HEX64.match(text):
        return bytes.fromhex(text)
    padded = text + "=" * (-len(text) % 4)
    for altchars in (None, b"-_"):
        try:
            raw = base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    if len(text) >= 32:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"rateguard encryption key").derive(text.encode())
    raise CryptoError("ENCRYPTION_KEY: each key must be 32 random bytes as base64 or hex "
                      "(openssl rand -base64 32) or a passphrase of 32+ characters")


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"rateguard key id\x00" + key).hexdigest()[:12]


def generate_key() -> str:
    """A new key as ENCRYPTION_KEY expects it (base64 of 32 random bytes)."""
    return base64.b64encode(os.urandom(32)).decode()


class KeyRing:
    """The keys from ENCRYPTION_KEY: the first encrypts, all decrypt."""

    def __init__(self, value: str) -> None:
        items = [item for item in (value or "").split(",") if item.strip()]
        if not items:
            raise CryptoError("ENCRYPTION_KEY: empty")
        self._keys: dict[str, AESGCM] = {}
        self.primary_id = ""
        for item in items:
            raw = _key_bytes(item)
            kid = key_id(raw)
            if not self.primary_id:
                self.primary_id = kid
            self._keys.setdefault(kid, AESGCM(raw))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def encrypt(self, plaintext: str, aad: str) -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self.primary_id].encrypt(nonce, plaintext.encode(), aad.encode())
        token = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{VERSION}:{self.primary_id}:{token}"

    def decrypt(self, value: str, aad: str) -> str:
        kid = self.key_id_of(value)
        if kid not in self._keys:
            raise CryptoError(f"a secret is sealed with key id {kid}, which ENCRYPTION_KEY "
                              "does not hold (add the old key after the new one)")
        token = value.split(":", 2)[2]
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            return self._keys[kid].decrypt(blob[:12], blob[12:], aad.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise CryptoError(f"a secret sealed with key id {kid} does not decrypt "
                              "(altered, or stored elsewhere than where it was sealed)") from None

    @staticmethod
    def key_id_of(value: str) -> str:
        parts = value.split(":", 2)
        if len(parts) != 3 or parts[0] != VERSION:
            raise CryptoError("not an encrypted value (expected v1:<key id>:<data>)")
        return parts[1]

    def needs_rotation(self, value: str) -> bool:
        return self.key_id_of(value) != self.primary_id
