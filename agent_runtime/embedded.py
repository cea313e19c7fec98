"""The embedded default: one local Postgres per user, shared by every agent process on the machine.

The server runs from the ``pgserver`` wheel (or, where that is missing, the machine's own
PostgreSQL binaries) in a per-user data folder and listens on a Unix socket inside it. The first
process to need it starts it; later ones attach. It keeps running until ``agent-runtime local stop``
so that agents started later find the same data.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import ConfigurationError

__all__ = ["DATABASE", "LocalServer", "default_data_dir", "ensure_running", "status", "stop"]

DATABASE = "agent_runtime"


def default_data_dir() -> Path:
    """Where the shared local database lives (``AGENT_RUNTIME_HOME`` overrides it)."""
    home = os.environ.get("AGENT_RUNTIME_HOME")
    if home:
        return Path(home).expanduser() / "pgdata"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent_runtime" / "pgdata"


@dataclass(frozen=True)
class LocalServer:
    data_dir: Path
    socket_dir: Path
    port: int

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}&port={self.port}"


def _system_bin_dir() -> Path | None:
    """The directory holding the machine's own initdb/pg_ctl, if any."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "pg_ctl").exists()), None)


def _bin_dir() -> Path:
    # Located without importing pgserver (its import has side effects we do not need).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    found = _system_bin_dir()
    if found is None:
        raise ConfigurationError(
            "no embedded PostgreSQL is available",
            hint="pip install pgserver, install PostgreSQL (its initdb and pg_ctl on PATH), "
            "or give a postgresql:// URL with --url / AGENT_RUNTIME_URL",
        )
    return found


def _run_as_postgres_user() -> list[str]:
    """Postgres refuses to run as root; run its binaries as an unprivileged user then."""
    if os.name != "posix" or os.geteuid() != 0:
        return []
    user = "agentruntime"
    if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", user], check=True, capture_output=True)
    return ["runuser", "-u", user, "--"]


def _chown_for(prefix: list[str], path: Path) -> None:
    if prefix:
        subprocess.run(["chown", "-R", prefix[2], str(path)], check=True)


def _ensure_traversable(path: Path) -> None:
    """As root, the server's user must be able to reach the data folder."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


_PORT = 5432


def status(data_dir: Path | None = None) -> LocalServer | None:
    """The running local server, or None. Read from postmaster.pid (no subprocess, no side effects):
    its first line is the postmaster's pid and its eighth the server state."""
    data_dir = (data_dir or default_data_dir()).expanduser()
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None  # no pid file, a stale one, or a process that is gone
    state = lines[7].strip() if len(lines) > 7 else ""
    if state != "ready" or not (data_dir / f".s.PGSQL.{_PORT}").exists():
        return None
    return LocalServer(data_dir.resolve(), data_dir.resolve(), _PORT)


def ensure_running(data_dir: Path | None = None) -> LocalServer:
    """Start the per-user server if it is not running, create its database, and return it."""
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    running = status(data_dir)
    if running is not None:
        return running
    bin_dir = _bin_dir()
    prefix = _run_as_postgres_user()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if prefix:
        _ensure_traversable(data_dir.parent)
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _chown_for(prefix, data_dir)
        _check(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
            "initdb",
        )
    log = data_dir / "server.log"
    # Unix socket only, inside the data folder: no port to collide with, nothing on the network.
    options = f"-c listen_addresses='' -k {data_dir} -p {_PORT} -c max_connections=500 -c fsync=on"
    result = subprocess.run(
        [*prefix, str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data_dir),
         "-l", str(log), "-o", options],
        capture_output=True,
        text=True,
    )
    server = status(data_dir)
    if server is None:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else result.stderr
        raise ConfigurationError(f"the local PostgreSQL did not start:\n{tail}",
                                 hint=f"see {log}")
    _ensure_database(server)
    return server


def _ensure_database(server: LocalServer) -> None:
    psql = _bin_dir() / "psql"
    base = ["-h", str(server.socket_dir), "-p", str(server.port), "-U", "postgres", "-d", "postgres",
            "-tAc"]
    found = subprocess.run([str(psql), *base, f"select 1 from pg_database where datname = '{DATABASE}'"],
                           capture_output=True, text=True)
    if found.stdout.strip() != "1":
        subprocess.run([str(psql), *base, f'create database "{DATABASE}"'], capture_output=True, text=True)


def stop(data_dir: Path | None = None) -> bool:
    """Stop the per-user server; False if it was not running."""
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    if status(data_dir) is None:
        return False
    _check([*_run_as_postgres_user(), str(_bin_dir() / "pg_ctl"), "stop", "-D", str(data_dir),
            "-m", "fast", "-w"], "pg_ctl stop")
    return True


def _check(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise ConfigurationError(f"{what} failed: {result.stderr.strip() or result.stdout.strip()}")
