"""Secrets at rest: provider credentials are stored only as Fernet tokens.

``CREDITD_PAYMENTS__SECRETS_KEY`` holds comma-separated Fernet keys: the first encrypts, every
one decrypts (``MultiFernet``), so a key is rotated by putting a new one first, running
``creditd rotate-secrets`` (re-encrypts every stored secret with the first key) and only then
dropping the old one. Without the setting (development and test only; production refuses to
start) a key is generated once into ``<data_dir>/secrets.key`` and reused from then on.

One box per process: the API builds it on first use (``secret_box`` below, kept on
``app.state.secrets``), workers and the CLI call ``SecretBox.from_settings``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from fastapi import Depends
from starlette.requests import Request

if TYPE_CHECKING:
    from app.core.settings import Settings

KEY_FILE = "secrets.key"
SETTING = "CREDITD_PAYMENTS__SECRETS_KEY"


class InvalidSecretsKey(ValueError):
    """A configured or stored key is not a Fernet key; the message never carries the key."""


class SecretUnreadable(Exception):
    """A stored secret was encrypted with a key that is no longer configured (or was altered)."""


def parse_keys(value: str) -> list[Fernet]:
    """Fernet keys from a comma-separated list (blank entries ignored), first one first."""
    pieces = [piece.strip() for piece in value.split(",") if piece.strip()]
    if not pieces:
        raise InvalidSecretsKey("holds no key (comma-separated Fernet keys expected)")
    keys = []
    for position, piece in enumerate(pieces, start=1):
        try:
            keys.append(Fernet(piece))
        except (ValueError, TypeError):
            raise InvalidSecretsKey(
                f"key #{position} is not a Fernet key (urlsafe base64 of 32 bytes; make one with"
                ' `python -c "from cryptography.fernet import Fernet;'
                ' print(Fernet.generate_key().decode())"`)'
            ) from None
    return keys


def development_key(data_dir: Path) -> str:
    """The key in ``data_dir/secrets.key``, generated (mode 0600) if there is none yet.

    Created complete or not at all: the key is written to a private temporary file that is
    then hard-linked into place, so concurrent first starts agree on one key and nobody reads
    a half-written file.
    """
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".secrets-", suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first: use its key
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


class SecretBox:
    """Encrypts and decrypts short secrets with the configured keys."""

    def __init__(self, keys: list[Fernet]) -> None:
        self._fernet = MultiFernet(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The configured keys, or (outside production) the data dir's development key."""
        configured = settings.payments.secrets_key
        if configured is not None:
            return cls(parse_keys(configured.get_secret_value()))
        if settings.env == "production":  # the settings validation refuses this already
            raise InvalidSecretsKey(f"{SETTING} is required in production")
        path = settings.data_dir / KEY_FILE
        try:
            return cls(parse_keys(development_key(settings.data_dir)))
        except InvalidSecretsKey as bad:
            raise InvalidSecretsKey(f"{path}: {bad}") from None

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                f"a stored secret cannot be decrypted with any key of {SETTING}"
                " (was a key dropped before `creditd rotate-secrets` ran?)"
            ) from None

    def rotate(self, token: str) -> str:
        """The same secret encrypted with the first key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                f"a stored secret cannot be decrypted with any key of {SETTING}"
            ) from None


def secret_box(request: Request) -> SecretBox:
    """The app's box, built on first use: an app that never touches a provider (the OpenAPI
    export, most tests) never generates a development key file."""
    state = request.app.state
    box: SecretBox | None = getattr(state, "secrets", None)
    if box is None:
        box = state.secrets = SecretBox.from_settings(state.settings)
    return box


Secrets = Annotated[SecretBox, Depends(secret_box)]
