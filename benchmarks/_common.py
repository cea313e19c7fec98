"""What every benchmark shares: figures (a measurement beside its baseline), percentiles, the
private database server and fresh databases cloned from a migrated template."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import anyio
import asyncpg

from agent_runtime import AgentRuntime
from agent_runtime.local import embedded
from agent_runtime.local.migrations import migrate_url

Better = Literal["lower", "higher"]


@dataclass
class Figure:
    """One measurement through agent_runtime beside the raw-asyncpg baseline of the same run.

    ``ratio`` is always value / baseline: for times (lower is better) 1.5 means 1.5x the floor;
    for rates (higher is better) 0.4 means 40% of the floor. ``target`` is the ratio to meet
    (at most, for times; at least, for rates), when there is one; ``limit`` an absolute bound."""

    section: str
    name: str
    value: float | None
    unit: str
    baseline: float | None
    baseline_what: str
    better: Better
    target: float | None = None
    limit: float | None = None  # an absolute bound on value (at most, for times; at least, for rates)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Peer systems measured in the same run, doing the same work: name -> value (same unit).
    peers: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        checks: list[bool] = []
        ratio = self.ratio
        if self.target is not None and ratio is not None:
            checks.append(ratio <= self.target if self.better == "lower" else ratio >= self.target)
        if self.limit is not None and self.value is not None:
            checks.append(self.value <= self.limit if self.better == "lower" else self.value >= self.limit)
        return all(checks) if checks else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        data["met"] = self.met
        return data


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Settings:
    """Sizes of a run; ``quick()`` for a smoke run of a few seconds per section."""

    latency_samples: int = 400
    latency_gap: float = 0.005
    throughput_messages: int = 5000  # per publisher
    queue_messages: int = 8000
    lock_iterations: int = 2000
    lock_contended_seconds: float = 5.0
    presence_agents: int = 1000
    heartbeat_interval: float = 5.0
    heartbeat_seconds: float = 15.0
    topology_agents: int = 10_000
    topology_channels: int = 1000
    topology_runs: int = 10
    idle_subscriptions: int = 100
    # supabase_limit: messages/s per publisher (100/s in all: 200 events/s counted, send + deliver)
    supabase_limited_publishers: int = 20
    supabase_limited_rate: float = 5.0
    supabase_limited_seconds: float = 30.0  # (also in a quick run: the server's 5 s tick needs a few)
    supabase_latency_samples: int = 200
    supabase_throughput_messages: int = 1000  # per publisher
    reqreply_samples: int = 300
    queue_depths: tuple[int, ...] = (1000, 100_000, 1_000_000)
    queue_take: int = 10_000  # messages claimed and acked per depth
    jobs: int = 5000
    job_starts: int = 100

    @classmethod
    def quick(cls) -> Settings:
        return cls(latency_samples=100, throughput_messages=1000, queue_messages=2000, lock_iterations=300,
                   lock_contended_seconds=1.5, heartbeat_seconds=5.0, topology_runs=3,
                   supabase_latency_samples=50, supabase_throughput_messages=300, reqreply_samples=50,
                   queue_depths=(1000, 10_000), queue_take=2000, jobs=1000, job_starts=20)


_TEMPLATE = "bench_template"


class Bench:
    """The private server of this run and fresh databases on it."""

    def __init__(self, server: embedded.LocalServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self._counter = itertools.count()

    async def prepare(self) -> None:
        admin = await asyncpg.connect(self.server.url("postgres"))
        try:
            await admin.execute(f'drop database if exists "{_TEMPLATE}"')
            await admin.execute(f'create database "{_TEMPLATE}"')
        finally:
            await admin.close()
        await migrate_url(self.server.url(_TEMPLATE))

    @asynccontextmanager
    async def fresh_db(self) -> AsyncIterator[str]:
        """A new migrated database (cloned from the template) for one section, dropped after."""
        name = f"bench_{os.getpid()}_{next(self._counter)}"
        admin = await asyncpg.connect(self.server.url("postgres"))
        try:
            await admin.execute(f'create database "{name}" template "{_TEMPLATE}"')
        finally:
            await admin.close()
        try:
            yield self.server.url(name)
        finally:
            admin = await asyncpg.connect(self.server.url("postgres"))
            try:
                await admin.execute(f'drop database if exists "{name}" with (force)')
            finally:
                await admin.close()


def runtime(url: str, name: str, **options: Any) -> AgentRuntime:
    """An AgentRuntime as an application would start one (defaults), minus what would add noise
    to a measurement: no migration check (the database is migrated) and no janitor."""
    settings: dict[str, Any] = {"url": url, "migrate": False, "janitor": False}
    settings.update(options)
    return AgentRuntime(name, **settings)


# Commits in this database, and WAL flushes (fsyncs) of the server.
_SERVER_COUNTS = ("select (select xact_commit from pg_stat_database where datname = current_database()),"
                  " (select wal_sync from pg_stat_wal)")


async def server_counts(url: str, *, settle: float = 0.0) -> tuple[int, int]:
    """(commits in this database, WAL flushes of the server) so far, by every backend. A backend
    reports its counts when it goes idle (at most once a second) or exits: read them after the
    measured connections are closed (``settle``: seconds to wait first, for the exits)."""
    if settle:
        await anyio.sleep(settle)
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(_SERVER_COUNTS)
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()
