"""agent_runtime: a runtime that agent processes embed to find each other, talk and coordinate
through Supabase or any Postgres.

This module is the public API: everything a user (and the ``agent-runtime`` CLI) needs is
imported from here. To add a public name, import it below and list it in ``__all__`` (kept in
sorted order: ruff's RUF022 checks it).
"""

from __future__ import annotations

from .errors import (
    AgentRuntimeError,
    AgentUnavailable,
    ChannelKindMismatch,
    ConfigurationError,
    Conflict,
    ConnectionLost,
    InvalidInput,
    InvalidName,
    InvalidPayload,
    LockError,
    LockLost,
    LockNotHeld,
    LockTimeout,
    MigrationError,
    NotFound,
    NotMigrated,
    PayloadTooLarge,
    PermissionDenied,
    RemoteError,
    RequestTimeout,
    StaleFencingToken,
    UnknownAgent,
    UnknownChannel,
    UnknownMessage,
    UnsupportedPayload,
)
from .models import (
    AgentInfo,
    AgentStatus,
    ChannelInfo,
    ChannelKind,
    DeadLetter,
    Flow,
    LockGrant,
    LockInfo,
    MetricSummary,
    NackResult,
    RawMessage,
    SendResult,
    SubscriptionEdge,
    Topology,
    TopologyChannel,
)
from .render.topology import to_dot, to_json, to_mermaid, to_table
from .runtime._locks import Lease
from .runtime._metrics import Metrics
from .runtime._presence import PresenceEvent
from .runtime._run import run
from .runtime._subscription import Message, Subscription
from .runtime.agent import AgentRuntime
from .runtime.network import Network

__all__ = [
    "AgentInfo",
    "AgentRuntime",
    "AgentRuntimeError",
    "AgentStatus",
    "AgentUnavailable",
    "ChannelInfo",
    "ChannelKind",
    "ChannelKindMismatch",
    "ConfigurationError",
    "Conflict",
    "ConnectionLost",
    "DeadLetter",
    "Flow",
    "InvalidInput",
    "InvalidName",
    "InvalidPayload",
    "Lease",
    "LockError",
    "LockGrant",
    "LockInfo",
    "LockLost",
    "LockNotHeld",
    "LockTimeout",
    "Message",
    "MetricSummary",
    "Metrics",
    "MigrationError",
    "NackResult",
    "Network",
    "NotFound",
    "NotMigrated",
    "PayloadTooLarge",
    "PermissionDenied",
    "PresenceEvent",
    "RawMessage",
    "RemoteError",
    "RequestTimeout",
    "SendResult",
    "StaleFencingToken",
    "Subscription",
    "SubscriptionEdge",
    "Topology",
    "TopologyChannel",
    "UnknownAgent",
    "UnknownChannel",
    "UnknownMessage",
    "UnsupportedPayload",
    "run",
    "to_dot",
    "to_json",
    "to_mermaid",
    "to_table",
]
