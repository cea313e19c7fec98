"""The wake-up wire format, in one place: the topics wake-ups travel on and the events they carry.

The database's triggers (``supabase/schemas/80_wakeups.sql``) send each wake-up as a compact JSON
object: over ``pg_notify`` on the topic's own channel (:func:`notification_channel`) with its topic
in ``t`` and its event in ``e``, over Supabase Realtime as a broadcast whose topic and event are the
channel's and the message's own. A transport turns either into one :data:`WakeUp` here, once, at its edge
(:func:`from_notification`, :func:`from_broadcast`); what does not decode is dropped there
(logged here, counted by the transport), so the runtime only ever sees typed events.

Topics: ``agent:<id>`` (an agent's inbox; also the inbox channel's own name), ``channel:<name>``
(a broadcast or queue channel), ``presence`` (joins, leaves, status changes) and ``locks``
(released leases).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "LOCKS",
    "PRESENCE",
    "RECONNECTED",
    "LockReleased",
    "MessageWakeUp",
    "PresenceChange",
    "Reconnected",
    "WakeUp",
    "agent_topics",
    "channel_topic",
    "from_broadcast",
    "from_notification",
    "inbox_topic",
    "notification_channel",
]

log = logging.getLogger(__name__)

PRESENCE: Final = "presence"
LOCKS: Final = "locks"
_AGENT = "agent:"
_CHANNEL = "channel:"
_NOTIFICATION_PREFIX = "agent_runtime:"


def inbox_topic(agent_id: str) -> str:
    """An agent's inbox topic, which is also the name of its inbox channel."""
    return f"{_AGENT}{agent_id}"


def channel_topic(channel: str) -> str:
    """The topic a channel's wake-ups travel on: an inbox (``agent:<id>``) is its own topic."""
    return channel if channel.startswith(_AGENT) else f"{_CHANNEL}{channel}"


def notification_channel(topic: str) -> str:
    """The ``pg_notify`` channel a topic's wake-ups travel on: ``agent_runtime:`` and the first 32
    hex digits of the SHA-256 of the topic (a channel is an identifier, at most 63 bytes; a topic
    is not bounded). The SQL's ``agent_runtime_private.topic_channel`` computes the same."""
    return _NOTIFICATION_PREFIX + hashlib.sha256(topic.encode()).hexdigest()[:32]


def agent_topics(agent_id: str) -> tuple[str, ...]:
    """The topics every agent listens to: its inbox, presence and locks."""
    return (inbox_topic(agent_id), PRESENCE, LOCKS)


class _Event(msgspec.Struct, frozen=True, tag_field="e"):
    topic: str = msgspec.field(name="t")


class MessageWakeUp(_Event, frozen=True, tag="message"):
    """New or ready messages on ``channel`` up to ``seq``. A broadcast channel's wake-up may carry
    the messages themselves: ``messages`` (one JSON text, as fetch_messages returns them) from seq
    ``first``, signed with ``mac``; they are believed only if it verifies
    (:mod:`agent_runtime.runtime._wakeups`)."""

    channel: str = msgspec.field(name="c")
    seq: int = msgspec.field(name="s")
    first: int | None = msgspec.field(default=None, name="f")
    messages: str | None = msgspec.field(default=None, name="m")
    mac: str | None = msgspec.field(default=None, name="h")


class PresenceChange(_Event, frozen=True, tag="presence"):
    """An agent joined, left or changed its status (from the agent_presence table's trigger), at
    ``at`` (the database clock, microseconds since the epoch), signed with ``mac``; believed only if
    it verifies (:mod:`agent_runtime.runtime._wakeups`)."""

    agent_id: str = msgspec.field(name="a")
    kind: Literal["join", "leave", "status"] = msgspec.field(name="k")
    status: str = msgspec.field(name="st")
    at: int | None = msgspec.field(default=None, name="at")
    mac: str | None = msgspec.field(default=None, name="h")


class LockReleased(_Event, frozen=True, tag="released"):
    """A lease on ``key`` was released or expired: its waiters may try again."""

    key: str = msgspec.field(name="k")


class Reconnected(_Event, frozen=True, tag="reconnected"):
    """Said by a transport, not the database: events may have been missed, catch up."""


WakeUp = MessageWakeUp | PresenceChange | LockReleased | Reconnected

RECONNECTED: Final = Reconnected("*")

_decoder = msgspec.json.Decoder(WakeUp)


def _dropped(what: str, raw: object, exc: Exception) -> None:
    log.warning("ignoring a malformed %s (%s): %.200r", what, exc, raw)


def from_notification(payload: str | bytes) -> WakeUp | None:
    """A ``pg_notify`` payload as its event, or None (logged) if it is not one."""
    try:
        event = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        _dropped("notification", payload, exc)
        return None
    if isinstance(event, Reconnected):  # only a transport says that
        _dropped("notification", payload, ValueError("not a database event"))
        return None
    return event


def from_broadcast(topic: str, event: object, payload: object) -> WakeUp | None:
    """A Realtime broadcast (its topic, event and payload) as its event, or None (logged) if it
    is not one."""
    if not isinstance(payload, Mapping):
        _dropped(f"broadcast on {topic}", payload, ValueError("not an object"))
        return None
    data: dict[str, Any] = {**payload, "t": topic, "e": event}
    try:
        decoded: WakeUp = msgspec.convert(data, WakeUp)  # (realtime.send's own "id" is ignored)
    except msgspec.ValidationError as exc:
        _dropped(f"broadcast on {topic}", payload, exc)
        return None
    if isinstance(decoded, Reconnected):
        _dropped(f"broadcast on {topic}", payload, ValueError("not a database event"))
        return None
    return decoded
