"""Checking Meta's ``X-Hub-Signature-256`` over the exact raw bytes of a webhook. Pure: no I/O, no aiohttp.

Meta signs the bytes it sends (escaped-unicode JSON) with the secret of the Meta app the webhook belongs to:
``X-Hub-Signature-256: sha256=<lowercase hex HMAC-SHA256(raw body, app secret)>``. Several Meta apps may point
at one endpoint, so a body is accepted when it matches any configured secret; the result says which one (by
:func:`ingress.contract.secret_id`, never the secret itself).

The check is split in two so the ingress can refuse a missing or malformed header before reading a body:
:func:`parse_signature` (header → digest) and :meth:`SignatureVerifier.match` (body + digest → secret id).
Digests are compared with :func:`hmac.compare_digest`; the header is decoded to bytes first, so the comparison
never depends on where the first wrong hex digit is.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from ingress import contract

SIGNATURE_HEADER: Final = "X-Hub-Signature-256"
_PREFIX: Final = "sha256="
_DIGEST_BYTES: Final = 32
_HEADER_LENGTH: Final = len(_PREFIX) + 2 * _DIGEST_BYTES


class SignatureFailure(enum.Enum):
    """Why a webhook was refused; the values are the ``reason`` label of the signature-failure metric."""

    MISSING = "missing"
    MALFORMED = "malformed"
    MISMATCH = "mismatch"


class SignatureError(Exception):
    """The webhook is not signed by any configured app secret (answered 401, never published)."""

    def __init__(self, failure: SignatureFailure) -> None:
        self.failure = failure
        super().__init__(f"webhook signature {failure.value}")


@dataclass(frozen=True, slots=True)
class _AppSecret:
    secret_id: str
    key: bytes = field(repr=False)


def sign(body: bytes, secret: str) -> str:
    """The header value Meta sends for ``body`` signed with ``secret`` (for the simulator and tests)."""
    return _PREFIX + hmac.digest(secret.encode(), body, "sha256").hex()


def parse_signature(header: str | None) -> bytes:
    """The 32-byte digest an ``X-Hub-Signature-256`` value claims; raises :class:`SignatureError`."""
    if header is None or header == "":
        raise SignatureError(SignatureFailure.MISSING)
    if len(header) != _HEADER_LENGTH or not header.startswith(_PREFIX):
        raise SignatureError(SignatureFailure.MALFORMED)
    try:
        digest = bytes.fromhex(header[len(_PREFIX) :])
    except ValueError:
        raise SignatureError(SignatureFailure.MALFORMED) from None
    if len(digest) != _DIGEST_BYTES:  # fromhex skips spaces: 64 characters with spaces in them decode short
        raise SignatureError(SignatureFailure.MALFORMED)
    return digest


class SignatureVerifier:
    """Holds the app secrets as HMAC keys; ``repr`` shows only their ids."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(_AppSecret(contract.secret_id(s), s.encode()) for s in secrets)
        if not self._secrets:
            raise ValueError("at least one app secret is required")

    @property
    def secret_ids(self) -> tuple[str, ...]:
        return tuple(s.secret_id for s in self._secrets)

    def match(self, body: bytes, digest: bytes) -> str:
        """The id of the secret that signed ``body`` as ``digest``; raises :class:`SignatureError`."""
        if len(digest) == _DIGEST_BYTES:
            for secret in self._secrets:
                if hmac.compare_digest(hmac.digest(secret.key, body, "sha256"), digest):
                    return secret.secret_id
        raise SignatureError(SignatureFailure.MISMATCH)

    def verify(self, body: bytes, header: str | None) -> str:
        """:func:`parse_signature` then :meth:`match`: the matching secret's id."""
        return self.match(body, parse_signature(header))

    def __repr__(self) -> str:
        return f"SignatureVerifier(secret_ids={self.secret_ids!r})"


def token_digest(token: str) -> bytes:
    """Fixed-size digest of a shared token, so a constant-time comparison does not leak its length either."""
    return hashlib.sha256(token.encode()).digest()
