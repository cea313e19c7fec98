"""Phoenix socket serializers as Supabase Realtime mounts them (realtime-protocol.md §1.2, §1.6):
vsn 1.0.0 (JSON objects, ``Phoenix.Socket.V1.JSONSerializer``) and vsn 2.0.0 (JSON arrays plus
binary frames, ``RealtimeWeb.Socket.V2Serializer``, a superset of Phoenix's V2 serializer).

Outgoing frames are ``str`` (text) or ``bytes`` (binary). Broadcasts come in two kinds, as on
the server: :class:`Broadcast` (a map payload: a vsn 1.0.0 client's broadcast, REST broadcasts,
presence diffs) and :class:`UserBroadcast` (an event plus an already encoded payload: a vsn
2.0.0 client's binary push, or a message broadcast from the database), which vsn 2.0.0 sockets
receive as a binary ``user_broadcast`` frame and vsn 1.0.0 sockets as a JSON broadcast (binary
payloads cannot reach them).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from ._common import dumps

# V2Serializer's frame kinds (first byte of a binary frame).
KIND_PUSH = 0
KIND_REPLY = 1
KIND_BROADCAST = 2
KIND_USER_BROADCAST_PUSH = 3
KIND_USER_BROADCAST = 4

Outgoing = str | bytes


class FrameError(ValueError):
    """A frame the serializer cannot decode."""


@dataclass(frozen=True)
class Broadcast:
    """``Phoenix.Socket.Broadcast`` with a map payload (fan-out to a topic)."""

    topic: str
    event: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class UserBroadcast:
    """``RealtimeWeb.Socket.UserBroadcast``: ``user_payload`` is encoded already (JSON text as
    UTF-8 when ``json_encoded``, raw bytes otherwise); ``metadata`` becomes ``meta``."""

    topic: str
    user_event: str
    user_payload: bytes
    json_encoded: bool
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class UserBroadcastPush:
    """The payload of a vsn 2.0.0 client's binary broadcast push."""

    user_event: str
    user_payload: bytes
    json_encoded: bool
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Incoming:
    """A decoded client frame. ``payload`` is a JSON value, or a :class:`UserBroadcastPush`."""

    topic: str
    event: str
    payload: Any
    ref: str | None
    join_ref: str | None


def _ref(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


def _user_broadcast_json(msg: UserBroadcast) -> dict[str, Any]:
    """``UserBroadcast.convert_to_json_broadcast``: the map a vsn 1.0.0 socket receives."""
    payload: dict[str, Any] = {"event": msg.user_event, "payload": json.loads(msg.user_payload),
                               "type": "broadcast"}
    if msg.metadata:
        payload["meta"] = msg.metadata
    return payload


class Serializer(Protocol):
    vsn: str

    def decode(self, data: str | bytes) -> Incoming: ...

    def message(self, topic: str, event: str, payload: dict[str, Any], *, ref: str | None = None,
                join_ref: str | None = None) -> Outgoing: ...

    def reply(self, topic: str, status: str, response: dict[str, Any], *, ref: str | None,
              join_ref: str | None) -> Outgoing: ...

    def fastlane(self, msg: Broadcast | UserBroadcast) -> Outgoing | None: ...


class V1JSONSerializer:
    """vsn 1.0.0: ``{"topic","event","payload","ref"}`` objects; the server never sends
    ``join_ref`` (Phoenix's ``V1.JSONSerializer`` takes topic, event, payload and ref)."""

    vsn = "1.0.0"

    def decode(self, data: str | bytes) -> Incoming:
        if isinstance(data, bytes):
            raise FrameError("vsn 1.0.0 has no binary frames")
        try:
            frame = json.loads(data)
        except ValueError as exc:
            raise FrameError("not JSON") from exc
        if not isinstance(frame, dict):
            raise FrameError("not a vsn 1.0.0 object frame")
        topic, event = frame.get("topic"), frame.get("event")
        if not isinstance(topic, str) or not isinstance(event, str):
            raise FrameError("topic and event must be strings")
        return Incoming(topic, event, frame.get("payload"), _ref(frame.get("ref")), _ref(frame.get("join_ref")))

    def message(self, topic: str, event: str, payload: dict[str, Any], *, ref: str | None = None,
                join_ref: str | None = None) -> Outgoing:
        return dumps({"topic": topic, "event": event, "payload": payload, "ref": ref})

    def reply(self, topic: str, status: str, response: dict[str, Any], *, ref: str | None,
              join_ref: str | None) -> Outgoing:
        return self.message(topic, "phx_reply", {"status": status, "response": response}, ref=ref)

    def fastlane(self, msg: Broadcast | UserBroadcast) -> Outgoing | None:
        if isinstance(msg, Broadcast):
            return self.message(msg.topic, msg.event, msg.payload)
        if not msg.json_encoded:
            return None  # "User payload encoding is not JSON": nothing reaches a vsn 1.0.0 socket
        return self.message(msg.topic, "broadcast", _user_broadcast_json(msg))


def _sized(*fields: bytes) -> None:
    for value in fields:
        if len(value) > 255:
            raise FrameError("a binary frame field is longer than 255 bytes")


class V2Serializer:
    """vsn 2.0.0: text frames are ``[join_ref, ref, topic, event, payload]``; user broadcasts
    travel as binary frames (kinds 3 from the client, 4 to it)."""

    vsn = "2.0.0"

    def decode(self, data: str | bytes) -> Incoming:
        if isinstance(data, bytes):
            return self._decode_binary(data)
        try:
            frame = json.loads(data)
        except ValueError as exc:
            raise FrameError("not JSON") from exc
        if not isinstance(frame, list) or len(frame) < 5:
            raise FrameError("expected V2 array")
        join_ref, ref, topic, event, payload = frame[:5]
        if not isinstance(topic, str) or not isinstance(event, str):
            raise FrameError("topic and event must be strings")
        return Incoming(topic, event, payload, _ref(ref), _ref(join_ref))

    @staticmethod
    def _fields(data: bytes, at: int, sizes: tuple[int, ...]) -> tuple[list[bytes], int]:
        fields = []
        for n in sizes:
            if at + n > len(data):
                raise FrameError("binary frame shorter than its header says")
            fields.append(data[at:at + n])
            at += n
        return fields, at

    def _decode_binary(self, data: bytes) -> Incoming:
        try:
            kind = data[0]
            if kind == KIND_USER_BROADCAST_PUSH:
                *sizes, encoding = struct.unpack_from("!6B", data, 1)
                fields, at = self._fields(data, 7, tuple(sizes))
                join_ref, ref, topic, event = (f.decode() for f in fields[:4])
                metadata = json.loads(fields[4]) if fields[4] else {}
                push = UserBroadcastPush(event, data[at:], encoding != 0,
                                         metadata if isinstance(metadata, dict) else {})
                return Incoming(topic, "broadcast", push, ref or None, join_ref or None)
            if kind == KIND_PUSH:
                # A binary push that is not a broadcast: nothing in Realtime handles one.
                fields, at = self._fields(data, 5, struct.unpack_from("!4B", data, 1))
                join_ref, ref, topic, event = (f.decode() for f in fields)
                return Incoming(topic, event, data[at:], ref or None, join_ref or None)
        except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
            raise FrameError(f"undecodable binary frame: {exc}") from exc
        raise FrameError(f"unknown binary frame kind {data[0] if data else None}")

    def message(self, topic: str, event: str, payload: dict[str, Any], *, ref: str | None = None,
                join_ref: str | None = None) -> Outgoing:
        return dumps([join_ref, ref, topic, event, payload])

    def reply(self, topic: str, status: str, response: dict[str, Any], *, ref: str | None,
              join_ref: str | None) -> Outgoing:
        return dumps([join_ref, ref, topic, "phx_reply", {"status": status, "response": response}])

    def fastlane(self, msg: Broadcast | UserBroadcast) -> Outgoing | None:
        if isinstance(msg, Broadcast):
            return dumps([None, None, msg.topic, msg.event, msg.payload])
        topic, event = msg.topic.encode(), msg.user_event.encode()
        meta = dumps(msg.metadata).encode() if msg.metadata else b""
        _sized(topic, event, meta)
        header = struct.pack("!5B", KIND_USER_BROADCAST, len(topic), len(event), len(meta), 1 if msg.json_encoded
                             else 0)
        return header + topic + event + meta + msg.user_payload


def encode_user_broadcast_push(*, topic: str, user_event: str, user_payload: bytes, json_encoded: bool = True,
                               ref: str = "", join_ref: str = "", metadata: dict[str, Any] | None = None) -> bytes:
    """A vsn 2.0.0 client's binary broadcast push (kind 3), as realtime-js's serializer writes
    it; for protocol tests."""
    fields = [join_ref.encode(), ref.encode(), topic.encode(), user_event.encode(),
              dumps(metadata).encode() if metadata else b""]
    _sized(*fields)
    header = struct.pack("!7B", KIND_USER_BROADCAST_PUSH, *(len(f) for f in fields), 1 if json_encoded else 0)
    return header + b"".join(fields) + user_payload


def decode_user_broadcast(frame: bytes) -> dict[str, Any]:
    """A binary ``user_broadcast`` frame (kind 4) as realtime-js decodes it: ``{"topic",
    "event", "payload", "meta"?}`` with the payload parsed when JSON-encoded; for tests."""
    if not frame or frame[0] != KIND_USER_BROADCAST:
        raise FrameError("not a user_broadcast frame")
    topic_n, event_n, meta_n, encoding = struct.unpack_from("!4B", frame, 1)
    at = 5
    topic = frame[at:at + topic_n].decode()
    at += topic_n
    event = frame[at:at + event_n].decode()
    at += event_n
    meta = frame[at:at + meta_n]
    at += meta_n
    body = frame[at:]
    out: dict[str, Any] = {"topic": topic, "event": event, "payload": json.loads(body) if encoding == 1 else body}
    if meta_n:
        out["meta"] = json.loads(meta)
    return out


SERIALIZERS: dict[str, Serializer] = {"1": V1JSONSerializer(), "2": V2Serializer()}


def negotiate(vsn: str) -> Serializer | None:
    """The serializer for a ``vsn`` query parameter (``~> 1.0.0`` or ``~> 2.0.0``), or None."""
    parts = vsn.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[1] != "0":
        return None
    return SERIALIZERS.get(parts[0])
