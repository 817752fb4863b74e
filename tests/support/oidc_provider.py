"""A small OpenID Connect provider for the console's tests: aiohttp on 127.0.0.1, keys made on the spot.

Discovery (``/.well-known/openid-configuration``), the JWKS (``/jwks``), ``/authorize`` (a login form: type a
known user name; the code flow's parameters are checked: client id, an exactly registered redirect URI, a
``state``, a ``nonce``, PKCE with S256 required) and ``/token`` (the code once only, for the same client and
redirect URI, and only with the PKCE verifier that hashes to the challenge; CORS for the allowed origins,
as an identity provider serving single-page apps does). ID tokens are RS256 with a ``kid``; :meth:`rotate`
brings a new key in (and drops the old one when asked), :meth:`mint` signs any claims for the unit tests.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from yarl import URL

CLIENT_ID = "callhook-console"


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: PrivateKeyTypes

    @staticmethod
    def rsa(kid: str) -> SigningKey:
        return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @staticmethod
    def ec(kid: str) -> SigningKey:
        return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK (what the provider publishes)."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            assert isinstance(self.private, ec.EllipticCurvePrivateKey)
            data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **header})


@dataclass
class _Code:
    user: str
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    expires: float


@dataclass
class TestIdentityProvider:
    """``users``: user name -> extra claims (e.g. ``{"groups": [...]}``) put into that user's ID token."""

    users: dict[str, dict[str, Any]]
    redirect_uris: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    client_id: str = CLIENT_ID
    id_token_seconds: int = 300
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.rsa("key-1")])
    jwks_requests: int = 0
    token_refusals: list[str] = field(default_factory=list)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    issuer: str = ""

    __test__ = False  # not a pytest class

    # ---------------------------------------------------------------------------------- keys, tokens
    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, *, drop_old: bool) -> SigningKey:
        key = SigningKey.rsa(f"key-{len(self.keys) + 1}-{secrets.token_hex(2)}")
        self.keys = [key] if drop_old else [*self.keys, key]
        return key

    def claims(self, user: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": f"sub-{user}",
            "preferred_username": user,
            "iat": now,
            "exp": now + self.id_token_seconds,
            **self.users.get(user, {}),
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def mint(self, user: str, **overrides: Any) -> str:
        return self.signing_key.sign(self.claims(user, **overrides))

    # ---------------------------------------------------------------------------------- the server
    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize_form)
        app.router.add_post("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_route("OPTIONS", "/token", self._preflight)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.issuer = f"http://127.0.0.1:{port}"
        return self.issuer

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> TestIdentityProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response({"keys": [k.jwk() for k in self.keys]})

    def _check_authorize(self, params: Any) -> str | None:
        if params.get("response_type") != "code":
            return "response_type must be code"
        if params.get("client_id") != self.client_id:
            return "unknown client"
        if params.get("redirect_uri") not in self.redirect_uris:
            return "redirect_uri not registered"  # never redirect there: an open redirect otherwise
        if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) < 43:
            return "PKCE with S256 is required"
        if not params.get("state") or not params.get("nonce"):
            return "state and nonce are required"
        if "openid" not in params.get("scope", "").split():
            return "scope must include openid"
        return None

    async def _authorize_form(self, request: web.Request) -> web.Response:
        problem = self._check_authorize(request.query)
        if problem:
            return web.Response(status=400, text=problem)
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in request.query.items()
        )
        page = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Test IdP</title></head><body>"
            f'<h1>Test IdP</h1><form method="post" action="/authorize">{hidden}'
            '<label for="username">Username</label> <input id="username" name="username" required>'
            '<button type="submit">Continue</button></form></body></html>'
        )
        return web.Response(text=page, content_type="text/html")

    async def _authorize(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        problem = self._check_authorize(params)
        if problem:
            return web.Response(status=400, text=problem)
        if params.get("username") not in self.users:
            return web.Response(status=401, text="unknown user")
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            user=params["username"],
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            challenge=params["code_challenge"],
            nonce=params["nonce"],
            expires=time.monotonic() + 60,
        )
        target = URL(params["redirect_uri"]).update_query(code=code, state=params["state"])
        raise web.HTTPFound(str(target))

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin and origin in self.allowed_origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        headers |= {"Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "Content-Type"}
        return web.Response(status=204, headers=headers)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        cors = self._cors(request)

        def refuse(reason: str) -> web.Response:
            self.token_refusals.append(reason)
            return web.json_response({"error": "invalid_grant"}, status=400, headers=cors)

        if form.get("grant_type") != "authorization_code":
            return refuse("grant_type")
        code = self._codes.pop(str(form.get("code", "")), None)  # once only
        if code is None or code.expires < time.monotonic():
            return refuse("unknown or used code")
        if form.get("client_id") != code.client_id or form.get("redirect_uri") != code.redirect_uri:
            return refuse("client or redirect_uri differs")
        verifier = str(form.get("code_verifier", ""))
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not secrets.compare_digest(digest, code.challenge):
            return refuse("PKCE verifier does not match")
        id_token = self.mint(code.user, nonce=code.nonce)
        return web.json_response(
            {
                "id_token": id_token,
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": self.id_token_seconds,
            },
            headers={**cors, "Cache-Control": "no-store"},
        )


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (what the page makes in the browser)."""
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
