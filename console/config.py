"""The console's settings, ``CALLHOOK_CONSOLE_*`` (pure).

``CALLHOOK_CONSOLE_AGENTS``: who may sign in, ``;``-separated ``name:token:queues``, queues ``+``-separated
or ``*`` for every queue, e.g. ``alice:s3cret:support+sales;bob:t0ken:*``. A token is the agent's password:
give each agent a long random one. (An OIDC/JWT issuer is not supported yet.)
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from callhook.env import EnvReader

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    token: str = field(repr=False)
    queues: frozenset[str] | None  # None: every queue

    def may_take(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    amqp_url: str = DEFAULT_AMQP_URL
    host: str = "0.0.0.0"
    port: int = 8090
    agents: tuple[Agent, ...] = ()
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


def load(env: Mapping[str, str]) -> ConsoleConfig:
    """Parse the console's settings; raises :class:`callhook.env.ConfigError` listing every problem."""
    r = EnvReader(env)
    agents, problems = parse_agents(env.get("CALLHOOK_CONSOLE_AGENTS", ""))
    r.problems.extend(problems)
    if not agents and not problems:
        r.problems.append("CALLHOOK_CONSOLE_AGENTS is required (name:token:queues;...)")
    config = ConsoleConfig(
        amqp_url=r.url("CALLHOOK_AMQP_URL", DEFAULT_AMQP_URL, schemes=("amqp", "amqps")),
        host=r.str("CALLHOOK_CONSOLE_HOST", "0.0.0.0"),
        port=r.int("CALLHOOK_CONSOLE_PORT", 8090, minimum=0, maximum=65535),
        agents=agents,
        ice_servers=r.list("CALLHOOK_CONSOLE_ICE_SERVERS"),
        request_timeout_seconds=r.float(
            "CALLHOOK_CONSOLE_REQUEST_TIMEOUT_SECONDS", 10.0, minimum=0.5, maximum=120
        ),
        log_level=r.choice("CALLHOOK_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=r.choice("CALLHOOK_LOG_FORMAT", "json", ("json", "console")),
    )
    r.finish()
    return config
