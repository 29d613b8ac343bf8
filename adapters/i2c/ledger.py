"""The adapter's own non-volatile memory for operator resets: used nonces and read position.

A reset releases the Pico's hardware latch, so a replayed reset must be refused even
after the adapter, the broker or both restarted: the used nonces live in a file under
``<run_dir>/i2c/`` (like the Pico's NVRAM), written atomically before the reset
sequence is sent.  The ``operatorReset`` read position lives beside them so a restart
neither re-reads old records nor skips new ones.  An unreadable file refuses every
reset issued before it was found unreadable: losing the memory must never make an
old reset usable again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LEDGER_FILENAME = "operator-resets.json"
MAX_NONCES = 1000


@dataclass
class LedgerState:
    """What survives a restart."""

    used_nonces: dict[str, float] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    last_release: dict[str, Any] | None = None
    not_before: float = 0.0


class ResetLedger:
    """Load and store :class:`LedgerState` in ``<directory>/operator-resets.json``."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LEDGER_FILENAME
        self.state = self._load()

    @property
    def used_nonces(self) -> dict[str, float]:
        """Nonce → when it was used (a ``Container`` for :func:`verify_reset`)."""
        return self.state.used_nonces

    def _load(self) -> LedgerState:
        if not self.path.exists():
            return LedgerState()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return LedgerState(
                used_nonces={str(k): float(v) for k, v in raw["used_nonces"].items()},
                offsets={int(k): int(v) for k, v in raw.get("offsets", {}).items()},
                last_release=raw.get("last_release"),
                not_before=float(raw.get("not_before", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("reset ledger %s unreadable (%s): refusing every reset issued before now", self.path, exc)
            return LedgerState(not_before=time.time())

    def mark_used(self, nonce: str, at: float) -> None:
        """Record a nonce as used, durably, before acting on its reset."""
        nonces = self.state.used_nonces
        nonces[nonce] = at
        if len(nonces) > MAX_NONCES:
            for old in sorted(nonces, key=nonces.__getitem__)[: len(nonces) - MAX_NONCES]:
                del nonces[old]
        self._save()

    def set_offset(self, partition: int, offset: int) -> None:
        self.state.offsets[partition] = offset
        self._save()

    def record_release(self, reset_id: str, operator: str, issued_at: float, at: float, occurrences: list[str]) -> None:
        self.state.last_release = {"reset_id": reset_id, "operator": operator, "issued_at": issued_at, "at": at,
                                   "occurrences": list(occurrences)}
        self._save()

    def _save(self) -> None:
        state = self.state
        data = {
            "used_nonces": state.used_nonces,
            "offsets": {str(k): v for k, v in state.offsets.items()},
            "last_release": state.last_release,
            "not_before": state.not_before,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
