"""The signature check over raw bytes: what passes, what fails and why, and that the module stays pure."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress import contract
from ingress.signature import (
    SIGNATURE_HEADER,
    SignatureError,
    SignatureFailure,
    SignatureVerifier,
    parse_signature,
    sign,
)

SECRETS = ("first-app-secret", "second-app-secret")
# Meta signs the bytes it sends: escaped-unicode JSON, exactly as on the wire.
BODY = b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"value":{"x":"\\u00e9"}}]}]}'


def _hex_hmac(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_sign_is_metas_header_format() -> None:
    assert sign(BODY, "s") == "sha256=" + _hex_hmac(BODY, "s")
    assert SIGNATURE_HEADER == "X-Hub-Signature-256"


@pytest.mark.parametrize("secret", SECRETS)
def test_each_secret_matches_and_is_identified_by_its_id(secret: str) -> None:
    verifier = SignatureVerifier(SECRETS)
    assert verifier.verify(BODY, sign(BODY, secret)) == contract.secret_id(secret)


def test_uppercase_hex_is_the_same_digest() -> None:
    header = "sha256=" + _hex_hmac(BODY, SECRETS[0]).upper()
    assert SignatureVerifier(SECRETS).verify(BODY, header) == contract.secret_id(SECRETS[0])


@pytest.mark.parametrize("header", [None, ""])
def test_missing(header: str | None) -> None:
    with pytest.raises(SignatureError) as caught:
        SignatureVerifier(SECRETS).verify(BODY, header)
    assert caught.value.failure is SignatureFailure.MISSING


GOOD_HEX = _hex_hmac(BODY, SECRETS[0])


@pytest.mark.parametrize(
    "header",
    [
        GOOD_HEX,  # no prefix
        "sha1=" + hashlib.sha1(BODY).hexdigest(),  # noqa: S324  Meta's older header, not accepted here
        "SHA256=" + GOOD_HEX,
        "sha256 =" + GOOD_HEX[1:],
        "sha256=" + GOOD_HEX[:-2],  # short
        "sha256=" + GOOD_HEX + "00",  # long
        "sha256=" + GOOD_HEX[:-1] + "g",  # not hex
        "sha256=" + GOOD_HEX[:30] + " " + GOOD_HEX[31:],  # right length, a space in it
        "sha256=" + GOOD_HEX[:-1] + "é",  # non-ASCII
        "sha256=",
    ],
)
def test_malformed(header: str) -> None:
    with pytest.raises(SignatureError) as caught:
        SignatureVerifier(SECRETS).verify(BODY, header)
    assert caught.value.failure is SignatureFailure.MALFORMED


@pytest.mark.parametrize(
    ("body", "header"),
    [
        (BODY, sign(BODY, "a-secret-we-do-not-have")),
        (BODY + b" ", sign(BODY, SECRETS[0])),  # one byte more than what was signed
        (BODY.replace(b"\\u00e9", "é".encode()), sign(BODY, SECRETS[0])),  # re-serialised JSON, same meaning
        (BODY, "sha256=" + "0" * 64),
        (b"", sign(BODY, SECRETS[1])),
    ],
)
def test_mismatch(body: bytes, header: str) -> None:
    with pytest.raises(SignatureError) as caught:
        SignatureVerifier(SECRETS).verify(body, header)
    assert caught.value.failure is SignatureFailure.MISMATCH


def test_parse_then_match_is_verify() -> None:
    verifier = SignatureVerifier(SECRETS)
    digest = parse_signature(sign(BODY, SECRETS[1]))
    assert len(digest) == 32
    assert verifier.match(BODY, digest) == contract.secret_id(SECRETS[1])
    with pytest.raises(SignatureError):
        verifier.match(BODY, digest[:31])


def test_secrets_never_show() -> None:
    verifier = SignatureVerifier(SECRETS)
    shown = repr(verifier) + str(verifier)
    assert all(secret not in shown for secret in SECRETS)
    assert verifier.secret_ids == tuple(contract.secret_id(s) for s in SECRETS)


def test_no_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SignatureVerifier(())


@given(body=st.binary(max_size=4096), secret=st.text(min_size=1, max_size=64), other=st.text(max_size=64))
def test_signed_by_a_configured_secret_always_verifies(body: bytes, secret: str, other: str) -> None:
    verifier = SignatureVerifier(dict.fromkeys([other, secret]) if other else [secret])
    assert verifier.verify(body, sign(body, secret)) == contract.secret_id(secret)


@given(body=st.binary(max_size=256), header=st.one_of(st.none(), st.text(max_size=80)))
def test_any_header_verifies_or_raises_the_one_error(body: bytes, header: str | None) -> None:
    verifier = SignatureVerifier(SECRETS)
    try:
        outcome: str | SignatureFailure = verifier.verify(body, header)
    except SignatureError as exc:
        outcome = exc.failure
    if not isinstance(outcome, SignatureFailure):  # only possible with the HMAC of one of our secrets
        assert header is not None
        assert header.lower() in {sign(body, s) for s in SECRETS}
        assert outcome in verifier.secret_ids


def test_module_is_pure() -> None:
    code = (
        "import sys, ingress.signature; "
        "print(sorted(m for m in ('aiohttp', 'aio_pika', 'aiormq', 'prometheus_client', 'asyncio') "
        "if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert run.stdout.strip() == "[]"
