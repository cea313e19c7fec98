"""Metrics.received, the per-message path: its figures are exactly those increment/observe would
record (count, sum, min, max of messages.received, bytes.received and latency.end_to_end_ms),
including when increment() adds to the same figure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent_runtime.runtime._metrics import Metrics


def _figures(metrics: Metrics) -> dict[tuple[str, str], tuple[int, float, float | None, float | None]]:
    return {key: (f.count, f.sum, f.min, f.max) for key, f in metrics._figures.items()}


def test_received_records_what_increment_and_observe_would() -> None:
    now = datetime.now(UTC)
    messages = [(120, now - timedelta(seconds=2)), (80, now - timedelta(milliseconds=500)), (300, None),
                (5, now + timedelta(seconds=30))]  # (a sender's clock ahead: latency 0, never negative)
    fast, reference = Metrics(), Metrics()
    fast.increment("messages.received", 3, channel="c")  # (a figure increment() began)
    reference.increment("messages.received", 3, channel="c")
    for size, created_at in messages:
        fast.received("c", size, created_at)
        reference.increment("messages.received", channel="c")
        reference.observe("bytes.received", size, channel="c")
    got = _figures(fast)
    want = _figures(reference)
    assert got[("messages.received", "c")] == want[("messages.received", "c")] == (5, 7, 1, 3)
    assert got[("bytes.received", "c")] == want[("bytes.received", "c")] == (4, 505, 5, 300)
    count, total, low, high = got[("latency.end_to_end_ms", "c")]
    assert count == 3  # (one message had no created_at)
    assert low == 0.0
    assert high is not None and 2000 <= high < 2000 + 60_000
    assert 2500 <= total < 2500 + 3 * 60_000
