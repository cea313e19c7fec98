"""Message handlers (``rt.handle()`` / ``@rt.on``): a task per handler in the runtime's task group,
each behind two error boundaries: one message's (the handler raising nacks it) and the handler's
(a lost connection reopens its subscription with backoff; anything else stops that handler alone)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import tenacity

from ..errors import AgentRuntimeError, InvalidInput
from ..models import ChannelKind
from ._channels import check_subscription, subscribe
from ._context import RuntimeContext
from ._durations import whole
from ._subscription import Message, Subscription

__all__ = ["Handler", "handle", "nack_quietly"]

log = logging.getLogger(__name__)

Handler = Callable[[Message[Any]], Awaitable[Any]]


def handle(context: RuntimeContext, channel: str, handler: Handler, *, payload_type: type[Any] | None,
           kind: ChannelKind | None, start: str, concurrency: int, visibility_timeout: float | None) -> None:
    """Check the arguments now, then start the handler's task (see ``AgentRuntime.on``)."""
    whole(concurrency, "concurrency", minimum=1, maximum=10000)
    check_subscription(channel, kind, start, visibility_timeout, payload_type)
    if not callable(handler):
        raise InvalidInput(f"handler must be an async callable (got {handler!r})")
    context.tasks.start_soon(_handler_loop, context, channel, handler, payload_type, kind, start,
                             visibility_timeout, concurrency)


async def _handler_loop(context: RuntimeContext, channel: str, handler: Handler, payload_type: type[Any] | None,
                        kind: ChannelKind | None, start: str, visibility: float | None, concurrency: int) -> None:
    """One handler's error boundary: a lost connection reopens its subscription with backoff;
    anything else the database refuses (a channel of another kind, one that was deleted...), or
    anything unexpected, stops this handler alone, logged and counted, never the runtime."""
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, AgentRuntimeError) and exc.retryable),
        wait=tenacity.wait_random_exponential(multiplier=context.retry.base_delay, max=context.retry.max_delay),
        sleep=anyio.sleep, reraise=True,
        before_sleep=lambda state: log.warning("handler on %s: %s; reopening", channel,
                                               state.outcome.exception() if state.outcome else None))
    try:
        async for attempt in retrying:
            with attempt:
                await _consume(context, channel, handler, payload_type, kind, start, visibility, concurrency)
    except AgentRuntimeError as exc:
        context.metrics.increment("errors.handler", channel=channel)
        log.error("the handler on %s stopped: %s", channel, exc)
    except Exception:  # a bug below the handler (the handler's own errors nack its message): this handler only
        context.metrics.increment("errors.handler", channel=channel)
        log.exception("the handler on %s stopped unexpectedly", channel)


async def _consume(context: RuntimeContext, channel: str, handler: Handler, payload_type: type[Any] | None,
                   kind: ChannelKind | None, start: str, visibility: float | None, concurrency: int) -> None:
    # Concurrent handlers share one subscription: one claim (and one ack write) serves them all.
    # Broadcast keeps per-channel order: one handler at a time.
    failures: list[AgentRuntimeError] = []
    async with subscribe(context, channel, payload_type=payload_type, kind=kind, start=start,
                         batch_size=max(10, concurrency), visibility_timeout=visibility) as sub:
        async with anyio.create_task_group() as tg:
            for _ in range(1 if sub.kind == "broadcast" else concurrency):
                tg.start_soon(_handle_each, context, sub, handler, failures, tg.cancel_scope)
    if failures:
        raise failures[0]


async def _handle_each(context: RuntimeContext, sub: Subscription[Any], handler: Handler,
                       failures: list[AgentRuntimeError], scope: anyio.CancelScope) -> None:
    try:
        async for msg in sub:
            context.in_flight.begin()
            try:
                await _run_handler(context, handler, msg)
            finally:
                context.in_flight.end()
    except AgentRuntimeError as exc:  # the subscription failed: the boundary above decides
        failures.append(exc)
        scope.cancel()


async def _run_handler(context: RuntimeContext, handler: Handler, msg: Message[Any]) -> None:
    """One message's error boundary: the handler raising nacks it; a nack that cannot be
    written (the database is away) leaves it to be redelivered."""
    started = anyio.current_time()
    try:
        await handler(msg)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True), anyio.move_on_after(context.timing.shutdown_timeout):
            await nack_quietly(context, msg, delay=0, reason="handler cancelled (shutdown)")
        raise
    except Exception as exc:
        context.metrics.increment("errors.handler_call", channel=msg.channel)
        log.warning("handler for %s failed on %r: %s", msg.channel, msg, exc)
        await nack_quietly(context, msg, reason=f"{type(exc).__name__}: {exc}")
    else:
        await msg.ack()
    finally:
        context.metrics.observe("handler.time_ms", (anyio.current_time() - started) * 1000, channel=msg.channel)


async def nack_quietly(context: RuntimeContext, msg: Message[Any], *, delay: float | None = None,
                       reason: str) -> None:
    """Nack, and if that cannot be written, count it and leave the message to be redelivered."""
    try:
        await msg.nack(delay=delay, reason=reason)
    except AgentRuntimeError as exc:
        context.metrics.increment("errors.nack", channel=msg.channel)
        log.warning("nack of %r failed (%s): it will be redelivered", msg, exc)
