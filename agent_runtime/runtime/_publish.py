"""Sending: payloads checked (JSON-ready, within the largest size any channel takes) before
anything crosses the wire, batches in one round trip, and replies to a request's own requester."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ..errors import InvalidInput, PayloadTooLarge, PermissionDenied
from ..models import RawMessage, SendResult
from ..transports import wire
from ._context import RuntimeContext
from ._durations import to_ms
from ._payload import to_json_value

__all__ = ["MAX_BATCH", "MAX_PAYLOAD_BYTES", "checked_headers", "checked_payload", "count_sent", "inbox_channel",
           "publish_many", "reply", "send"]

# The largest payload any channel accepts (communication_channels.max_payload_bytes); a bigger one
# is refused here, before it is sent.
MAX_PAYLOAD_BYTES = 1_048_576
# The most messages send_messages takes in one batch; a bigger batch is refused here, before its
# payloads are encoded and sent.
MAX_BATCH = 10_000
_encoder = msgspec.json.Encoder()


def checked_payload(payload: Any) -> Any:
    """The payload as JSON-ready builtins, refused here if no channel could take it."""
    value = to_json_value(payload)
    if isinstance(value, str | list | dict):
        size = len(_encoder.encode(value))
        if size > MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(f"payload is {size} bytes; no channel accepts more than {MAX_PAYLOAD_BYTES}")
    return value


def checked_headers(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """Headers as JSON-ready builtins (None for none), refused here if they are not an object or
    are larger than any payload may be (the table has no limit of its own for them)."""
    if not headers:
        return None
    value = to_json_value(headers, "headers")
    if not isinstance(value, dict):
        raise InvalidInput(f"headers must be a mapping (got {type(headers).__name__})")
    size = len(_encoder.encode(value))
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"headers are {size} bytes; at most {MAX_PAYLOAD_BYTES} are accepted")
    return value


def inbox_channel(agent_id: str) -> str:
    """An agent's inbox channel (given its id, or the inbox's name itself)."""
    return agent_id if agent_id.startswith(wire.inbox_topic("")) else wire.inbox_topic(agent_id)


async def send(context: RuntimeContext, channel: str, messages: list[dict[str, Any]]) -> list[SendResult]:
    """Send prepared messages (payloads checked already) in one round trip, counted as sent."""
    results = await context.db.send_batch(context.agent_id, channel, messages)
    count_sent(context, channel, results)
    return results


def count_sent(context: RuntimeContext, channel: str, results: Sequence[SendResult]) -> None:
    """``messages.sent``: the messages of a send that were not duplicates of earlier ones."""
    sent = sum(1 for r in results if not r.duplicate)
    if sent:
        context.metrics.increment("messages.sent", sent, channel=channel)


async def publish_many(context: RuntimeContext, channel: str, payloads: Sequence[Any], *,
                       headers: dict[str, Any] | None, idempotency_keys: Sequence[str | None] | None,
                       ttl: float | None, delay: float | None) -> list[SendResult]:
    """Check every argument and payload first, then send the batch (all or nothing), in order."""
    if len(payloads) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} messages per batch (got {len(payloads)})",
                           hint="send them in several publish_many calls")
    if idempotency_keys is not None and len(idempotency_keys) != len(payloads):
        raise InvalidInput("idempotency_keys must match payloads one to one")
    messages = []
    ttl_ms, delay_ms = to_ms(ttl, "ttl"), to_ms(delay, "delay")
    headers = checked_headers(headers)
    for i, payload in enumerate(payloads):
        entry: dict[str, Any] = {"payload": checked_payload(payload)}
        if headers:
            entry["headers"] = headers
        if idempotency_keys is not None and idempotency_keys[i]:
            entry["idempotency_key"] = idempotency_keys[i]
        if ttl_ms is not None:
            entry["ttl_ms"] = ttl_ms
        if delay_ms is not None:
            entry["delay_ms"] = delay_ms
        messages.append(entry)
    return await send(context, channel, messages)


async def reply(context: RuntimeContext, request: RawMessage, payload: Any, *, kind: str = "reply") -> None:
    """Answer a request (Message.reply): to the requester's own inbox, and only there."""
    if not request.reply_to or not request.correlation_id:
        raise InvalidInput(f"message {request.id} is not a request (no reply_to/correlation_id)")
    if request.reply_to != inbox_channel(request.sender_id):
        raise PermissionDenied(f"message {request.id} asks for a reply to {request.reply_to!r}: "
                               "replies go to the requester's own inbox only")
    await send(context, request.reply_to, [{"payload": checked_payload(payload), "headers": {"ar": kind},
                                            "correlation_id": request.correlation_id}])
