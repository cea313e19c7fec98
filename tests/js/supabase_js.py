"""Drives tests/js/agent_client.mjs (an agent on the official supabase-js) from pytest: one JSON
command per line in, one JSON event per line out."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.npm_install import ensure_installed

HERE = Path(__file__).parent
PROGRAM = HERE / "agent_client.mjs"
Event = dict[str, Any]


def require_node() -> str:
    """The node executable, after ``npm ci`` if the pinned packages are not installed yet.
    Skips (with the reason) only where node is absent; a failed install fails the test."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the supabase-js client tests need Node 20+ (CI has it)")
    ensure_installed(HERE, HERE / "node_modules" / "@supabase" / "supabase-js" / "package.json")
    return node


class JsAgent:
    """One running agent_client.mjs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[Event]] = {}
        self._ids = itertools.count(1)
        self.seen: list[Event] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            event: Event = json.loads(raw)
            self.seen.append(event)
            waiter = self._replies.pop(event.get("id") or 0, None) if "reply" in event else None
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
            else:
                self._events.put_nowait(event)

    async def command(self, cmd: str, *, within: float = 10.0, **fields: Any) -> Event:
        """Send a command and wait for its reply (a failure in the program fails the test)."""
        assert self._process.stdin is not None
        command_id = next(self._ids)
        waiter: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._replies[command_id] = waiter
        self._process.stdin.write((json.dumps({"cmd": cmd, "id": command_id, **fields}) + "\n").encode())
        await self._process.stdin.drain()
        reply = await asyncio.wait_for(waiter, within)
        assert "failed" not in reply, reply["failed"]
        return reply

    async def until(self, predicate: Callable[[Event], bool], within: float = 10.0) -> Event:
        """The first event (not a reply) for which ``predicate`` is true."""
        async with asyncio.timeout(within):
            while True:
                event = await self._events.get()
                if predicate(event):
                    return event

    def statuses(self, topic: str) -> list[str]:
        """Every subscribe status reported for ``topic`` so far."""
        return [e["status"] for e in self.seen if e.get("topic") == topic and "status" in e]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.command("exit", within=5)
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self._process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


@contextlib.asynccontextmanager
async def js_agent(url: str, key: str, token: str, *, vsn: str | None) -> AsyncIterator[JsAgent]:
    """Start agent_client.mjs against a stand-in; ``vsn`` None leaves supabase-js's default."""
    node = require_node()
    env = {**os.environ, "SUPABASE_URL": url, "SUPABASE_KEY": key, "AGENT_TOKEN": token}
    env.pop("REALTIME_VSN", None)
    if vsn is not None:
        env["REALTIME_VSN"] = vsn
    process = await asyncio.create_subprocess_exec(
        node, str(PROGRAM), cwd=HERE, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    agent = JsAgent(process)
    try:
        ready = await agent.until(lambda e: bool(e.get("ready")), within=20)
        assert ready["vsn"] == (vsn or "2.0.0"), ready
        yield agent
    finally:
        await agent.close()
