"""Shared pieces of the failure suite: agent processes (``_failure_proc.py``) and their output."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

SCRIPT = Path(__file__).with_name("_failure_proc.py")


class Child:
    """An agent process running ``_failure_proc.py``; reads its stdout line by line."""

    def __init__(self, process: Process, stderr: Path) -> None:
        self.process = process
        self.stderr = stderr
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)

    async def line(self) -> str:
        try:
            return (await self._out.receive_until(b"\n", 10_000)).decode()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            raise AssertionError(f"child exited early; its stderr:\n{self.log()}") from None

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]


Spawn = Callable[..., Awaitable[Child]]


async def expect(child: Child, prefix: str) -> list[str]:
    """Read the child's lines until one starts with ``prefix``; return its words."""
    while True:
        line = await child.line()
        if line.startswith(prefix):
            return line.split()
