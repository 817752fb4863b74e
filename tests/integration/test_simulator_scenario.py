"""Scenarios and ``callhook sim``: calls at a rate against a business, and the summary of what happened."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from callhook.ice import restrict_host_addresses
from simulator import cli
from simulator.business import EchoBusiness
from simulator.config import CallTiming, SimulatorConfig, load
from simulator.errors import ScenarioError
from simulator.faults import FaultKind
from simulator.net import LinkProfile, NetProfile
from simulator.scenario import NOT_HUNG_UP, Scenario, percentile, run_scenario
from simulator.sim import Simulator

TOKEN = "graph-token"
SECRET = "app-secret"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@pytest.fixture
async def sim_and_business() -> AsyncIterator[tuple[Simulator, EchoBusiness]]:
    config = SimulatorConfig(
        app_secret=SECRET, access_token=TOKEN, graph_port=0, timing=CallTiming(answer_window_seconds=10.0)
    )
    async with Simulator(config) as sim:
        number = config.numbers[0].phone_number_id
        business = EchoBusiness(
            graph_url=sim.graph_url, access_token=TOKEN, app_secret=SECRET, phone_number_id=number
        )
        async with business:
            sim.webhooks.url = business.webhook_url
            yield sim, business


async def test_a_scenario_answers_every_call_and_measures_setup_and_audio(
    sim_and_business: tuple[Simulator, EchoBusiness],
) -> None:
    sim, business = sim_and_business
    scenario = Scenario(calls=3, rate_per_second=10.0, hold_seconds=1.0, hangup="random")
    summary = await run_scenario(sim, scenario, business_hangup=business.hangup, rng=random.Random(3))
    assert summary.placed == 3
    assert summary.answered == 3
    assert summary.failed_by_reason == {}
    assert summary.ok
    assert summary.audio_matched == 3
    assert len(summary.setup_pre_accept()) == 3
    assert all(
        0 < pre < acc for pre, acc in zip(summary.setup_pre_accept(), summary.setup_accept(), strict=True)
    )
    assert len(summary.round_trips()) == 3
    reasons = {o.end_reason for o in summary.outcomes}
    assert reasons <= {"phone_hangup", "business_hangup"}
    data = summary.as_dict()
    assert data["setup_accept_ms"]["n"] == 3
    assert data["simulator"]["call_errors"] == 0
    text = summary.format()
    assert "answered 3" in text
    assert "audio matched in 3 of 3" in text
    assert sim.calls == []  # outcomes kept, calls and recordings dropped


async def test_a_business_that_does_not_hang_up_is_counted(
    sim_and_business: tuple[Simulator, EchoBusiness],
) -> None:
    sim, _business = sim_and_business
    scenario = Scenario(calls=1, hold_seconds=0.1, hangup="business", business_grace_seconds=0.2)
    summary = await run_scenario(sim, scenario, keep_calls=True)
    assert summary.answered == 1
    assert summary.failed_by_reason == {NOT_HUNG_UP: 1}
    assert not summary.ok
    (call,) = sim.calls
    assert call.end_reason == "phone_hangup"  # the phone gave up waiting


def test_scenarios_refuse_nonsense_and_percentiles_are_nearest_rank() -> None:
    with pytest.raises(ScenarioError):
        Scenario(rate_per_second=0)
    with pytest.raises(ScenarioError):
        Scenario(hangup="nobody")  # type: ignore[arg-type]
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_cli_flags_override_the_environment() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "sim",
            "--ingress-url",
            "http://127.0.0.1:9999/hook",
            "--graph-port",
            "0",
            "--calls",
            "5",
            "--duplicates",
            "0.5",
            "--reorder",
            "1",
            "--batch",
            "4",
            "--stale",
            "0.2",
            "--delay",
            "0.1",
            "--graph-fault",
            "pre_accept:503:next=2",
            "--graph-fault",
            "accept:delay=0.5",
        ]
    )
    env = {
        "CALLHOOK_APP_SECRETS": "s",
        "CALLHOOK_ACCESS_TOKEN": "t",
        "CALLHOOK_SIM_GRAPH_FAULTS": "connect:429",
    }
    config = cli._with_flags(load(env), args)
    assert args.handler is cli.run
    assert config.ingress_url == "http://127.0.0.1:9999/hook"
    assert config.graph_port == 0
    switches = config.switches
    assert (switches.duplicate_fraction, switches.reorder_fraction, switches.batch_size) == (0.5, 1.0, 4)
    assert (switches.stale_fraction, switches.delay_seconds) == (0.2, 0.1)
    assert [r.kind for r in config.graph_faults] == [
        FaultKind.THROTTLE,
        FaultKind.SERVER_ERROR,
        FaultKind.DELAY,
    ]


def test_cli_network_flags_refine_the_environment_per_direction() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    env = {"CALLHOOK_APP_SECRETS": "s", "CALLHOOK_ACCESS_TOKEN": "t", "CALLHOOK_SIM_NET_DOWN": "delay=40ms"}
    untouched = cli._with_flags(load(env), parser.parse_args(["sim"]))
    assert untouched.net == NetProfile(down=LinkProfile(delay_seconds=0.04))
    args = parser.parse_args(["sim", "--net", "loss=3%,jitter=30ms", "--net-up", "burst=2%,burst_len=4"])
    config = cli._with_flags(load(env), args)
    both = LinkProfile(loss=0.03, jitter_seconds=0.03)
    assert config.net == NetProfile(up=replace(both, burst_loss=0.02, burst_length=4.0), down=both)
    refined = cli._with_flags(load(env), parser.parse_args(["sim", "--net-down", "loss=1%"]))
    assert refined.net.down == LinkProfile(delay_seconds=0.04, loss=0.01)
    with pytest.raises(SystemExit, match="network item"):
        cli._with_flags(load(env), parser.parse_args(["sim", "--net-up", "lose=3%"]))
    assert parser.parse_args(["sim", "--dtmf", "12#"]).dtmf == "12#"
    with pytest.raises(SystemExit, match="DTMF"):
        cli._digits("12x")


def test_callhook_sim_self_check_runs_calls_end_to_end() -> None:
    env = {
        **os.environ,
        "CALLHOOK_ICE_HOST_ADDRESSES": "127.0.0.1",
        "CALLHOOK_LOG_LEVEL": "warning",
    }
    for name in ("CALLHOOK_APP_SECRETS", "CALLHOOK_ACCESS_TOKEN", "CALLHOOK_SIM_INGRESS_URL"):
        env.pop(name, None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "callhook",
            "sim",
            "--self-check",
            "--calls",
            "2",
            "--rate",
            "10",
            "--hold",
            "1",
            "--graph-port",
            "0",
            "--json",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["placed"] == 2
    assert summary["answered"] == 2
    assert summary["audio_matched"] == 2
    assert summary["setup_pre_accept_ms"]["n"] == 2
    assert "Graph API at http://127.0.0.1:" in result.stderr


def test_callhook_sim_self_check_presses_keys_over_a_lossy_network() -> None:
    env = {**os.environ, "CALLHOOK_ICE_HOST_ADDRESSES": "127.0.0.1", "CALLHOOK_LOG_LEVEL": "warning"}
    for name in ("CALLHOOK_APP_SECRETS", "CALLHOOK_ACCESS_TOKEN", "CALLHOOK_SIM_INGRESS_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "callhook", "sim", "--self-check", "--calls", "2", "--rate", "10"]
    # 12 s, not 5: the echo business is stock aiortc, which mangles some tone bursts on a lossy link; with ~7
    # bursts a call the share heard swung from 3/7 to 6/7 between runs (2 runs in 10 under the 1/2 bar), with
    # ~18 it stays at 0.7-0.9.
    command += ["--hold", "12", "--graph-port", "0", "--json", "--net-up", "loss=3%", "--dtmf", "12#"]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["answered"] == 2
    assert summary["dtmf_pressed_calls"] == 2
    assert summary["dtmf_received_calls"] == 2  # the reference business got 1, 2, # in order, once each
    heard = summary["heard_at_socket"]
    assert heard["bursts_heard"] > 0
    assert heard["packets_lost"] == 0  # only the way to the business was lossy
    assert [call["dtmf_pressed"] for call in summary["calls"]] == ["12#", "12#"]
    assert "phone network up (phone -> business) loss=3%, down clean" in result.stderr
