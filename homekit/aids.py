"""Stable accessory ids (AIDs) for accessories that come and go, kept beside the pairing state.

A controller knows an accessory by its AID: rooms, scenes and automations in the Home app
point to it. The accessories the schema lists get theirs from their order; those made
from the registry (one per service) appear and disappear at run time, so each gets an AID
derived from its key (FNV-1a, as Home Assistant's HomeKit bridge does), probed past any
AID already in use, and written to ``aids.json`` (mode 0600) so it never changes — across
bridge restarts, and when a service that was removed comes back.

The file also keeps which of them the bridge showed last, so a restarted bridge shows the
same accessories before its feed has answered (each with a fault until it has): the set a
controller sees, and HAP's configuration number, change only when the platform changes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

AIDS_FILE = "aids.json"
#: 1 is the bridge itself; HAP-python never hands out 7 (iOS mishandles it).
RESERVED = frozenset({1, 7})
AID_MAX = 2**32 - 1


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def candidate_aids(key: str) -> Iterable[int]:
    """The AIDs ``key`` may take, first choice first: its hash, then the next ones up (wrapping)."""
    start = fnv1a_32(key.encode())
    for step in range(AID_MAX):
        aid = (start + step) % AID_MAX + 1
        if aid not in RESERVED:
            yield aid


def choose_aid(key: str, taken: Iterable[int]) -> int:
    """The first candidate of ``key`` not taken."""
    used = set(taken)
    return next(aid for aid in candidate_aids(key) if aid not in used)


class AidStore:
    """``aids.json``: key → AID (never forgotten), and the keys shown last."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / AIDS_FILE
        self.aids: dict[str, int] = {}
        self.shown: list[str] = []
        try:
            data = json.loads(self.path.read_text())
            self.aids = {str(k): int(v) for k, v in data.get("aids", {}).items()}
            self.shown = [str(k) for k in data.get("shown", []) if k in self.aids]
        except (OSError, ValueError, AttributeError):
            if self.path.exists():
                log.warning("%s unreadable: accessory ids start afresh (controllers may need to re-add them)", self.path)

    def aid_for(self, key: str, taken: Iterable[int]) -> int:
        """``key``'s AID: the one it had, unless something else holds it now; a new one is kept at once."""
        used = set(taken)
        aid = self.aids.get(key)
        if aid is None or aid in used:
            others = {a for k, a in self.aids.items() if k != key}
            aid = choose_aid(key, used | others)
            self.aids[key] = aid
            self.save()
        return aid

    def set_shown(self, keys: Iterable[str]) -> None:
        shown = sorted(keys)
        if shown != self.shown:
            self.shown = shown
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"aids": self.aids, "shown": self.shown}, out, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
