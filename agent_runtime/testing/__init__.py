"""Testing helpers: a protocol-level stand-in for Supabase (PostgREST RPC + Realtime) over a real
Postgres, so code written against the official ``supabase`` / ``realtime`` clients can be tested
without Docker or a Supabase project. See :mod:`agent_runtime.testing.supabase_standin`."""

from __future__ import annotations

from .supabase_standin import DEFAULT_JWT_SECRET, StandInStats, SupabaseStandIn

__all__ = ["DEFAULT_JWT_SECRET", "StandInStats", "SupabaseStandIn"]
