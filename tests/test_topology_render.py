"""The topology renderers (JSON, Graphviz DOT, Mermaid, rich tables) on a real network and on
hostile names: every agent and channel appears, edges are drawn, labels are escaped, and the
output is structurally valid (and accepted by Graphviz's `dot` when it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import msgspec
from rich.console import Console

from agent_runtime import (
    AgentInfo,
    Flow,
    LockInfo,
    Network,
    SubscriptionEdge,
    Topology,
    TopologyChannel,
    to_dot,
    to_json,
    to_mermaid,
    to_table,
)

# Lock keys may hold any printable character: quotes, backslashes, braces and rich markup.
LOCK_KEY = 'task:"42" {x}\\ <b>|;#'
MARKUP_KEY = "[red]x[/red]"


async def build_network(conn: asyncpg.Connection) -> None:
    """Two online agents and one that left, a broadcast and a queue channel, subscriptions,
    messages (including one to an inbox and one from the agent that left), two locks, metrics."""
    q = conn.fetchval
    # Nothing heartbeats for these agents: an hour's TTL keeps the online ones online however long
    # a test's CLI subprocesses take on a loaded machine (the default 15 s did not, under -n 6).
    await q("select register_agent(p_agent_id => 'planner-1', p_name => 'Planner: main/1', "
            "p_capabilities => '{plan}', p_heartbeat_ttl_ms => 3600000)")
    await q("select register_agent(p_agent_id => 'coder.2', p_name => 'coder 2', p_capabilities => '{code,review}', "
            "p_heartbeat_ttl_ms => 3600000)")
    await q("select register_agent(p_agent_id => 'gone', p_name => 'gone')")
    await q("select ensure_channel(p_agent_id => 'planner-1', p_name => 'news:global/v1', p_kind => 'broadcast')")
    await q("select ensure_channel(p_agent_id => 'planner-1', p_name => 'tasks', p_kind => 'queue')")
    for agent, channel in [("coder.2", "news:global/v1"), ("planner-1", "news:global/v1"), ("coder.2", "tasks")]:
        await q("select subscribe_channel(p_agent_id => $1, p_channel => $2)", agent, channel)
    sends = [("planner-1", "news:global/v1")] * 3 + [("planner-1", "tasks")] * 2 + [
        ("coder.2", "agent:planner-1"), ("gone", "tasks")]
    for i, (sender, channel) in enumerate(sends):
        await q("select send_message(p_agent_id => $1, p_channel => $2, p_payload => $3::jsonb)",
                sender, channel, f'{{"n": {i}}}')
    await q("select acquire_lock(p_agent_id => 'coder.2', p_key => $1, p_lease_id => $2, p_ttl_ms => 60000)",
            LOCK_KEY, uuid.uuid4())
    await q("select acquire_lock(p_agent_id => 'planner-1', p_key => $1, p_lease_id => $2, p_ttl_ms => 60000)",
            MARKUP_KEY, uuid.uuid4())
    await q("select record_communication_metrics(p_agent_id => 'planner-1', p_metrics => $1::jsonb)",
            '[{"metric": "messages.sent", "channel": "news:global/v1", "count": 3, "sum": 3}]')
    await q("select deregister_agent(p_agent_id => 'gone')")


async def real_topology(db_url: str, conn: asyncpg.Connection, *, include_offline: bool = False) -> Topology:
    await build_network(conn)
    async with Network(db_url) as net:
        return await net.topology(include_offline=include_offline)


# ---------------------------------------------------------------------------------------------
# Structural parsers used by the tests (deliberately independent of the renderers' code)
# ---------------------------------------------------------------------------------------------

SAFE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DOT_STRING = r'"(?:[^"\\\n]|\\.)*"'
DOT_ATTR = re.compile(rf"\s*(\w+)=({DOT_STRING}|[^,\s\]\"]+)\s*(,|$)")
DOT_UNESCAPE = {"n": "\n", '"': '"', "\\": "\\"}


@dataclass
class DotGraph:
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def node_with_label(self, first_line: str) -> str:
        found = [n for n, a in self.nodes.items() if a["label"].split("\n")[0] == first_line]
        assert len(found) == 1, (first_line, self.nodes)
        return found[0]

    def edge(self, source: str, target: str) -> dict[str, str]:
        found = [a for s, t, a in self.edges if (s, t) == (source, target)]
        assert len(found) == 1, (source, target, self.edges)
        return found[0]


def _dot_value(raw: str) -> str:
    if not raw.startswith('"'):
        return raw
    # Only \n, \" and \\ may appear: any other escape would change what Graphviz shows.
    return re.sub(r"\\(.)", lambda m: DOT_UNESCAPE[m[1]], raw[1:-1])


def _dot_attrs(text: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = DOT_ATTR.match(text, pos)
        assert m, f"bad attribute list at {text[pos:]!r}"
        attrs[m[1]] = _dot_value(m[2])
        pos = m.end()
    return attrs


def parse_dot(text: str) -> DotGraph:
    """Checks the structure of our DOT output and returns its nodes and edges."""
    outside_strings = re.sub(DOT_STRING, '""', text)
    assert outside_strings.count('"') % 2 == 0
    assert outside_strings.count("{") == outside_strings.count("}") == 1, "unbalanced or stray braces"
    assert outside_strings.count("[") == outside_strings.count("]")
    lines = text.rstrip("\n").split("\n")
    assert re.fullmatch(r"digraph [A-Za-z_]\w* \{", lines[0]), lines[0]
    assert lines[-1] == "}"
    graph = DotGraph()
    for line in lines[1:-1]:
        stripped = line.strip()
        if not stripped or stripped.startswith("//"):
            continue
        m = re.fullmatch(r"(\S+)(?: -> (\S+))? \[(.*)\];", stripped)
        assert m, f"not a statement: {line!r}"
        source, target, attrs = m[1], m[2], _dot_attrs(m[3])
        assert SAFE_ID.fullmatch(source) and (target is None or SAFE_ID.fullmatch(target)), line
        if target is not None:
            graph.edges.append((source, target, attrs))
        elif source not in ("graph", "node", "edge"):
            assert source not in graph.nodes, f"node {source} declared twice"
            graph.nodes[source] = attrs
    for source, target, _ in graph.edges:
        assert source in graph.nodes and target in graph.nodes, f"undeclared endpoint in {source} -> {target}"
    return graph


MERMAID_STRING = r'"[^"\n]*"'
MERMAID_SHAPES = {"(": ")", "{{": "}}", "[(": ")]", ">": "]", "[": "]", "[/": "/]"}
MERMAID_NODE = re.compile(rf"  ([a-z][0-9]+)(\(|\{{\{{|\[\(|>|\[/|\[)({MERMAID_STRING})(\)|\}}\}}|\)\]|\]|/\])")
MERMAID_EDGE = re.compile(rf"  ([a-z][0-9]+) (-->|==>|-\.->)(?:\|({MERMAID_STRING})\|)? ([a-z][0-9]+)")
MERMAID_RESERVED = {"end", "graph", "subgraph", "flowchart", "style", "class", "classDef", "click", "linkStyle"}


@dataclass
class MermaidGraph:
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (shape, label)
    edges: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # source, arrow, target, label
    classes: dict[str, str] = field(default_factory=dict)  # node id -> class

    def node_with_label(self, first_line: str) -> str:
        found = [n for n, (_, label) in self.nodes.items() if label.split("\n")[0] == first_line]
        assert len(found) == 1, (first_line, self.nodes)
        return found[0]

    def edge(self, source: str, target: str) -> tuple[str, str | None]:
        found = [(arrow, label) for s, arrow, t, label in self.edges if (s, t) == (source, target)]
        assert len(found) == 1, (source, target, self.edges)
        return found[0]


def _mermaid_label(raw: str) -> str:
    inner = raw[1:-1].replace("<br/>", "\n")
    assert "<" not in inner and ">" not in inner and "&" not in inner, f"unescaped markup in {raw!r}"
    return re.sub(r"#([0-9]+);", lambda m: chr(int(m[1])), inner)


def parse_mermaid(text: str) -> MermaidGraph:
    """Checks the structure of our Mermaid output and returns its nodes, edges and classes."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "flowchart LR"
    graph = MermaidGraph()
    defined: set[str] = set()
    for line in lines[1:]:
        if line.startswith("  %%"):
            continue
        if m := MERMAID_NODE.fullmatch(line):
            node_id, opening, label, closing = m.groups()
            assert MERMAID_SHAPES[opening] == closing, f"mismatched shape in {line!r}"
            assert node_id not in graph.nodes and node_id not in MERMAID_RESERVED
            graph.nodes[node_id] = (opening + closing, _mermaid_label(label))
        elif m := MERMAID_EDGE.fullmatch(line):
            source, arrow, label, target = m.groups()
            graph.edges.append((source, arrow, target, None if label is None else _mermaid_label(label)))
        elif m := re.fullmatch(r"  classDef (\w+) ([^\s\"].*)", line):
            defined.add(m[1])
        elif m := re.fullmatch(r"  class ([a-z][0-9]+(?:,[a-z][0-9]+)*) (\w+)", line):
            assert m[2] in defined, f"class {m[2]} used before classDef"
            for node_id in m[1].split(","):
                assert node_id in graph.nodes and node_id not in graph.classes
                graph.classes[node_id] = m[2]
        else:
            raise AssertionError(f"not a Mermaid statement: {line!r}")
    for source, _, target, _ in graph.edges:
        assert source in graph.nodes and target in graph.nodes, f"undeclared endpoint in {source} --> {target}"
    return graph


def run_dot(text: str) -> str | None:
    """Renders with Graphviz when it is installed; returns the SVG (None without `dot`)."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    result = subprocess.run([dot, "-Tsvg"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


async def test_json_round_trips_the_topology(db_url: str, conn: asyncpg.Connection) -> None:
    """to_json is pretty JSON with the wire names ("from"/"to") that decodes back to the same Topology."""
    topo = await real_topology(db_url, conn)
    text = to_json(topo)
    assert text.startswith("{\n  ")
    assert msgspec.json.decode(text, type=Topology) == topo
    raw = msgspec.json.decode(text)
    assert {"from": "planner-1", "channel": "news:global/v1"}.items() <= raw["flows"][0].items()
    assert {lock["key"] for lock in raw["locks"]} == {LOCK_KEY, MARKUP_KEY}


async def test_dot_draws_the_real_network(db_url: str, conn: asyncpg.Connection) -> None:
    """DOT declares every agent, channel and lock, draws subscription, flow, inbox and lock edges, and is valid."""
    topo = await real_topology(db_url, conn)
    graph = parse_dot(to_dot(topo))
    planner = graph.node_with_label("Planner: main/1")
    coder = graph.node_with_label("coder 2")
    news = graph.node_with_label("news:global/v1")
    tasks = graph.node_with_label("tasks")
    inbox = graph.node_with_label("agent:planner-1")
    # The agent that left is not listed, but its flow still needs a node at both ends.
    gone = graph.node_with_label("gone")
    assert "not listed" in graph.nodes[gone]["label"]
    assert graph.nodes[news]["shape"] != graph.nodes[tasks]["shape"] != graph.nodes[planner]["shape"]
    assert graph.nodes[planner]["label"] == "Planner: main/1\nplanner-1 (online)"

    assert graph.edge(news, coder)["label"] == graph.edge(news, planner)["label"] == "lag 3"
    assert "label" not in graph.edge(tasks, coder)
    assert graph.edge(planner, news)["label"] == "3 msgs"
    assert graph.edge(planner, tasks)["label"] == "2 msgs"
    assert graph.edge(gone, tasks)["label"] == "1 msg"
    assert graph.edge(coder, inbox)["label"] == "1 msg"
    assert graph.edge(inbox, planner)["label"] == "inbox"
    lock = graph.node_with_label(f"lock {LOCK_KEY}")
    assert graph.edge(lock, coder)["style"] == "dashed"
    assert graph.edge(graph.node_with_label(f"lock {MARKUP_KEY}"), planner)["style"] == "dashed"

    svg = run_dot(to_dot(topo))
    if svg is not None:
        assert "lock task:&quot;42&quot; {x}\\ &lt;b&gt;|;#" in svg


async def test_mermaid_draws_the_real_network(db_url: str, conn: asyncpg.Connection) -> None:
    """Mermaid output is a flowchart LR with every node, the same edges as DOT, and status classes."""
    topo = await real_topology(db_url, conn, include_offline=True)
    graph = parse_mermaid(to_mermaid(topo))
    planner = graph.node_with_label("Planner: main/1")
    coder = graph.node_with_label("coder 2")
    gone = graph.node_with_label("gone")
    news = graph.node_with_label("news:global/v1")
    tasks = graph.node_with_label("tasks")
    inbox = graph.node_with_label("agent:planner-1")
    lock = graph.node_with_label(f"lock {LOCK_KEY}")
    assert graph.classes[planner] == graph.classes[coder] == "online"
    assert graph.classes[gone] == "offline"  # listed this time (include_offline), with its status
    assert graph.classes[news] == "broadcast" and graph.classes[tasks] == "queue"
    assert graph.nodes[news][0] != graph.nodes[tasks][0]
    assert graph.edge(news, coder) == ("-->", "lag 3")  # subscribed before the 3 messages, fetched none
    assert graph.edge(tasks, coder) == ("-->", None)  # a queue has no per-subscriber lag
    assert graph.edge(planner, news) == ("==>", "3 msgs")
    assert graph.edge(gone, tasks) == ("==>", "1 msg")
    assert graph.edge(inbox, planner) == ("-.->", "inbox")
    assert graph.edge(lock, coder) == ("-.->", "held by")
    token = next(held.token for held in topo.locks if held.key == LOCK_KEY)
    assert graph.nodes[lock][1] == f"lock {LOCK_KEY}\ntoken {token}"


HOSTILE = ['say "hi" \\', "end", "a;b|c #1 <i>&amp; `x`", "{[(brackets)]}", "two\nlines", "tab\tand\x07bell"]


def hostile_topology() -> Topology:
    agents = [AgentInfo(id=f"id{i}", name=name, status="online", online=True) for i, name in enumerate(HOSTILE)]
    return Topology(
        generated_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        agents=agents,
        channels=[TopologyChannel(name='ch "q"\\', kind="queue")],
        subscriptions=[SubscriptionEdge(agent_id="id0", channel='ch "q"\\', lag=1)],
        flows=[Flow(from_agent='ghost "sender"', channel="unlisted\\chan", messages=2, to_agent="id1")],
        locks=[LockInfo(key='"}; evil -> a0 [', owner_id="id2", token=9)],
    )


def test_hostile_names_are_escaped_in_dot() -> None:
    """Quotes, backslashes, braces and newlines in names survive DOT escaping exactly (and Graphviz accepts them)."""
    topo = hostile_topology()
    text = to_dot(topo)
    graph = parse_dot(text)
    expected = [name.replace("\t", " ").replace("\x07", " ") for name in HOSTILE]
    for i, name in enumerate(expected):
        assert graph.nodes[graph.node_with_label(name.split("\n")[0])]["label"] == f"{name}\nid{i} (online)"
    assert graph.nodes[graph.node_with_label('ghost "sender"')]["label"] == 'ghost "sender"\n(not listed)'
    assert graph.node_with_label("unlisted\\chan")
    lock = graph.node_with_label('lock "}; evil -> a0 [')
    assert graph.edge(lock, graph.node_with_label("a;b|c #1 <i>&amp; `x`"))
    svg = run_dot(text)
    if svg is not None:
        assert "say &quot;hi&quot; \\" in svg and "&quot;}; evil &#45;&gt; a0 [" in svg


def test_hostile_names_are_escaped_in_mermaid() -> None:
    """Quotes, markup and Mermaid syntax in names become entity codes; labels decode back to the names."""
    topo = hostile_topology()
    text = to_mermaid(topo)
    graph = parse_mermaid(text)
    for i, name in enumerate(HOSTILE):
        clean = name.replace("\t", " ").replace("\x07", " ")
        assert graph.nodes[f"a{i}"][1] == f"{clean}\nid{i} (online)"
    assert "<i>" not in text and "`x`" not in text
    lock = graph.node_with_label('lock "}; evil -> a0 [')
    assert graph.edge(lock, "a2") == ("-.->", "held by")
    ghost = graph.node_with_label('ghost "sender"')
    assert graph.classes[ghost] == "unlisted"


async def test_table_lists_every_section_literally(db_url: str, conn: asyncpg.Connection) -> None:
    """to_table shows agents, channels, subscriptions, flows and locks, with names shown literally (not as markup)."""
    topo = await real_topology(db_url, conn)
    console = Console(record=True, width=250, color_system=None)
    console.print(to_table(topo))
    text = console.export_text()
    for title in ("Agents (2)", "Channels (", "Subscriptions (3)", "Flows over the last 300 s", "Locks (2)"):
        assert title in text
    for value in ("planner-1", "Planner: main/1", "coder.2", "news:global/v1", "tasks", "agent:planner-1",
                  LOCK_KEY, MARKUP_KEY, "code, review"):
        assert value in text, value
    flows_section = text.split("Flows over")[1].split("Locks (")[0]
    assert "gone" in flows_section


def test_empty_topology_renders() -> None:
    """An empty network still renders valid (empty) DOT and Mermaid graphs and a table saying 'none'."""
    topo = Topology(generated_at=datetime.now(UTC), agents=[], channels=[], subscriptions=[], flows=[], locks=[])
    assert parse_dot(to_dot(topo)).nodes == {}
    run_dot(to_dot(topo))
    assert parse_mermaid(to_mermaid(topo)).nodes == {}
    console = Console(record=True, width=120, color_system=None)
    console.print(to_table(topo))
    assert console.export_text().count("none") == 5


def assert_sections_fit(lines: list[str], width: int = 80) -> None:
    """The topology's tables: each titled 'Name (N)' and followed by header, rule and N lines, or
    'Name (0): none'."""
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    titles = [k for k, line in enumerate(lines) if re.match(r"^[A-Z][a-z]+ .*\((\d+)\)(: none)?\s*$", line)]
    assert len(titles) == 5, "\n".join(lines)
    for k in titles:
        n = int(re.findall(r"\((\d+)\)", lines[k])[-1])
        if n == 0:
            assert lines[k].rstrip().endswith(": none")
            continue
        assert set(lines[k + 2].strip()) == {"─"}, "\n".join(lines)
        following = lines[k + 3: k + 3 + n]
        assert len(following) == n and all(line.strip() for line in following), "\n".join(lines)
        end = k + 3 + n
        assert end == len(lines) or end in titles, "\n".join(lines)  # nothing spills onto another line
