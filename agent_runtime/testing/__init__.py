"""Testing helpers: a protocol-level stand-in for Supabase (PostgREST RPC + Realtime) over a real
Postgres, so code written against the official ``supabase`` / ``realtime`` clients can be tested
without Docker or a Supabase project (see :mod:`agent_runtime.testing.supabase_standin`), and fresh
migrated databases per test (:class:`TestDatabases`; pytest fixtures in
:mod:`agent_runtime.testing.pytest_plugin`)."""

from __future__ import annotations

from .databases import AdvanceClock, TestDatabases
from .supabase_standin import DEFAULT_JWT_SECRET, StandInStats, SupabaseStandIn

__all__ = ["DEFAULT_JWT_SECRET", "AdvanceClock", "StandInStats", "SupabaseStandIn", "TestDatabases"]
