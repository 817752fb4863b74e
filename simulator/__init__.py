"""A local stand-in for Meta's side of WhatsApp calls: Graph API, signed webhooks, the users' phones.

Import what you need from its modules (``simulator.sim.Simulator``, ``simulator.config.load``, ...); this
package module stays empty so that ``callhook --help`` does not load aiortc. See docs/simulator.md.
"""
