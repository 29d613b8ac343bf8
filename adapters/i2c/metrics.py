"""Prometheus metrics of the I2C adapter, declared once (one process, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

COMMANDS = Counter(
    "heater_i2c_commands_total", "Relay commands handled, by action and result", ["action", "result"]
)
REFUSALS = Counter("heater_i2c_refusals_total", "Relay commands refused by the controller, by reason", ["reason"])
SAFETY_ACTIONS = Counter(
    "heater_i2c_safety_actions_total", "Outputs the controller switched off on its own, by reason", ["reason"]
)
I2C_ERRORS = Counter("heater_i2c_errors_total", "Failed I2C transactions (NACK, no device), by operation", ["operation"])
READBACK_MISMATCHES = Counter(
    "heater_i2c_readback_mismatches_total", "Readbacks that did not confirm the outputs asked for"
)
KICKS = Counter("heater_i2c_kicks_total", "Watchdog kicks sent to the Pico")
SKIPPED = Counter("heater_i2c_skipped_total", "Messages that failed to decode, by topic and reason", ["topic", "reason"])
RESETS = Counter("heater_i2c_operator_resets_total", "Operator resets handled, by result", ["result"])
TRIP_SECONDS = Gauge(
    "heater_i2c_fatal_trip_seconds", "From the FATAL hook starting to the trip confirmed by readback"
)
OUTPUTS = Gauge("heater_i2c_outputs", "Relay contacts as last read back (1 = energised)", ["relay"])
TRIP_LATCHED = Gauge(
    "heater_i2c_trip_latched", "1 while the Pico holds its power cut-off trip latched (as last read back)"
)
