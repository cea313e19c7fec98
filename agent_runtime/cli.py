"""The ``agent-runtime`` command line: look at and administer a network of agents.

Written against the public API (``agent_runtime``'s top level, plus the public ``config``,
``embedded`` and ``migrations`` modules for connection set-up). Every command connects like an
agent does: ``--url`` / ``--key``, else the environment (``AGENT_RUNTIME_URL``, ``DATABASE_URL``,
``SUPABASE_URL`` with a key), else the embedded local Postgres.

Exit codes: 0 success, 1 an error (one red line on stderr, never a traceback), 2 a usage error,
130 interrupted. ``AGENT_RUNTIME_DEBUG=1`` lets unexpected exceptions through with their traceback.
"""

from __future__ import annotations

import argparse
import os
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
from rich.table import Table
from rich.text import Text

from agent_runtime import (
    AgentRuntimeError,
    ConfigurationError,
    ConnectionLost,
    Network,
    UnknownMessage,
    embedded,
    to_dot,
    to_json,
    to_mermaid,
    to_table,
)
from agent_runtime.config import resolve
from agent_runtime.migrations import load_migrations, migrate_url

PROG = "agent-runtime"

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


def _show_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Text]], empty: str) -> None:
    """Prints rows as a table, leaving out columns that are blank in every row (or says ``empty``)."""
    if not rows:
        _say(empty)
        return
    keep = [i for i in range(len(columns)) if any(row[i].plain not in ("", "-") for row in rows)]
    table = Table(title=title, title_justify="left", title_style="bold")
    for i in keep:  # the first column names the row: keep it on one line
        table.add_column(columns[i], overflow="fold", no_wrap=i == keep[0])
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    out.print(table)


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


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
    from agent_runtime.demo import run_demo

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
    return 0


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
    _show_table(f"{len(agents)} {which}", ["id", "name", "kind", "status", "capabilities", "version", "host",
                                           "last seen"], rows, f"no {which}")
    return 0


_STATUS_STYLES = {"online": "green", "busy": "yellow", "away": "yellow", "offline": "dim"}


async def _cmd_channels(net: Network, args: argparse.Namespace) -> int:
    channels = await net.channels()
    if args.json:
        _write_json(channels)
        return 0
    rows = [[_cell(c.name, "bold"), _cell(c.kind), _cell(c.owner_id), _cell(c.last_seq), _cell(c.subscribers),
             _cell(c.ready), _cell(c.dead, "red" if c.dead else "")] for c in channels]
    _show_table(f"{len(channels)} channels", ["name", "kind", "owner", "last seq", "subs", "ready", "dead"],
                rows, "no channels")
    return 0


async def _cmd_locks(net: Network, args: argparse.Namespace) -> int:
    locks = await net.locks()
    if args.json:
        _write_json(locks)
        return 0
    rows = [[_cell(lock.key, "bold"), _cell(lock.owner_id), _cell(lock.token), _time(lock.acquired_at),
             _time(lock.expires_at)] for lock in locks]
    _show_table(f"{len(locks)} held locks", ["key", "owner", "token", "acquired", "expires"], rows,
                "no locks are held")
    return 0


def _number(value: float | None) -> Text:
    return _cell(None if value is None else f"{value:.6g}")


async def _cmd_metrics(net: Network, args: argparse.Namespace) -> int:
    metrics = await net.metrics(args.agent, args.metric, since_seconds=args.since)
    if args.json:
        _write_json(metrics)
        return 0
    rows = [[_cell(m.agent_id, "bold"), _cell(m.channel), _cell(m.metric), _cell(m.count), _number(m.sum),
             _number(m.min), _number(m.max), _number(m.mean), _time(m.last_bucket)] for m in metrics]
    _show_table(f"metrics over the last {args.since:g} s",
                ["agent", "channel", "metric", "count", "sum", "min", "max", "mean", "last bucket"], rows,
                f"no metrics over the last {args.since:g} s")
    return 0


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
    _show_table(f"{len(dead)} dead letters", ["id", "channel", "seq", "sender", "subscriber", "attempts", "reason",
                                             "payload"], rows, "no dead letters")
    if dead:
        err.print(Text(f"replay with: {PROG} dead-letters replay ID [ID ...]", style="dim"))
    return 0


async def _cmd_dead_letters_replay(net: Network, args: argparse.Namespace) -> int:
    replayed = await net.replay_dead_letters(args.ids)
    if replayed == 0:
        raise UnknownMessage(f"no dead letter with id {', '.join(map(str, args.ids))}",
                             hint=f"list them with: {PROG} dead-letters list")
    _say(f"replayed {replayed} dead letter(s)")
    return 0


async def _cmd_cleanup(net: Network, args: argparse.Namespace) -> int:
    counts = await net.cleanup()
    if args.json:
        _write_json(counts)
        return 0
    rows = [[_cell(what.replace("_", " ")), _cell(n)] for what, n in sorted(counts.items())]
    _show_table("cleanup", ["what", "removed or marked"], rows, "nothing to clean up")
    return 0


_RENDERERS: dict[str, Callable[[Any], str]] = {"json": to_json, "dot": to_dot, "mermaid": to_mermaid}


async def _cmd_topology(net: Network, args: argparse.Namespace) -> int:
    fmt = "json" if args.json else args.format
    topo = await net.topology(window_seconds=args.window, include_offline=args.all)
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
                    "in AGENT_RUNTIME_HOME/pgdata (default ~/.local/share/agent_runtime/pgdata).")
    actions = local.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    _command(actions, "start", _cmd_local_start, "start it (initialising it on first use)", connects=False,
             lists=False)
    _command(actions, "stop", _cmd_local_stop, "stop it", connects=False, lists=False)
    _command(actions, "status", _cmd_local_status, "say whether it is running, and where", connects=False)
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
    p.add_argument("--since", metavar="SECONDS", type=_positive_float, default=3600.0,
                   help="how far back to look (default: 3600)")


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
