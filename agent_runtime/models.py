"""Typed views of what the SQL functions return (decoded with msgspec, unknown fields ignored)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "AgentInfo",
    "AgentStatus",
    "ChannelInfo",
    "ChannelKind",
    "DeadLetter",
    "Flow",
    "LockGrant",
    "LockInfo",
    "MetricSummary",
    "NackResult",
    "RawMessage",
    "SendResult",
    "SubscriptionEdge",
    "Topology",
    "TopologyChannel",
]

AgentStatus = Literal["online", "busy", "away", "offline"]
ChannelKind = Literal["broadcast", "queue", "direct"]


class AgentInfo(msgspec.Struct, frozen=True):
    id: str
    name: str
    kind: str = "agent"
    capabilities: list[str] = []
    version: str = ""
    host: str = ""
    pid: int | None = None
    metadata: dict[str, Any] = {}
    status: AgentStatus = "offline"
    load: float = 0.0
    online: bool = False
    started_at: datetime | None = None
    last_seen: datetime | None = None
    heartbeat_at: datetime | None = None
    expires_at: datetime | None = None
    incarnation: int = 1
    resumed: bool = False


class ChannelInfo(msgspec.Struct, frozen=True):
    name: str
    kind: ChannelKind
    id: int | None = None
    owner_id: str | None = None
    retention_ms: int | None = None
    message_ttl_ms: int | None = None
    max_attempts: int = 5
    visibility_timeout_ms: int = 30000
    max_payload_bytes: int = 262144
    metadata: dict[str, Any] = {}
    last_seq: int = 0
    subscribers: int = 0
    ready: int = 0
    dead: int = 0
    created_by: str | None = None
    created_at: datetime | None = None


class RawMessage(msgspec.Struct, frozen=True):
    id: int
    channel: str
    seq: int
    sender_id: str
    payload: Any
    headers: dict[str, Any] = {}
    size_bytes: int = 0
    correlation_id: str | None = None
    reply_to: str | None = None
    idempotency_key: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    attempts: int = 1


class SendResult(msgspec.Struct, frozen=True):
    id: int
    seq: int
    duplicate: bool = False


class NackResult(msgspec.Struct, frozen=True):
    state: Literal["retry", "dead", "ignored"]
    attempts: int = 0
    retry_at: datetime | None = None


class DeadLetter(msgspec.Struct, frozen=True):
    id: int
    channel: str
    seq: int
    sender_id: str
    payload: Any
    attempts: int = 0
    reason: str | None = None
    subscriber_id: str | None = None
    dead_letter_id: int | None = None
    created_at: datetime | None = None
    headers: dict[str, Any] = {}


class LockGrant(msgspec.Struct, frozen=True):
    key: str
    acquired: bool
    owner_id: str | None = None
    lease_id: str | None = None
    token: int | None = None
    acquired_at: datetime | None = None
    expires_at: datetime | None = None
    ttl_ms: int = 0


class LockInfo(msgspec.Struct, frozen=True):
    key: str
    owner_id: str
    token: int
    acquired_at: datetime | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] = {}


class MetricSummary(msgspec.Struct, frozen=True):
    agent_id: str
    channel: str
    metric: str
    count: int
    sum: float
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    first_bucket: datetime | None = None
    last_bucket: datetime | None = None


class SubscriptionEdge(msgspec.Struct, frozen=True):
    agent_id: str
    channel: str
    cursor: int = 0
    lag: int | None = None


class Flow(msgspec.Struct, frozen=True, rename={"from_agent": "from", "to_agent": "to"}):
    from_agent: str
    channel: str
    messages: int
    bytes: int = 0
    to_agent: str | None = None
    last_at: datetime | None = None


class TopologyChannel(msgspec.Struct, frozen=True):
    name: str
    kind: ChannelKind
    owner_id: str | None = None
    last_seq: int = 0


class Topology(msgspec.Struct, frozen=True):
    """The network as one document: see :mod:`agent_runtime.render.topology` for renderings."""

    generated_at: datetime
    agents: list[AgentInfo]
    channels: list[TopologyChannel]
    subscriptions: list[SubscriptionEdge]
    flows: list[Flow]
    locks: list[LockInfo]
    window_ms: int = 300000
