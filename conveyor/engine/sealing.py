"""Sealed inputs: secret task parameters are encrypted before they are stored.

A task parameter annotated ``SecretStr`` (Pydantic) is a secret: the engine replaces its
value with ``{"$sealed": "<AES-GCM token>"}`` before the job is written, so the plaintext
never reaches the jobs table, listings, events or the API. Only a worker unseals it, right
before calling the task (which receives a ``SecretStr`` that hides itself in reprs), and
the worker scrubs the plaintext out of any error it records.

The key is ``CONVEYOR_SECRET_KEY`` (32+ bytes) or, when unset, one generated once and kept
in the database (for development; set a key in production).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conveyor.errors import ConfigurationError, InvalidInputError

SEALED = "$sealed"
MASK = "***"
_NONCE = 12


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {SEALED}


class Sealer:
    def __init__(self, key_material: str) -> None:
        if len(key_material.encode()) < 32:
            raise ConfigurationError("the secret key must be at least 32 bytes")
        # any string becomes a proper 256-bit AES key
        self._aead = AESGCM(hashlib.sha256(key_material.encode()).digest())

    def seal(self, plaintext: str) -> dict[str, str]:
        nonce = os.urandom(_NONCE)
        token = nonce + self._aead.encrypt(nonce, plaintext.encode(), b"conveyor-input")
        return {SEALED: base64.urlsafe_b64encode(token).decode()}

    def unseal(self, sealed: dict[str, str]) -> str:
        try:
            token = base64.urlsafe_b64decode(sealed[SEALED].encode())
            plain = self._aead.decrypt(token[:_NONCE], token[_NONCE:], b"conveyor-input")
        except (InvalidTag, ValueError, KeyError) as exc:
            raise InvalidInputError("a sealed input cannot be opened with this key") from exc
        return plain.decode()

    def seal_fields(self, data: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
        """``data`` with the given (secret) fields sealed; other fields untouched."""
        sealed = dict(data)
        for name in fields:
            value = sealed.get(name)
            if isinstance(value, str):
                sealed[name] = self.seal(value)
        return sealed

    def unseal_all(self, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``data`` with every sealed value opened, and the plaintexts (to scrub errors)."""
        opened: dict[str, Any] = {}
        secrets: list[str] = []
        for name, value in data.items():
            if is_sealed(value):
                plain = self.unseal(value)
                secrets.append(plain)
                opened[name] = plain
            else:
                opened[name] = value
        return opened, secrets


def masked(data: Any) -> Any:
    """What clients see of an input: sealed values as ``***``."""
    if isinstance(data, dict):
        return {k: (MASK if is_sealed(v) else v) for k, v in data.items()}
    return data


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (error messages, tracebacks)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
