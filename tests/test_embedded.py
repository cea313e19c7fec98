"""The embedded local database: start-up races, and running as root without widening any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from agent_runtime import ConfigurationError
from agent_runtime.local import embedded

START = "import sys; from pathlib import Path; from agent_runtime.local import embedded; " \
        "print(embedded.ensure_running(Path(sys.argv[1])).url())"

as_root_only = pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="runs only as root")


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = embedded.scratch_dir("ar-embedded-")
    try:
        yield path
    finally:
        embedded.stop(path / "pgdata")
        shutil.rmtree(path, ignore_errors=True)


def _start_in_processes(data_dir: Path, n: int) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen([sys.executable, "-c", START, str(data_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_two_fresh_processes_start_one_server(scratch: Path) -> None:
    """Two processes starting the same fresh data folder at once both succeed, on one server."""
    results = _start_in_processes(scratch / "pgdata", 2)
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    assert results[0].stdout == results[1].stdout and results[0].stdout.startswith("postgresql://")
    assert embedded.status(scratch / "pgdata") is not None


async def test_a_shared_server_is_durable_and_a_test_server_is_not(scratch: Path, conn: asyncpg.Connection) -> None:
    """The user's server runs with fsync on whatever its auto.conf says (the command line wins);
    the private test server (TestDatabases) runs without fsync and synchronous commit."""
    server = embedded.ensure_running(scratch / "pgdata")
    other = await asyncpg.connect(server.url())
    try:
        await other.execute("alter system set fsync = off")
    finally:
        await other.close()
    embedded.stop(scratch / "pgdata")
    other = await asyncpg.connect(embedded.ensure_running(scratch / "pgdata").url())
    try:
        assert await other.fetchval("show fsync") == "on"
    finally:
        await other.close()
    assert await conn.fetchval("show fsync") == "off"
    assert await conn.fetchval("show synchronous_commit") == "off"


@as_root_only
def test_root_default_is_outside_any_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root the default data folder is below /var/lib, not in root's private home."""
    monkeypatch.delenv("AGENT_RUNTIME_HOME", raising=False)
    assert embedded.default_data_dir() == Path("/var/lib/agent_runtime/root/pgdata")


def _modes(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_mode for p in path.parents}


@as_root_only
def test_root_never_widens_a_private_folder(scratch: Path) -> None:
    """A data folder inside a drwx------ folder is refused with the reason; no permission changes."""
    private = scratch / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    data_dir = private / "agent" / "pgdata"
    before = _modes(private)
    with pytest.raises(ConfigurationError) as raised:
        embedded.ensure_running(data_dir)
    assert str(private) in raised.value.message and embedded.SERVICE_USER in raised.value.message
    assert "never widens" in (raised.value.hint or "")
    assert _modes(private) == before
    assert private.stat().st_mode & 0o777 == 0o700


@as_root_only
def test_root_says_once_what_it_creates(scratch: Path) -> None:
    """As root the first start says on stderr what it creates and why; a restart says nothing."""
    data_dir = scratch / "pgdata"
    before = _modes(data_dir)
    first = _start_in_processes(data_dir, 1)[0]
    assert first.returncode == 0, first.stderr
    notices = [line for line in first.stderr.splitlines() if line.startswith("agent_runtime:")]
    assert len(notices) == 1 and "refuses to run as root" in notices[0] and str(data_dir) in notices[0], first.stderr
    assert data_dir.stat().st_uid != 0  # owned by the service user
    embedded.stop(data_dir)
    again = _start_in_processes(data_dir, 1)[0]
    assert again.returncode == 0 and "agent_runtime:" not in again.stderr, again.stderr
    assert _modes(data_dir) == before
