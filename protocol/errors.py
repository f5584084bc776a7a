"""The exception hierarchy shared by every part of seedswarm.

    SeedswarmError                 base of everything seedswarm raises on purpose
    ├── ProtocolError              input from the network or a log that breaks the protocol
    │   ├── DecodeError            bytes that are not a valid message (type, range, size, version)
    │   ├── WrongRunError          a valid message that belongs to another run
    │   ├── SignatureError         missing, unknown or invalid signature
    │   └── ConflictError          a record that contradicts what is already held
    │                              (equivocation, clock regression)
    ├── ManifestError              a run manifest that is invalid or does not match
    ├── ModelError (model/)        loading, task or data problems on the torch side
    └── ConfigError (daemon/)      a bad flag, environment variable or config file

Every ``ProtocolError`` carries ``reason``, a short slug (``"oversized"``, ``"bad_signature"``,
...). The daemon counts dropped input per reason and per sender, so the slugs are part of the
status endpoint's vocabulary; they are listed in docs/PROTOCOL.md.
"""

from __future__ import annotations


class SeedswarmError(Exception):
    """Base class of every error seedswarm raises on purpose."""


class ProtocolError(SeedswarmError):
    """Input from a peer or a log file violates the protocol."""

    reason: str = "malformed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(ProtocolError):
    """The bytes are not a well-formed message of the expected kind."""


class WrongRunError(ProtocolError):
    """The message is well formed but belongs to another run (``run_id``)."""

    reason = "wrong_run"

    def __init__(self, message: str, *, run_id: bytes = b"") -> None:
        super().__init__(message)
        self.run_id = run_id


class SignatureError(ProtocolError):
    """The frame's signature is missing, made by an unknown node, or invalid."""

    reason = "bad_signature"


class ConflictError(ProtocolError):
    """A record contradicts what is already held (equivocation or clock regression)."""

    reason = "equivocation"


class ManifestError(SeedswarmError):
    """A run manifest is invalid, or a node's view of the run does not match its peers'."""
