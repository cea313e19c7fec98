"""Renderings of a :class:`~agent_runtime.models.Topology`: JSON, Graphviz DOT, Mermaid and rich tables.

The graph renderings (DOT and Mermaid) draw the same picture:

- agents as rounded boxes, coloured by status;
- channels as differently shaped nodes (broadcast: hexagon, queue: cylinder, inbox: tag);
- subscriptions as edges ``channel -> agent`` (labelled with the subscriber's lag when known);
- message flows as bold edges ``agent -> channel`` labelled with the message count, and an
  inbox's delivery to its owner as a dotted edge ``inbox -> agent``;
- held locks as lock nodes with a dashed edge to the owning agent.

An edge may name an agent or channel that the document does not list (a flow from an agent that
has since gone offline, a lock held by one): such endpoints are drawn as dashed "unlisted" nodes,
so every edge has both its nodes. Node ids are generated (``a0``, ``c0``, ``l0``), never taken
from names; every label is quoted and escaped for its language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:  # rich is imported by to_table only: `import agent_runtime` stays light
    from rich.console import RenderableType

from ..models import AgentInfo, LockInfo, Topology, TopologyChannel

__all__ = ["to_dot", "to_json", "to_mermaid", "to_table"]

EdgeKind = Literal["subscription", "flow", "delivery", "lock"]


# ---------------------------------------------------------------------------------------------
# The graph both DOT and Mermaid are drawn from
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AgentNode:
    node_id: str
    agent_id: str
    info: AgentInfo | None  # None: referenced by an edge but not listed

    @property
    def status(self) -> str:
        return "unlisted" if self.info is None else self.info.status

    @property
    def label(self) -> str:
        if self.info is None:
            return f"{self.agent_id}\n(not listed)"
        if self.info.name == self.agent_id:
            return f"{self.agent_id}\n{self.status}"
        return f"{self.info.name}\n{self.agent_id} ({self.status})"


@dataclass(frozen=True)
class _ChannelNode:
    node_id: str
    name: str
    info: TopologyChannel | None

    @property
    def kind(self) -> str:
        return "unlisted" if self.info is None else self.info.kind

    @property
    def label(self) -> str:
        if self.info is None:
            return f"{self.name}\n(not listed)"
        return f"{self.name}\n{self.info.kind}, seq {self.info.last_seq}"


@dataclass(frozen=True)
class _LockNode:
    node_id: str
    info: LockInfo

    @property
    def label(self) -> str:
        return f"lock {self.info.key}\ntoken {self.info.token}"


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    kind: EdgeKind
    label: str | None = None


@dataclass
class _Graph:
    agents: dict[str, _AgentNode] = field(default_factory=dict)
    channels: dict[str, _ChannelNode] = field(default_factory=dict)
    locks: list[_LockNode] = field(default_factory=list)
    edges: list[_Edge] = field(default_factory=list)

    def agent(self, agent_id: str, info: AgentInfo | None = None) -> str:
        node = self.agents.get(agent_id)
        if node is None:
            node = _AgentNode(f"a{len(self.agents)}", agent_id, info)
            self.agents[agent_id] = node
        return node.node_id

    def channel(self, name: str, info: TopologyChannel | None = None) -> str:
        node = self.channels.get(name)
        if node is None:
            node = _ChannelNode(f"c{len(self.channels)}", name, info)
            self.channels[name] = node
        return node.node_id


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _graph(topo: Topology) -> _Graph:
    g = _Graph()
    for agent in topo.agents:
        g.agent(agent.id, agent)
    for channel in topo.channels:
        g.channel(channel.name, channel)
    for sub in topo.subscriptions:
        label = f"lag {sub.lag}" if sub.lag else None
        g.edges.append(_Edge(g.channel(sub.channel), g.agent(sub.agent_id), "subscription", label))
    delivered: set[tuple[str, str]] = set()
    for flow in topo.flows:
        channel_id = g.channel(flow.channel)
        g.edges.append(_Edge(g.agent(flow.from_agent), channel_id, "flow", _plural(flow.messages, "msg")))
        if flow.to_agent is not None and (flow.channel, flow.to_agent) not in delivered:
            delivered.add((flow.channel, flow.to_agent))
            g.edges.append(_Edge(channel_id, g.agent(flow.to_agent), "delivery", "inbox"))
    for i, lock in enumerate(topo.locks):
        node = _LockNode(f"l{i}", lock)
        g.locks.append(node)
        g.edges.append(_Edge(node.node_id, g.agent(lock.owner_id), "lock", "held by"))
    return g


def with_endpoints(topo: Topology, everything: Topology) -> Topology:
    """``topo`` (online agents only) plus the agents and channels its flows and locks name that it
    does not list, taken from ``everything`` (the same document with offline agents): a flow from
    an agent that has since left is drawn with its name and status, not as an unlisted id."""
    agents = {a.id for a in topo.agents}
    wanted = {f.from_agent for f in topo.flows} | {f.to_agent for f in topo.flows if f.to_agent} | {
        lock.owner_id for lock in topo.locks}
    channels = {c.name for c in topo.channels}
    wanted_channels = {f.channel for f in topo.flows}
    extra_agents = [a for a in everything.agents if a.id in wanted - agents]
    extra_channels = [c for c in everything.channels if c.name in wanted_channels - channels]
    if not extra_agents and not extra_channels:
        return topo
    return msgspec.structs.replace(
        topo, agents=sorted([*topo.agents, *extra_agents], key=lambda a: a.id),
        channels=sorted([*topo.channels, *extra_channels], key=lambda c: c.name))


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


def to_json(topo: Topology) -> str:
    """The topology as pretty-printed JSON (decodes back with ``msgspec.json.decode(s, type=Topology)``)."""
    return msgspec.json.format(msgspec.json.encode(topo), indent=2).decode() + "\n"


# ---------------------------------------------------------------------------------------------
# Graphviz DOT
# ---------------------------------------------------------------------------------------------

_STATUS_COLOURS: dict[str, tuple[str, str]] = {  # fill, border
    "online": ("#d4edda", "#2e7d32"),
    "busy": ("#ffe0b2", "#ef6c00"),
    "away": ("#fff9c4", "#f9a825"),
    "offline": ("#eeeeee", "#9e9e9e"),
    "unlisted": ("#ffffff", "#9e9e9e"),
}

_DOT_CHANNEL_STYLE: dict[str, str] = {
    "broadcast": 'shape=hexagon, style=filled, fillcolor="#e3f2fd", color="#1565c0"',
    "queue": 'shape=cylinder, style=filled, fillcolor="#ede7f6", color="#4527a0"',
    "direct": 'shape=cds, style=filled, fillcolor="#f5f5f5", color="#616161"',
    "unlisted": 'shape=ellipse, style=dashed, color="#9e9e9e"',
}

_DOT_EDGE_STYLE: dict[EdgeKind, str] = {
    "subscription": 'color="#1565c0"',
    "flow": 'color="#2e7d32", penwidth=2',
    "delivery": 'color="#616161", style=dotted',
    "lock": 'color="#b71c1c", style=dashed',
}


def _dot_string(text: str) -> str:
    """A double-quoted DOT string: backslashes and quotes escaped, line breaks as ``\\n``, other
    control characters replaced, so that Graphviz shows exactly ``text``."""
    out: list[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(" ")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def to_dot(topo: Topology) -> str:
    """The topology as a Graphviz ``digraph`` (render with ``dot -Tsvg``)."""
    g = _graph(topo)
    title = f"agent_runtime topology at {topo.generated_at.isoformat()} (flows over {topo.window_ms / 1000:g} s)"
    lines = [
        "digraph topology {",
        f"  graph [rankdir=LR, fontname=Helvetica, fontsize=11, labelloc=t, label={_dot_string(title)}];",
        "  node [fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=9];",
        "",
        "  // agents",
    ]
    for agent in g.agents.values():
        fill, border = _STATUS_COLOURS.get(agent.status, _STATUS_COLOURS["unlisted"])
        style = "rounded,dashed" if agent.info is None else (
            "rounded,filled,dashed" if agent.status == "offline" else "rounded,filled")
        lines.append(f'  {agent.node_id} [label={_dot_string(agent.label)}, shape=box, style="{style}", '
                     f'fillcolor="{fill}", color="{border}"];')
    lines += ["", "  // channels"]
    for channel in g.channels.values():
        style = _DOT_CHANNEL_STYLE.get(channel.kind, _DOT_CHANNEL_STYLE["unlisted"])
        lines.append(f"  {channel.node_id} [label={_dot_string(channel.label)}, {style}];")
    lines += ["", "  // locks"]
    for lock in g.locks:
        lines.append(f'  {lock.node_id} [label={_dot_string(lock.label)}, shape=note, style=filled, '
                     f'fillcolor="#ffebee", color="#b71c1c"];')
    lines += ["", "  // edges: channel -> subscriber, sender -> channel, inbox -> owner, lock -> owner"]
    for edge in g.edges:
        attrs = _DOT_EDGE_STYLE[edge.kind]
        if edge.label is not None:
            attrs += f", label={_dot_string(edge.label)}"
        lines.append(f"  {edge.source} -> {edge.target} [{attrs}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Mermaid
# ---------------------------------------------------------------------------------------------

# Characters that could end a quoted label or be read as markup become Mermaid entity codes
# ("#34;" is shown as a double quote).
_MERMAID_ESCAPED = frozenset('"#&<>`|\\;{}[]')

_MERMAID_CLASSES: dict[str, str] = {
    "online": "fill:#d4edda,stroke:#2e7d32,color:#1b1b1b",
    "busy": "fill:#ffe0b2,stroke:#ef6c00,color:#1b1b1b",
    "away": "fill:#fff9c4,stroke:#f9a825,color:#1b1b1b",
    "offline": "fill:#eeeeee,stroke:#9e9e9e,color:#757575,stroke-dasharray:4 2",
    "unlisted": "fill:#ffffff,stroke:#9e9e9e,color:#757575,stroke-dasharray:2 2",
    "broadcast": "fill:#e3f2fd,stroke:#1565c0,color:#1b1b1b",
    "queue": "fill:#ede7f6,stroke:#4527a0,color:#1b1b1b",
    "direct": "fill:#f5f5f5,stroke:#616161,color:#1b1b1b",
    "lock": "fill:#ffebee,stroke:#b71c1c,color:#1b1b1b",
}

_MERMAID_SHAPES: dict[str, tuple[str, str]] = {
    "agent": ("(", ")"),
    "broadcast": ("{{", "}}"),
    "queue": ("[(", ")]"),
    "direct": (">", "]"),
    "unlisted": ("[", "]"),
    "lock": ("[/", "/]"),
}

_MERMAID_ARROWS: dict[EdgeKind, str] = {
    "subscription": "-->",
    "flow": "==>",
    "delivery": "-.->",
    "lock": "-.->",
}


def _mermaid_string(text: str) -> str:
    """A double-quoted Mermaid label: line breaks as ``<br/>``, risky characters as entity codes."""
    out: list[str] = []
    for ch in text:
        if ch == "\n":
            out.append("<br/>")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(" ")
        elif ch in _MERMAID_ESCAPED:
            out.append(f"#{ord(ch)};")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _mermaid_node(node_id: str, shape: str, label: str) -> str:
    opening, closing = _MERMAID_SHAPES[shape]
    return f"  {node_id}{opening}{_mermaid_string(label)}{closing}"


def to_mermaid(topo: Topology) -> str:
    """The topology as a Mermaid ``flowchart LR``."""
    g = _graph(topo)
    classes: dict[str, list[str]] = {name: [] for name in _MERMAID_CLASSES}
    lines = [
        "flowchart LR",
        f"  %% agent_runtime topology at {topo.generated_at.isoformat()}, flows over {topo.window_ms / 1000:g} s",
    ]
    for agent in g.agents.values():
        lines.append(_mermaid_node(agent.node_id, "agent", agent.label))
        classes[agent.status if agent.status in classes else "unlisted"].append(agent.node_id)
    for channel in g.channels.values():
        kind = channel.kind if channel.kind in _MERMAID_SHAPES else "unlisted"
        lines.append(_mermaid_node(channel.node_id, kind, channel.label))
        classes[kind].append(channel.node_id)
    for lock in g.locks:
        lines.append(_mermaid_node(lock.node_id, "lock", lock.label))
        classes["lock"].append(lock.node_id)
    for edge in g.edges:
        arrow = _MERMAID_ARROWS[edge.kind]
        text = f"|{_mermaid_string(edge.label)}|" if edge.label is not None else ""
        lines.append(f"  {edge.source} {arrow}{text} {edge.target}")
    for name, style in _MERMAID_CLASSES.items():
        lines.append(f"  classDef {name} {style}")
    for name, members in classes.items():
        if members:
            lines.append(f"  class {','.join(members)} {name}")
    return "\n".join(lines) + "\n"


def to_table(topo: Topology) -> RenderableType:
    """The topology as tables (agents, channels, subscriptions, flows and locks) that fit the width
    they are printed at: cells are cut with an ellipsis, never wrapped, and the least important
    columns are left out on a narrow terminal. Names are shown literally (never read as rich
    markup); times are relative to the document's ``generated_at``, the database's clock."""
    from .tables import topology_table  # (rich is loaded here, not by `import agent_runtime`)

    return topology_table(topo)
