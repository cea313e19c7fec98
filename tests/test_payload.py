"""The payload rules (README, agent_runtime/_payload.py): what each Python type becomes on the wire,
checked through a real database, and what is refused, with a typed error that says where."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import uuid
from typing import Any

import anyio
import msgspec
import pytest

from agent_runtime import AgentRuntime, InvalidInput, UnsupportedPayload
from agent_runtime.runtime._payload import to_json_value


class Colour(enum.Enum):
    RED = "red"


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    w: float


UTC = dt.UTC
MAPPED: list[tuple[str, Any, Any]] = [
    ("dict, list and scalars as they are", {"a": [1, 2.5, "s", True, None]}, {"a": [1, 2.5, "s", True, None]}),
    ("non-string keys become strings", {1: "a", 2.5: "b"}, {"1": "a", "2.5": "b"}),
    ("a tuple becomes a list", (1, 2), [1, 2]),
    ("a set becomes a list", {"only"}, ["only"]),
    ("an aware datetime: ISO 8601 with its offset", dt.datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
     "2026-12-01T09:30:00Z"),
    ("a naive datetime: ISO 8601 without offset", dt.datetime(2026, 12, 1, 9, 30), "2026-12-01T09:30:00"),
    ("a date", dt.date(2026, 12, 1), "2026-12-01"),
    ("a timedelta: ISO 8601 duration", dt.timedelta(seconds=90), "PT90S"),
    ("bytes: base64", b"\x00\xffab", "AP9hYg=="),
    ("Decimal: an exact string", decimal.Decimal("1.10"), "1.10"),
    ("UUID: its canonical string", uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    ("an Enum: its value", Colour.RED, "red"),
    ("a Struct: its fields", Point(1, 2), {"x": 1, "y": 2}),
    ("a dataclass: its fields", Box(1.5), {"w": 1.5}),
    ("an int of any size", 2**80, 2**80),
]

REFUSED: list[tuple[str, Any, str]] = [
    ("NaN", {"x": [1.0, math.nan]}, "NaN or infinity at $.x[1]"),
    ("infinity", -math.inf, "NaN or infinity at $"),
    ("a NUL in a string", {"text": "a\x00b"}, "NUL character (\\x00) in a string at $.text"),
    ("a NUL in a key", {"k\x00": 1}, "NUL character (\\x00) in a string at $ (a key)"),
    ("a complex number", 1j, "not JSON-serialisable"),
    ("an arbitrary object", object(), "not JSON-serialisable"),
    ("a lone surrogate", "\ud800", "not JSON-serialisable"),
]


@pytest.mark.parametrize(("what", "value", "expected"), MAPPED, ids=[m[0] for m in MAPPED])
def test_mapping(what: str, value: Any, expected: Any) -> None:
    """Each Python type becomes the JSON the README says."""
    assert json.loads(msgspec.json.encode(to_json_value(value))) == expected


@pytest.mark.parametrize(("what", "value", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(what: str, value: Any, message: str) -> None:
    """What has no JSON form is refused with UnsupportedPayload (an InvalidInput) saying where."""
    with pytest.raises(UnsupportedPayload) as raised:
        to_json_value(value)
    assert isinstance(raised.value, InvalidInput)
    assert message in raised.value.message, raised.value.message


async def test_round_trip_through_the_database(make_runtime: Any) -> None:
    """What a subscriber receives is exactly the mapped JSON; refused payloads send nothing and never
    reach the database (no 'unsupported Unicode escape sequence')."""
    rt: AgentRuntime
    async with make_runtime("payloads") as rt:
        await rt.channel("payload.rules", "queue")
        for _, value, _ in REFUSED:
            with pytest.raises(UnsupportedPayload):
                await rt.publish("payload.rules", value)
        with pytest.raises(UnsupportedPayload, match="NUL"):
            await rt.publish("payload.rules", {"ok": 1}, headers={"h": "x\x00"})
        await rt.publish_many("payload.rules", [value for _, value, _ in MAPPED])
        received = []
        async with rt.subscribe("payload.rules", kind="queue") as sub:
            with anyio.fail_after(10):
                async for msg in sub:
                    received.append(msg.payload)
                    await msg.ack()
                    if len(received) == len(MAPPED):
                        break
    assert received == [expected for _, _, expected in MAPPED]
