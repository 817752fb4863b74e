"""The console's settings: agents, their tokens and queues (console/config.py)."""

from __future__ import annotations

import pytest

from callhook.env import ConfigError
from console.config import load, parse_agents


def test_agents_with_their_queues() -> None:
    config = load({"CALLHOOK_CONSOLE_AGENTS": "alice:t-alice:support+sales; bob:t-bob:*"})
    alice = config.agent_by_token("t-alice")
    bob = config.agent_by_token("t-bob")
    assert alice is not None
    assert bob is not None
    assert (alice.name, alice.may_take("support"), alice.may_take("vip")) == ("alice", True, False)
    assert bob.may_take("anything")
    assert config.agent_by_token("t-nobody") is None
    assert config.agent_by_token("") is None


def test_bad_agents_are_refused_without_echoing_tokens() -> None:
    with pytest.raises(ConfigError) as error:
        load({"CALLHOOK_CONSOLE_AGENTS": "alice:secret-one;bob:secret-one:*;bob:secret-two:*"})
    text = str(error.value)
    assert "entry 1 is not name:token:queues" in text
    assert "names must be unique" in text
    assert "secret" not in text
    with pytest.raises(ConfigError, match=r"CALLHOOK_CONSOLE_AGENTS .* or CALLHOOK_CONSOLE_OIDC_ISSUER"):
        load({})


def test_duplicate_tokens_are_refused() -> None:
    _, problems = parse_agents("a:same:*;b:same:*")
    assert problems == ["CALLHOOK_CONSOLE_AGENTS: tokens must be unique"]
