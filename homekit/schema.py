"""The accessory schema: which accessories the bridge shows and how they are named.

Configuration, not code (the seeds' bridge "fetches configuration and accessory schema"):
a JSON file shipped beside this module, replaced by ``$HEATER_HOMEKIT_SCHEMA``. A file
that names an unknown kind, or misses what a kind needs, stops the bridge at start with
a message naming the entry — never a bridge that silently shows less. One ``services``
entry (``name_format`` with ``{name}``) is a template, not an accessory: the bridge names
each registered service's accessory with it.
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
    "exceptions": (),
}
#: The kind of the template entry: one accessory per registered service, named by ``name_format``.
SERVICES_KIND = "services"
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
class ServicesSpec:
    """The template of the per-service accessories: ``name_format`` with a ``{name}`` field."""

    name_format: str

    def name(self, service: str) -> str:
        return self.name_format.format(name=service)

    def spec(self, service: str) -> AccessorySpec:
        return AccessorySpec("service", self.name(service), {"service": service})


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    manufacturer: str
    model: str
    accessories: tuple[AccessorySpec, ...]
    services: ServicesSpec | None = None
    """One accessory per registered service, or none when the schema has no ``services`` entry."""


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
    services: ServicesSpec | None = None
    for index, entry in enumerate(data["accessories"]):
        at = f"{where}: accessories[{index}]"
        if not isinstance(entry, dict):
            raise SchemaInvalid(f"{at}: expected an object")
        kind, name = entry.get("kind"), entry.get("name")
        if kind == SERVICES_KIND:
            if services is not None:
                raise SchemaInvalid(f"{at}: a second 'services' entry (one template names every service)")
            services = parse_services(entry, at)
            continue
        if kind not in REQUIRED:
            raise SchemaInvalid(f"{at}: unknown kind {kind!r}; known: {', '.join([*REQUIRED, SERVICES_KIND])}")
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
        services=services,
    )


def parse_services(entry: dict[str, Any], at: str) -> ServicesSpec:
    """The ``services`` template; its format must name the service (``{name}``) and nothing else."""
    fmt = entry.get("name_format")
    if not isinstance(fmt, str) or "{name}" not in fmt:
        raise SchemaInvalid(f"{at}: kind 'services' needs a 'name_format' with a {{name}} field, e.g. \"Service {{name}}\"")
    try:
        fmt.format(name="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise SchemaInvalid(f"{at}: name_format {fmt!r} names more than {{name}}: {exc!r}") from None
    return ServicesSpec(fmt)
