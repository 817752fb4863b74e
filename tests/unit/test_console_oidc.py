"""ID token verification (console/oidc.py) with keys made here; the provider is a dict of documents."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from callhook.env import ConfigError
from console.config import OidcSettings, load
from console.oidc import AuthError, OidcVerifier, agent_from_claims
from tests.support.oidc_provider import CLIENT_ID, SigningKey, TestIdentityProvider

ISSUER = "https://idp.example.com/realms/acme"


class FakeProvider:
    """Discovery and JWKS as plain documents; counts the fetches; ``down`` makes every fetch fail."""

    def __init__(self, keys: list[SigningKey], issuer: str = ISSUER) -> None:
        self.keys = keys
        self.issuer = issuer
        self.fetched: list[str] = []
        self.down = False

    async def fetch(self, url: str) -> Any:
        self.fetched.append(url)
        if self.down:
            raise TimeoutError
        if url == ISSUER + "/.well-known/openid-configuration":
            return {
                "issuer": self.issuer,
                "jwks_uri": ISSUER + "/certs",
                "authorization_endpoint": ISSUER + "/auth",
                "token_endpoint": ISSUER + "/token",
            }
        assert url == ISSUER + "/certs"
        return {"keys": [k.jwk() for k in self.keys]}

    @property
    def jwks_fetches(self) -> int:
        return self.fetched.count(ISSUER + "/certs")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.rsa("k1")


@pytest.fixture
def idp(key: SigningKey) -> TestIdentityProvider:
    provider = TestIdentityProvider(users={"dana": {"groups": ["support"]}}, keys=[key])
    provider.issuer = ISSUER
    return provider


def verifier(provider: FakeProvider, clock: Clock | None = None, **settings: Any) -> OidcVerifier:
    options = OidcSettings(issuer=ISSUER, client_id=CLIENT_ID, **settings)
    return OidcVerifier(options, provider.fetch, monotonic=clock or Clock())


async def refused(v: OidcVerifier, token: str) -> str:
    with pytest.raises(AuthError) as error:
        await v.verify(token)
    assert token not in error.value.reason
    return error.value.reason


async def test_a_good_token_names_the_agent_and_their_queues(
    idp: TestIdentityProvider, key: SigningKey
) -> None:
    v = verifier(FakeProvider([key]))
    agent = await v.authenticate(idp.mint("dana"))
    assert (agent.name, agent.queues) == ("dana", frozenset({"support"}))
    assert agent.expires_at is not None
    assert agent.expires_at > time.time()


async def test_an_es256_key_works_too(idp: TestIdentityProvider) -> None:
    ec_key = SigningKey.ec("ec-1")
    v = verifier(FakeProvider([ec_key]))
    claims = await v.verify(ec_key.sign(idp.claims("dana")))
    assert claims["preferred_username"] == "dana"


async def test_wrong_issuer_or_audience_is_refused(idp: TestIdentityProvider, key: SigningKey) -> None:
    v = verifier(FakeProvider([key]))
    assert await refused(v, idp.mint("dana", iss="https://evil.example.com")) == "token from another issuer"
    assert await refused(v, idp.mint("dana", aud="another-app")) == "token not meant for this console"
    # several audiences: the authorized party must be this console
    assert await refused(v, idp.mint("dana", aud=[CLIENT_ID, "x"])) == "token not meant for this console"
    assert (await v.verify(idp.mint("dana", aud=[CLIENT_ID, "x"], azp=CLIENT_ID)))["sub"] == "sub-dana"


async def test_expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway(
    idp: TestIdentityProvider, key: SigningKey
) -> None:
    v = verifier(FakeProvider([key]), leeway_seconds=30)
    now = int(time.time())
    assert await refused(v, idp.mint("dana", iat=now - 600, exp=now - 31)) == "token expired"
    assert await v.verify(idp.mint("dana", iat=now - 600, exp=now - 10))  # within the leeway
    assert await refused(v, idp.mint("dana", nbf=now + 120)) == "token not yet valid"
    assert await refused(v, idp.mint("dana", iat=now + 120, exp=now + 600)) == "token not yet valid"
    assert await refused(v, idp.mint("dana", exp=None)) == "token lacks a required claim"


async def test_alg_none_is_refused(idp: TestIdentityProvider, key: SigningKey) -> None:
    v = verifier(FakeProvider([key]))
    header = _b64({"alg": "none", "typ": "JWT", "kid": "k1"})
    token = f"{header}.{_b64(idp.claims('dana'))}."
    assert await refused(v, token) == "token algorithm not accepted"


async def test_hs256_signed_with_the_public_key_is_refused(
    idp: TestIdentityProvider, key: SigningKey
) -> None:
    """Algorithm confusion: the RSA public key (PEM, as anyone can fetch it) used as an HMAC secret."""
    from cryptography.hazmat.primitives import serialization

    public_pem = key.private.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    body = _b64(idp.claims("dana"))
    import hashlib
    import hmac

    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    token = f"{header}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    v = verifier(FakeProvider([key]))
    assert await refused(v, token) == "token algorithm not accepted"
    # even configured by mistake it could not be: the settings refuse HS* and none
    with pytest.raises(ConfigError, match="asymmetric algorithms only"):
        load(_env(CALLHOOK_CONSOLE_OIDC_ALGORITHMS="RS256,HS256"))
    with pytest.raises(ConfigError, match="asymmetric algorithms only"):
        load(_env(CALLHOOK_CONSOLE_OIDC_ALGORITHMS="none"))


async def test_a_tampered_token_or_another_keys_signature_is_refused(
    idp: TestIdentityProvider, key: SigningKey
) -> None:
    v = verifier(FakeProvider([key]))
    header, _, signature = idp.mint("dana").split(".")
    forged = _b64(idp.claims("dana", groups=["*"]))
    assert await refused(v, f"{header}.{forged}.{signature}") == "token signature not valid"
    impostor = SigningKey.rsa("k1")  # same kid, another key
    assert await refused(v, impostor.sign(idp.claims("dana"))) == "token signature not valid"
    assert await refused(v, "not.a.token") == "not a valid token"


async def test_a_malformed_key_in_the_jwks_refuses_the_token_cleanly(
    idp: TestIdentityProvider, key: SigningKey
) -> None:
    provider = FakeProvider([key])
    broken = {**key.jwk(), "n": "!!not base64!!"}

    async def fetch(url: str) -> Any:
        document = await provider.fetch(url)
        return {"keys": [broken]} if url.endswith("/certs") else document

    v = OidcVerifier(OidcSettings(issuer=ISSUER, client_id=CLIENT_ID), fetch)
    assert await refused(v, idp.mint("dana")) == "token signature not valid"


async def test_an_unknown_kid_triggers_one_refresh_then_is_rate_limited(
    idp: TestIdentityProvider, key: SigningKey
) -> None:
    provider = FakeProvider([key])
    clock = Clock()
    v = verifier(provider, clock, jwks_min_refresh_seconds=30)
    await v.verify(idp.mint("dana"))
    assert provider.jwks_fetches == 1
    stranger = SigningKey.rsa("nobody-knows-me")
    clock.now += 31
    assert await refused(v, stranger.sign(idp.claims("dana"))) == "token signed by an unknown key"
    assert provider.jwks_fetches == 2  # one refresh for the unknown kid
    for _ in range(50):  # a flood of made-up kids: no further fetch within the period
        assert await refused(v, stranger.sign(idp.claims("dana"))) == "token signed by an unknown key"
    assert provider.jwks_fetches == 2
    clock.now += 31
    await refused(v, stranger.sign(idp.claims("dana")))
    assert provider.jwks_fetches == 3
    await v.verify(idp.mint("dana"))  # a known kid never fetches
    assert provider.jwks_fetches == 3


async def test_rotated_keys_are_picked_up_and_dropped_keys_stop_working(idp: TestIdentityProvider) -> None:
    provider = FakeProvider(idp.keys)
    clock = Clock()
    v = verifier(provider, clock)
    old_token = idp.mint("dana")
    await v.verify(old_token)
    idp.rotate(drop_old=False)  # the new key is published next to the old one, then signs
    provider.keys = idp.keys
    clock.now += 31
    await v.verify(idp.mint("dana"))  # unknown kid: refreshed, found
    assert provider.jwks_fetches == 2
    await v.verify(old_token)  # the old key is still published
    idp.rotate(drop_old=True)  # the provider drops every old key
    provider.keys = idp.keys
    clock.now += 3601  # past the cache's maximum age: fetched again on the next use
    assert await refused(v, old_token) == "token signed by an unknown key"
    await v.verify(idp.mint("dana"))


async def test_discovery_must_name_the_same_issuer_and_failures_are_503(
    idp: TestIdentityProvider, key: SigningKey
) -> None:
    v = verifier(FakeProvider([key], issuer=ISSUER + "/"))  # a trailing slash is another issuer
    with pytest.raises(AuthError) as error:
        await v.verify(idp.mint("dana"))
    assert (error.value.status, error.value.reason) == (503, "the identity provider is misconfigured")
    provider = FakeProvider([key])
    provider.down = True
    clock = Clock()
    v = verifier(provider, clock)
    with pytest.raises(AuthError) as error:
        await v.verify(idp.mint("dana"))
    assert (error.value.status, error.value.reason) == (503, "the identity provider is unavailable")
    provider.down = False
    with pytest.raises(AuthError):  # not asked again at once
        await v.verify(idp.mint("dana"))
    assert len(provider.fetched) == 1
    clock.now += 31
    await v.verify(idp.mint("dana"))


def test_queues_from_a_claim_directly_or_through_the_map() -> None:
    plain = OidcSettings(issuer=ISSUER, client_id=CLIENT_ID)
    agent = agent_from_claims(plain, {"preferred_username": "dana", "groups": ["support", "sales"]})
    assert agent.queues == frozenset({"support", "sales"})
    assert agent_from_claims(plain, {"email": "e@x", "groups": ["*"]}).queues is None
    mapped = OidcSettings(
        issuer=ISSUER,
        client_id=CLIENT_ID,
        queues_claim="realm_access.roles",
        queue_map={"support-agents": frozenset({"support"}), "leads": None},
    )
    claims = {"preferred_username": "erin", "realm_access": {"roles": ["support-agents", "offline_access"]}}
    assert agent_from_claims(mapped, claims).queues == frozenset({"support"})
    claims["realm_access"] = {"roles": ["leads"]}
    assert agent_from_claims(mapped, claims).queues is None
    with pytest.raises(AuthError) as error:  # "support" is not a mapped value: no queue at all
        agent_from_claims(mapped, {"preferred_username": "x", "realm_access": {"roles": ["support"]}})
    assert error.value.status == 403
    with pytest.raises(AuthError, match="names no agent"):
        agent_from_claims(plain, {"sub": "1", "groups": ["support"]})


def test_settings() -> None:
    config = load(
        _env(
            CALLHOOK_CONSOLE_OIDC_QUEUE_MAP="support-agents=support;cn=leads,ou=x=*",
            CALLHOOK_CONSOLE_OIDC_QUEUES_CLAIM="roles",
        )
    )
    assert config.oidc is not None
    assert config.agents == ()  # OIDC alone is enough
    assert config.oidc.queue_map == {"support-agents": frozenset({"support"}), "cn=leads,ou=x": None}
    with pytest.raises(ConfigError) as error:
        load(_env(CALLHOOK_CONSOLE_OIDC_ISSUER="http://idp.example.com", CALLHOOK_CONSOLE_OIDC_CLIENT_ID=""))
    assert "must be https" in str(error.value)
    assert "CLIENT_ID is required" in str(error.value)
    with pytest.raises(ConfigError, match="entry 1 is not value=queue"):
        load(_env(CALLHOOK_CONSOLE_OIDC_QUEUE_MAP="nothing"))


def _env(**overrides: str) -> dict[str, str]:
    return {"CALLHOOK_CONSOLE_OIDC_ISSUER": ISSUER, "CALLHOOK_CONSOLE_OIDC_CLIENT_ID": CLIENT_ID, **overrides}


def _b64(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def test_pyjwt_is_the_verifier() -> None:
    """No hand-rolled JWS: the signature check is PyJWT's (with cryptography)."""
    assert jwt.algorithms.has_crypto
