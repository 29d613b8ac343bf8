"""Resident memory and CPU of a process tree, read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def tree_pids(root: int) -> list[int]:
    tree = children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, []))
    return pids


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except OSError:
            pass
    return total / 2**20


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLOCK_TICKS


def process_label(pid: int) -> str:
    """A short readable name for a process: its program and the first argument that names a service."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return str(pid)
    program = Path(words[0]).name
    rest = [w for w in words[1:] if not w.startswith("-")]
    return " ".join([program, *rest[:3]])[:60]


def cpu_by_process(root: int, seconds: float) -> list[tuple[str, float]]:
    """CPU of every process of the tree over ``seconds`` (% of one core), busiest first."""
    pids = tree_pids(root)
    before = {pid: cpu_seconds([pid]) for pid in pids}
    time.sleep(seconds)
    used = [(process_label(pid), 100.0 * (cpu_seconds([pid]) - before[pid]) / seconds) for pid in pids]
    return sorted(used, key=lambda item: -item[1])
