"""Frame-level tests of both Realtime protocol versions the real server mounts: vsn 1.0.0
(JSON objects) and vsn 2.0.0 (JSON arrays, binary user broadcasts), as realtime-protocol.md §1.6
describes them from RealtimeWeb.Socket.V2Serializer."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from supabase import AsyncClient

from agent_runtime.testing import SupabaseStandIn
from agent_runtime.testing._phoenix import (
    FrameError,
    UserBroadcastPush,
    V2Serializer,
    decode_user_broadcast,
    encode_user_broadcast_push,
)
from tests.standin.standin_support import RawSocket, raw_socket, register

pytestmark = pytest.mark.timeout(20)

VERSIONS = ["1.0.0", "2.0.0"]


def fields(sock: RawSocket, frame: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(join_ref, ref, topic, event, payload) of a text frame of either version."""
    if sock.vsn.startswith("2."):
        assert isinstance(frame, list) and len(frame) == 5, frame
        return frame[0], frame[1], frame[2], frame[3], frame[4]
    assert isinstance(frame, dict) and set(frame) == {"topic", "event", "payload", "ref"}, frame
    return None, frame["ref"], frame["topic"], frame["event"], frame["payload"]


async def test_handshake_negotiates_the_version(standin: SupabaseStandIn) -> None:
    """vsn 1.0.0 (and no vsn) and 2.0.0 upgrade; a version no serializer matches is refused
    before the upgrade (403), as Phoenix refuses it."""
    for vsn in ("1.0.0", "2.0.0", None):
        async with raw_socket(standin.url, standin.anon_key, vsn) as sock:
            ref = sock.next_ref()
            await sock.send("phoenix", "heartbeat", {}, ref=ref)
            assert fields(sock, await sock.recv()) == (None, ref, "phoenix", "phx_reply",
                                                       {"status": "ok", "response": {}})
    async with aiohttp.ClientSession() as session:
        url = standin.url + "/realtime/v1/websocket"
        for vsn in ("3.0.0", "2.1.0", "two"):
            async with session.get(url, params={"apikey": standin.anon_key, "vsn": vsn},
                                   headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                            "Sec-WebSocket-Version": "13",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
                assert resp.status == 403, vsn


@pytest.mark.parametrize("vsn", VERSIONS)
async def test_join_reply_leave_and_refusal(service: AsyncClient, standin: SupabaseStandIn, vsn: str) -> None:
    """A join's reply carries the join_ref (vsn 2.0.0) and the push ref; a refused join names
    the topic; phx_leave is replied, then phx_close with the join_ref as its ref."""
    await register(service, "a1", "b1")
    async with raw_socket(standin.url, standin.anon_key, vsn) as sock:
        join_ref, reply = await sock.join("agent:a1", standin.agent_token("a1"))
        jr, ref, topic, event, payload = fields(sock, reply)
        assert (ref, topic, event, payload) == (join_ref, "realtime:agent:a1", "phx_reply",
                                                {"status": "ok", "response": {"postgres_changes": []}})
        assert jr == (join_ref if vsn == "2.0.0" else None)

        refused_ref, refused = await sock.join("agent:b1", standin.agent_token("a1"))
        reason = "Unauthorized: You do not have permissions to read from this Channel topic: agent:b1"
        assert fields(sock, refused)[1:] == (refused_ref, "realtime:agent:b1", "phx_reply",
                                             {"status": "error", "response": {"reason": reason}})

        leave_ref = sock.next_ref()
        await sock.send("realtime:agent:a1", "phx_leave", {}, ref=leave_ref, join_ref=join_ref)
        assert fields(sock, await sock.recv())[1:4] == (leave_ref, "realtime:agent:a1", "phx_reply")
        close = fields(sock, await sock.recv())
        assert close[1:] == (join_ref, "realtime:agent:a1", "phx_close", {})
        assert close[0] == (join_ref if vsn == "2.0.0" else None)


async def test_database_broadcast_is_binary_for_v2_and_json_for_v1(
    service: AsyncClient, standin: SupabaseStandIn
) -> None:
    """A message broadcast from the database (realtime.send) reaches a vsn 2.0.0 socket as a
    binary user_broadcast frame (kind 4, JSON-encoded payload, meta.id) and a vsn 1.0.0 socket
    as the JSON broadcast the server converts it to; both carry the same payload and id."""
    await register(service, "p1", "a1")
    await service.rpc("ensure_channel", {"p_agent_id": "p1", "p_name": "news"}).execute()
    await service.rpc("subscribe_channel", {"p_agent_id": "a1", "p_channel": "news"}).execute()
    token = standin.agent_token("a1")
    async with raw_socket(standin.url, standin.anon_key, "2.0.0") as v2, \
            raw_socket(standin.url, standin.anon_key, "1.0.0") as v1:
        for sock in (v1, v2):
            _, reply = await sock.join("channel:news", token)
            assert fields(sock, reply)[4]["status"] == "ok"
        await service.rpc("send_message", {"p_agent_id": "p1", "p_channel": "news", "p_payload": {"n": 1}}).execute()

        binary = await v2.recv()
        assert isinstance(binary, bytes) and binary[0] == 4
        got2 = decode_user_broadcast(binary)
        assert got2["topic"] == "realtime:channel:news" and got2["event"] == "message"
        assert got2["payload"]["c"] == "news" and got2["meta"] == {"id": got2["payload"]["id"]}

        _, ref, topic, event, payload = fields(v1, await v1.recv())
        assert (ref, topic, event) == (None, "realtime:channel:news", "broadcast")
        assert payload == {"event": "message", "type": "broadcast", "payload": got2["payload"], "meta": got2["meta"]}


async def test_client_broadcasts_cross_versions(standin: SupabaseStandIn) -> None:
    """A vsn 2.0.0 client's binary broadcast push (kind 3) reaches vsn 2.0.0 subscribers as a
    binary user_broadcast and vsn 1.0.0 ones as JSON; a vsn 1.0.0 client's broadcast reaches a
    vsn 2.0.0 subscriber as a JSON array; a binary-encoded payload cannot reach vsn 1.0.0."""
    key = standin.anon_key
    async with raw_socket(standin.url, key, "2.0.0") as sender2, raw_socket(standin.url, key, "2.0.0") as recv2, \
            raw_socket(standin.url, key, "1.0.0") as recv1:
        joins = {}
        for sock in (sender2, recv2, recv1):
            joins[id(sock)], reply = await sock.join("room", key, private=False)
            assert fields(sock, reply)[4]["status"] == "ok"

        push = encode_user_broadcast_push(topic="realtime:room", user_event="hi", user_payload=b'{"n":1}',
                                          ref=sender2.next_ref(), join_ref=joins[id(sender2)])
        await sender2.ws.send_bytes(push)
        assert decode_user_broadcast(await recv2.recv()) == {"topic": "realtime:room", "event": "hi",
                                                             "payload": {"n": 1}}
        assert fields(recv1, await recv1.recv())[1:] == (
            None, "realtime:room", "broadcast", {"event": "hi", "payload": {"n": 1}, "type": "broadcast"})
        await sender2.nothing()  # broadcast.self is false

        await recv1.send("realtime:room", "broadcast", {"type": "broadcast", "event": "yo", "payload": {"n": 2}},
                         ref=recv1.next_ref(), join_ref=joins[id(recv1)])
        for sock in (sender2, recv2):
            assert await sock.recv() == [None, None, "realtime:room", "broadcast",
                                         {"type": "broadcast", "event": "yo", "payload": {"n": 2}}]

        raw = encode_user_broadcast_push(topic="realtime:room", user_event="bin", user_payload=b"\x00\xff",
                                         json_encoded=False, ref=sender2.next_ref(), join_ref=joins[id(sender2)])
        await sender2.ws.send_bytes(raw)
        assert decode_user_broadcast(await recv2.recv())["payload"] == b"\x00\xff"
        await recv1.nothing()


async def test_v2_garbage_frames_are_ignored(standin: SupabaseStandIn) -> None:
    """An object frame, a short array or an unknown binary kind on a vsn 2.0.0 socket is
    dropped; the socket keeps answering."""
    async with raw_socket(standin.url, standin.anon_key, "2.0.0") as sock:
        await sock.ws.send_str(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}))
        await sock.ws.send_str("[1, 2]")
        await sock.ws.send_bytes(b"\x09\x01\x02")
        await sock.ws.send_bytes(b"\x03\xff")
        await sock.send("phoenix", "heartbeat", {}, ref="7")
        assert await sock.recv() == [None, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda b: b"\x03" + b),
                 st.binary(max_size=64).map(lambda b: b"\x00" + b), st.text(max_size=64)))
def test_v2_decoder_takes_any_frame(data: bytes | str) -> None:
    """Whatever arrives on a vsn 2.0.0 socket decodes or is refused as a FrameError (which the
    stand-in logs and drops), never anything else."""
    try:
        frame = V2Serializer().decode(data)
    except FrameError:
        return
    assert isinstance(frame.topic, str) and isinstance(frame.event, str)


def test_v2_user_broadcast_push_round_trip() -> None:
    """A kind-3 push as realtime-js writes it decodes to its fields (UTF-8 topic and event)."""
    push = encode_user_broadcast_push(topic="realtime:salle-é", user_event="évt", user_payload=b'{"a":1}',
                                      ref="5", join_ref="4", metadata={"persist": True})
    frame = V2Serializer().decode(push)
    assert (frame.topic, frame.event, frame.ref, frame.join_ref) == ("realtime:salle-é", "broadcast", "5", "4")
    assert frame.payload == UserBroadcastPush("évt", b'{"a":1}', True, {"persist": True})
