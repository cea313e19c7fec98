"""Shared pieces of the fencing tests: telling when a child process has stopped (SIGSTOP)."""

from __future__ import annotations

from pathlib import Path

import anyio

SCRIPT = Path(__file__).with_name("_fencing_proc.py")


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat ('T': stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


async def wait_until_stopped(pid: int, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while process_state(pid) != "T":  # noqa: ASYNC110 (polling the kernel's process state)
            await anyio.sleep(0.005)
