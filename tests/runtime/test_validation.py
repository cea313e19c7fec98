"""Bad arguments are refused up front with a typed error, before anything is sent or started."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import InvalidInput, InvalidName, PayloadTooLarge
from agent_runtime.runtime._publish import MAX_BATCH

RuntimeFactory = Callable[..., AgentRuntime]

NAN = float("nan")


@pytest.mark.parametrize("option", [
    {"heartbeat_interval": 0}, {"heartbeat_interval": -1}, {"heartbeat_interval": NAN},
    {"heartbeat_interval": 1e308}, {"heartbeat_ttl": NAN}, {"heartbeat_ttl": 0.1}, {"poll_interval": NAN},
    {"poll_interval": 0}, {"metrics_interval": NAN}, {"janitor_interval": -3}, {"pool_size": 0},
    {"pool_size": 2.5}, {"shutdown_timeout": NAN}, {"retry_base_delay": -1}, {"retry_max_delay": 0.01},
    {"request_concurrency": 0}, {"agent_id": "not a valid id!"}, {"capabilities": "plan"},
    {"capabilities": ["plan", 1]}, {"kind": 5}, {"kind": "Not A Kind"}, {"version": None},
    {"metadata": {"a": object()}}, {"metadata": {"a": NAN}}, {"metadata": [1, 2]},
])
def test_constructor_refuses_bad_settings(option: dict[str, Any]) -> None:
    """Each bad setting is an InvalidInput from the constructor (not a crash or a hot loop later)."""
    with pytest.raises(InvalidInput):
        AgentRuntime("bad", url="postgresql://unused/db", **option)


@pytest.mark.parametrize("name", [123, "", "-leading", "new\nline", "x" * 129])
def test_constructor_refuses_bad_names(name: Any) -> None:
    """An agent name the registry would refuse is an InvalidName from the constructor (not a TypeError)."""
    with pytest.raises(InvalidName):
        AgentRuntime(name, url="postgresql://unused/db")


@pytest.mark.parametrize(("args", "error"), [
    ({"visibility_timeout": 0}, InvalidInput), ({"visibility_timeout": -5}, InvalidInput),
    ({"channel": "bad name!"}, InvalidName), ({"channel": ""}, InvalidName), ({"kind": "fanout"}, InvalidInput),
    ({"start": "middle"}, InvalidInput), ({"concurrency": 0}, InvalidInput), ({"type": 123}, InvalidInput),
])
async def test_handle_and_subscribe_refuse_bad_arguments(make_runtime: RuntimeFactory, args: dict[str, Any],
                                                         error: type[Exception]) -> None:
    """handle(), on() and subscribe() refuse at the call; the runtime keeps running."""
    async def handler(msg: Any) -> None: ...

    options = {"channel": "jobs", **args}
    channel = options.pop("channel")
    async with make_runtime("v") as rt:
        with pytest.raises(error):
            rt.handle(channel, handler, **options)
        with pytest.raises(error):
            rt.on(channel, **options)(handler)
        if "concurrency" not in options:
            with pytest.raises(error):
                rt.subscribe(channel, **options)
        await rt.channel("ok")
        assert await rt.publish_many("ok", [1])  # still alive




async def test_queue_handler_on_a_broadcast_channel_stops_that_handler_only(
        make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture) -> None:
    """kind="queue" on an existing broadcast channel: logged, that handler stops, the runtime lives on."""
    async with make_runtime("k") as rt:
        await rt.channel("news", "broadcast")

        async def handler(msg: Any) -> None: ...

        rt.handle("news", handler, kind="queue")
        with anyio.fail_after(5):
            while "stopped" not in caplog.text:  # noqa: ASYNC110 (a log line is what there is to wait for)
                await anyio.sleep(0.05)
        await rt.channel("still-alive")
        await rt.publish("still-alive", {"ok": 1})


async def test_channel_settings_are_checked_locally(make_runtime: RuntimeFactory) -> None:
    """max_payload_bytes beyond what any channel allows: InvalidInput naming the setting, not a constraint."""
    async with make_runtime("c") as rt:
        with pytest.raises(InvalidInput, match="max_payload_bytes"):
            await rt.channel("big", max_payload_bytes=20_000_000)
        with pytest.raises(InvalidInput, match="max_attempts"):
            await rt.channel("big", max_attempts=0)
        with pytest.raises(InvalidName):
            await rt.channel("agent:someone")


async def test_payload_too_large_is_refused_before_it_is_sent(make_runtime: RuntimeFactory) -> None:
    """A 100 MB payload never reaches the database: refused by the runtime's own check."""
    async with make_runtime("p") as rt:
        await rt.channel("big")
        with pytest.raises(PayloadTooLarge, match="no channel accepts"):
            await rt.publish("big", "x" * 100_000_000)
        with pytest.raises(PayloadTooLarge, match="no channel accepts"):
            await rt.request("someone", "x" * 2_000_000)


async def test_a_batch_larger_than_the_database_takes_is_refused_before_it_is_sent(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """publish_many of more than send_messages takes is refused by the runtime, nothing sent; the
    largest batch it lets through is one the database takes (the two limits are the same)."""
    async with make_runtime("b") as rt:
        await rt.channel("bulk")
        with pytest.raises(InvalidInput, match=f"at most {MAX_BATCH} messages per batch") as refused:
            await rt.publish_many("bulk", list(range(MAX_BATCH + 1)))
        assert refused.value.hint == "send them in several publish_many calls"  # (the runtime's own)
        assert await conn.fetchval("select count(*) from distributed_messages") == 0
        assert len(await rt.publish_many("bulk", list(range(MAX_BATCH)))) == MAX_BATCH


async def test_headers_too_large_or_not_a_mapping_are_refused_before_they_are_sent(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Headers have no limit in the table: the runtime bounds them as it bounds payloads, before sending."""
    async with make_runtime("h") as rt, make_runtime("other") as other:
        await rt.channel("big")
        with pytest.raises(PayloadTooLarge, match="headers are"):
            await rt.publish("big", 1, headers={"h": "x" * 2_000_000})
        with pytest.raises(PayloadTooLarge, match="headers are"):
            await rt.request(other.agent_id, 1, headers={"h": "x" * 2_000_000})
        with pytest.raises(InvalidInput, match="headers must be a mapping"):
            await rt.publish("big", 1, headers=[("h", 1)])  # type: ignore[arg-type]
        assert await conn.fetchval("select count(*) from distributed_messages") == 0


async def test_bad_metrics_are_refused_at_the_call_and_never_block_the_others(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """metrics.increment("Bad Metric!") raises; good figures still reach the database."""
    async with make_runtime("m") as rt:
        with pytest.raises(InvalidInput):
            rt.metrics.increment("Bad Metric!")
        with pytest.raises(InvalidInput):
            rt.metrics.observe("good.metric", NAN)
        with pytest.raises(InvalidInput):  # (the database would refuse the whole batch it was in)
            rt.metrics.increment("good.metric", channel="bad\x00channel")
        rt.metrics.increment("good.metric", 3)
        await rt.flush_metrics()
        assert await conn.fetchval("select sum(sum) from communication_metrics where agent_id = $1 "
                                   "and metric = 'good.metric'", rt.agent_id) == 3


async def test_a_request_timeout_out_of_range_is_refused_before_sending(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """timeout=-1 is a typed InvalidInput at the call, not a request sent to expire at once."""
    async with make_runtime("asker") as rt, make_runtime("answerer") as other:
        for timeout in (-1, NAN, 1e12):
            with pytest.raises(InvalidInput, match="timeout"):
                await rt.request(other.agent_id, 1, timeout=timeout)
        assert await conn.fetchval("select count(*) from distributed_messages") == 0
