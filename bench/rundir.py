"""Where a bench keeps its run directories: one the caller names (kept for its logs) or a temporary one."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


def run_root(stack: contextlib.ExitStack, kept: Path | None, prefix: str) -> Path:
    """``kept`` (created, left in place after the run), else a directory removed when ``stack`` closes."""
    if kept is not None:
        root = kept.resolve()
        root.mkdir(parents=True, exist_ok=True)
        return root
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
