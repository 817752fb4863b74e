"""Hand a call to a human: transfer, queues of calls waiting for an agent, and the agent's WebRTC leg.

``wire`` (message types) and ``board`` (the view of every queue, rebuilt from the owners' announcements)
and ``config`` are pure; ``hub`` is the worker's RabbitMQ side (announcements, commands from consoles);
``transfer`` runs one transferred call (hold audio, waiting, the relay to the agent). docs/handoff.md has
the design.
"""
