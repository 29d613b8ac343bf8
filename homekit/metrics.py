"""The bridge's Prometheus metrics, declared once (beside the platform's own in :mod:`streams.metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FEED_CONNECTED = Gauge("heater_homekit_feed_connected", "1 while the bridge has its backend feed")
FEED_STATES = Counter("heater_homekit_feed_states_total", "Platform states received from the feed")
FEED_LOSSES = Counter("heater_homekit_feed_losses_total", "Times the feed connection was lost or refused")
COMMANDS = Counter("heater_homekit_commands_total", "Writes from the phone by command and outcome", ["command", "outcome"])
PAIRED = Gauge("heater_homekit_paired", "1 when at least one controller is paired")
