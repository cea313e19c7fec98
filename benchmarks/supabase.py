"""SLOT: figures through the Supabase transport (``agent_runtime/transports/supabase.py``: PostgREST
RPC + Realtime) against its protocol stand-in (``agent_runtime.testing.SupabaseStandIn``), beside
the same raw-asyncpg floors on the database behind the stand-in.

When either is missing this section reports "not available: Supabase transport not installed".
The stand-in serves HTTP and websockets from this same Python process, so its work shares the
process (and the 2 cores) with the runtimes being measured: these figures are an upper bound on
the transport's own overhead, not what a hosted Supabase project would show."""

from __future__ import annotations

import importlib.util
from typing import Any

from . import messaging
from ._common import Bench, Figure

NOT_AVAILABLE = "not available: Supabase transport not installed"


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None
               for name in ("agent_runtime.testing", "agent_runtime.transports.supabase"))


async def supabase(bench: Bench) -> tuple[list[Figure], dict[str, Any]]:
    """Latency 1->1 and throughput 4->4 through AgentRuntime(url=standin.url, key=service role key),
    or no figures and the reason."""
    if not available():
        return [], {"available": False, "reason": NOT_AVAILABLE}
    from agent_runtime.testing import SupabaseStandIn

    s = bench.settings
    async with bench.fresh_db() as db_url, SupabaseStandIn(db_url) as standin:
        via = {"key": standin.service_role_key}
        figures = await messaging.latency_on(db_url, standin.url, s.supabase_latency_samples, s.latency_gap, 1,
                                             "supabase stand-in: latency 1->1", **via)
        figures += await messaging.throughput_on(db_url, standin.url, s.supabase_throughput_messages,
                                                 "supabase stand-in: throughput 4->4", **via)
    return figures, {"available": True, "note": "stand-in in the same process as the runtimes"}
