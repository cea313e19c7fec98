"""Looking at and administering the network without joining it as an agent (the CLI's view)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from ..errors import AgentRuntimeError
from ..models import AgentInfo, ChannelInfo, DeadLetter, LockInfo, MetricSummary, RawMessage, Topology
from ..transports.base import Transport
from ._db import Database
from ._durations import required_ms
from .config import ConnectionSettings, resolve
from .connect import open_transport

__all__ = ["OPERATOR", "Network", "NetworkViews"]

OPERATOR = "operator"


class NetworkViews:
    """What any connection may look at, one implementation (and one name per concept) for
    :class:`AgentRuntime` and :class:`Network`. Times are in seconds: ``since`` (how far back),
    ``window`` (the span of recent flows)."""

    def _require_db(self) -> Database:
        raise NotImplementedError

    async def agents(self, capability: str | None = None, *, include_offline: bool = False) -> list[AgentInfo]:
        """Agents that are online now (by the database clock), optionally with a capability."""
        return await self._require_db().list_agents(capability, online_only=not include_offline)

    async def channels(self) -> list[ChannelInfo]:
        return await self._require_db().list_channels()

    async def locks(self) -> list[LockInfo]:
        return await self._require_db().list_locks()

    async def read_metrics(self, *, agent_id: str | None = None, metric: str | None = None,
                           since: float = 3600) -> list[MetricSummary]:
        """Metrics flushed so far (all agents unless ``agent_id``), summed over ``since`` seconds."""
        return await self._require_db().get_metrics(agent_id, metric, required_ms(since, "since"))

    async def dead_letters(self, channel: str | None = None, *, limit: int = 100) -> list[DeadLetter]:
        return await self._require_db().list_dead_letters(channel, limit)

    async def topology(self, *, window: float = 300, include_offline: bool = False) -> Topology:
        """Agents with presence, channels, subscriptions, message flows over ``window`` seconds, locks."""
        return await self._require_db().topology(required_ms(window, "window"), include_offline)


class Network(NetworkViews):
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
        return self._require_db()

    def _require_db(self) -> Database:
        if self._db is None:
            raise AgentRuntimeError("use Network inside 'async with'")
        return self._db

    async def __aenter__(self) -> Network:
        self._transport = await open_transport(self.settings, migrate=self._migrate, pool_size=2)
        self._db = Database(self._transport)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._transport is not None:
            await self._transport.aclose()

    async def peek(self, channel: str, *, after_seq: int = 0, limit: int = 100) -> list[RawMessage]:
        """A channel's messages with seq > ``after_seq``, in order, read without consuming them (no
        cursor moves, nothing is claimed). Needs a trusted connection."""
        return await self.db.peek(channel, after_seq, limit)

    async def replay_dead_letters(self, message_ids: Sequence[int]) -> int:
        """Deliver dead letters again (fresh attempts), as the operator; returns how many."""
        return await self.db.replay_dead_letters(OPERATOR, message_ids)

    async def cleanup(self) -> dict[str, int]:
        """One janitor round now: expired messages and locks, stale presence, old metrics."""
        return await self.db.run_cleanup()
