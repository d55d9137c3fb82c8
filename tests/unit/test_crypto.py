"""AES-256-GCM secrets at rest: key formats, key ids, binding to where a value lives,
rotation."""

from __future__ import annotations

import base64

import pytest

from rateguard.crypto import CryptoError, KeyRing, generate_key

OLD, NEW = generate_key(), generate_key()


def test_round_trip_and_fresh_nonces():
    ring = KeyRing(NEW)
    sealed = ring.encrypt("s3cret", "api:a:header:x-token")
    assert sealed.startswith(f"v1:{ring.primary_id}:") and "s3cret" not in sealed
    assert ring.decrypt(sealed, "api:a:header:x-token") == "s3cret"
    assert ring.encrypt("s3cret", "api:a:header:x-token") != sealed


def test_a_value_is_bound_to_where_it_is_stored():
    ring = KeyRing(NEW)
    sealed = ring.encrypt("s3cret", "api:a:header:x-token")
    with pytest.raises(CryptoError, match="does not decrypt"):
        ring.decrypt(sealed, "api:b:header:x-token")


def test_a_tampered_value_does_not_decrypt():
    ring = KeyRing(NEW)
    version, kid, token = ring.encrypt("s3cret", "aad").split(":")
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-1] ^= 1
    forged = f"{version}:{kid}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    with pytest.raises(CryptoError):
        ring.decrypt(forged, "aad")


@pytest.mark.parametrize("key", [
    NEW, base64.urlsafe_b64encode(base64.b64decode(NEW)).decode().rstrip("="),
    base64.b64decode(NEW).hex(), "a passphrase of at least thirty-two characters"])
def test_key_formats(key):
    ring = KeyRing(key)
    assert ring.decrypt(ring.encrypt("x", "aad"), "aad") == "x"


def test_the_same_key_in_another_spelling_has_the_same_id():
    assert KeyRing(NEW).primary_id == KeyRing(base64.b64decode(NEW).hex()).primary_id
    assert KeyRing(NEW).primary_id != KeyRing(OLD).primary_id


@pytest.mark.parametrize("value", ["", "short", "c2hvcnQ="])
def test_unusable_keys_are_refused_with_one_line(value):
    with pytest.raises(CryptoError, match="ENCRYPTION_KEY"):
        KeyRing(value)


def test_rotation_new_key_first_old_key_still_decrypts():
    before = KeyRing(OLD).encrypt("s3cret", "aad")
    ring = KeyRing(f"{NEW},{OLD}")
    assert ring.needs_rotation(before)
    assert ring.decrypt(before, "aad") == "s3cret"
    after = ring.encrypt(ring.decrypt(before, "aad"), "aad")
    assert not ring.needs_rotation(after)
    assert KeyRing(NEW).decrypt(after, "aad") == "s3cret"
    with pytest.raises(CryptoError, match="does not hold"):
        KeyRing(NEW).decrypt(before, "aad")


def test_not_an_encrypted_value():
    with pytest.raises(CryptoError, match="not an encrypted value"):
        KeyRing(NEW).decrypt("plaintext", "aad")
