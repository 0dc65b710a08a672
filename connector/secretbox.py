"""Secrets at rest: OAuth tokens are stored encrypted with the deployment's `CONNECTOR_SECRET_KEY`.

Fernet (cryptography) authenticates as well as encrypts, so a row edited or copied from another
deployment is refused rather than decrypted into garbage. `CONNECTOR_SECRET_KEY` may list several
keys, comma-separated: the first encrypts, all decrypt (`MultiFernet`), so a key is rotated by
putting the new one first, running `connector keys rotate` (which re-encrypts every stored
secret under it) and then dropping the old one.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from connector.config import Settings
from connector.errors import ConfigError

KEY_HELP = "`connector keys generate` prints a new key"


class SecretBox:
    """Encrypts and decrypts small JSON documents (a connection's tokens) under the configured keys."""

    def __init__(self, keys: list[str]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except (ValueError, TypeError):
            # The message names the variable, never a key.
            raise ConfigError(
                "invalid_secret_key", f"CONNECTOR_SECRET_KEY must be Fernet keys, comma-separated; {KEY_HELP}"
            ) from None

    def seal(self, document: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(document, sort_keys=True).encode()).decode()

    def open(self, sealed: str) -> dict[str, Any]:
        try:
            found = json.loads(self._fernet.decrypt(sealed.encode()))
        except InvalidToken:
            raise _mismatch() from None
        return found if isinstance(found, dict) else {}

    def reseal(self, sealed: str) -> str:
        """The same document encrypted under the first key (a rotation step)."""
        try:
            return self._fernet.rotate(sealed.encode()).decode()
        except InvalidToken:
            raise _mismatch() from None


def _mismatch() -> ConfigError:
    return ConfigError(
        "secret_key_mismatch",
        "stored tokens cannot be decrypted with any key of CONNECTOR_SECRET_KEY "
        "(was a key removed too early?)",
    )


def secret_box(settings: Settings) -> SecretBox | None:
    """The box for CONNECTOR_SECRET_KEY; None when it is unset (OAuth connections cannot be stored)."""
    keys = [key.strip() for key in (settings.secret_key or "").split(",") if key.strip()]
    return SecretBox(keys) if keys else None


def require_secret_box(settings: Settings) -> SecretBox:
    box = secret_box(settings)
    if box is None:
        raise ConfigError(
            "secret_key_missing",
            f"CONNECTOR_SECRET_KEY is not set, so OAuth tokens cannot be stored; {KEY_HELP}",
        )
    return box
