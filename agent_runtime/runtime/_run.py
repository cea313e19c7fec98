"""Running an agent until it is told to stop: SIGINT (Ctrl-C) or SIGTERM (a service manager,
``kill``) become an orderly exit, never a traceback.

``agent_runtime.run(main)`` runs ``main()`` and cancels it on the first signal, so each of its
``async with AgentRuntime(...)`` blocks leaves in order (handlers finish or hand their messages
back, locks are released, metrics flushed, the agent marked offline). Later signals that arrive
while it leaves are ignored, so a second Ctrl-C cannot cut the shutdown half-way.
``await rt.run_forever()`` does the same from inside a runtime: it returns on the first signal.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _RunState:
    """What :func:`run` shares with the ``run_forever`` calls inside it: the signal arrived, and
    how many are waiting for it (they return normally; only when none waits is main cancelled)."""

    def __init__(self) -> None:
        self.signalled = anyio.Event()
        self.waiting = 0


# Set inside run(): its receiver owns the signals (an event loop has one handler per signal, so a
# second receiver would take them over and, on leaving, leave them unhandled).
_run_state: ContextVar[_RunState | None] = ContextVar("agent_runtime_run_state", default=None)


async def _first(*events: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:
        for event in events:

            async def wait(event: anyio.Event = event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wait)


async def wait_for_signal(stopping: anyio.Event | None = None) -> signal.Signals | None:
    """Returns the first SIGINT or SIGTERM (or None once ``stopping`` is set). Inside :func:`run`
    it returns when run's receiver has the signal. Outside the main thread, where no signal can be
    received, it waits for ``stopping`` or cancellation only."""
    state = _run_state.get()
    if state is not None:
        state.waiting += 1
        try:
            await _first(state.signalled, *([stopping] if stopping is not None else []))
        finally:
            state.waiting -= 1
        return None
    try:
        receiver = anyio.open_signal_receiver(*STOP_SIGNALS)
        signals = receiver.__enter__()
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
        if stopping is None:
            await anyio.sleep_forever()
        else:
            await stopping.wait()
        return None
    try:
        received: list[signal.Signals] = []
        async with anyio.create_task_group() as tg:

            async def first_signal() -> None:
                async for signum in signals:
                    received.append(signal.Signals(signum))
                    tg.cancel_scope.cancel()
                    return

            async def stopped() -> None:
                assert stopping is not None
                await stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(first_signal)
            if stopping is not None:
                tg.start_soon(stopped)
        return received[0] if received else None
    finally:
        receiver.__exit__(None, None, None)


def run(main: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio") -> T | None:
    """Run ``main(*args)`` until it returns, or until SIGINT/SIGTERM. On the signal, a
    ``run_forever()`` inside returns (the code after it runs); if none is waiting, ``main`` is
    cancelled. Either way its ``async with AgentRuntime(...)`` blocks leave in order, later signals
    are ignored meanwhile, and ``run`` returns without a traceback (the process exits 0).
    Returns ``main``'s result when it finishes by itself, else None."""

    async def runner() -> T | None:
        state = _RunState()
        _run_state.set(state)
        result: list[T] = []
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:  # held until main has left
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    async for _ in signals:  # the first one stops main; later ones are ignored
                        if state.signalled.is_set():
                            continue
                        state.signalled.set()  # each run_forever returns, and main leaves by itself
                        if state.waiting == 0:
                            tg.cancel_scope.cancel()

                tg.start_soon(stop_on_signal)
                result.append(await main(*args))
                tg.cancel_scope.cancel()
        return result[0] if result else None

    return anyio.run(runner, backend=backend)
