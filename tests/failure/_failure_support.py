"""Shared pieces of the failure suite: agent processes (``_failure_proc.py``) and their output."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.agent_processes import Child

SCRIPT = Path(__file__).with_name("_failure_proc.py")
Spawn = Callable[..., Awaitable[Child]]


async def expect(child: Child, prefix: str) -> list[str]:
    """Read the child's lines until one starts with ``prefix``; return its words."""
    while True:
        line = await child.line()
        if line.startswith(prefix):
            return line.split()
