"""``agent-runtime demo``: a coordinator, workers and a monitor as separate processes.

The coordinator hands jobs out over a queue channel; each worker takes a lock per job, does the
work and replies to the coordinator's inbox; the monitor follows presence. Written against the
public API only, like any application. Each role runs as ``python -m agent_runtime.demo ROLE URL``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from agent_runtime import AgentRuntime, Message, Network, to_table

__all__ = ["coordinator", "monitor", "run_demo", "worker"]

JOBS_CHANNEL = "demo.jobs"


def _runtime(name: str, capability: str, url: str) -> AgentRuntime:
    # Short intervals so a one-minute demo shows presence and cleanup at work.
    return AgentRuntime(name, capabilities=[capability], url=url, heartbeat_interval=1.0, janitor_interval=2.0,
                        metrics_interval=1.0, poll_interval=2.0)


def _emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _until_signalled(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` until it returns or SIGTERM/SIGINT arrives. The signal receiver stays installed
    until the body has left its runtime, so a second signal (Ctrl-C reaches the whole process
    group, then the demo sends SIGTERM) cannot kill an agent half-way through leaving."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(stop_on_signal)
            await body()
            tg.cancel_scope.cancel()


async def worker(url: str, index: int) -> None:
    async def body() -> None:
        async with _runtime(f"worker-{index}", "work", url) as rt:
            await rt.channel(JOBS_CHANNEL, "queue", max_attempts=3)

            @rt.on(JOBS_CHANNEL, kind="queue")
            async def work(msg: Message[dict[str, Any]]) -> None:
                job = msg.payload["job"]
                async with rt.lock(f"demo.job:{job}", ttl=5) as lease:
                    await anyio.sleep(0.02)  # the work
                    await rt.send(msg.payload["reply_to"], {"job": job, "worker": rt.name, "token": lease.token},
                                  idempotency_key=f"done:{job}")

            _emit(role="worker", event="ready", agent_id=rt.agent_id)
            await anyio.sleep_forever()

    await _until_signalled(body)


async def monitor(url: str) -> None:
    async def body() -> None:
        async with _runtime("monitor", "monitor", url) as rt, rt.presence_events() as events:
            _emit(role="monitor", event="ready", agent_id=rt.agent_id)
            async for event in events:
                _emit(role="monitor", event=event.kind, agent=event.agent_id, status=event.status)

    await _until_signalled(body)


async def coordinator(url: str, jobs: int) -> None:
    async def body() -> None:
        async with _runtime("coordinator", "coordinate", url) as rt:
            await rt.channel(JOBS_CHANNEL, "queue", max_attempts=3)
            for start in range(0, jobs, 1000):  # batches: one round trip per thousand jobs
                await rt.publish_many(JOBS_CHANNEL, [{"job": i, "reply_to": rt.agent_id}
                                                     for i in range(start, min(start + 1000, jobs))])
            done: set[int] = set()
            async for msg in rt.inbox():
                done.add(msg.payload["job"])
                await msg.ack()
                _emit(role="coordinator", event="done", job=msg.payload["job"], worker=msg.payload["worker"],
                      count=len(done))
                if len(done) == jobs:
                    break

    await _until_signalled(body)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agent_runtime.demo", *args], stdout=subprocess.PIPE,
                            text=True, bufsize=1)


def run_demo(url: str, *, workers: int = 3, jobs: int = 60, timeout: float = 45.0) -> int:
    """Run the whole demo, showing progress; returns the exit status."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)  # progress; the results go to standard output
    out = Console()
    procs: list[subprocess.Popen[str]] = []
    try:
        with console.status("starting the monitor and workers..."):
            procs.append(_spawn("monitor", url))
            procs.extend(_spawn("worker", url, str(i)) for i in range(1, workers + 1))
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()  # each prints 'ready' once registered
                if not line:
                    console.print("[red]an agent process failed to start[/red]")
                    return 1
        coordinator_proc = _spawn("coordinator", url, str(jobs))
        procs.append(coordinator_proc)
        per_worker: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        with Progress(TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console) as progress:
            task = progress.add_task("", total=jobs)
            assert coordinator_proc.stdout is not None
            for line in coordinator_proc.stdout:
                event = json.loads(line)
                per_worker[event["worker"]] = per_worker.get(event["worker"], 0) + 1
                progress.update(task, completed=event["count"],
                                description=" ".join(f"{w}:{n}" for w, n in sorted(per_worker.items())))
                if time.monotonic() > deadline:
                    console.print("[red]the demo did not finish in time[/red]")
                    return 1
        if coordinator_proc.wait(timeout=10) != 0:
            return 1
        anyio.run(_show_topology, url, out)
        _stop(procs)  # the agents flush their metrics and leave
        anyio.run(_show_metrics, url, out)
        return 0
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every agent (each leaves in order), then wait; kill what does not exit in time."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _show_topology(url: str, console: Any) -> None:
    async with Network(url) as net:
        console.print(to_table(await net.topology()))


async def _show_metrics(url: str, console: Any) -> None:
    async with Network(url) as net:
        totals: dict[str, float] = {}
        waits: list[tuple[int, float]] = []
        for m in await net.read_metrics(since=600):
            if m.metric.startswith("messages."):
                totals[m.metric] = totals.get(m.metric, 0) + m.sum  # counters: the sum is the total
            elif m.metric == "lock.wait_ms":
                waits.append((m.count, m.sum))
        parts = [f"{k}={int(v)}" for k, v in sorted(totals.items())]
        acquired = sum(c for c, _ in waits)
        if acquired:
            parts.append(f"locks={acquired} (mean wait {sum(s for _, s in waits) / acquired:.1f} ms)")
        console.print("metrics: " + ", ".join(parts))


def _main(argv: list[str]) -> None:
    role, url, *rest = argv
    if role == "worker":
        anyio.run(worker, url, int(rest[0]))
    elif role == "monitor":
        anyio.run(monitor, url)
    elif role == "coordinator":
        anyio.run(coordinator, url, int(rest[0]))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    _main(sys.argv[1:])
