"""Looking at and administering the network without joining it as an agent (the CLI's view)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from ._db import Database
from ._durations import required_ms
from .config import ConnectionSettings, resolve
from .connect import open_transport
from .models import AgentInfo, ChannelInfo, DeadLetter, LockInfo, MetricSummary, Topology
from .transports.base import Transport

__all__ = ["Network"]

OPERATOR = "operator"


class Network:
    """``async with Network(url) as net: await net.topology()``.

    Connects like :class:`AgentRuntime` (argument, environment, embedded default) but registers
    nothing. Its write operations (replay, cleanup) need a trusted connection."""

    def __init__(self, url: str | None = None, *, key: str | None = None, migrate: bool = True) -> None:
        self.settings: ConnectionSettings = resolve(url, key)
        self._migrate = migrate
        self._transport: Transport | None = None
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("use Network inside 'async with'")
        return self._db

    async def __aenter__(self) -> Network:
        self._transport = await open_transport(self.settings, migrate=self._migrate, pool_size=2)
        self._db = Database(self._transport)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._transport is not None:
            await self._transport.aclose()

    async def agents(self, capability: str | None = None, *, include_offline: bool = False) -> list[AgentInfo]:
        return await self.db.list_agents(capability, online_only=not include_offline)

    async def channels(self) -> list[ChannelInfo]:
        return await self.db.list_channels()

    async def locks(self) -> list[LockInfo]:
        return await self.db.list_locks()

    async def metrics(self, agent_id: str | None = None, metric: str | None = None,
                      since_seconds: float = 3600) -> list[MetricSummary]:
        return await self.db.get_metrics(agent_id, metric, required_ms(since_seconds, "since_seconds"))

    async def dead_letters(self, channel: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self.db.list_dead_letters(channel, limit)

    async def replay_dead_letters(self, message_ids: Sequence[int]) -> int:
        return await self.db.replay_dead_letters(OPERATOR, message_ids)

    async def cleanup(self) -> dict[str, int]:
        return await self.db.run_cleanup()

    async def topology(self, *, window_seconds: float = 300, include_offline: bool = False) -> Topology:
        return await self.db.topology(required_ms(window_seconds, "window_seconds"), include_offline)
