"""Agents signed in by the company's identity provider: OIDC ID tokens checked against the issuer's keys.

The page runs the authorization code flow with PKCE as a public client (console/static/console.js) and hands
the **ID token** to the console exactly as a static token (``POST /api/session``, the WebSocket's ``hello``).
The ID token, not the access token: its audience is always the client id, it is always a JWT and it carries
the user's name and groups, whereas an access token may be opaque (Google), meant for another API (Entra's
Graph tokens cannot be verified by anyone but Microsoft) or lack the profile claims.

Verification (:class:`OidcVerifier`): the issuer's discovery document (its ``issuer`` must equal the
configured one exactly), its JWKS (cached; fetched again when a token names an unknown ``kid``, at most once
per ``jwks_min_refresh_seconds`` so a flood of made-up tokens cannot hammer the identity provider, and when
older than ``jwks_max_age_seconds``); only the configured asymmetric algorithms (``none`` and ``HS*`` can
never be configured: no algorithm confusion with a public key used as an HMAC secret); ``iss``, ``aud``,
``exp``, ``iat`` and ``nbf`` with a small leeway; ``azp`` when the token has several audiences. Every request
to the identity provider has a timeout and a size bound. Errors are :class:`AuthError` with a short public
reason; tokens are never logged or put into an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from yarl import URL

from console.config import Agent, OidcSettings

Fetch = Callable[[str], Awaitable[Any]]
MAX_DOCUMENT_BYTES = 256 * 1024

# Which key type each accepted algorithm needs (a JWK of another type is never used for it).
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class AuthError(Exception):
    """A refused sign-in: ``reason`` is safe to show the browser; ``status`` 401, 403 or 503."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Discovery:
    issuer: str
    jwks_uri: str
    authorization_endpoint: str
    token_endpoint: str
    end_session_endpoint: str | None = None


@dataclass(slots=True)
class _Cache:
    discovery: Discovery | None = None
    discovery_tried_at: float | None = None
    discovery_error: AuthError | None = None  # the last failure, repeated until the next attempt
    keys: list[dict[str, Any]] = field(default_factory=list)
    keys_fetched_at: float | None = None  # a successful fetch
    keys_tried_at: float | None = None  # any attempt, successful or not (the rate limit)
    jwks_fetches: int = 0


def http_fetcher(session: aiohttp.ClientSession, timeout_seconds: float) -> Fetch:
    """GET a JSON document: a timeout on the whole request, no redirects, at most 256 KiB."""

    async def fetch(url: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        async with session.get(
            url, timeout=timeout, allow_redirects=False, headers={"Accept": "application/json"}
        ) as response:
            if response.status != 200:
                raise AuthError("the identity provider is unavailable", 503)
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise AuthError("the identity provider is unavailable", 503)
            return json.loads(body)

    return fetch


class OidcVerifier:
    def __init__(
        self,
        settings: OidcSettings,
        fetch: Fetch,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._fetch = fetch
        self._monotonic = monotonic
        self._cache = _Cache()
        self._lock = asyncio.Lock()

    @property
    def jwks_fetches(self) -> int:
        return self._cache.jwks_fetches

    # ------------------------------------------------------------------------------ the provider
    async def discovery(self) -> Discovery:
        """The issuer's endpoints (fetched once; a failure is retried at most every min-refresh period)."""
        if (cached := self._cache.discovery) is not None:
            return cached
        async with self._lock:
            if (cached := self._cached_discovery()) is not None:  # found while this one waited
                return cached
            now = self._monotonic()
            tried = self._cache.discovery_tried_at
            if tried is not None and now - tried < self.settings.jwks_min_refresh_seconds:
                error = self._cache.discovery_error
                raise AuthError(error.reason if error else "the identity provider is unavailable", 503)
            self._cache.discovery_tried_at = now
            try:
                document = await self._get(
                    self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                )
                found = self._check_discovery(document)
            except AuthError as error:
                self._cache.discovery_error = error
                raise
            self._cache.discovery = found
            return found

    def _cached_discovery(self) -> Discovery | None:
        return self._cache.discovery

    def _check_discovery(self, document: Any) -> Discovery:
        if not isinstance(document, dict) or document.get("issuer") != self.settings.issuer:
            raise AuthError("the identity provider is misconfigured", 503)  # issuer must match exactly
        endpoints = {}
        for name in ("jwks_uri", "authorization_endpoint", "token_endpoint"):
            value = document.get(name)
            if not isinstance(value, str) or not _secure_url(value, self.settings.issuer):
                raise AuthError("the identity provider is misconfigured", 503)
            endpoints[name] = value
        end_session = document.get("end_session_endpoint")
        return Discovery(
            issuer=self.settings.issuer,
            end_session_endpoint=end_session
            if isinstance(end_session, str) and _secure_url(end_session, self.settings.issuer)
            else None,
            **endpoints,
        )

    async def _get(self, url: str) -> Any:
        try:
            return await self._fetch(url)
        except AuthError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
            raise AuthError("the identity provider is unavailable", 503) from None

    async def _keys(self, refresh: bool) -> list[dict[str, Any]]:
        """The JWKS's keys; fetched if none yet, if too old, or if ``refresh`` and the rate limit allows."""
        cache = self._cache
        now = self._monotonic()
        max_age = self.settings.jwks_max_age_seconds
        stale = cache.keys_fetched_at is None or now - cache.keys_fetched_at > max_age
        if not stale and not refresh:
            return cache.keys
        discovery = await self.discovery()
        async with self._lock:
            now = self._monotonic()
            tried = cache.keys_tried_at
            if tried is not None and now - tried < self.settings.jwks_min_refresh_seconds:
                if cache.keys_fetched_at is None:
                    raise AuthError("the identity provider is unavailable", 503)
                return cache.keys  # refreshed a moment ago (or another token is refreshing): no new fetch
            cache.keys_tried_at = now
            cache.jwks_fetches += 1
            document = await self._get(discovery.jwks_uri)
            keys = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise AuthError("the identity provider is misconfigured", 503)
            cache.keys = [k for k in keys if isinstance(k, dict) and k.get("use", "sig") == "sig"]
            cache.keys_fetched_at = now
            return cache.keys

    # ------------------------------------------------------------------------------ a token
    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and times are checked."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("not a valid token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.settings.algorithms:
            raise AuthError("token algorithm not accepted")
        kid = header.get("kid")
        key = _pick(await self._keys(refresh=False), kid, algorithm)
        if key is None:  # a key the IdP rotated in since we last looked: look once more (rate-limited)
            key = _pick(await self._keys(refresh=True), kid, algorithm)
        if key is None:
            raise AuthError("token signed by an unknown key")
        try:
            signing_key = jwt.PyJWK(key, algorithm)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=signing_key.key,
                algorithms=[algorithm],
                audience=self.settings.client_id,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["iss", "aud", "exp", "iat", "sub"], "verify_iat": True},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token not meant for this console") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token from another issuer") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError("token lacks a required claim") from None
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):  # incl. a malformed key in the JWKS
            raise AuthError("token signature not valid") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.settings.client_id:
            raise AuthError("token not meant for this console")
        return claims

    async def authenticate(self, token: str) -> Agent:
        return agent_from_claims(self.settings, await self.verify(token))


def agent_from_claims(settings: OidcSettings, claims: Mapping[str, Any]) -> Agent:
    """The agent a verified token describes: its name, and the queues its groups/roles claim grants."""
    name = next(
        (v for c in settings.name_claims if isinstance(v := _claim(claims, c), str) and v.strip()), None
    )
    if name is None:
        raise AuthError("the token names no agent")
    raw = _claim(claims, settings.queues_claim)
    if isinstance(raw, str):
        values = set(raw.replace(",", " ").split())
    elif isinstance(raw, list):
        values = {v for v in raw if isinstance(v, str)}
    else:
        values = set()
    queues: set[str] = set()
    every = False
    for value in values:
        if settings.queue_map:
            granted = settings.queue_map.get(value, frozenset())
        else:
            granted = None if value == "*" else frozenset({value})
        if granted is None:
            every = True
        else:
            queues |= granted
    if not every and not queues:
        raise AuthError("no queues for this agent", 403)
    exp = claims.get("exp")
    return Agent(
        name.strip(),
        "",
        None if every else frozenset(queues),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (Keycloak's ``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _pick(keys: list[dict[str, Any]], kid: Any, algorithm: str) -> dict[str, Any] | None:
    kty = _KEY_TYPES.get(algorithm[:2])
    fitting = [k for k in keys if k.get("kty") == kty and k.get("alg") in (None, algorithm)]
    if kid is None:  # a provider without key ids: only if exactly one key could have signed it
        return fitting[0] if len(fitting) == 1 else None
    return next((k for k in fitting if k.get("kid") == kid), None)


def _secure_url(value: str, issuer: str) -> bool:
    """An https URL, or http when the issuer itself is plain http on a loopback host (tests, local dev)."""
    url = URL(value)
    if not url.host:
        return False
    if url.scheme == "https":
        return True
    return url.scheme == "http" and URL(issuer).scheme == "http" and is_loopback(URL(issuer).host)


def is_loopback(host: str | None) -> bool:
    return host in ("localhost", "127.0.0.1", "::1", "[::1]")


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and len(token) < 16384
