"""The platform's configuration as data: its schema, its versions, and what may change at run time.

ConfigurationServer publishes each version of the configuration on the compacted ``config``
topic under its own key (``heater/v<N>``), so compaction keeps every version — the history —
and the highest version is the one in force. Every service follows the topic (its platform
watch, :mod:`streams.platform_watch`) and swaps its limits when a new version arrives.

A document is ``{"limits": {FIELD: NUMBER, ...}}`` over :class:`HeaterLimits`'s fields: an
unknown section or field, a value of the wrong type or limits out of order is refused with a
message naming it. At run time a safety limit may only move to the strict side
(:data:`STRICTER`): loosening one needs the operator to change the bootstrap file, as a
commissioning step, not a call on a live heater.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from streams.codec import DecodeError, decode
from streams.heater_config import ConfigInvalid, HeaterLimits
from streams.records import ConfigDocument

log = logging.getLogger(__name__)

KEY_PREFIX = "heater/v"
SECTIONS = ("limits",)

#: Safety limits and their strict side: "lower" (a lower value acts sooner) or "higher".
#: Fields not listed tune behaviour without weakening a safety rule.
STRICTER: dict[str, str] = {
    "warning_c": "lower", "critical_c": "lower", "fatal_c": "lower", "disaster_c": "lower",
    "stale_after_s": "lower", "implausible_jump_c": "lower", "disagreement_c": "lower",
    "max_rise_c_per_s": "lower", "rise_while_closed_c": "lower", "max_target_c": "lower",
    "ignition_safety_s": "lower", "ignition_attempts": "lower", "spark_s": "lower", "lease_s": "lower",
    "no_change_period_s": "lower", "min_change_c": "higher",
}


def key_for(version: int) -> bytes:
    return f"{KEY_PREFIX}{version}".encode()


def parse_limits(data: Mapping[str, Any]) -> HeaterLimits:
    """The limits a document sets (missing fields keep their defaults); :class:`ConfigInvalid` names what is wrong."""
    if not isinstance(data, Mapping):
        raise ConfigInvalid("a configuration is a JSON object")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigInvalid(f"unknown section(s) {', '.join(unknown)}; expected {', '.join(SECTIONS)}")
    raw = data.get("limits", {})
    if not isinstance(raw, Mapping):
        raise ConfigInvalid("limits must be an object of FIELD: NUMBER")
    types = {f.name: f.type for f in fields(HeaterLimits)}
    changes: dict[str, float | int] = {}
    for name, value in raw.items():
        if name not in types:
            raise ConfigInvalid(f"unknown limit {name!r}; known: {', '.join(sorted(types))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigInvalid(f"limit {name} must be a number, not {value!r}")
        if types[name] in (int, "int") and not float(value).is_integer():
            raise ConfigInvalid(f"limit {name} must be a whole number, not {value!r}")
        changes[name] = int(value) if types[name] in (int, "int") else float(value)
    return replace(HeaterLimits(), **changes).check()


def document_of(limits: HeaterLimits) -> dict[str, Any]:
    return {"limits": asdict(limits)}


def loosened(current: HeaterLimits, proposed: HeaterLimits) -> list[str]:
    """The safety limits ``proposed`` moves to the lenient side, each as ``name: old → new``."""
    found = []
    for name, strict_side in STRICTER.items():
        old, new = getattr(current, name), getattr(proposed, name)
        if (new > old) if strict_side == "lower" else (new < old):
            found.append(f"{name}: {old} → {new}")
    return found


@dataclass
class ConfigBook:
    """Every version seen on ``config``; the highest valid one is in force."""

    versions: dict[int, ConfigDocument] = field(default_factory=dict)
    refused: int = 0

    def apply(self, key: bytes | None, payload: bytes | None) -> bool:
        """One message of ``config``; True when the version in force changed."""
        before = self.version
        try:
            document = decode(payload, ConfigDocument)
            parse_limits(document.data)
        except (DecodeError, ConfigInvalid) as exc:
            self.refused += 1
            log.error("config: refused %r: %s; the version in force stays", key, exc)
            return False
        self.versions[document.version] = document
        return self.version != before

    @property
    def version(self) -> int:
        return max(self.versions, default=0)

    @property
    def current(self) -> ConfigDocument | None:
        return self.versions.get(self.version)

    def limits(self, default: HeaterLimits) -> HeaterLimits:
        """The limits in force: the newest published version, else ``default`` (nothing published yet)."""
        current = self.current
        return default if current is None else parse_limits(current.data)


__all__ = ["ConfigBook", "KEY_PREFIX", "STRICTER", "document_of", "key_for", "loosened", "parse_limits"]
