"""The Pico's non-volatile memory: the trip latch, kept in a JSON file.

A real burner control keeps its lock-out in flash so a power cycle cannot clear
it; here the run directory plays the flash.  Writes are atomic (temp file,
fsync, rename) so a kill -9 mid-write leaves either the old or the new state.
An unreadable file counts as *tripped*: losing the memory must never
re-energise the heater.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NVRAM_FILENAME = "pico-nvram.json"
NVRAM_VERSION = 1


@dataclass(slots=True)
class NvramState:
    """What survives a restart."""

    trip_latched: bool = False
    tripped_at: float | None = None
    trip_count: int = 0
    reset_at: float | None = None
    version: int = NVRAM_VERSION


class Nvram:
    """Load and store :class:`NvramState` in ``<run_dir>/pico-nvram.json``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / NVRAM_FILENAME

    def load(self) -> NvramState:
        if not self.path.exists():
            return NvramState()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return NvramState(
                trip_latched=bool(raw["trip_latched"]),
                tripped_at=raw.get("tripped_at"),
                trip_count=int(raw.get("trip_count", 0)),
                reset_at=raw.get("reset_at"),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("NVRAM %s unreadable (%s): treating the trip as latched", self.path, exc)
            return NvramState(trip_latched=True)

    def save(self, state: NvramState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nvram-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(asdict(state), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
