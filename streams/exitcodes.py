"""Exit codes, one table for every process of the platform.

Anything else is a crash, which the process manager may restart.
"""

DONE = 0
"""Done: a heating job reached its target, or a clean shutdown."""

HEATING_FAILED = 1
"""A heating job failed (no temperature change, ignition lock-out)."""

STAY_DOWN = 3
"""FATAL: stay down. Neither the process manager nor a Job's failure policy restarts it."""

NOT_RESTARTED = (DONE, STAY_DOWN)
"""Codes after which a long-running service is not restarted."""

RELEASED = 75
"""An edge adapter that came up halted saw the operator reset: restart it normally.
(A stream service that came up halted starts in the same process instead.)

Not in the table of expected codes on purpose: the process manager (or Kubernetes)
treats it as a crash and restarts the process, which then starts unhalted."""

UNDELIVERED = 4
"""A record the broker refused on every resend: the service fails loudly (a crash, restarted)
rather than go on with the record lost."""

DEPENDENCY_MISSING = 2
"""A dependency (broker, Vault, bootstrap config) is missing at start-up: a clear error, then a
crash exit that the process manager retries."""


# -- command-line tools (``heater replay``): the BSD sysexits values, so scripts can tell why ----

USAGE = 64
"""A bad argument (a range, a speed): the message says which and what is expected."""

DATA_ERROR = 65
"""Malformed input (a recording's line): the message names the file and the line."""

NO_INPUT = 66
"""An input file that is missing or unreadable."""

UNKNOWN_TOPIC = 68
"""A topic the broker does not have (or with too few partitions for the recording)."""

CANNOT_WRITE = 73
"""An output file that cannot be written."""

CONFIG = 78
"""Invalid settings (the broker's TLS/SASL configuration)."""

INTERRUPTED = 130
"""Stopped by the user (Ctrl-C)."""
