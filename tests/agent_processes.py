"""Agent processes for tests: start a script with ``sys.executable``, read its stdout line by line,
and make sure none is left running afterwards, whatever happened."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream


class Child:
    """A running script; its stderr goes to a file shown when it exits early."""

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


class Children:
    """Starts children of one script; :func:`children` kills the ones still running at the end."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.started: list[Child] = []
        self._logs = Path(tempfile.mkdtemp(prefix="ar-proc-"))

    async def start(self, *argv: str) -> Child:
        err = self._logs / f"{len(self.started)}.stderr"
        with err.open("wb") as errf:
            proc = await anyio.open_process([sys.executable, str(self.script), *argv], stdout=subprocess.PIPE,
                                            stderr=errf)
        child = Child(proc, err)
        self.started.append(child)
        return child


@asynccontextmanager
async def children(script: Path) -> AsyncIterator[Children]:
    group = Children(script)
    try:
        yield group
    finally:
        with anyio.CancelScope(shield=True):
            for child in group.started:
                if child.process.returncode is None:
                    child.process.kill()
                await child.process.wait()
                await child.process.aclose()
            shutil.rmtree(group._logs, ignore_errors=True)  # leave nothing in the temp folder
