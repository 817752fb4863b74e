"""The local deployment harness lives in :mod:`simulator.local` (the demo uses it too)."""

from simulator.local import (
    ACCESS_TOKEN,
    APP_SECRET,
    VERIFY_TOKEN,
    Process,
    System,
    free_port,
    scrape,
    wait_ready,
)

__all__ = [
    "ACCESS_TOKEN",
    "APP_SECRET",
    "VERIFY_TOKEN",
    "Process",
    "System",
    "free_port",
    "scrape",
    "wait_ready",
]
