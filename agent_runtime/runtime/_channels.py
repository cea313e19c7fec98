"""Channels and opening subscriptions to them: names and settings checked before anything is
sent (the SQL's rules, with the setting named in the error), the channel ensured when a kind is
known, then the subscription opened."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

from ..errors import InvalidInput, InvalidName
from ..models import ChannelInfo, ChannelKind
from ._context import RuntimeContext
from ._durations import bounded, to_ms, whole
from ._identity import CHANNEL_NAME
from ._payload import to_json_value
from ._publish import MAX_PAYLOAD_BYTES
from ._subscription import Subscription

__all__ = ["Subscribing", "check_name", "check_payload_type", "check_subscription", "ensure", "subscribe"]

T = TypeVar("T")


def check_name(name: str, *, inbox: bool) -> None:
    """The SQL's rule for channel names, checked before anything is sent."""
    if not isinstance(name, str) or not CHANNEL_NAME.fullmatch(name):
        raise InvalidName(f"invalid channel name {name!r}",
                          hint="1-128 characters: letters, digits, _ . : / - (not starting with a symbol)")
    if not inbox and name.startswith("agent:"):
        raise InvalidName("channel names starting with agent: are agent inboxes")


def check_payload_type(payload_type: Any) -> None:
    """A type payloads can be decoded into (msgspec's), or None for the JSON as it is."""
    if payload_type is None:
        return
    try:
        msgspec.inspect.type_info(payload_type)
    except TypeError as exc:
        raise InvalidInput(f"type must be a type msgspec can decode payloads into (got {payload_type!r})",
                           hint="a msgspec.Struct, a dataclass, a TypedDict, dict[str, Any], ...") from exc


def check_subscription(channel: str, kind: ChannelKind | None, start: str, visibility_timeout: float | None,
                       payload_type: Any = None) -> None:
    check_name(channel, inbox=True)
    check_payload_type(payload_type)
    if kind not in (None, "broadcast", "queue"):
        raise InvalidInput(f"kind must be broadcast or queue (got {kind!r})")
    if start not in ("latest", "earliest"):
        raise InvalidInput(f"start must be 'latest' or 'earliest' (got {start!r})")
    if visibility_timeout is not None:
        bounded(visibility_timeout, "visibility_timeout", minimum=0.1, maximum=43200)


async def ensure(context: RuntimeContext, name: str, kind: ChannelKind = "broadcast", *,
                 retention: float | None = None, message_ttl: float | None = None, max_attempts: int | None = None,
                 visibility_timeout: float | None = None, max_payload_bytes: int | None = None,
                 metadata: dict[str, Any] | None = None) -> ChannelInfo:
    """Create the channel if missing (an existing one keeps its settings). Times in seconds."""
    check_name(name, inbox=False)
    if kind not in ("broadcast", "queue"):
        raise InvalidInput(f"channel kind must be broadcast or queue (got {kind!r})")
    if max_attempts is not None:
        whole(max_attempts, "max_attempts", minimum=1, maximum=1000)
    if max_payload_bytes is not None:
        whole(max_payload_bytes, "max_payload_bytes", minimum=1, maximum=MAX_PAYLOAD_BYTES)
    if visibility_timeout is not None:
        bounded(visibility_timeout, "visibility_timeout", minimum=0.1, maximum=43200)
    return await context.db.ensure_channel(
        context.agent_id, name, kind, retention_ms=to_ms(retention, "retention"),
        message_ttl_ms=to_ms(message_ttl, "message_ttl"), max_attempts=max_attempts,
        visibility_timeout_ms=to_ms(visibility_timeout, "visibility_timeout"),
        max_payload_bytes=max_payload_bytes, metadata=None if metadata is None else to_json_value(metadata))


def subscribe(context: RuntimeContext, channel: str, *, payload_type: type[T] | None, kind: ChannelKind | None,
              start: str, batch_size: int, visibility_timeout: float | None) -> Subscribing[T]:
    """Check the arguments now; the channel is ensured and the subscription opened on ``async with``."""
    check_subscription(channel, kind, start, visibility_timeout, payload_type)
    whole(batch_size, "batch_size", minimum=1, maximum=10000)
    return Subscribing(context, channel, kind, payload_type, start, batch_size, visibility_timeout)


class Subscribing(AbstractAsyncContextManager[Subscription[T]]):
    """Ensures the channel (when a kind is known), then opens the subscription."""

    def __init__(self, context: RuntimeContext, channel: str, kind: ChannelKind | None,
                 payload_type: type[T] | None, start: str, batch_size: int, visibility: float | None) -> None:
        self._context, self._channel, self._kind = context, channel, kind
        self._type, self._start, self._batch, self._visibility = payload_type, start, batch_size, visibility
        self._sub: Subscription[T] | None = None

    async def __aenter__(self) -> Subscription[T]:
        if self._channel.startswith("agent:"):
            kind: ChannelKind = "direct"
        else:
            info = await ensure(self._context, self._channel, self._kind or "broadcast") if self._kind else None
            kind = info.kind if info else await self._existing_kind()
        self._sub = Subscription(self._context, self._channel, kind, payload_type=self._type,
                                 batch_size=self._batch, visibility=self._visibility, start=self._start)
        return await self._sub.__aenter__()

    async def _existing_kind(self) -> ChannelKind:
        for info in await self._context.db.list_channels():
            if info.name == self._channel:
                return info.kind
        return (await ensure(self._context, self._channel, "broadcast")).kind

    async def __aexit__(self, *exc_info: object) -> None:
        if self._sub is not None:
            await self._sub.close()
