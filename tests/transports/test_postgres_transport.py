"""The Postgres transport's calls: JSON arguments are encoded by type, not by name, and what cannot
be sent is refused as InvalidInput before anything reaches the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_runtime.errors import InvalidInput
from agent_runtime.transports.postgres import PostgresTransport


@pytest.fixture
async def transport(db_url: str) -> AsyncIterator[PostgresTransport]:
    transport = PostgresTransport(db_url, max_size=2)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.aclose()


async def test_json_arguments_are_encoded_from_the_functions_signature(transport: PostgresTransport) -> None:
    """jsonb parameters take any JSON value as is (a string stays a JSON string), text ones text."""
    await transport.call("register_agent", {"p_agent_id": "a1", "p_name": "a1", "p_metadata": {"k": ["v", 1]}})
    await transport.call("ensure_channel", {"p_agent_id": "a1", "p_name": "news"})
    sent = await transport.call("send_messages", {"p_agent_id": "a1", "p_channel": "news",
                                                  "p_messages": [{"payload": "just text"}, {"payload": None}]})
    assert len(sent) == 2
    [agent] = [a for a in await transport.call("list_agents", {}) if a["id"] == "a1"]
    assert agent["metadata"] == {"k": ["v", 1]}


def _cycle() -> list[Any]:
    cycle: list[Any] = []
    cycle.append(cycle)
    return cycle


@pytest.mark.parametrize("args", [
    {"p_metadata": {"k": object()}},  # no JSON form
    {"p_metadata": {"k": "\ud800"}},  # a lone surrogate
    {"p_metadata": {"k": _cycle()}},  # nested without end
    {"p_pid": "not a number"},  # the wrong Python type for an integer parameter
])
async def test_values_that_cannot_be_sent_are_invalid_input(transport: PostgresTransport,
                                                            args: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="invalid argument for register_agent"):
        await transport.call("register_agent", {"p_agent_id": "a1", "p_name": "a1", **args})
    assert await transport.call("list_agents", {}) == []  # nothing changed, and the pool still works
