"""``/realtime/v1/websocket``: Supabase Realtime's Phoenix protocol, vsn 1.0.0 (JSON object
frames, the official Python client 2.34.1) and vsn 2.0.0 (JSON array frames and binary broadcast
frames, supabase-js's default), plus the REST broadcast endpoints and broadcast from the
database (realtime-protocol.md §1-6; the serializers are in ``_phoenix.py``).

State lives in one event loop: every socket has a reader (frames handled in arrival order) and a
writer fed by a queue (frames leave in the order they were produced), and the topic table maps
``(private, sub topic)`` to the channel joins on it. Public and private topics with the same name
are separate namespaces, as on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import _jwt
from ._common import Keys, StandInStats, dumps, json_response
from ._phoenix import Broadcast, FrameError, Incoming, Outgoing, Serializer, UserBroadcast, UserBroadcastPush, negotiate
from ._rate import RateCounter
from ._realtime_auth import Authorizer, DatabaseUnavailable, PolicyError

log = logging.getLogger("agent_runtime.testing.realtime")

_TOPIC_PREFIX = "realtime:"
_MAX_FRAME = 5_000_000
_socket_ids = itertools.count(1)
_UNREACHABLE = "Realtime was unable to connect to the project database"


def _no_read(topic: str) -> str:
    return f"You do not have permissions to read from this Channel topic: {topic}"


def _phx_ref() -> str:
    return secrets.token_urlsafe(12)


def _as_bool(value: Any, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    return default


def _binding_id(binding: Any) -> int:
    return (zlib.crc32(dumps(binding).encode()) & 0x7FFFFFFF) or 1


def _realtime_reason(exc: _jwt.TokenError) -> str:
    """A join refusal reason for a token that does not verify (``Code: message``)."""
    if exc.kind == "claims":
        return "InvalidJWTToken: Fields `role` and `exp` are required in JWT"
    if exc.kind == "expired":
        return f"InvalidJWTToken: Token has expired {exc.expired_for} seconds ago"
    if exc.kind == "signature":
        return "JwtSignatureError: Failed to validate JWT signature"
    return "MalformedJWT: The token provided is not a valid JWT"


class _Socket:
    """One websocket connection."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, apikey: str, stats: StandInStats,
                 serializer: Serializer) -> None:
        self.id = next(_socket_ids)
        self.ws = ws
        self.request = request
        self.apikey = apikey
        self.serializer = serializer
        self.channels: dict[str, _Join] = {}
        self.done = asyncio.Event()
        self._stats = stats
        self._outbox: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        self._open = True

    def send(self, frame: Outgoing) -> None:
        """A frame already encoded (one encoding shared by every recipient of a fan-out)."""
        if self._open:
            self._outbox.put_nowait(frame)

    def message(self, topic: str, event: str, payload: dict[str, Any], *, ref: str | None = None,
                join_ref: str | None = None) -> None:
        self.send(self.serializer.message(topic, event, payload, ref=ref, join_ref=join_ref))

    def reply(self, topic: str, ref: str | None, join_ref: str | None, status: str, response: dict[str, Any]) -> None:
        self.send(self.serializer.reply(topic, status, response, ref=ref, join_ref=join_ref))

    def finish(self) -> None:
        self._open = False
        self._outbox.put_nowait(None)

    async def run_writer(self) -> None:
        while True:
            frame = await self._outbox.get()
            if frame is None:
                return
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except Exception as exc:  # the peer went away; the reader cleans up
                log.debug("socket %s: send failed: %s", self.id, exc)
                self._open = False
                return
            self._stats.ws_frames_out += 1


@dataclass(eq=False)
class _Join:
    """One channel joined on one socket (a Phoenix channel process on the server)."""

    socket: _Socket
    topic: str
    sub_topic: str
    join_ref: str | None
    private: bool
    self_broadcast: bool
    ack_broadcast: bool
    presence_enabled: bool
    presence_key: str
    token: str
    claims: dict[str, Any]
    broadcast_read: bool = True
    presence_read: bool | None = True
    broadcast_write: bool | None = None
    presence_write: bool | None = None
    presence_payload: dict[str, Any] | None = None
    presence_ref: str | None = None
    presence_calls: int = 0
    presence_window_end: float = 0.0
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[bool, str]:
        return (self.private, self.sub_topic)

    def presence_meta(self) -> dict[str, Any]:
        return {**(self.presence_payload or {}), "phx_ref": self.presence_ref}


class RealtimeHub:
    """The Realtime server: sockets, channel joins, broadcast and presence."""

    def __init__(
        self,
        keys: Keys,
        stats: StandInStats,
        authorizer: Authorizer,
        *,
        idle_timeout: float = 60.0,
        presence_max_calls: int = 5,
        presence_window: float = 30.0,
        max_payload_bytes: int = 3_000_000,
        max_events_per_second: float | None = None,
        rate_tick: float = 5.0,
    ) -> None:
        self._keys = keys
        self._stats = stats
        self._auth = authorizer
        self._idle_timeout = idle_timeout
        self._presence_max_calls = presence_max_calls
        self._presence_window = presence_window
        self._max_payload = max_payload_bytes + 500
        self.sockets: set[_Socket] = set()
        self.topics: dict[tuple[bool, str], list[_Join]] = {}
        # The tenant's events-per-second limit (off unless given), counted as the server counts.
        self.events: RateCounter | None = None
        if max_events_per_second is not None:
            self.events = RateCounter(max_events_per_second, tick=rate_tick)
            self.events.start()

    def stop(self) -> None:
        """Stop the rate counter's ticks."""
        if self.events is not None:
            self.events.stop()

    # -- connection ------------------------------------------------------------------------

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        refused = self._keys.gateway_check(request)
        if refused is not None:
            self._stats.ws_refused += 1
            return refused
        serializer = negotiate(request.query.get("vsn", "1.0.0"))
        if serializer is None:  # Phoenix refuses a vsn no serializer matches (~> 1.0.0, ~> 2.0.0)
            self._stats.ws_refused += 1
            return json_response({"error": "unsupported vsn"}, status=403)
        apikey = request.headers.get("x-api-key") or request.query.get("apikey") or ""
        try:
            _jwt.decode(apikey, self._keys.secret, require_role_exp=True)
        except _jwt.TokenError as exc:
            self._stats.ws_refused += 1
            message = {
                "claims": "Fields `role` and `exp` are required in JWT",
                "expired": "Token has expired",
            }.get(exc.kind, "The token provided is not a valid JWT")
            return json_response({"error": message}, status=401)

        ws = web.WebSocketResponse(receive_timeout=self._idle_timeout, max_msg_size=_MAX_FRAME, timeout=2.0)
        await ws.prepare(request)
        sock = _Socket(ws, request, apikey, self._stats, serializer)
        self.sockets.add(sock)
        self._stats.ws_connections += 1
        self._stats.ws_open += 1
        writer = asyncio.create_task(sock.run_writer(), name=f"standin-ws-writer-{sock.id}")
        try:
            while True:
                try:
                    msg = await ws.receive()
                except TimeoutError:
                    log.info("socket %s: no data for %.0f s, closing", sock.id, self._idle_timeout)
                    break
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self._stats.ws_frames_in += 1
                    try:
                        await self._on_frame(sock, msg.data)
                    except Exception:
                        log.exception("socket %s: frame handling failed: %r", sock.id, msg.data[:500])
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
        finally:
            for join in list(sock.channels.values()):
                self._remove(join)
            self.sockets.discard(sock)
            self._stats.ws_open -= 1
            sock.finish()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, timeout=2.0)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
            sock.done.set()
        return ws

    async def drop_all(self, *, code: int = 1001, abrupt: bool = False) -> int:
        """Close every socket from the server side; returns how many there were."""
        socks = list(self.sockets)
        for sock in socks:
            sock.finish()
        if abrupt:
            for sock in socks:
                transport = sock.request.transport
                if transport is not None:
                    transport.abort()
        else:
            await asyncio.gather(
                *(s.ws.close(code=code, message=b"stand-in dropped the connection") for s in socks),
                return_exceptions=True,
            )
        if socks:
            waiters = [asyncio.ensure_future(s.done.wait()) for s in socks]
            _, pending = await asyncio.wait(waiters, timeout=5.0)
            for waiter in pending:
                waiter.cancel()
        return len(socks)

    # -- frames ----------------------------------------------------------------------------

    async def _on_frame(self, sock: _Socket, data: str | bytes) -> None:
        try:
            frame: Incoming = sock.serializer.decode(data)
        except FrameError as exc:
            log.warning("socket %s: %s: %r", sock.id, exc, data[:200])
            return
        topic, event, ref = frame.topic, frame.event, frame.ref
        payload = frame.payload
        if not isinstance(payload, dict | UserBroadcastPush):
            payload = {}

        if topic == "phoenix":
            if event == "heartbeat":
                sock.reply(topic, ref, None, "ok", {})
            return
        if event == "phx_join":
            join_ref = ref if frame.join_ref is None else frame.join_ref
            await self._join(sock, topic, ref, join_ref, payload if isinstance(payload, dict) else {})
            return
        join = sock.channels.get(topic)
        if join is None:
            if event == "phx_leave":
                sock.reply(topic, ref, frame.join_ref, "ok", {})
            else:
                sock.reply(topic, ref, None, "error", {"reason": "unmatched topic"})
            return
        if frame.join_ref is not None and join.join_ref is not None and frame.join_ref != join.join_ref:
            return  # a stale message to an earlier join of this topic: Phoenix ignores it
        if event == "phx_leave":
            sock.reply(topic, ref, join.join_ref, "ok", {})
            self._close(join)
            self._remove(join)
        elif isinstance(payload, UserBroadcastPush):
            await self._client_broadcast(join, ref, payload)
        elif event == "access_token":
            await self._access_token(join, payload)
        elif event == "broadcast":
            await self._client_broadcast(join, ref, payload)
        elif event == "presence":
            await self._presence(join, ref, payload)
        else:
            log.info("socket %s: unknown event %r on %s ignored", sock.id, event, topic)

    # -- join / leave ----------------------------------------------------------------------

    async def _join(self, sock: _Socket, topic: str, ref: str | None, join_ref: str | None,
                    payload: dict[str, Any]) -> None:
        if not topic.startswith(_TOPIC_PREFIX):
            sock.reply(topic, ref, None, "error", {"reason": "unmatched topic"})
            return
        old = sock.channels.get(topic)
        if old is not None:  # Phoenix closes the old channel of a duplicate join, then joins again
            self._close(old)
            self._remove(old)
        sub_topic = topic[len(_TOPIC_PREFIX):]

        def refuse(reason: str) -> None:
            self._stats.joins_refused += 1
            sock.reply(topic, ref, join_ref, "error", {"reason": reason})

        if not sub_topic:
            refuse("TopicNameRequired: You must provide a topic name")
            return
        config = payload.get("config")
        config = config if isinstance(config, dict) else {}
        broadcast = config.get("broadcast")
        broadcast = broadcast if isinstance(broadcast, dict) else {}
        presence = config.get("presence")
        presence = presence if isinstance(presence, dict) else {}
        private = _as_bool(config.get("private"), False)
        presence_enabled = _as_bool(presence.get("enabled"), False)
        bindings = config.get("postgres_changes")
        bindings = bindings if isinstance(bindings, list) else []
        raw_key = presence.get("key")
        presence_key = str(uuid.uuid1()) if raw_key in (None, "") else str(raw_key)

        token = payload.get("access_token") or payload.get("user_token")
        if not isinstance(token, str) or token.startswith("sb_"):
            token = sock.apikey
        try:
            claims = _jwt.decode(token, self._keys.secret, require_role_exp=True)
        except _jwt.TokenError as exc:
            refuse(_realtime_reason(exc))
            return

        broadcast_read, presence_read = True, True if presence_enabled else None
        if private:
            try:
                policies = await self._auth.read(sub_topic, claims, presence=presence_enabled)
            except PolicyError:  # RlsPolicyError is logged; the client is told it may not read
                refuse(f"Unauthorized: {_no_read(sub_topic)}")
                return
            except DatabaseUnavailable:
                refuse(f"UnableToConnectToProject: {_UNREACHABLE}")
                return
            if not (policies.broadcast or policies.presence):
                refuse(f"Unauthorized: {_no_read(sub_topic)}")
                return
            broadcast_read, presence_read = policies.broadcast, policies.presence
        if sock not in self.sockets or sock.channels.get(topic) is not None:
            return  # the socket closed (or the topic was joined) while the policies were read

        join = _Join(
            socket=sock, topic=topic, sub_topic=sub_topic, join_ref=join_ref, private=private,
            self_broadcast=_as_bool(broadcast.get("self"), False), ack_broadcast=_as_bool(broadcast.get("ack"), False),
            presence_enabled=presence_enabled, presence_key=presence_key, token=token, claims=claims,
            broadcast_read=broadcast_read, presence_read=presence_read,
        )
        sock.channels[topic] = join
        self.topics.setdefault(join.key, []).append(join)
        self._stats.joins += 1
        echoed = [{**b, "id": _binding_id(b)} if isinstance(b, dict) else b for b in bindings]
        sock.reply(topic, ref, join_ref, "ok", {"postgres_changes": echoed})
        if presence_enabled and (not private or presence_read):
            sock.message(topic, "presence_state", self._presence_state(join.key), join_ref=join_ref)
        if bindings:
            sock.message(topic, "system", join_ref=join_ref, payload={
                "channel": sub_topic, "extension": "postgres_changes", "status": "error",
                "message": "Unable to subscribe to changes with given parameters: postgres_changes is not "
                           "implemented by the agent_runtime Supabase stand-in (use broadcast from the database)",
            })
        self._schedule_expiry(join)

    def _remove(self, join: _Join) -> None:
        sock = join.socket
        if sock.channels.get(join.topic) is join:
            del sock.channels[join.topic]
        joins = self.topics.get(join.key)
        if joins is not None and join in joins:
            joins.remove(join)
            if not joins:
                del self.topics[join.key]
        if join.expiry is not None:
            join.expiry.cancel()
            join.expiry = None
        if join.presence_payload is not None:
            meta = join.presence_meta()
            join.presence_payload = join.presence_ref = None
            self._presence_diff(join.key, {}, {join.presence_key: {"metas": [meta]}})

    def _shutdown(self, join: _Join, message: str) -> None:
        """A server-side channel shutdown: ``system`` error, then ``phx_close``."""
        join.socket.message(join.topic, "system", join_ref=join.join_ref, payload={
            "channel": join.sub_topic, "extension": "system", "message": message, "status": "error"})
        self._close(join)
        self._remove(join)

    @staticmethod
    def _close(join: _Join) -> None:
        """``phx_close`` for a channel that ends (its ref is the join_ref, as Phoenix sends it)."""
        join.socket.message(join.topic, "phx_close", {}, ref=join.join_ref, join_ref=join.join_ref)

    def _current(self, join: _Join) -> bool:
        return join.socket in self.sockets and join.socket.channels.get(join.topic) is join

    # -- token -----------------------------------------------------------------------------

    def _schedule_expiry(self, join: _Join) -> None:
        if join.expiry is not None:
            join.expiry.cancel()
        exp = float(join.claims["exp"])
        delay = min(max(0.0, exp - time.time()) + 0.05, 10 * 365 * 86400.0)
        join.expiry = asyncio.get_running_loop().call_later(delay, self._expire, join)

    def _expire(self, join: _Join) -> None:
        join.expiry = None
        if not self._current(join):
            return
        exp = float(join.claims["exp"])
        if exp > time.time():
            self._schedule_expiry(join)
            return
        self._shutdown(join, f"Token has expired {int(time.time() - exp)} seconds ago")

    async def _access_token(self, join: _Join, payload: dict[str, Any]) -> None:
        token = payload.get("access_token")
        if not isinstance(token, str) or not token or token.startswith("sb_") or token == join.token:
            return
        try:
            claims = _jwt.decode(token, self._keys.secret, require_role_exp=True)
        except _jwt.TokenError as exc:
            self._shutdown(join, _realtime_reason(exc).partition(": ")[2])
            return
        if join.private:
            # As the server's handle_in("access_token"): policies are evaluated afresh; no read at
            # all (or policies that fail) ends the channel as a refused join would; losing one of
            # two reads is a revocation.
            try:
                policies = await self._auth.read(join.sub_topic, claims, presence=join.presence_read is not None)
            except (PolicyError, DatabaseUnavailable) as exc:
                if self._current(join):
                    self._shutdown(join, _no_read(join.sub_topic) if isinstance(exc, PolicyError) else _UNREACHABLE)
                return
            if not self._current(join):
                return
            if not (policies.broadcast or policies.presence):
                self._shutdown(join, _no_read(join.sub_topic))
                return
            if (join.broadcast_read and not policies.broadcast) or (join.presence_read and policies.presence is False):
                self._shutdown(join, f"You no longer have permission to read from this Channel topic: {join.sub_topic}")
                return
            join.broadcast_read, join.presence_read = policies.broadcast, policies.presence
            join.broadcast_write = join.presence_write = None
        join.token, join.claims = token, claims
        self._schedule_expiry(join)

    # -- broadcast -------------------------------------------------------------------------

    def _deliver(self, key: tuple[bool, str], msg: Broadcast | UserBroadcast, *, skip: _Join | None = None) -> int:
        """Fan a broadcast out to the topic's joins, encoded once per serializer (the server's
        ``MessageDispatcher``); joins without broadcast read are skipped."""
        joins = self.topics.get(key)
        if not joins:
            return 0
        encoded: dict[str, Outgoing | None] = {}
        over_limit: list[_Join] = []
        n = 0
        for join in joins:
            if join is skip or (join.private and not join.broadcast_read):
                continue
            serializer = join.socket.serializer
            if serializer.vsn not in encoded:
                encoded[serializer.vsn] = serializer.fastlane(msg)
            frame = encoded[serializer.vsn]
            if frame is None:
                continue
            join.socket.send(frame)
            n += 1
            if self.events is not None:  # each delivery counts (:update_rate_counter), and past the
                self.events.add()        # limit the receiving channel is shut down
                if self.events.triggered:
                    over_limit.append(join)
        for join in over_limit:
            self._stats.rate_limited_channels += 1
            self._shutdown(join, "Too many messages per second")
        self._stats.broadcasts_delivered += n
        return n

    async def _client_broadcast(
        self, join: _Join, ref: str | None, payload: dict[str, Any] | UserBroadcastPush
    ) -> None:
        self._stats.client_broadcasts += 1
        if join.private:
            if join.broadcast_write is None:
                try:
                    allowed = await self._auth.write(join.sub_topic, join.claims, "broadcast")
                except (PolicyError, DatabaseUnavailable):
                    return  # dropped, and checked again on the next broadcast (nothing is cached)
                if not self._current(join):
                    return
                join.broadcast_write = allowed
            if not join.broadcast_write:
                return  # denied writes are dropped silently, ack or not
        msg: Broadcast | UserBroadcast
        if isinstance(payload, UserBroadcastPush):  # a vsn 2.0.0 binary push stays a user broadcast
            size = len(payload.user_payload)
            msg = UserBroadcast(join.topic, payload.user_event, payload.user_payload, payload.json_encoded)
        else:
            size = len(dumps(payload).encode())
            msg = Broadcast(join.topic, "broadcast", payload)
        if self.events is not None:
            self.events.add()
        if size > self._max_payload:
            if join.ack_broadcast:
                join.socket.reply(join.topic, ref, join.join_ref, "error", {"error": "payload_size_exceeded"})
            return
        self._deliver(join.key, msg, skip=None if join.self_broadcast else join)
        if join.ack_broadcast:
            join.socket.reply(join.topic, ref, join.join_ref, "ok", {})

    def deliver_db_broadcast(self, raw: str) -> None:
        """A ``realtime:broadcast`` notification (the plain-Postgres ``realtime.send``)."""
        self._stats.db_notifications += 1
        try:
            note = json.loads(raw)
        except ValueError:
            log.warning("realtime:broadcast notification is not JSON: %r", raw[:200])
            return
        if not isinstance(note, dict):
            return
        topic, event, payload = note.get("topic"), note.get("event"), note.get("payload")
        if not isinstance(topic, str) or not isinstance(event, str):
            return
        if self.events is not None:
            if self.events.triggered:  # the replication connection drops it: nothing is sent, ever
                self._stats.db_broadcasts_dropped += 1
                return
            self.events.add()
        private = note.get("private") is not False
        message_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(message_id, str):
            message_id = str(uuid.uuid4())
        # The server sends the row's payload column as it is, with the row id as metadata.
        self._deliver((private, topic), UserBroadcast(_TOPIC_PREFIX + topic, event, dumps(payload).encode(), True,
                                                      {"id": message_id}))

    async def _rest_token_claims(self, request: web.Request) -> dict[str, Any] | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("apikey", "")
        try:
            return _jwt.decode(token, self._keys.secret)
        except _jwt.TokenError:
            return None

    def _rest_rate_limited(self, count: int) -> web.Response | None:
        """``BatchBroadcast.check_rate_limit``: 429 when the tenant's average is over its limit."""
        if self.events is None:
            return None
        if self.events.average > self.events.limit:
            return json_response({"message": "You have exceeded your rate limit"}, status=429)
        if self.events.average + count > self.events.limit:
            return json_response({"message": "Too many messages to broadcast, please reduce the batch size"},
                                 status=429)
        return None

    async def _rest_send(self, claims: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        writable: dict[str, bool] = {}
        for m in messages:
            topic, private = m["topic"], bool(m.get("private", False))
            if private:
                if topic not in writable:
                    try:
                        writable[topic] = await self._auth.write(topic, claims, "broadcast")
                    except (PolicyError, DatabaseUnavailable):
                        writable[topic] = False
                if not writable[topic]:
                    continue
            if self.events is not None:
                self.events.add()
            body: dict[str, Any] = {"event": m["event"], "payload": m["payload"], "type": "broadcast"}
            if m.get("id") is not None:
                body["meta"] = {"id": str(m["id"])}
            self._deliver((private, topic), Broadcast(_TOPIC_PREFIX + topic, "broadcast", body))

    async def handle_rest_broadcast(self, request: web.Request) -> web.StreamResponse:
        """``POST /realtime/v1/api/broadcast`` (batch)."""
        refused = self._keys.gateway_check(request)
        if refused is not None:
            return refused
        claims = await self._rest_token_claims(request)
        if claims is None:
            return json_response({"message": "Unauthorized"}, status=401)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return json_response({"errors": {"messages": ["is invalid"]}}, status=422)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("topic"), str) and isinstance(m.get("event"), str)
            and isinstance(m.get("payload"), dict) for m in messages
        ):
            return json_response({"errors": {"messages": ["topic, event and an object payload are required"]}},
                                 status=422)
        limited = self._rest_rate_limited(len(messages))
        if limited is not None:
            return limited
        await self._rest_send(claims, messages)
        return web.Response(status=202)

    async def handle_rest_broadcast_single(self, request: web.Request) -> web.StreamResponse:
        """``POST /realtime/v1/api/broadcast/<topic>/events/<event>`` (``channel.http_send``)."""
        refused = self._keys.gateway_check(request)
        if refused is not None:
            return refused
        claims = await self._rest_token_claims(request)
        if claims is None:
            return json_response({"message": "Unauthorized"}, status=401)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return json_response({"error": "the stand-in accepts JSON payloads only"}, status=422)
        if not isinstance(payload, dict):
            return json_response({"error": "payload must be a JSON object"}, status=422)
        private = request.query.get("private") == "true"
        message = {"topic": request.match_info["topic"], "event": request.match_info["event"], "payload": payload,
                   "private": private}
        limited = self._rest_rate_limited(1)
        if limited is not None:
            return limited
        await self._rest_send(claims, [message])
        return web.Response(status=202)

    # -- presence --------------------------------------------------------------------------

    def _presence_state(self, key: tuple[bool, str]) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for join in self.topics.get(key, ()):
            if join.presence_payload is not None:
                state.setdefault(join.presence_key, {"metas": []})["metas"].append(join.presence_meta())
        return state

    def _presence_diff(self, key: tuple[bool, str], joins: dict[str, Any], leaves: dict[str, Any]) -> None:
        diff = Broadcast(_TOPIC_PREFIX + key[1], "presence_diff", {"joins": joins, "leaves": leaves})
        self._stats.presence_diffs += 1
        encoded: dict[str, Outgoing | None] = {}
        for join in self.topics.get(key, ()):
            if join.private and not join.presence_read:
                continue
            serializer = join.socket.serializer
            if serializer.vsn not in encoded:
                encoded[serializer.vsn] = serializer.fastlane(diff)
            frame = encoded[serializer.vsn]
            if frame is not None:
                join.socket.send(frame)

    async def _presence(self, join: _Join, ref: str | None, payload: dict[str, Any]) -> None:
        now = time.monotonic()
        if now > join.presence_window_end:
            join.presence_calls, join.presence_window_end = 1, now + self._presence_window
        elif join.presence_calls >= self._presence_max_calls:
            self._shutdown(join, "Client presence rate limit exceeded")
            return
        else:
            join.presence_calls += 1
        event = str(payload.get("event", "")).lower()
        sock = join.socket
        if event == "untrack":
            sock.reply(join.topic, ref, join.join_ref, "ok", {})
            if join.presence_payload is not None:
                old_meta = join.presence_meta()
                join.presence_payload = join.presence_ref = None
                self._presence_diff(join.key, {}, {join.presence_key: {"metas": [old_meta]}})
            return
        if event != "track":
            sock.reply(join.topic, ref, join.join_ref, "error", {})
            return
        if join.private:
            if join.presence_read is None:
                try:
                    policies = await self._auth.read(join.sub_topic, join.claims, presence=True)
                    join.presence_read = bool(policies.presence)
                except (PolicyError, DatabaseUnavailable):
                    join.presence_read = False
            if join.presence_write is None:
                try:
                    join.presence_write = await self._auth.write(join.sub_topic, join.claims, "presence")
                except (PolicyError, DatabaseUnavailable):
                    join.presence_write = False
            if not self._current(join):
                return
            if not join.presence_write:
                sock.reply(join.topic, ref, join.join_ref, "error", {})
                return
        data = payload.get("payload", {})
        if not isinstance(data, dict):
            sock.reply(join.topic, ref, join.join_ref, "error", {"reason": "Presence track payload must be a map"})
            return
        if join.presence_payload is not None and data == join.presence_payload:
            sock.reply(join.topic, ref, join.join_ref, "ok", {})
            return
        new_ref = _phx_ref()
        meta: dict[str, Any] = {**data, "phx_ref": new_ref}
        leaves: dict[str, Any] = {}
        if join.presence_payload is not None and join.presence_ref is not None:
            leaves = {join.presence_key: {"metas": [join.presence_meta()]}}
            meta["phx_ref_prev"] = join.presence_ref
        join.presence_payload, join.presence_ref = data, new_ref
        join.presence_enabled = True
        sock.reply(join.topic, ref, join.join_ref, "ok", {})
        self._presence_diff(join.key, {join.presence_key: {"metas": [meta]}}, leaves)
