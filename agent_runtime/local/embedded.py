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
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import ConfigurationError

__all__ = ["DATABASE", "LocalServer", "default_data_dir", "ensure_running", "status", "stop"]

DATABASE = "agent_runtime"

# Postgres refuses to run as root: then its binaries run as this system user (no home, no shell).
SERVICE_USER = "agentruntime"
# Root's default data: a folder below /var/lib that the service user can reach without any other
# folder's permissions being changed (a home such as /root stays drwx------).
ROOT_DATA_BASE = Path("/var/lib/agent_runtime")


def _running_as_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


def default_data_dir() -> Path:
    """Where the shared local database lives (``AGENT_RUNTIME_HOME`` overrides it).

    Per user: ``$XDG_DATA_HOME/agent_runtime/pgdata`` (``~/.local/share/...``); for root,
    ``/var/lib/agent_runtime/root/pgdata``, owned by the service user that runs the server."""
    home = os.environ.get("AGENT_RUNTIME_HOME")
    if home:
        return Path(home).expanduser() / "pgdata"
    if _running_as_root():
        import pwd  # Unix only, like running as root

        return ROOT_DATA_BASE / pwd.getpwuid(os.geteuid()).pw_name / "pgdata"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent_runtime" / "pgdata"


def scratch_dir(prefix: str = "ar-") -> Path:
    """A new temporary folder for a private server's data (tests, benchmarks). As root it is made
    searchable (``0711``) so that the service user can reach a data folder inside it; it is a
    folder this call created, never one of yours. Remove it with ``shutil.rmtree`` after ``stop``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if _running_as_root():
        path.chmod(0o711)
    return path


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
    # Located without importing pgserver (its import has side effects we do not need). As root,
    # the service user must be able to run them: a wheel inside a private home is skipped.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists() and (not _running_as_root() or _unreachable_parent(bundled) is None):
            return bundled
    found = _system_bin_dir()
    if found is None:
        raise ConfigurationError(
            "no embedded PostgreSQL is available",
            hint="pip install pgserver (as root: in a virtualenv outside a private home, since the server runs as "
                 f"the user {SERVICE_USER}), install PostgreSQL (its initdb and pg_ctl on PATH), "
                 "or give a postgresql:// URL with --url / AGENT_RUNTIME_URL",
        )
    return found


def _unreachable_parent(path: Path) -> Path | None:
    """The first folder above ``path`` that the service user may not enter, or None."""
    import grp
    import pwd

    entry = pwd.getpwnam(SERVICE_USER) if _user_exists() else None
    uid, gids = (entry.pw_uid, {entry.pw_gid}) if entry else (-1, set())
    if entry is not None:
        gids |= {g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return parent
    return None


def _user_exists() -> bool:
    import pwd

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return False
    return True


def _notice(message: str) -> None:
    """Said once, on stderr, when something is created outside the data folder's own tree."""
    sys.stderr.write(f"agent_runtime: {message}\n")
    sys.stderr.flush()


def _prepare_as_root(data_dir: Path, made: list[Path]) -> list[str]:
    """Postgres refuses to run as root, so as root the server runs as SERVICE_USER (created here
    if missing, and said so). Nothing outside the data folder changes permissions: the data folder
    must sit where that user can reach it (the default does); otherwise this refuses, saying why."""
    created: list[str] = []
    if not _user_exists():
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, capture_output=True)
        created.append(f"the system user {SERVICE_USER!r} (useradd --system, no home, no login shell)")
    created += [f"{folder} (mode 0755)" for folder in made]
    blocked = _unreachable_parent(data_dir)
    if blocked is not None:
        raise ConfigurationError(
            f"the local PostgreSQL runs as the user {SERVICE_USER} (it refuses to run as root), which cannot "
            f"enter {blocked} to reach {data_dir}",
            hint=f"unset AGENT_RUNTIME_HOME to use {ROOT_DATA_BASE}/root, choose a folder that user can reach, "
                 "or run as a normal user; agent_runtime never widens a folder's permissions",
        )
    if not (data_dir / "PG_VERSION").exists():
        created.append(f"the data folder {data_dir} (owned by {SERVICE_USER})")
    if created:
        _notice("PostgreSQL refuses to run as root, so the local database runs as the system user "
                f"{SERVICE_USER!r}. Creating: " + "; ".join(created) + ". No other folder's permissions are changed.")
    return ["runuser", "-u", SERVICE_USER, "--"]


def _as_service_user() -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--"] if _running_as_root() else []


def _make_parents(data_dir: Path) -> list[Path]:
    """Creates the missing folders above the data folder; returns them. As root they are made
    0755 whatever the umask (folders just created here, so nothing existing is widened)."""
    missing = [p for p in reversed(data_dir.parents) if not p.exists()]
    for folder in missing:
        folder.mkdir(exist_ok=True)
        if _running_as_root():
            folder.chmod(0o755)
    return missing


@contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    """One process at a time checks, initialises and starts a data folder (another one that arrives
    meanwhile waits, then finds the server running): two fresh processes cannot race initdb."""
    if os.name != "posix":  # the embedded server is Unix-only (it listens on a Unix socket)
        yield
        return
    import fcntl

    with open(data_dir.parent / f".{data_dir.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def ensure_running(data_dir: Path | None = None, *, durable: bool = True) -> LocalServer:
    """Start the per-user server if it is not running, create its database, and return it.

    ``durable=False`` is for a private throw-away server (tests): it runs without fsync,
    synchronous commit and full-page writes, so nothing waits for the disk (a crash may lose it).
    Either way the choice is made on the server's command line, which no ``ALTER SYSTEM`` overrides."""
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    running = status(data_dir)
    if running is not None:
        return running
    made = _make_parents(data_dir)
    with _start_lock(data_dir):
        running = status(data_dir)  # started by another process while this one waited
        if running is not None:
            return running
        return _start(data_dir, made, durable)


def _start(data_dir: Path, made: list[Path], durable: bool) -> LocalServer:
    bin_dir = _bin_dir()
    prefix = _prepare_as_root(data_dir, made) if _running_as_root() else []
    if not (data_dir / "PG_VERSION").exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if prefix:
            subprocess.run(["chown", "-R", SERVICE_USER, str(data_dir)], check=True)
        _check(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
            "initdb",
        )
    log = data_dir / "server.log"
    # Unix socket only, inside the data folder: no port to collide with, nothing on the network.
    durability = "-c fsync=on" if durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    options = f"-c listen_addresses='' -k {data_dir} -p {_PORT} -c max_connections=500 {durability}"
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
    with _start_lock(data_dir):
        if status(data_dir) is None:
            return False
        _check([*_as_service_user(), str(_bin_dir() / "pg_ctl"), "stop", "-D", str(data_dir),
                "-m", "fast", "-w"], "pg_ctl stop")
    return True


def _check(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise ConfigurationError(f"{what} failed: {result.stderr.strip() or result.stdout.strip()}")
