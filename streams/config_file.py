"""The bootstrap configuration file: ConfigurationServer does not start without one.

Under Kubernetes it is a ConfigMap mounted into the pod; locally ``heater up`` writes the
defaults into the run directory the first time (``config/heater.json``) and keeps what an
operator changed there afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streams.config_rules import document_of, parse_limits
from streams.heater_config import ConfigInvalid, HeaterLimits
from streams.settings import Settings


def read_bootstrap(settings: Settings) -> dict[str, Any]:
    """The bootstrap document, validated; :class:`ConfigInvalid` says what is missing or wrong, and where."""
    path = settings.config_file
    if path is None:
        raise ConfigInvalid("no bootstrap configuration: HEATER_CONFIG_FILE is not set (the path of a JSON file "
                            '{"limits": {...}}, a mounted ConfigMap under Kubernetes)')
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigInvalid(f"no bootstrap configuration: {path} does not exist (HEATER_CONFIG_FILE)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(f"bootstrap configuration {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigInvalid(f"bootstrap configuration {path} is not JSON: line {exc.lineno}: {exc.msg}") from None
    try:
        parse_limits(data)
    except ConfigInvalid as exc:
        raise ConfigInvalid(f"bootstrap configuration {path}: {exc}") from None
    return data


def write_default(path: Path) -> None:
    """The built-in limits as a bootstrap file, unless one is there already."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document_of(HeaterLimits()), indent=2) + "\n")


__all__ = ["read_bootstrap", "write_default"]
