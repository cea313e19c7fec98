"""The one module that names SQL functions: typed calls over any transport."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import msgspec

from ..errors import NotMigrated
from ..models import (
    AgentInfo,
    ChannelInfo,
    DeadLetter,
    LockGrant,
    LockInfo,
    MetricSummary,
    NackResult,
    RawMessage,
    SendResult,
    Topology,
)
from ..transports.base import Transport
from ..transports.wire import inbox_topic

T = TypeVar("T")

# What an inbox holds: requests (they name a reply_to), replies (a correlation id, no reply_to)
# and plain direct messages (neither).
MessageClass = Literal["request", "reply", "plain"]


def _as(kind: type[T], raw: Any) -> T:
    return msgspec.convert(raw, kind, strict=False)


def messages_from_json(raw: Any) -> list[RawMessage]:
    """Messages as fetch_messages and claim_messages return them (decoded JSON), and as a broadcast
    wake-up carries them: one decoding for all. Raises ``msgspec.ValidationError`` if malformed."""
    return msgspec.convert(raw, list[RawMessage], strict=False)


class Database:
    """Every SQL operation the runtime uses, with named arguments and typed results."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._claim_inbox_missing = False  # (a database migrated before claim_inbox)

    async def _call(self, fn: str, **args: Any) -> Any:
        return await self.transport.call(fn, args)

    async def _call_messages(self, fn: str, **args: Any) -> list[RawMessage]:
        """A call returning messages, decoded straight from the wire into RawMessages where the
        transport can (no dicts in between: the delivery path's per-message decoding cost)."""
        call_as = getattr(self.transport, "call_as", None)
        if call_as is not None:
            messages: list[RawMessage] = await call_as(fn, args, list[RawMessage])
            return messages
        return messages_from_json(await self.transport.call(fn, args))

    # Registry and presence
    async def register_agent(self, agent_id: str, name: str, *, kind: str, capabilities: Sequence[str],
                             version: str, host: str, pid: int | None, metadata: dict[str, Any],
                             heartbeat_ttl_ms: int) -> AgentInfo:
        return _as(AgentInfo, await self._call(
            "register_agent", p_agent_id=agent_id, p_name=name, p_kind=kind, p_capabilities=list(capabilities),
            p_version=version, p_host=host, p_pid=pid, p_metadata=metadata, p_heartbeat_ttl_ms=heartbeat_ttl_ms))

    async def heartbeat(self, agent_id: str, *, status: str | None = None, load: float | None = None,
                        info: dict[str, Any] | None = None) -> AgentInfo:
        return _as(AgentInfo, await self._call(
            "update_agent_last_seen", p_agent_id=agent_id, p_status=status, p_load=load, p_info=info))

    async def deregister_agent(self, agent_id: str) -> AgentInfo:
        return _as(AgentInfo, await self._call("deregister_agent", p_agent_id=agent_id))

    async def list_agents(self, capability: str | None = None, online_only: bool = True) -> list[AgentInfo]:
        return _as(list[AgentInfo], await self._call(
            "list_agents", p_capability=capability, p_online_only=online_only))

    # Channels
    async def ensure_channel(self, agent_id: str, name: str, kind: str, *, retention_ms: int | None = None,
                             message_ttl_ms: int | None = None, max_attempts: int | None = None,
                             visibility_timeout_ms: int | None = None, max_payload_bytes: int | None = None,
                             metadata: dict[str, Any] | None = None) -> ChannelInfo:
        return _as(ChannelInfo, await self._call(
            "ensure_channel", p_agent_id=agent_id, p_name=name, p_kind=kind, p_retention_ms=retention_ms,
            p_message_ttl_ms=message_ttl_ms, p_max_attempts=max_attempts,
            p_visibility_timeout_ms=visibility_timeout_ms, p_max_payload_bytes=max_payload_bytes,
            p_metadata=metadata))

    async def list_channels(self) -> list[ChannelInfo]:
        return _as(list[ChannelInfo], await self._call("list_channels"))

    async def subscribe(self, agent_id: str, channel: str, start: str = "latest") -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "subscribe_channel", p_agent_id=agent_id, p_channel=channel, p_from=start)
        return result

    async def unsubscribe(self, agent_id: str, channel: str) -> bool:
        return bool(await self._call("unsubscribe_channel", p_agent_id=agent_id, p_channel=channel))

    # Messages
    async def send_batch(self, agent_id: str, channel: str, messages: list[dict[str, Any]]) -> list[SendResult]:
        return _as(list[SendResult], await self._call(
            "send_messages", p_agent_id=agent_id, p_channel=channel, p_messages=messages))

    async def reply_to_request(self, agent_id: str, request_id: int, channel: str,
                               messages: list[dict[str, Any]]) -> tuple[bool, list[SendResult]]:
        """Send a reply and ack the request it answers in one transaction: (acked, sent)."""
        result = await self._call("reply_to_request", p_agent_id=agent_id, p_request_id=request_id,
                                  p_channel=channel, p_messages=messages)
        return bool(result["acked"]), _as(list[SendResult], result["sent"])

    async def claim_inbox(self, agent_id: str, limit: int, visibility_ms: int | None,
                          ack_ids: Sequence[int] | None = None,
                          classes: Sequence[MessageClass] | None = None) -> list[RawMessage]:
        """This agent's own inbox claimed as ``claim`` claims it, in a transaction that commits
        without waiting for its WAL flush (p_durable=False: the call is alone in its transaction;
        why a claim lost in a crash is harmless: claim_inbox in 30_messages_dead_letters.sql). On
        a database migrated before claim_inbox: ``claim``."""
        if not self._claim_inbox_missing:
            try:
                return await self._call_messages(
                    "claim_inbox", p_agent_id=agent_id, p_limit=limit, p_visibility_ms=visibility_ms,
                    p_durable=False, **_claim_extras(ack_ids, classes))
            except NotMigrated:
                self._claim_inbox_missing = True
        return await self.claim(agent_id, inbox_topic(agent_id), limit, visibility_ms, ack_ids, classes)

    # ``ack_ids``: acknowledged in the same call, before fetching (one round trip for both).
    async def fetch(self, agent_id: str, channel: str, limit: int,
                    ack_ids: Sequence[int] | None = None) -> list[RawMessage]:
        acks: dict[str, Any] = {"p_ack_ids": list(ack_ids)} if ack_ids else {}
        return await self._call_messages(
            "fetch_messages", p_agent_id=agent_id, p_channel=channel, p_limit=limit, **acks)

    async def claim(self, agent_id: str, channel: str, limit: int, visibility_ms: int | None,
                    ack_ids: Sequence[int] | None = None,
                    classes: Sequence[MessageClass] | None = None) -> list[RawMessage]:
        """``classes``: claim only these (an inbox's requests, replies or plain messages); None: all."""
        return await self._call_messages(
            "claim_messages", p_agent_id=agent_id, p_channel=channel, p_limit=limit,
            p_visibility_ms=visibility_ms, **_claim_extras(ack_ids, classes))

    # ``channel``: only messages of that channel are acknowledged (ids of others are ignored).
    async def ack(self, agent_id: str, message_ids: Sequence[int], channel: str) -> int:
        return int(await self._call("ack_messages", p_agent_id=agent_id, p_message_ids=list(message_ids),
                                    p_channel=channel))

    async def wakeup_key(self) -> str:
        """The key that verifies messages carried by wake-ups (trusted roles only)."""
        return str(await self._call("wakeup_key"))

    async def nack(self, agent_id: str, message_id: int, *, delay_ms: int, reason: str | None,
                   dead: bool = False, release: bool = False) -> NackResult:
        # p_release is passed only when set: plain nacks keep working on a database migrated before it.
        args: dict[str, Any] = {"p_release": True} if release else {}
        return _as(NackResult, await self._call(
            "nack_message", p_agent_id=agent_id, p_message_id=message_id, p_delay_ms=delay_ms,
            p_reason=reason, p_dead=dead, **args))

    async def extend_visibility(self, agent_id: str, message_ids: Sequence[int], visibility_ms: int) -> int:
        return int(await self._call("extend_visibility", p_agent_id=agent_id, p_message_ids=list(message_ids),
                                    p_visibility_ms=visibility_ms))

    async def peek(self, channel: str, after_seq: int, limit: int) -> list[RawMessage]:
        return messages_from_json(await self._call("peek_messages", p_channel=channel, p_after_seq=after_seq,
                                                   p_limit=limit))

    async def list_dead_letters(self, channel: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return _as(list[DeadLetter], await self._call("list_dead_letters", p_channel=channel, p_limit=limit))

    async def replay_dead_letters(self, agent_id: str, message_ids: Sequence[int]) -> int:
        return int(await self._call("replay_dead_letters", p_agent_id=agent_id,
                                    p_message_ids=list(message_ids)))

    # Locks
    # ``wait_ms``: the longest the database waits for the lock row (None: no bound of its own).
    async def acquire_lock(self, agent_id: str, key: str, lease_id: uuid.UUID, ttl_ms: int,
                           metadata: dict[str, Any] | None = None, *, wait_ms: int | None = None) -> LockGrant:
        wait: dict[str, Any] = {} if wait_ms is None else {"p_wait_ms": wait_ms}
        return _as(LockGrant, await self._call(
            "acquire_lock", p_agent_id=agent_id, p_key=key, p_lease_id=lease_id, p_ttl_ms=ttl_ms,
            p_metadata=metadata or {}, **wait))

    async def renew_lock(self, agent_id: str, key: str, lease_id: uuid.UUID, ttl_ms: int) -> LockGrant:
        return _as(LockGrant, await self._call(
            "renew_lock", p_agent_id=agent_id, p_key=key, p_lease_id=lease_id, p_ttl_ms=ttl_ms))

    # p_durable=False: the call is alone in its transaction, which need not wait for its WAL flush
    # (a release lost in a crash leaves the lease to its TTL; see release_lock in 40_locks.sql).
    async def release_lock(self, agent_id: str, key: str, lease_id: uuid.UUID) -> bool:
        return bool(await self._call("release_lock", p_agent_id=agent_id, p_key=key, p_lease_id=lease_id,
                                     p_durable=False))

    async def check_fencing_token(self, key: str, token: int) -> bool:
        return bool(await self._call("check_fencing_token", p_key=key, p_token=token))

    async def list_locks(self) -> list[LockInfo]:
        return _as(list[LockInfo], await self._call("list_locks"))

    # Metrics
    async def record_metrics(self, agent_id: str, metrics: list[dict[str, Any]]) -> int:
        return int(await self._call("record_communication_metrics", p_agent_id=agent_id, p_metrics=metrics))

    async def get_metrics(self, agent_id: str | None = None, metric: str | None = None,
                          since_ms: int = 3_600_000) -> list[MetricSummary]:
        return _as(list[MetricSummary], await self._call(
            "get_communication_metrics", p_agent_id=agent_id, p_metric=metric, p_since_ms=since_ms))

    # Cleanup and topology
    async def run_cleanup(self, metrics_retention_ms: int = 7 * 86_400_000) -> dict[str, int]:
        result: dict[str, int] = await self._call("run_cleanup", p_metrics_retention_ms=metrics_retention_ms)
        return result

    async def topology(self, window_ms: int = 300_000, include_offline: bool = False) -> Topology:
        return _as(Topology, await self._call(
            "get_network_topology", p_window_ms=window_ms, p_include_offline=include_offline))


def _claim_extras(ack_ids: Sequence[int] | None, classes: Sequence[MessageClass] | None) -> dict[str, Any]:
    """A claim's optional arguments: acks riding along, and the classes of message to claim."""
    extra: dict[str, Any] = {"p_ack_ids": list(ack_ids)} if ack_ids else {}
    if classes is not None:
        extra["p_classes"] = list(classes)
    return extra
