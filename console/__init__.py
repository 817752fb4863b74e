"""``callhook console``: the agents' web console (aiohttp, stateless). docs/handoff.md."""
