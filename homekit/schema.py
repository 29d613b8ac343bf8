"""The accessory schema: which accessories the bridge shows and how they are named.

Configuration, not code (the seeds' bridge "fetches configuration and accessory schema"):
a JSON file shipped beside this module, replaced by ``$HEATER_HOMEKIT_SCHEMA``. A file
that names an unknown kind, or misses what a kind needs, stops the bridge at start with
a message naming the entry — never a bridge that silently shows less.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SCHEMA = Path(__file__).with_name("accessories.json")

#: What each kind needs beside its name.
REQUIRED: dict[str, tuple[str, ...]] = {
    "heater": ("sensors",),
    "temperature": ("sensor",),
    "alarm": ("severity",),
    "cutoff": (),
    "latch": (),
}
SEVERITIES = ("FATAL", "CRITICAL", "WARNING")


class SchemaInvalid(ValueError):
    """The accessory schema cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class AccessorySpec:
    """One accessory: its kind, its name in the Home app, and the kind's options."""

    kind: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    manufacturer: str
    model: str
    accessories: tuple[AccessorySpec, ...]


def load_schema(path: Path = DEFAULT_SCHEMA) -> BridgeSpec:
    """Read and check a schema file (raises :class:`SchemaInvalid`)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaInvalid(f"{path}: {exc}") from None
    return parse_schema(data, str(path))


def parse_schema(data: Any, where: str = "schema") -> BridgeSpec:
    if not isinstance(data, dict) or not isinstance(data.get("accessories"), list):
        raise SchemaInvalid(f"{where}: expected an object with an 'accessories' list")
    bridge = data.get("bridge") or {}
    specs: list[AccessorySpec] = []
    names: set[str] = set()
    for index, entry in enumerate(data["accessories"]):
        at = f"{where}: accessories[{index}]"
        if not isinstance(entry, dict):
            raise SchemaInvalid(f"{at}: expected an object")
        kind, name = entry.get("kind"), entry.get("name")
        if kind not in REQUIRED:
            raise SchemaInvalid(f"{at}: unknown kind {kind!r}; known: {', '.join(REQUIRED)}")
        if not isinstance(name, str) or not name.strip():
            raise SchemaInvalid(f"{at}: a non-empty 'name' is required")
        if name in names:
            raise SchemaInvalid(f"{at}: the name {name!r} is used twice (the Home app tells accessories apart by name)")
        missing = [key for key in REQUIRED[kind] if key not in entry]
        if missing:
            raise SchemaInvalid(f"{at}: kind {kind!r} needs {', '.join(missing)}")
        if kind == "alarm" and entry["severity"] not in SEVERITIES:
            raise SchemaInvalid(f"{at}: severity must be one of {', '.join(SEVERITIES)}")
        names.add(name)
        specs.append(AccessorySpec(kind, name, {k: v for k, v in entry.items() if k not in ("kind", "name")}))
    if not specs:
        raise SchemaInvalid(f"{where}: no accessories")
    return BridgeSpec(
        name=str(bridge.get("name", "Heater")),
        manufacturer=str(bridge.get("manufacturer", "heater")),
        model=str(bridge.get("model", "HomeKit bridge")),
        accessories=tuple(specs),
    )
