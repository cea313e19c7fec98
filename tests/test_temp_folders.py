"""Tests and helpers leave nothing in the temporary folder."""

from __future__ import annotations

from pathlib import Path

from agent_runtime.local import embedded
from agent_runtime.testing import TestDatabases
from tests.agent_processes import children


async def test_agent_process_logs_are_removed(tmp_path: Path) -> None:
    """The folder of children's stderr logs goes when the group ends."""
    script = tmp_path / "hello.py"
    script.write_text("print('hi')\n")
    async with children(script) as group:
        child = await group.start()
        assert (await child.line()).strip() == "hi"
        logs = group._logs
        assert logs.exists()
    assert not logs.exists()


def test_private_servers_remove_their_folder() -> None:
    """TestDatabases and scratch_dir folders are removed by stop() / the caller."""
    databases = TestDatabases()
    databases.start()
    root = databases.root
    assert (root / "pgdata" / "PG_VERSION").exists()
    databases.stop()
    assert not root.exists()
    assert embedded.status(root / "pgdata") is None
