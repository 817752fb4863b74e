"""The console's settings, ``CALLHOOK_CONSOLE_*`` (pure).

``CALLHOOK_CONSOLE_AGENTS``: who may sign in, ``;``-separated ``name:token:queues``, queues ``+``-separated
or ``*`` for every queue, e.g. ``alice:s3cret:support+sales;bob:t0ken:*``. A token is the agent's password:
give each agent a long random one.

``CALLHOOK_CONSOLE_OIDC_*``: agents sign in through the company's identity provider instead (or as well):
the issuer, the client id (the ID tokens' audience), which claims name the agent and which claim grants the
queues, mapped to queues by ``CALLHOOK_CONSOLE_OIDC_QUEUE_MAP`` (``group=queue+queue;admins=*``) or, without a
map, naming the queues itself. docs/handoff.md#signing-in.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from callhook.env import EnvReader

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


# Asymmetric only: ``none`` and the HMAC family can never be configured (no algorithm confusion).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    token: str = field(repr=False)
    queues: frozenset[str] | None  # None: every queue
    expires_at: float | None = None  # an ID token's exp (Unix time); a static token never expires

    def may_take(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    client_id: str
    name_claims: tuple[str, ...] = ("preferred_username", "email")
    queues_claim: str = "groups"
    # a claim value -> the queues it grants (None: every queue); empty: the values are queue names
    queue_map: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    scopes: str = "openid profile email"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_seconds: float = 60.0
    timeout_seconds: float = 5.0
    jwks_min_refresh_seconds: float = 30.0
    jwks_max_age_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    amqp_url: str = DEFAULT_AMQP_URL
    host: str = "0.0.0.0"
    port: int = 8090
    agents: tuple[Agent, ...] = ()
    oidc: OidcSettings | None = None
    # what the browser's RTCPeerConnection is given (STUN/TURN URLs); none: host candidates only
    ice_servers: tuple[str, ...] = ()
    request_timeout_seconds: float = 10.0
    log_level: str = "info"
    log_format: str = "json"

    def agent_by_token(self, token: str) -> Agent | None:
        """The agent with this token (compared in constant time), or None."""
        found = None
        for agent in self.agents:
            if hmac.compare_digest(agent.token.encode(), token.encode()):
                found = agent
        return found


def parse_agents(text: str) -> tuple[tuple[Agent, ...], list[str]]:
    """Agents from ``CALLHOOK_CONSOLE_AGENTS``, and the problems found (without the tokens)."""
    agents: list[Agent] = []
    problems: list[str] = []
    for index, item in enumerate(filter(None, (part.strip() for part in text.split(";"))), 1):
        pieces = item.split(":")
        if len(pieces) != 3 or not all(pieces):
            problems.append(f"CALLHOOK_CONSOLE_AGENTS: entry {index} is not name:token:queues")
            continue
        name, token, queues = pieces
        chosen = None if queues == "*" else frozenset(q for q in queues.split("+") if q)
        agents.append(Agent(name, token, chosen))
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        problems.append("CALLHOOK_CONSOLE_AGENTS: agent names must be unique")
    if len({a.token for a in agents}) != len(agents):
        problems.append("CALLHOOK_CONSOLE_AGENTS: tokens must be unique")
    return tuple(agents), problems


def parse_queue_map(text: str) -> tuple[dict[str, frozenset[str] | None], list[str]]:
    """``CALLHOOK_CONSOLE_OIDC_QUEUE_MAP``: ``value=queue+queue;value=*`` (a value may itself hold ``=``)."""
    mapping: dict[str, frozenset[str] | None] = {}
    problems: list[str] = []
    for index, item in enumerate(filter(None, (part.strip() for part in text.split(";"))), 1):
        value, sep, queues = item.rpartition("=")
        chosen = None if queues == "*" else frozenset(q for q in queues.split("+") if q)
        if not sep or not value or not queues or (chosen is not None and not chosen):
            problems.append(f"CALLHOOK_CONSOLE_OIDC_QUEUE_MAP: entry {index} is not value=queue+queue")
            continue
        mapping[value] = chosen
    return mapping, problems


def _oidc(r: EnvReader, env: Mapping[str, str]) -> OidcSettings | None:
    issuer = env.get("CALLHOOK_CONSOLE_OIDC_ISSUER", "").strip()
    if not issuer:
        return None
    r.url("CALLHOOK_CONSOLE_OIDC_ISSUER", issuer, schemes=("https", "http"))
    parsed = URL(issuer)
    if parsed.scheme == "http" and parsed.host not in ("localhost", "127.0.0.1", "::1"):
        r.problems.append("CALLHOOK_CONSOLE_OIDC_ISSUER must be https (http only on localhost)")
    client_id = env.get("CALLHOOK_CONSOLE_OIDC_CLIENT_ID", "").strip()
    if not client_id:
        r.problems.append("CALLHOOK_CONSOLE_OIDC_CLIENT_ID is required with CALLHOOK_CONSOLE_OIDC_ISSUER")
    algorithms = r.list("CALLHOOK_CONSOLE_OIDC_ALGORITHMS", ("RS256", "ES256"))
    if not algorithms or not set(algorithms) <= ASYMMETRIC_ALGORITHMS:
        r.problems.append(
            "CALLHOOK_CONSOLE_OIDC_ALGORITHMS: asymmetric algorithms only ("
            + ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            + ")"
        )
    queue_map, problems = parse_queue_map(env.get("CALLHOOK_CONSOLE_OIDC_QUEUE_MAP", ""))
    r.problems.extend(problems)
    name_claims = r.list("CALLHOOK_CONSOLE_OIDC_NAME_CLAIMS", ("preferred_username", "email"))
    if not name_claims:
        r.problems.append("CALLHOOK_CONSOLE_OIDC_NAME_CLAIMS: at least one claim")
    scopes = r.str("CALLHOOK_CONSOLE_OIDC_SCOPES", "openid profile email")
    if "openid" not in scopes.split():
        r.problems.append("CALLHOOK_CONSOLE_OIDC_SCOPES must include openid")
    return OidcSettings(
        issuer=issuer,
        client_id=client_id,
        name_claims=name_claims,
        queues_claim=r.str("CALLHOOK_CONSOLE_OIDC_QUEUES_CLAIM", "groups"),
        queue_map=queue_map,
        scopes=scopes,
        algorithms=algorithms,
        leeway_seconds=r.float("CALLHOOK_CONSOLE_OIDC_LEEWAY_SECONDS", 60.0, minimum=0, maximum=300),
        timeout_seconds=r.float("CALLHOOK_CONSOLE_OIDC_TIMEOUT_SECONDS", 5.0, minimum=0.5, maximum=30),
        jwks_min_refresh_seconds=r.float(
            "CALLHOOK_CONSOLE_OIDC_JWKS_MIN_REFRESH_SECONDS", 30.0, minimum=1, maximum=3600
        ),
    )


def load(env: Mapping[str, str]) -> ConsoleConfig:
    """Parse the console's settings; raises :class:`callhook.env.ConfigError` listing every problem."""
    r = EnvReader(env)
    agents, problems = parse_agents(env.get("CALLHOOK_CONSOLE_AGENTS", ""))
    r.problems.extend(problems)
    oidc = _oidc(r, env)
    if not agents and not problems and oidc is None:
        r.problems.append(
            "CALLHOOK_CONSOLE_AGENTS (name:token:queues;...) or CALLHOOK_CONSOLE_OIDC_ISSUER is required"
        )
    config = ConsoleConfig(
        amqp_url=r.url("CALLHOOK_AMQP_URL", DEFAULT_AMQP_URL, schemes=("amqp", "amqps")),
        host=r.str("CALLHOOK_CONSOLE_HOST", "0.0.0.0"),
        port=r.int("CALLHOOK_CONSOLE_PORT", 8090, minimum=0, maximum=65535),
        agents=agents,
        oidc=oidc,
        ice_servers=r.list("CALLHOOK_CONSOLE_ICE_SERVERS"),
        request_timeout_seconds=r.float(
            "CALLHOOK_CONSOLE_REQUEST_TIMEOUT_SECONDS", 10.0, minimum=0.5, maximum=120
        ),
        log_level=r.choice("CALLHOOK_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=r.choice("CALLHOOK_LOG_FORMAT", "json", ("json", "console")),
    )
    r.finish()
    return config
