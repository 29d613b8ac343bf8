"""StateRegistry's rules: who runs, who is missing, who is not allowed — over plain records.

Inputs are heartbeats (:mod:`streams.heartbeats`), ticks that carry what discovery says
should be running (the process manager locally, the Kubernetes API in production), and an
operator's "stop/start watching" for a service. Outputs are verdicts the service turns into
alarms:

* an **unauthorized** sender — a name not on Vault's allowed list, or a known name with
  another identity — is FATAL: something that is not ours talks on the platform's topics;
* a service discovery expects but whose beats stopped for :attr:`RegistryLimits.missing_after_s`
  is **missing** (CRITICAL), and **back** (cleared) with its next beat;
* nothing is judged missing while the registry does not act (the platform latched: control
  services are down on purpose), nor within the bound after it acts again or after
  discovery starts expecting a service again (the services an operator reset restarts all
  come up at once), so a service is reported missing only once it had its time to start.

Times are the registry's own receipt times (one clock), never a sender's — except the
FATAL's, which is the sender's beat time, so that a replay names the same occurrence. A
service is judged from when discovery first expected it, so one that takes a while to start
is not missing meanwhile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Mapping

from streams.allowlist import is_allowed
from streams.records import Heartbeat


@dataclass(frozen=True)
class RegistryLimits:
    missing_after_s: float = 20.0
    """Beats come every 0.5 s; a Faust worker's start, rebalance or a broker hiccup pauses them for seconds."""


@dataclass(frozen=True)
class ServiceEntry:
    """What the registry knows of one service: its last beat, and whether it is watched and missing."""

    name: str
    instance: str = ""
    identity: str = ""
    version: str = ""
    phase: str = ""
    seen_at: float | None = None
    expected_since: float | None = None
    watched: bool = True
    missing: bool = False

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    def material(self) -> tuple[Any, ...]:
        """What is worth a table write: everything but the time of the last beat (every 0.5 s)."""
        return (self.instance, self.identity, self.version, self.phase, self.expected_since, self.watched, self.missing)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ServiceEntry":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass(frozen=True)
class Verdict:
    """One thing an operator must hear: ``unauthorized`` (FATAL), ``missing`` (CRITICAL) or ``back`` (clear)."""

    kind: str
    service: str
    message: str
    at: float


@dataclass
class Registry:
    """The table of services, and the rules over it."""

    limits: RegistryLimits = field(default_factory=RegistryLimits)
    services: dict[str, ServiceEntry] = field(default_factory=dict)
    strangers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Unauthorized senders already reported, by :func:`stranger_key` (one FATAL each, replays included)."""
    judging_since: float | None = None
    """When the registry last started acting; nobody is missing before ``judging_since + missing_after_s``."""

    def on_beat(self, beat: Heartbeat, allowed: Mapping[str, str], at: float) -> tuple[ServiceEntry | None, list[Verdict]]:
        """A heartbeat received at ``at``: the entry, if it changed in more than its time, and the verdicts."""
        identity = beat.identity or beat.service
        if not is_allowed(allowed, beat.service, identity):
            key = stranger_key(beat.service, identity, beat.instance)
            if key in self.strangers:
                self.strangers[key]["last_seen_at"] = at
                return None, []
            why = "is not on the allowed list" if beat.service not in allowed else f"presents identity {identity!r}, not its own"
            message = f"unauthorized service {beat.service!r} (instance {beat.instance}) {why}"
            self.strangers[key] = {"service": beat.service, "identity": identity, "instance": beat.instance,
                                   "first_beat_at": beat.at, "first_seen_at": at, "last_seen_at": at, "why": why}
            return None, [Verdict("unauthorized", beat.service, message, beat.at)]
        before = self.services.get(beat.service)
        entry = replace(before or ServiceEntry(beat.service), instance=beat.instance, identity=identity,
                        version=beat.version, phase=beat.phase, seen_at=at, missing=False)
        self.services[beat.service] = entry
        back = before is not None and before.missing
        verdicts = [Verdict("back", beat.service, f"{beat.service} beats again ({beat.phase})", at)] if back else []
        changed = before is None or before.material() != entry.material()
        return (entry if changed else None), verdicts

    def on_tick(self, expected: Iterable[str], at: float, acting: bool) -> tuple[list[ServiceEntry], list[Verdict]]:
        """Discovery's view at ``at``: the entries that changed and the services now missing."""
        if not acting:
            self.judging_since = None
        elif self.judging_since is None:
            self.judging_since = at
        changed: list[ServiceEntry] = []
        verdicts: list[Verdict] = []
        bound = self.limits.missing_after_s
        expected = set(expected)
        for name in sorted(expected | set(self.services)):
            entry = before = self.services.get(name, ServiceEntry(name))
            if name not in expected:
                entry = replace(entry, expected_since=None, missing=False)
                if before.missing:
                    verdicts.append(Verdict("back", name, f"{name} is no longer expected to run", at))
            elif entry.expected_since is None:
                entry = replace(entry, expected_since=at)
            if self.judging_since is None:  # not acting: follow what discovery expects, judge nobody
                if entry != before:
                    self.services[name] = entry
                    changed.append(entry)
                continue
            since = [t for t in (entry.seen_at, entry.expected_since, self.judging_since) if t is not None]
            last = max(since, default=at)
            if name in expected and entry.watched and not entry.missing and at - last > bound:
                entry = replace(entry, missing=True)
                silent = "never beat" if entry.seen_at is None else f"silent for {at - entry.seen_at:.1f} s"
                verdicts.append(Verdict("missing", name, f"{name} should be running but is {silent} (bound {bound:.0f} s)", at))
            if entry != before:
                self.services[name] = entry
                changed.append(entry)
        return changed, verdicts

    def set_watched(self, name: str, watched: bool, at: float) -> tuple[ServiceEntry, list[Verdict]]:
        """An operator stops (or resumes) watching a service; a missing one it stops watching is cleared."""
        entry = self.services.get(name, ServiceEntry(name))
        verdicts = [Verdict("back", name, f"{name} no longer watched", at)] if entry.missing and not watched else []
        entry = replace(entry, watched=watched, missing=entry.missing and watched)
        self.services[name] = entry
        return entry, verdicts

    def view(self, at: float) -> dict[str, Any]:
        return {
            name: entry.to_row() | {"silent_s": None if entry.seen_at is None else round(at - entry.seen_at, 3)}
            for name, entry in sorted(self.services.items())
        }


def stranger_key(service: str, identity: str, instance: str) -> str:
    return f"{service}|{identity}|{instance}"


__all__ = ["Registry", "RegistryLimits", "ServiceEntry", "Verdict", "stranger_key"]
