"""API keys: random, prefixed ``rg_``, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "rg_"


def new_key() -> str:
    """A fresh API key: ``rg_`` and 32 random bytes in URL-safe base64 (43 characters)."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str | bytes) -> str:
    """The stored form of a key: lowercase hex SHA-256 of its UTF-8 bytes."""
    if isinstance(key, str):
        key = key.encode()
    return hashlib.sha256(key).hexdigest()
