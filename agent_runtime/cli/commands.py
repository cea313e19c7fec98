"""The ``agent-runtime`` command line: look at and administer a network of agents.

Written against the public API (``agent_runtime``'s top level, plus ``runtime.config`` and
``local.migrations`` for connection set-up, and the tables of ``render``). Every command connects like an
agent does: ``--url`` / ``--key``, else the environment (``AGENT_RUNTIME_URL``, ``DATABASE_URL``,
``SUPABASE_URL`` with a key), else the embedded local Postgres.

Exit codes: 0 success, 1 an error (one red line on stderr, never a traceback), 2 a usage error,
3 ``local status``: not running, 130 interrupted. ``AGENT_RUNTIME_DEBUG=1`` lets unexpected exceptions
through with their traceback.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import msgspec
from rich.console import Console
from rich.text import Text

from agent_runtime import (
    AgentRuntime,
    AgentRuntimeError,
    ConfigurationError,
    ConnectionLost,
    Network,
    RawMessage,
    Topology,
    UnknownChannel,
    UnknownMessage,
    to_dot,
    to_json,
    to_mermaid,
    to_table,
)
from agent_runtime.local import embedded
from agent_runtime.local.migrations import load_migrations, migrate_url
from agent_runtime.render.tables import Column, FittedTable, Grouping, data_span, metrics_table, summarise_metrics
from agent_runtime.render.topology import with_endpoints
from agent_runtime.runtime.config import resolve

__all__ = ["build_parser", "main"]

PROG = "agent-runtime"
NOT_RUNNING = 3  # `local status` when the database is not running (as LSB status commands say it)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

Handler = Callable[[argparse.Namespace], int]
NetworkHandler = Callable[[Network, argparse.Namespace], Awaitable[int]]


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


@contextmanager
def _spinner(message: str) -> Iterator[None]:
    """A status spinner on stderr while long work runs (silent when stderr is not a terminal)."""
    with err.status(message, spinner="dots"):
        yield


def _write_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")
    sys.stdout.flush()


def _time(value: datetime | None) -> Text:
    """A timestamp in local time; the date only when it is not today."""
    if value is None:
        return Text("-", style="dim")
    local = value.astimezone()
    fmt = "%H:%M:%S" if local.date() == datetime.now().astimezone().date() else "%Y-%m-%d %H:%M:%S"
    return Text(local.strftime(fmt))


def _cell(value: object, style: str = "") -> Text:
    """A table cell shown literally (never interpreted as rich markup); None shows as a dim '-'."""
    if value is None:
        return Text("-", style="dim")
    return Text(str(value), style=style)


def _show_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[Text]], empty: str) -> None:
    """Prints rows as a table that fits the terminal (cells cut with an ellipsis, never wrapped;
    the least important columns left out when narrow), leaving out columns that are blank in
    every row (or says ``empty``)."""
    if not rows:
        _say(empty)
        return
    keep = [i for i in range(len(columns)) if any(row[i].plain not in ("", "-") for row in rows)]
    out.print(FittedTable(title, [columns[i] for i in keep], [[row[i] for i in keep] for row in rows]))


def _say(message: str) -> None:
    """A plain message on stdout, never wrapped (URLs and paths stay whole) nor read as markup."""
    out.print(Text(message), soft_wrap=True)


def _fail(message: str, hint: str | None = None) -> int:
    lines = message.strip().splitlines() or ["failed"]
    text = Text("error: ", style="bold red")
    text.append(lines[0] + (" ..." if len(lines) > 1 else ""), style="red")
    if hint:
        text.append(f" (hint: {' '.join(hint.split())})", style="red")
    err.print(text, soft_wrap=True)
    return 1


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds, or a number with a unit: 90s, 10m, 2h, 1d."""
    number, unit = text.strip(), ""
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if number.endswith(suffix):
            number, unit = number[: -len(suffix)], suffix
            break
    return _positive_float(number) * _UNITS.get(unit, 1) if unit else _positive_float(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


# ---------------------------------------------------------------------------------------------
# Running commands against the network
# ---------------------------------------------------------------------------------------------


def _with_network(fn: NetworkHandler) -> Handler:
    """Connect (starting the embedded database if that is the target), run ``fn``, disconnect."""

    async def run(args: argparse.Namespace) -> int:
        # Never migrates: looking at a database must not change it (only `migrate` does). On a
        # database without the schema the first call fails with NotMigrated ("run agent-runtime migrate").
        network = Network(args.url, key=args.key, migrate=False)
        settings = network.settings
        message = f"connecting to {settings.describe()}"
        if settings.kind == "embedded" and embedded.status() is None:
            message = "starting the local PostgreSQL"
        async with AsyncExitStack() as stack:
            with _spinner(message + "..."):
                await stack.enter_async_context(network)
            code = await fn(network, args)
        return code

    def handler(args: argparse.Namespace) -> int:
        return anyio.run(run, args)

    return handler


# --- migrate ---------------------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = resolve(args.url, args.key)
    if settings.kind == "supabase":
        raise ConfigurationError(
            "migrate needs a Postgres connection, not the Supabase API",
            hint="give the project's database URL (postgresql://...) with --url, or run `supabase db push`",
        )
    if settings.kind == "embedded":
        with _spinner("starting the local PostgreSQL..."):
            url = embedded.ensure_running().url()
    else:
        assert settings.url is not None
        url = settings.url

    with _spinner(f"migrating {settings.describe()}..."):
        applied = anyio.run(migrate_url, url)
    if args.json:
        _write_json({"target": settings.describe(), "applied": applied})
        return 0
    if not applied:
        _say(f"up to date ({settings.describe()})")
        return 0
    names = {m.version: m.name for m in load_migrations()}
    for version in applied:
        _say(f"applied {version} {names.get(version, '')}".rstrip())
    _say(f"{len(applied)} migration(s) applied to {settings.describe()}")
    return 0


# --- local -----------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from agent_runtime.cli.demo import run_demo

    settings = resolve(args.url, args.key)
    if settings.kind == "supabase":
        raise ConfigurationError("the demo runs on the embedded database or a postgresql:// URL")
    url = settings.url
    if url is None:
        with _spinner("starting the local PostgreSQL..."):
            url = embedded.ensure_running().url()
    return run_demo(url, workers=args.workers, jobs=args.jobs)


def _cmd_local_start(args: argparse.Namespace) -> int:
    with _spinner("starting the local PostgreSQL..."):
        server = embedded.ensure_running()
    _say(f"local PostgreSQL running\n  url:  {server.url()}\n  data: {server.data_dir}")
    return 0


def _cmd_local_stop(args: argparse.Namespace) -> int:
    with _spinner("stopping the local PostgreSQL..."):
        stopped = embedded.stop()
    _say("stopped the local PostgreSQL" if stopped else "the local PostgreSQL was not running")
    return 0


def _cmd_local_status(args: argparse.Namespace) -> int:
    data_dir = embedded.default_data_dir()
    server = embedded.status(data_dir)
    if args.json:
        _write_json({"running": server is not None, "url": server.url() if server else None,
                     "data_dir": str(data_dir)})
    elif server is None:
        _say(f"not running (data folder: {data_dir})")
    else:
        _say(f"running\n  url:  {server.url()}\n  data: {server.data_dir}")
    return 0 if server is not None else NOT_RUNNING


def _cmd_local_url(args: argparse.Namespace) -> int:
    server = embedded.status()
    if server is None:
        raise ConfigurationError("the local PostgreSQL is not running", hint=f"start it with: {PROG} local start")
    sys.stdout.write(server.url() + "\n")
    return 0


# --- listing ---------------------------------------------------------------------------------


async def _cmd_agents(net: Network, args: argparse.Namespace) -> int:
    agents = await net.agents(args.capability, include_offline=args.all)
    if args.json:
        _write_json(agents)
        return 0
    which = ("agents" if args.all else "online agents") + (f" with capability {args.capability}"
                                                            if args.capability else "")
    rows = [[_cell(a.id, "bold"), _cell(a.name), _cell(a.kind), _cell(a.status, _STATUS_STYLES.get(a.status, "")),
             _cell(", ".join(a.capabilities)), _cell(a.version),
             _cell(":".join(part for part in (a.host, "" if a.pid is None else str(a.pid)) if part)),
             _time(a.last_seen)] for a in agents]
    _show_table(f"{len(agents)} {which}", _AGENT_COLUMNS, rows, f"no {which}")
    return 0


_STATUS_STYLES = {"online": "green", "busy": "yellow", "away": "yellow", "offline": "dim"}
_AGENT_COLUMNS = [Column("id", 0, 12), Column("name", 1, 8), Column("kind", 6), Column("status", 0),
                  Column("capabilities", 4), Column("version", 7), Column("host", 5), Column("last seen", 2)]


async def _cmd_channels(net: Network, args: argparse.Namespace) -> int:
    channels = await net.channels()
    if args.json:
        _write_json(channels)
        return 0
    rows = [[_cell(c.name, "bold"), _cell(c.kind), _cell(c.owner_id), _cell(c.last_seq), _cell(c.subscribers),
             _cell(c.ready), _cell(c.dead, "red" if c.dead else "")] for c in channels]
    _show_table(f"{len(channels)} channels", [
        Column("name", 0, 12), Column("kind", 0), Column("owner", 4, 8), Column("last seq", 3, justify="right"),
        Column("subs", 1, justify="right"), Column("ready", 1, justify="right"),
        Column("dead", 2, justify="right")], rows, "no channels")
    return 0


async def _cmd_locks(net: Network, args: argparse.Namespace) -> int:
    locks = await net.locks()
    if args.json:
        _write_json(locks)
        return 0
    rows = [[_cell(lock.key, "bold"), _cell(lock.owner_id), _cell(lock.token), _time(lock.acquired_at),
             _time(lock.expires_at)] for lock in locks]
    _show_table(_plural(len(locks), "held lock"), [
        Column("key", 0, 12), Column("owner", 0, 10), Column("token", 1, justify="right"), Column("acquired", 3),
        Column("expires", 2)], rows, "no locks are held")
    return 0


async def _cmd_metrics(net: Network, args: argparse.Namespace) -> int:
    with _spinner("reading the metrics..."):
        rows = await net.read_metrics(agent_id=args.agent, metric=args.metric, since=args.since)
    by: Grouping = args.by
    summary = summarise_metrics(rows, by)
    if args.json:
        _write_json([row.as_dict(by) for row in summary])
        return 0
    since = _duration_text(args.since)
    span = data_span(rows)
    title = f"metrics by {by}, last {since}" + (f" (rates over the {_duration_text(span)} with data)" if span else "")
    out.print(metrics_table(summary, by, title=title, empty=f"no metrics over the last {since}"))
    return 0


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _short_json(value: object, limit: int = 60) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _cmd_dead_letters_list(net: Network, args: argparse.Namespace) -> int:
    dead = await net.dead_letters(args.channel, limit=args.limit)
    if args.json:
        _write_json(dead)
        return 0
    rows = [[_cell(d.id, "bold"), _cell(d.channel), _cell(d.seq), _cell(d.sender_id), _cell(d.subscriber_id),
             _cell(d.attempts), _cell(d.reason), _cell(_short_json(d.payload))] for d in dead]
    _show_table(_plural(len(dead), "dead letter"), [
        Column("id", 0, justify="right"), Column("channel", 0, 10), Column("seq", 5, justify="right"),
        Column("sender", 4, 10), Column("subscriber", 6, 10), Column("attempts", 3, justify="right"),
        Column("reason", 1, 12), Column("payload", 2, 12)], rows, "no dead letters")
    if dead:
        err.print(Text(f"replay with: {PROG} dead-letters replay ID [ID ...]", style="dim"))
    return 0


async def _cmd_dead_letters_replay(net: Network, args: argparse.Namespace) -> int:
    with _spinner(f"replaying {_plural(len(args.ids), 'dead letter')}..."):
        replayed = await net.replay_dead_letters(args.ids)
    if replayed == 0:
        raise UnknownMessage(f"no dead letter with id {', '.join(map(str, args.ids))}",
                             hint=f"list them with: {PROG} dead-letters list")
    _say(f"replayed {_plural(replayed, 'dead letter')}")
    return 0


async def _cmd_cleanup(net: Network, args: argparse.Namespace) -> int:
    with _spinner("cleaning up..."):
        counts = await net.cleanup()
    if args.json:
        _write_json(counts)
        return 0
    rows = [[_cell(what.replace("_", " ")), _cell(n)] for what, n in sorted(counts.items())]
    _show_table("cleanup", [Column("what", 0, 12), Column("removed or marked", 0, justify="right")], rows,
                "nothing to clean up")
    return 0


_RENDERERS: dict[str, Callable[[Any], str]] = {"json": to_json, "dot": to_dot, "mermaid": to_mermaid}


async def _read_topology(net: Network, args: argparse.Namespace, fmt: str) -> Topology:
    topo = await net.topology(window=args.window, include_offline=args.all)
    if not args.all and fmt != "json":  # name the agents that sent in the window and have left since
        topo = with_endpoints(topo, await net.topology(window=args.window, include_offline=True))
    return topo


def _shape(topo: Topology) -> tuple[object, ...]:
    """What a redraw is for: who is there with which status, channels and their seqs, edges, flow
    counts and lock holders (not the clock, heartbeats or lease renewals)."""
    return (sorted((a.id, a.status) for a in topo.agents), sorted((c.name, c.last_seq) for c in topo.channels),
            sorted((s.channel, s.agent_id, s.cursor) for s in topo.subscriptions),
            sorted((f.from_agent, f.channel, f.to_agent or "", f.messages) for f in topo.flows),
            sorted((lock.key, lock.owner_id, lock.token) for lock in topo.locks))


async def _watch_topology(net: Network, args: argparse.Namespace, fmt: str) -> int:
    async def redraw() -> None:
        shown: tuple[object, ...] | None = None
        while True:
            topo = await _read_topology(net, args, fmt)
            if _shape(topo) != shown:
                shown = _shape(topo)
                if out.is_terminal:
                    out.clear()
                if fmt == "table":
                    out.print(to_table(topo))
                else:
                    sys.stdout.write(_RENDERERS[fmt](topo) + ("" if out.is_terminal else "\n"))
                    sys.stdout.flush()
                if out.is_terminal:
                    err.print(Text(f"redrawn when it changes (every {args.interval:g} s); Ctrl-C to stop",
                                   style="dim"))
            await anyio.sleep(args.interval)

    await _until_signal(redraw)
    return 0


async def _until_signal(follow: Callable[[], Awaitable[None]]) -> None:
    """Runs ``follow`` until SIGINT or SIGTERM: the normal way to end `tail` and `--watch`."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def stop() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(stop)
            await follow()
            tg.cancel_scope.cancel()


async def _cmd_topology(net: Network, args: argparse.Namespace) -> int:
    fmt = "json" if args.json else args.format
    if args.watch:
        if args.output is not None:
            raise ConfigurationError("--watch draws on the terminal; it cannot be combined with --output")
        return await _watch_topology(net, args, fmt)
    with _spinner("reading the topology..."):
        topo = await _read_topology(net, args, fmt)
    output: Path | None = args.output
    if fmt == "table":
        if output is None:
            out.print(to_table(topo))
            return 0
        _write_file(output, lambda f: Console(file=f, width=160, color_system=None, highlight=False)
                    .print(to_table(topo)))
    else:
        text = _RENDERERS[fmt](topo)
        if output is None:
            sys.stdout.write(text)
            return 0
        _write_file(output, lambda f: f.write(text))
    err.print(Text(f"wrote the topology ({fmt}) to {output}"))
    return 0


# --- tail, publish, send -----------------------------------------------------------------------


def _message_line(msg: RawMessage) -> Text:
    when = _time(msg.created_at).plain
    return Text(f"{when}  {msg.channel}#{msg.seq}  {msg.sender_id}  ", style="dim").append(
        msgspec.json.encode(msg.payload).decode(), style="")


async def _cmd_tail(net: Network, args: argparse.Namespace) -> int:
    """Follows a channel without consuming it: periodic reads by seq (no cursor moves, nothing is
    claimed), so every subscriber and queue consumer carries on as if nobody watched."""
    channel = next((c for c in await net.channels() if c.name == args.channel), None)
    if channel is None:
        raise UnknownChannel(f"unknown channel {args.channel}", hint=f"list them with: {PROG} channels")
    after = 0 if args.from_start else max(0, channel.last_seq - args.last)
    if not args.json:
        err.print(Text(f"following {channel.kind} channel {channel.name} from seq {after + 1} without consuming "
                       f"it; Ctrl-C to stop", style="dim"))

    async def follow() -> None:
        nonlocal after
        while True:
            batch = await net.peek(channel.name, after_seq=after, limit=500)
            for msg in batch:
                if args.json:
                    sys.stdout.write(msgspec.json.encode(msg).decode() + "\n")
                else:
                    out.print(_message_line(msg), no_wrap=True, overflow="ellipsis", crop=True)
            sys.stdout.flush()
            if batch:
                after = batch[-1].seq
            if len(batch) < 500:
                await anyio.sleep(args.interval)

    await _until_signal(follow)
    return 0


def _json_argument(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc} (quote it for the shell, e.g. '{{\"n\": 1}}')") from None


def _cli_agent_id() -> str:
    """The CLI's own agent: one stable id per user and host, so that sends resume it instead of
    leaving a new offline agent behind each time."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # a uid with no name (some containers)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "user"
    who = f"{user}-{socket.gethostname()}"
    return "cli-" + "".join(c if c.isalnum() or c in "_.-" else "-" for c in who)[:80]


def _as_agent(args: argparse.Namespace) -> AgentRuntime:
    return AgentRuntime("agent-runtime-cli", agent_id=_cli_agent_id(), kind="cli", url=args.url, key=args.key,
                        janitor=False)


async def _connected_agent(stack: AsyncExitStack, args: argparse.Namespace) -> AgentRuntime:
    runtime = _as_agent(args)
    with _spinner(f"connecting to {runtime.settings.describe()}..."):
        return await stack.enter_async_context(runtime)


async def _cmd_publish(args: argparse.Namespace) -> int:
    async with AsyncExitStack() as stack:
        rt = await _connected_agent(stack, args)
        if args.create:
            await rt.channel(args.channel, args.create)
        sent = await rt.publish(args.channel, args.payload, idempotency_key=args.idempotency_key, ttl=args.ttl)
    if args.json:
        _write_json(sent)
    else:
        _say(f"{'already published' if sent.duplicate else 'published'} to {args.channel}: seq {sent.seq} "
             f"(message {sent.id}, from {rt.agent_id})")
    return 0


async def _cmd_send(args: argparse.Namespace) -> int:
    async with AsyncExitStack() as stack:
        rt = await _connected_agent(stack, args)
        sent = await rt.send(args.agent, args.payload, idempotency_key=args.idempotency_key)
    if args.json:
        _write_json(sent)
    else:
        inbox = args.agent if args.agent.startswith("agent:") else f"agent:{args.agent}"
        _say(f"{'already sent' if sent.duplicate else 'sent'} to {inbox}: seq {sent.seq} (message {sent.id})")
    return 0


def _write_file(path: Path, write: Callable[[Any], object]) -> None:
    try:
        with path.open("w", encoding="utf-8") as f:
            write(f)
    except OSError as exc:
        raise AgentRuntimeError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    """--url/--key, accepted after the subcommand too (SUPPRESS: absent ones keep the global value)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--url", default=argparse.SUPPRESS, metavar="URL",
                       help="postgresql://..., a Supabase URL, or 'embedded' (default: from the environment)")
    group.add_argument("--key", default=argparse.SUPPRESS, metavar="KEY", help="the Supabase key for a Supabase URL")
    return parent


def _json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="machine-readable JSON output")
    return parent


_CONNECTION = _connection_options()
_JSON = _json_option()


def _command(commands: Any, name: str, handler: Handler, help: str, *, connects: bool = True,
             lists: bool = True, description: str | None = None) -> argparse.ArgumentParser:
    parents = [p for p, wanted in ((_CONNECTION, connects), (_JSON, lists)) if wanted]
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help, description=description or help, parents=parents)
    parser.set_defaults(handler=handler)
    return parser


def _add_demo(commands: Any) -> None:
    p = _command(commands, "demo", _cmd_demo, "run a coordinator, workers and a monitor as separate processes",
                 lists=False,
                 description="Starts the database (embedded by default), launches a monitor, workers and a "
                             "coordinator as separate agent processes, shows progress while the jobs are handed "
                             "out over a queue, then prints the topology and a metrics summary and stops them.")
    p.add_argument("--workers", type=_positive_int, default=3, help="worker processes (default: 3)")
    p.add_argument("--jobs", type=_positive_int, default=60, help="jobs to hand out (default: 60)")


def _add_migrate(commands: Any) -> None:
    _command(commands, "migrate", _cmd_migrate, "apply the bootstrap and schema migrations",
             description="Apply the bootstrap (plain Postgres) and the schema migrations that are missing, "
                         "to --url or the embedded local database. Safe to run again: it then says 'up to date'.")


def _add_local(commands: Any) -> None:
    local = commands.add_parser(
        "local", help="manage the embedded local PostgreSQL",
        description="The embedded local PostgreSQL that agents use when no URL is configured: one per user, "
                    "in AGENT_RUNTIME_HOME/pgdata (default ~/.local/share/agent_runtime/pgdata; as root "
                    "/var/lib/agent_runtime/root/pgdata, run by the system user agentruntime).")
    actions = local.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    _command(actions, "start", _cmd_local_start, "start it (initialising it on first use)", connects=False,
             lists=False)
    _command(actions, "stop", _cmd_local_stop, "stop it", connects=False, lists=False)
    _command(actions, "status", _cmd_local_status,
             f"say whether it is running, and where (exit status 0 if it runs, {NOT_RUNNING} if not)", connects=False)
    _command(actions, "url", _cmd_local_url, "print its postgresql:// URL (it must be running)", connects=False,
             lists=False)


def _add_agents(commands: Any) -> None:
    p = _command(commands, "agents", _with_network(_cmd_agents), "list agents (online ones by default)")
    p.add_argument("--capability", metavar="C", help="only agents with this capability")
    p.add_argument("--all", action="store_true", help="include agents that are offline")


def _add_channels(commands: Any) -> None:
    _command(commands, "channels", _with_network(_cmd_channels), "list channels with their backlog")


def _add_locks(commands: Any) -> None:
    _command(commands, "locks", _with_network(_cmd_locks), "list held locks")


def _add_metrics(commands: Any) -> None:
    p = _command(commands, "metrics", _with_network(_cmd_metrics), "show communication metrics")
    p.add_argument("--agent", metavar="A", help="only this agent id")
    p.add_argument("--metric", metavar="M", help="only this metric (e.g. messages.sent)")
    p.add_argument("--by", choices=["metric", "agent", "channel"], default="metric",
                   help="one row per metric (default), or per metric and agent / channel (lock keys and "
                        "generated ids folded: demo.job:*)")
    p.add_argument("--since", metavar="DURATION", type=_duration, default=3600.0,
                   help="how far back to look: seconds, or 90s, 10m, 2h, 1d (default: 1h)")


def _add_dead_letters(commands: Any) -> None:
    dead = commands.add_parser("dead-letters", help="list and replay dead letters",
                               description="Messages that used up their delivery attempts.")
    actions = dead.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    p = _command(actions, "list", _with_network(_cmd_dead_letters_list), "list dead letters, newest first")
    p.add_argument("--channel", metavar="C", help="only this channel")
    p.add_argument("--limit", metavar="N", type=_positive_int, default=100, help="at most N (default: 100)")
    p = _command(actions, "replay", _with_network(_cmd_dead_letters_replay),
                 "deliver dead letters again (by message id)", lists=False)
    p.add_argument("ids", metavar="ID", type=_positive_int, nargs="+", help="message ids from 'dead-letters list'")


def _add_cleanup(commands: Any) -> None:
    _command(commands, "cleanup", _with_network(_cmd_cleanup),
             "remove expired messages and locks, mark stale agents offline, drop old metrics")


def _add_topology(commands: Any) -> None:
    p = _command(commands, "topology", _with_network(_cmd_topology),
                 "show agents, channels, subscriptions, message flows and locks", lists=False,
                 description="The network as one picture: a table, JSON, Graphviz DOT (render with "
                             "`dot -Tsvg`) or Mermaid.")
    output_format = p.add_mutually_exclusive_group()
    output_format.add_argument("--format", choices=["table", "json", "dot", "mermaid"], default="table",
                               help="output format (default: table)")
    output_format.add_argument("--json", action="store_true", help="short for --format json")
    p.add_argument("--output", metavar="FILE", type=Path, help="write to FILE instead of standard output")
    p.add_argument("--window", metavar="SECONDS", type=_positive_float, default=300.0,
                   help="message flows over the last SECONDS (default: 300)")
    p.add_argument("--all", action="store_true", help="include agents that are offline")
    p.add_argument("--watch", action="store_true", help="redraw whenever the network changes (Ctrl-C to stop)")
    p.add_argument("--interval", metavar="SECONDS", type=_positive_float, default=2.0,
                   help="with --watch: how often to look (default: 2)")


def _add_tail(commands: Any) -> None:
    p = _command(commands, "tail", _with_network(_cmd_tail), "follow a channel's messages live, without consuming",
                 description="Prints a channel's newest messages, then new ones as they arrive, read by sequence "
                             "number: no cursor moves and nothing is claimed, so subscribers and queue consumers "
                             "are not affected. Needs a trusted connection (a database URL or the service key).")
    p.add_argument("channel", metavar="CHANNEL", help="a channel name (an inbox is agent:ID)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--last", metavar="N", type=_count, default=10,
                       help="start with the last N messages (default 10; 0: only new ones)")
    start.add_argument("--from-start", action="store_true", help="start with every message the channel retains")
    p.add_argument("--interval", metavar="SECONDS", type=_positive_float, default=0.5,
                   help="how often to look for new messages (default: 0.5)")


def _add_publish(commands: Any) -> None:
    p = _command(commands, "publish", _async(_cmd_publish), "publish one JSON message to a channel",
                 description="Publishes a message as the CLI's own agent (cli-USER-HOST, marked offline again "
                             "when done).")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("payload", metavar="JSON", type=_json_argument, help="the payload, e.g. '{\"job\": 1}'")
    p.add_argument("--create", choices=["broadcast", "queue"], help="create the channel as KIND if it is missing")
    p.add_argument("--idempotency-key", metavar="K", help="a second publish with the same key is a no-op")
    p.add_argument("--ttl", metavar="SECONDS", type=_positive_float, help="expire the message after SECONDS")


def _add_send(commands: Any) -> None:
    p = _command(commands, "send", _async(_cmd_send), "send one JSON message to an agent's inbox",
                 description="Sends a message to agent:ID as the CLI's own agent (cli-USER-HOST).")
    p.add_argument("agent", metavar="AGENT", help="the agent id (see `agents`)")
    p.add_argument("payload", metavar="JSON", type=_json_argument, help="the payload, e.g. '{\"do\": \"x\"}'")
    p.add_argument("--idempotency-key", metavar="K", help="a second send with the same key is a no-op")


def _async(fn: Callable[[argparse.Namespace], Awaitable[int]]) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        return anyio.run(fn, args)

    return handler


# The subcommands, in the order `--help` lists them.
_COMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_demo,
    _add_migrate,
    _add_local,
    _add_agents,
    _add_channels,
    _add_locks,
    _add_metrics,
    _add_dead_letters,
    _add_cleanup,
    _add_topology,
    _add_tail,
    _add_publish,
    _add_send,
)


def _version() -> str:
    try:
        return metadata.version("agent_runtime")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at and administer a network of agents on Postgres or Supabase.",
        epilog="Connection: --url/--key, else AGENT_RUNTIME_URL or DATABASE_URL, else SUPABASE_URL with "
               "SUPABASE_SERVICE_ROLE_KEY or SUPABASE_KEY; with none, the embedded local PostgreSQL "
               "(see the 'local' command). Run '%(prog)s COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--url", metavar="URL", default=None,
                        help="postgresql://..., a Supabase URL, or 'embedded' (default: from the environment)")
    parser.add_argument("--key", metavar="KEY", default=None, help="the Supabase key for a Supabase URL")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-exception groups, as task groups may wrap it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as the console script, exits with) the exit code."""
    args = build_parser().parse_args(argv)  # usage errors exit 2 here
    handler: Handler = args.handler
    if getattr(args, "url", None) == "":  # an unset variable in a script: never silently the embedded database
        return _fail("--url is empty", "give postgresql://..., https://<ref>.supabase.co or 'embedded', "
                                       "or leave --url out to use the environment or the embedded database")
    try:
        return handler(args)
    except KeyboardInterrupt:
        err.print(Text("interrupted", style="red"))
        return 130
    except Exception as raised:
        exc = _unwrap(raised)
        if isinstance(exc, ConnectionLost):
            return _fail(exc.message, exc.hint or "check --url / AGENT_RUNTIME_URL and that the database is running")
        if isinstance(exc, AgentRuntimeError):
            return _fail(exc.message, exc.hint)
        if isinstance(exc, BrokenPipeError):
            # The reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        if os.environ.get("AGENT_RUNTIME_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc}",
                     "this is a bug in agent_runtime; set AGENT_RUNTIME_DEBUG=1 to see the traceback")


if __name__ == "__main__":
    sys.exit(main())
