"""API key material: generation, hashing, constant-time comparison."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "ck_"
PREFIX_LENGTH = 12  # "ck_" + 9 characters: enough to recognise a key in a list, never to use it


def generate_api_key() -> str:
    """``ck_`` + 43 url-safe characters = 256 bits of entropy."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is as strong as a slow one here.
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    return key[:PREFIX_LENGTH]


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
