"""The `agent-runtime` CLI, run for real as a subprocess (`python -m agent_runtime.cli`) against
the test database (`--url`) or a private embedded server (a temporary AGENT_RUNTIME_HOME)."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

import agent_runtime
from agent_runtime import UnknownChannel
from agent_runtime.cli import commands as cli
from agent_runtime.local import embedded
from agent_runtime.runtime.config import resolve
from tests.test_topology_render import (
    LOCK_KEY,
    MARKUP_KEY,
    assert_sections_fit,
    build_network,
    parse_dot,
    parse_mermaid,
)

REPO = Path(__file__).resolve().parent.parent
BAD_URL = "postgresql://nobody@127.0.0.1:1/nothing"  # nothing listens on port 1: refused at once


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def json(self) -> object:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"Result(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def home() -> Iterator[Path]:
    """A private AGENT_RUNTIME_HOME, so no test ever touches the user's real data folder."""
    tmp = embedded.scratch_dir("ar-cli-")  # as root: reachable by the local server's user
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cli_env(home: Path, columns: int = 250) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_RUNTIME_", "SUPABASE_"))}
    for name in ("DATABASE_URL", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    env.update(AGENT_RUNTIME_HOME=str(home), COLUMNS=str(columns), PYTHONPATH=str(REPO))
    return env


async def run(home: Path, *args: str, columns: int = 250) -> Result:
    """Runs the real CLI; never lets it hang the suite."""
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "agent_runtime.cli", *args], check=False,
                                       env=cli_env(home, columns), cwd=REPO)
    result = Result(done.returncode, done.stdout.decode(), done.stderr.decode())
    assert "Traceback" not in result.stderr, result
    return result


async def ok(home: Path, *args: str, columns: int = 250) -> Result:
    result = await run(home, *args, columns=columns)
    assert result.code == 0, result
    return result


def assert_clean_error(result: Result, code: int = 1) -> str:
    """One 'error: ...' line on stderr, nothing on stdout, the given exit code."""
    assert result.code == code, result
    assert result.stdout == "", result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


# ---------------------------------------------------------------------------------------------
# In-process: help, usage, top-level error handling, public API
# ---------------------------------------------------------------------------------------------

COMMANDS = [[], ["migrate"], ["local"], ["local", "start"], ["local", "stop"], ["local", "status"],
            ["local", "url"], ["agents"], ["channels"], ["locks"], ["metrics"], ["dead-letters"],
            ["dead-letters", "list"], ["dead-letters", "replay"], ["cleanup"], ["topology"]]


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command and action answers --help (exit 0) and the top-level help lists every command."""
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--help"])
        assert exit_info.value.code == 0, command
        text = capsys.readouterr().out
        assert text.startswith(f"usage: agent-runtime {' '.join(command)}".rstrip()), (command, text)
        if command == []:
            for name in ("migrate", "local", "agents", "channels", "locks", "metrics", "dead-letters", "cleanup",
                         "topology"):
                assert f"\n    {name}" in text, name
        if command in (["agents"], ["topology"], ["metrics"], ["dead-letters", "list"]):
            assert "--json" in text and "--url" in text


@pytest.mark.parametrize("argv", [
    ["frobnicate"], [], ["dead-letters"], ["local"], ["dead-letters", "list", "--limit", "0"],
    ["dead-letters", "replay"], ["dead-letters", "replay", "x"], ["topology", "--format", "svg"],
    ["metrics", "--since", "-5"], ["topology", "--json", "--format", "dot"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad arguments are usage errors: exit code 2 and a usage line, before anything connects."""
    monkeypatch.setattr(cli, "Network", None)  # connecting would fail loudly
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--url", BAD_URL, *argv])
    assert exit_info.value.code == 2
    assert "usage: agent-runtime" in capsys.readouterr().err


def test_interrupt_and_unexpected_errors_are_one_line(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C exits 130; runtime errors (even inside an exception group) and unexpected ones are one line, exit 1."""
    monkeypatch.delenv("AGENT_RUNTIME_DEBUG", raising=False)

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    def broken(args: object) -> int:
        raise ZeroDivisionError("boom")

    def grouped(args: object) -> int:  # as an anyio task group may wrap a runtime error
        raise ExceptionGroup("task group", [UnknownChannel("unknown channel x", hint="create it first")])

    monkeypatch.setattr(cli, "_cmd_local_status", interrupted)
    assert cli.main(["local", "status"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    monkeypatch.setattr(cli, "_cmd_local_status", broken)
    assert cli.main(["local", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected ZeroDivisionError: boom") and err.count("\n") == 1
    assert "Traceback" not in err
    monkeypatch.setattr(cli, "_cmd_local_status", grouped)
    assert cli.main(["local", "status"]) == 1
    assert capsys.readouterr().err == "error: unknown channel x (hint: create it first)\n"


def test_public_api_and_cli_imports() -> None:
    """Every name in agent_runtime.__all__ exists, and the CLI imports no private (_underscore) module or name."""
    for name in agent_runtime.__all__:
        assert hasattr(agent_runtime, name), name
    for name in ("Network", "Topology", "AgentRuntimeError", "to_dot", "to_json", "to_mermaid", "to_table"):
        assert name in agent_runtime.__all__
    tree = ast.parse(Path(cli.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent_runtime"):
            assert not any(part.startswith("_") for part in node.module.split(".")), node.module
            assert not any(alias.name.startswith("_") for alias in node.names), node.module
        assert not (isinstance(node, ast.ImportFrom) and node.level > 0), "use absolute, public imports"


# ---------------------------------------------------------------------------------------------
# Subprocess: errors
# ---------------------------------------------------------------------------------------------


async def test_bad_url_is_a_clean_error(home: Path) -> None:
    """An unreachable or malformed URL gives one red line with a hint and exit 1, never a traceback."""
    line = assert_clean_error(await run(home, "--url", BAD_URL, "agents"))
    assert "connection failed" in line and "hint:" in line
    line = assert_clean_error(await run(home, "migrate", "--url", BAD_URL))  # --url after the command works too
    assert "connection failed" in line
    line = assert_clean_error(await run(home, "--url", "ftp://example.invalid/db", "topology"))
    assert "unsupported URL" in line and "hint: use postgresql://" in line
    usage = await run(home, "dead-letters", "replay", "not-a-number")
    assert usage.code == 2 and "usage:" in usage.stderr
    assert "--url is empty" in assert_clean_error(await run(home, "--url", "", "agents"))
    assert "--url is empty" in assert_clean_error(await run(home, "agents", "--url", ""))


async def test_unknown_role_and_database_have_hints(home: Path, db_url: str) -> None:
    """A role or database that does not exist: the server's reason and what to do, at once (not retried)."""
    base, query = db_url.split("?", 1)
    no_db = f"{base.rsplit('/', 1)[0]}/no_such_db?{query}"
    line = assert_clean_error(await run(home, "--url", no_db, "agents"))
    assert 'database "no_such_db" does not exist' in line and "createdb" in line, line
    no_role = no_db.replace("postgres@", "no_such_role@").replace("/no_such_db?", f"/{base.rsplit('/', 1)[1]}?")
    line = assert_clean_error(await run(home, "--url", no_role, "agents"))
    assert 'role "no_such_role" does not exist' in line and "createuser" in line, line


async def test_a_port_that_never_answers_says_so(home: Path) -> None:
    """A server that accepts the connection and never answers: a reason naming what was tried, not
    '', after the URL's own connect_timeout (libpq's parameter; 10 s without it)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        started = time.monotonic()
        line = assert_clean_error(await run(
            home, "--url", f"postgresql://someone@127.0.0.1:{port}/db?connect_timeout=1", "agents"))
        waited = time.monotonic() - started
    assert f"no answer from someone@127.0.0.1:{port}/db" in line and "hint:" in line, line
    assert waited < 9, f"waited {waited:.1f}s: the URL's connect_timeout=1 was not used"


async def test_connect_timeout_in_the_url(home: Path, db_url: str) -> None:
    """connect_timeout is taken from the URL and not sent to the server as a setting (it would
    refuse it); a value that is not a number of seconds is a clean configuration error."""
    joined = "&" if "?" in db_url else "?"
    assert (await ok(home, "--url", f"{db_url}{joined}connect_timeout=5", "agents", "--json")).json() == []
    line = assert_clean_error(await run(home, "--url", f"{db_url}{joined}connect_timeout=soon", "agents"))
    assert "connect_timeout must be a number of seconds" in line and "hint:" in line, line


# ---------------------------------------------------------------------------------------------
# Subprocess: commands on a real network
# ---------------------------------------------------------------------------------------------


async def test_agents_command(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`agents` lists online agents (table and --json), --all adds the one that left, --capability filters."""
    await build_network(conn)
    table = await ok(home, "--url", db_url, "agents")
    assert "planner-1" in table.stdout and "Planner: main/1" in table.stdout and "code, review" in table.stdout
    assert "gone" not in table.stdout
    listed = (await ok(home, "agents", "--json", "--url", db_url)).json()
    assert isinstance(listed, list) and [a["id"] for a in listed] == ["coder.2", "planner-1"]
    assert all(a["status"] == "online" for a in listed)
    everyone = (await ok(home, "--url", db_url, "agents", "--all", "--json")).json()
    assert isinstance(everyone, list) and {a["id"]: a["status"] for a in everyone}["gone"] == "offline"
    reviewers = (await ok(home, "--url", db_url, "agents", "--capability", "review", "--json")).json()
    assert isinstance(reviewers, list) and [a["id"] for a in reviewers] == ["coder.2"]


async def test_channels_locks_and_metrics_commands(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`channels`, `locks` and `metrics` show what the SQL recorded, as tables and as --json."""
    await build_network(conn)
    channels = (await ok(home, "--url", db_url, "channels", "--json")).json()
    assert isinstance(channels, list)
    by_name = {c["name"]: c for c in channels}
    assert by_name["news:global/v1"]["kind"] == "broadcast" and by_name["news:global/v1"]["last_seq"] == 3
    assert by_name["tasks"]["kind"] == "queue" and by_name["tasks"]["ready"] == 3

    locks_table = (await ok(home, "--url", db_url, "locks")).stdout
    assert LOCK_KEY in locks_table and MARKUP_KEY in locks_table  # shown literally, not as rich markup
    locks = (await ok(home, "--url", db_url, "locks", "--json")).json()
    assert isinstance(locks, list) and {(lk["key"], lk["owner_id"]) for lk in locks} == {
        (LOCK_KEY, "coder.2"), (MARKUP_KEY, "planner-1")}

    metrics = (await ok(home, "--url", db_url, "metrics", "--agent", "planner-1", "--metric", "messages.sent",
                        "--since", "10m", "--by", "channel", "--json")).json()
    assert isinstance(metrics, list) and len(metrics) == 1
    assert metrics[0]["total"] == 3 and metrics[0]["channel"] == "news:global/v1"
    assert (await ok(home, "--url", db_url, "metrics", "--agent", "coder.2", "--json")).json() == []
    assert "messages.sent" in (await ok(home, "--url", db_url, "metrics")).stdout


async def test_metrics_are_summarised_and_lock_keys_folded(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`metrics` shows one row per metric (totals, rates, mean/min/max of timings); --by channel folds
    lock keys (`demo.job:13` ...) into one row; --by agent splits per agent."""
    figures = [{"metric": "lock.wait_ms", "channel": f"demo.job:{i}", "count": 1, "sum": float(i), "min": float(i),
                "max": float(i)} for i in range(1, 201)]
    for agent, part in (("worker-1", figures[:100]), ("worker-2", figures[100:])):
        await conn.fetchval("select register_agent(p_agent_id => $1, p_name => $1)", agent)
        await conn.fetchval("select record_communication_metrics(p_agent_id => $1, p_metrics => $2::jsonb)",
                            agent, json.dumps([*part, {"metric": "messages.acked", "channel": "demo.jobs",
                                                       "count": 100, "sum": 100}]))
    summary = (await ok(home, "--url", db_url, "metrics", "--json")).json()
    assert isinstance(summary, list)
    by_metric = {row["metric"]: row for row in summary}
    assert set(by_metric) == {"lock.wait_ms", "messages.acked"}
    waits = by_metric["lock.wait_ms"]
    assert (waits["total"], waits["min"], waits["max"], waits["mean"]) == (200, 1, 200, 100.5)
    assert by_metric["messages.acked"]["total"] == 200 and by_metric["messages.acked"]["mean"] is None
    assert by_metric["messages.acked"]["rate_per_s"] > 0

    by_channel = (await ok(home, "--url", db_url, "metrics", "--by", "channel", "--json")).json()
    assert isinstance(by_channel, list)
    assert sorted((r["metric"], r["channel"]) for r in by_channel) == [
        ("lock.wait_ms", "demo.job:*"), ("messages.acked", "demo.jobs")]
    by_agent = (await ok(home, "--url", db_url, "metrics", "--by", "agent", "--json")).json()
    assert isinstance(by_agent, list) and len(by_agent) == 4

    table = (await ok(home, "--url", db_url, "metrics", "--by", "channel")).stdout
    assert "demo.job:*" in table and "demo.job:13" not in table
    assert len(table.strip().splitlines()) < 10  # a few rows, not one per lock key
    assert (await run(home, "--url", db_url, "metrics", "--since", "soon")).code == 2


async def test_topology_command_formats(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`topology` renders table, JSON, DOT and Mermaid to stdout or --output FILE; --all adds agents that left."""
    await build_network(conn)
    table = (await ok(home, "--url", db_url, "topology")).stdout
    # The two online agents, and the one that left but sent a message in the window (named, offline).
    assert "Agents (3)" in table and "Planner: main/1" in table and LOCK_KEY in table
    assert any(line.startswith("gone") and "offline" in line for line in table.splitlines()), table
    named = parse_mermaid((await ok(home, "--url", db_url, "topology", "--format", "mermaid")).stdout)
    assert named.classes[named.node_with_label("gone")] == "offline"

    doc = (await ok(home, "--url", db_url, "topology", "--format", "json")).json()
    assert isinstance(doc, dict) and [a["id"] for a in doc["agents"]] == ["coder.2", "planner-1"]
    short = (await ok(home, "--url", db_url, "topology", "--json")).json()
    assert isinstance(short, dict) and short | {"generated_at": None} == doc | {"generated_at": None}

    mermaid = parse_mermaid((await ok(home, "--url", db_url, "topology", "--format", "mermaid", "--all")).stdout)
    assert mermaid.classes[mermaid.node_with_label("Planner: main/1")] == "online"
    assert mermaid.classes[mermaid.node_with_label("gone")] == "offline"  # --all: listed, with its status

    dot_file = home / "net.dot"
    written = await ok(home, "--url", db_url, "topology", "--format", "dot", "--output", str(dot_file))
    assert written.stdout == "" and str(dot_file) in written.stderr
    graph = parse_dot(dot_file.read_text())
    assert graph.edge(graph.node_with_label("Planner: main/1"), graph.node_with_label("news:global/v1"))["label"] \
        == "3 msgs"

    table_file = home / "net.txt"
    await ok(home, "--url", db_url, "topology", "--output", str(table_file))
    assert "Subscriptions (3)" in table_file.read_text() and "\x1b[" not in table_file.read_text()

    # A flow window in the future of every message shows no flows.
    await conn.execute("update distributed_messages set created_at = now() - interval '1 hour'")
    quiet = (await ok(home, "--url", db_url, "topology", "--json", "--window", "60")).json()
    assert isinstance(quiet, dict) and quiet["flows"] == [] and quiet["window_ms"] == 60000

    unwritable = await run(home, "--url", db_url, "topology", "--output", str(home / "missing" / "x.dot"))
    assert "cannot write" in assert_clean_error(unwritable)


async def test_dead_letters_list_and_replay(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`dead-letters list` shows a message nacked as dead; `replay` makes it claimable again; replaying twice fails."""
    await build_network(conn)
    claimed = json.loads(await conn.fetchval(
        "select claim_messages(p_agent_id => 'coder.2', p_channel => 'tasks', p_limit => 1)"))
    message_id = claimed[0]["id"]
    nacked = json.loads(await conn.fetchval(
        "select nack_message(p_agent_id => 'coder.2', p_message_id => $1, p_reason => 'poison: \"bad\"', "
        "p_dead => true)", message_id))
    assert nacked["state"] == "dead"

    dead = (await ok(home, "--url", db_url, "dead-letters", "list", "--json")).json()
    assert isinstance(dead, list) and [(d["id"], d["channel"], d["reason"]) for d in dead] == [
        (message_id, "tasks", 'poison: "bad"')]
    table = await ok(home, "--url", db_url, "dead-letters", "list", "--channel", "tasks", "--limit", "5")
    assert 'poison: "bad"' in table.stdout and "replay with" in table.stderr
    assert (await ok(home, "--url", db_url, "dead-letters", "list", "--channel", "news:global/v1", "--json")
            ).json() == []
    unknown = await run(home, "--url", db_url, "dead-letters", "list", "--channel", "nope")
    assert "unknown channel" in assert_clean_error(unknown)

    replayed = await ok(home, "--url", db_url, "dead-letters", "replay", str(message_id))
    assert "replayed 1" in replayed.stdout
    assert (await ok(home, "--url", db_url, "dead-letters", "list", "--json")).json() == []
    again = json.loads(await conn.fetchval(
        "select claim_messages(p_agent_id => 'coder.2', p_channel => 'tasks', p_limit => 10)"))
    assert message_id in [m["id"] for m in again]
    twice = await run(home, "--url", db_url, "dead-letters", "replay", str(message_id))
    assert "no dead letter" in assert_clean_error(twice)


async def test_cleanup_command(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`cleanup` removes an expired lock and reports the counts (table and --json)."""
    await build_network(conn)
    await conn.fetchval("select acquire_lock(p_agent_id => 'coder.2', p_key => 'short', p_lease_id => $1, "
                        "p_ttl_ms => 100)", uuid.uuid4())
    await conn.execute("update distributed_locks set expires_at = now() - interval '1 second' where key = 'short'")
    counts = (await ok(home, "--url", db_url, "cleanup", "--json")).json()
    assert isinstance(counts, dict) and counts["expired_locks"] == 1
    assert set(counts) >= {"stale_presence", "expired_locks", "expired_messages", "old_metrics"}
    assert await conn.fetchval("select count(*) from distributed_locks where key = 'short'") == 0
    table = (await ok(home, "--url", db_url, "cleanup")).stdout
    assert "expired locks" in table


async def test_migrate_twice(home: Path, db_url: str) -> None:
    """`migrate` applies the schema to an empty database, and a second run says 'up to date'."""
    admin = await asyncpg.connect(db_url)
    name = f"cli_migrate_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'create database "{name}"')
        base, query = db_url.split("?", 1)
        url = f"{base.rsplit('/', 1)[0]}/{name}?{query}"
        first = await ok(home, "--url", url, "migrate")
        assert "applied 20261125000000 communication_schema" in first.stdout
        second = await ok(home, "--url", url, "migrate")
        assert "up to date" in second.stdout and "applied" not in second.stdout
        assert (await ok(home, "--url", url, "migrate", "--json")).json() == {
            "target": resolve(url).describe(), "applied": []}
        assert (await ok(home, "--url", url, "agents", "--json")).json() == []
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def test_local_server_lifecycle(home: Path) -> None:
    """`local start/status/url/stop` manage a private embedded server that the URL-less commands then use."""
    data_dir = home / "pgdata"
    try:
        not_running = await run(home, "local", "status", "--json")
        assert not_running.code == 3 and not_running.json() == {"running": False, "url": None,
                                                                 "data_dir": str(data_dir)}
        assert "local start" in assert_clean_error(await run(home, "local", "url"))

        started = await ok(home, "local", "start")
        assert "running" in started.stdout and str(data_dir) in started.stdout
        url = (await ok(home, "local", "url")).stdout.strip()
        assert url.startswith("postgresql://") and str(data_dir) in url.replace("%2F", "/")
        status = (await ok(home, "local", "status", "--json")).json()
        assert status == {"running": True, "url": url, "data_dir": str(data_dir)}

        # Without --url every command uses this embedded server.
        assert "applied 20261125000000" in (await ok(home, "migrate")).stdout
        assert "up to date" in (await ok(home, "migrate")).stdout
        assert (await ok(home, "agents", "--json")).json() == []
        assert "stopped" in (await ok(home, "local", "stop")).stdout
        stopped = await run(home, "local", "status")
        assert stopped.code == 3 and "not running" in stopped.stdout
    finally:
        embedded.stop(data_dir)


def _demo(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "agent_runtime.cli", "--url", db_url, "demo", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def _metric_total(stdout: str, metric: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith(metric + " "))
    return int(line.split()[1].replace(",", ""))


def test_demo_runs_to_completion(db_url: str, home: Path) -> None:
    """`agent-runtime demo` runs coordinator, workers and monitor as processes and exits 0 with all jobs done;
    its summary (80 columns wide, no line longer) covers its own agents, coordinator included, and its
    metrics only; the Mermaid picture afterwards names the agents that have left."""
    earlier = _demo(db_url, "--jobs", "10", "--workers", "1")  # another run's agents and metrics
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    result = _demo(db_url, "--jobs", "20", "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    done = next(i for i, line in enumerate(lines) if " jobs done in " in line)
    assert_sections_fit(lines[1:done])  # the topology's tables: one line per row, nothing wrapped
    assert "Agents (4)" in result.stdout  # coordinator, monitor, two workers: this run's only
    agents = lines[lines.index(next(x for x in lines if x.startswith("Agents (4)"))) + 3:][:4]
    assert sorted(line.split("-")[0] for line in agents) == ["coordinator", "monitor", "worker", "worker"], agents
    assert "demo.jobs" in result.stdout  # the topology table lists the job queue
    assert "20 jobs done" in result.stdout
    assert _metric_total(result.stdout, "messages.acked") == 40  # 20 jobs acked by workers, 20 replies
    assert _metric_total(result.stdout, "lock.wait_ms") == 20  # one lock per job, folded into one row

    mermaid = (anyio.run(ok, home, "--url", db_url, "topology", "--format", "mermaid")).stdout
    assert "(not listed)" not in mermaid, mermaid
    assert '("coordinator<br/>coordinator-' in mermaid and '("worker-1<br/>worker-1-' in mermaid, mermaid


def test_an_interrupted_demo_leaves_nothing_silent(db_url: str) -> None:
    """Jobs an interrupted run left in the queue are dropped by the next run, which says so; they are
    never counted as its own, and the queue is empty afterwards."""
    proc = _start_demo(db_url, new_session=False, jobs=600)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
    finally:
        _kill_leftovers(proc, db_url)
    result = _demo(db_url, "--jobs", "20", "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left by an earlier, interrupted demo" in result.stderr, result.stderr
    assert "20 jobs done" in result.stdout and "of an earlier run dropped" in result.stdout, result.stdout
    ready = asyncio.run(_ready_jobs(db_url))
    assert ready == 0


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(proc.name))
    return found


def _start_demo(db_url: str, *, new_session: bool, jobs: int = 100000) -> subprocess.Popen[str]:
    """A long demo, returned once its coordinator hands out jobs (the queue has messages)."""
    proc = subprocess.Popen([sys.executable, "-m", "agent_runtime.cli", "--url", db_url, "demo", "--jobs", str(jobs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if asyncio.run(_count_messages(db_url)) > 0:
            return proc
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the demo never started handing out jobs")


def _assert_all_gone(proc: subprocess.Popen[str], db_url: str, *, within: float = 30.0) -> None:
    """No agent process of the demo is left (none re-parented to init), none is online, and no
    process printed a traceback."""
    deadline = time.monotonic() + within
    while _processes_mentioning(db_url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(db_url) == []
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-3000:]
    agents = json.loads(asyncio.run(_online_agents(db_url)))
    assert agents == [], agents


def _kill_leftovers(proc: subprocess.Popen[str], db_url: str) -> None:
    if proc.poll() is None:
        proc.kill()
    for pid in _processes_mentioning(db_url):
        os.kill(pid, signal.SIGKILL)


def test_demo_ctrl_c_leaves_nothing_running(db_url: str) -> None:
    """Ctrl-C (SIGINT to the whole process group) mid-demo ends every agent process, each marked offline."""
    proc = _start_demo(db_url, new_session=True)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        proc.wait(timeout=40)
        assert proc.returncode != 0
        _assert_all_gone(proc, db_url)
    finally:
        _kill_leftovers(proc, db_url)


def test_demo_sigterm_to_the_parent_alone_stops_every_agent(db_url: str) -> None:
    """`kill -TERM <demo pid>` (the demo process only, not its group) stops its agents in order."""
    proc = _start_demo(db_url, new_session=False)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        assert proc.returncode == 128 + signal.SIGTERM
        _assert_all_gone(proc, db_url, within=5)
    finally:
        _kill_leftovers(proc, db_url)


def test_demo_sigkill_to_the_parent_leaves_no_orphan(db_url: str) -> None:
    """Even when the demo process is killed outright, its agents notice and leave (no worker left
    running under init)."""
    proc = _start_demo(db_url, new_session=False)
    try:
        proc.kill()
        proc.wait(timeout=10)
        _assert_all_gone(proc, db_url, within=30)
    finally:
        _kill_leftovers(proc, db_url)


async def _count_messages(db_url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval("select count(*) from distributed_messages") or 0)
    finally:
        await conn.close()


async def _online_agents(db_url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        return str(await conn.fetchval("select list_agents()::text"))
    finally:
        await conn.close()


async def _ready_jobs(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        channels = json.loads(await conn.fetchval("select list_channels()::text"))
        return int(next(c["ready"] for c in channels if c["name"] == "demo.jobs"))
    finally:
        await conn.close()


class _Follow:
    """A long-running CLI command (tail, --watch): its stdout lines arrive on a queue."""

    def __init__(self, home: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent_runtime.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=cli_env(home), cwd=REPO)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line(self, timeout: float = 20) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output; stderr: {self.proc.stderr.read() if self.proc.stderr else ''}") from None

    def stop(self) -> str:
        """SIGINT (Ctrl-C): the normal end; exits 0 without a traceback. Returns its stderr."""
        self.proc.send_signal(signal.SIGINT)
        _, stderr = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0 and "Traceback" not in stderr, stderr
        return stderr


async def _cursor(conn: asyncpg.Connection, agent: str, channel: str) -> int:
    return int(await conn.fetchval(
        "select s.cursor_seq from channel_subscriptions s join communication_channels c on c.id = s.channel_id "
        "where s.agent_id = $1 and c.name = $2", agent, channel))


async def test_publish_and_send(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`publish CHANNEL JSON` and `send AGENT JSON` send as the CLI's own agent; mistakes are clean errors."""
    await build_network(conn)
    published = await ok(home, "--url", db_url, "publish", "news:global/v1", '{"n": 99}')
    assert "published to news:global/v1: seq 4" in published.stdout
    again = (await ok(home, "--url", db_url, "publish", "news:global/v1", '{"n": 99}', "--idempotency-key", "k",
                      "--json")).json()
    assert isinstance(again, dict) and again["seq"] == 5
    created = await ok(home, "--url", db_url, "publish", "fresh.queue", "[1, 2]", "--create", "queue")
    assert "published to fresh.queue: seq 1" in created.stdout
    unknown = assert_clean_error(await run(home, "--url", db_url, "publish", "no.such.channel", "{}"))
    assert "unknown channel no.such.channel" in unknown and "rt.channel(" in unknown and "--create" in unknown
    assert (await run(home, "--url", db_url, "publish", "news:global/v1", "{not json")).code == 2

    sent = await ok(home, "--url", db_url, "send", "planner-1", '{"hi": 1}')
    assert "sent to agent:planner-1" in sent.stdout
    assert "unknown agent nobody" in assert_clean_error(await run(home, "--url", db_url, "send", "nobody", "{}"))
    everyone = (await ok(home, "--url", db_url, "agents", "--all", "--json")).json()
    assert isinstance(everyone, list)
    cli_agents = [a for a in everyone if a["kind"] == "cli"]
    assert len(cli_agents) == 1 and cli_agents[0]["status"] == "offline"  # one stable id, left each time


async def test_tail_follows_without_consuming(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`tail` shows the last messages then new ones as they arrive; no cursor moves, nothing is claimed."""
    await build_network(conn)
    cursor_before = await _cursor(conn, "coder.2", "news:global/v1")
    tail = _Follow(home, "--url", db_url, "tail", "news:global/v1", "--last", "2", "--json")
    try:
        assert [json.loads(tail.line())["seq"] for _ in range(2)] == [2, 3]
        await ok(home, "--url", db_url, "publish", "news:global/v1", '{"live": true}')
        live = json.loads(tail.line())
        assert live["seq"] == 4 and live["payload"] == {"live": True}
    finally:
        tail.stop()
    assert await _cursor(conn, "coder.2", "news:global/v1") == cursor_before

    queue_tail = _Follow(home, "--url", db_url, "tail", "tasks", "--from-start")
    try:
        lines = [queue_tail.line() for _ in range(3)]
        assert all("tasks#" in line for line in lines), lines
    finally:
        stderr = queue_tail.stop()
    assert "without consuming" in stderr
    states = await conn.fetch("select m.state from distributed_messages m join communication_channels c "
                              "on c.id = m.channel_id where c.name = 'tasks'")
    assert {r["state"] for r in states} == {"ready"}  # nothing claimed
    assert "unknown channel" in assert_clean_error(await run(home, "--url", db_url, "tail", "nope"))


async def test_topology_watch_redraws_on_change(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """`topology --watch` draws once, again when something changes (a new message), not on every tick."""
    await build_network(conn)
    watch = _Follow(home, "--url", db_url, "topology", "--watch", "--interval", "0.2", "--format", "mermaid")
    try:
        first = watch.line()
        assert first.startswith("flowchart LR")
        while "seq 3" not in watch.line():
            pass
        await anyio.sleep(1)  # several ticks: no redraw while nothing changes
        drawn = [watch.lines.get_nowait() for _ in range(watch.lines.qsize())]
        assert not any(line.startswith("flowchart") for line in drawn), drawn
        await ok(home, "--url", db_url, "publish", "news:global/v1", '{"n": 4}')
        # Redrawn (the CLI's agent came and went, then the message): the channel now stands at seq 4.
        while "news:global/v1<br/>broadcast, seq 4" not in watch.line():
            pass
    finally:
        watch.stop()
