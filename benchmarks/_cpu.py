"""CPU seconds spent by this process (the client side: runtimes, baselines, peer clients) and by a
server process tree (PostgreSQL's postmaster and its backends, or a peer's server), read from
/proc so that one number covers backends that came and went during a measurement: a reaped
backend's time is in its parent's cutime/cstime."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2:].split()


def _tree_seconds(root: int) -> float:
    """utime+stime of root and its live children, plus what root reaped (cutime+cstime)."""
    fields = _stat(root)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        child = _stat(int(entry.name))
        if child is not None and int(child[1]) == root:
            total += int(child[11]) + int(child[12])
    return total / _TICK


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class CpuUse:
    client: float
    server: float

    @property
    def total(self) -> float:
        return self.client + self.server

    def per(self, delivered: int, unit: int = 10_000) -> CpuUse:
        scale = unit / delivered if delivered else float("nan")
        return CpuUse(round(self.client * scale, 3), round(self.server * scale, 3))


class CpuMeter:
    """``with meter.measure() as use:`` ... then ``use.client`` / ``use.server`` (seconds)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _now(self) -> tuple[float, float]:
        server = _tree_seconds(self.server_pid) if self.server_pid else 0.0
        return time.process_time(), server

    def start(self) -> tuple[float, float]:
        return self._now()

    def stop(self, started: tuple[float, float]) -> CpuUse:
        client, server = self._now()
        return CpuUse(round(client - started[0], 3), round(server - started[1], 3))
