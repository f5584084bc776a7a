"""Ed25519 keys for nodes (the ``cryptography`` package).

A run in signed mode lists each writer's 32-byte public key (hex) in its manifest. A node signs
``SIGN_DOMAIN || canonical header-and-bytes`` of every frame it publishes (codec.py), and every
receiver verifies before it stores anything.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .errors import SignatureError


class NodeKey:
    """A node's private signing key."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_hex(cls, text: str) -> NodeKey:
        try:
            raw = bytes.fromhex(text.strip())
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        except ValueError as exc:
            raise SignatureError("a private key is 64 hex digits (32 bytes)") from exc

    def private_hex(self) -> str:
        raw = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return raw.hex()

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public_hex(self) -> str:
        return self.public_bytes().hex()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` under ``public_key``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
