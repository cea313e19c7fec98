"""``agent-runtime demo``: a coordinator, workers and a monitor as separate processes.

The coordinator hands jobs out over a queue channel; each worker takes a lock per job, does the
work and replies to the coordinator's inbox; the monitor follows presence. Written against the
public API only, like any application. Each role runs as ``python -m agent_runtime.cli.demo ROLE URL``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import msgspec
from rich.text import Text

from agent_runtime import AgentRuntime, Message, Network, Topology, to_table
from agent_runtime.render.tables import metrics_table, summarise_metrics

__all__ = ["coordinator", "monitor", "run_demo", "worker"]

JOBS_CHANNEL = "demo.jobs"


def _runtime(name: str, capability: str, url: str) -> AgentRuntime:
    # Short intervals so a one-minute demo shows presence and cleanup at work.
    return AgentRuntime(name, capabilities=[capability], url=url, heartbeat_interval=1.0, janitor_interval=2.0,
                        metrics_interval=1.0, poll_interval=2.0)


def _emit(**event: Any) -> None:
    """One JSON line to the demo process. If it has gone away (its pipe is closed), the line is
    dropped: the parent watch below then stops this agent in order."""
    try:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # ValueError: stdout already closed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


async def _parent_gone(parent: int) -> None:
    """Returns when the process that started this agent has died (we are re-parented), so that
    no agent outlives the demo even if the demo was killed with SIGKILL."""
    while os.getppid() == parent:  # noqa: ASYNC110 (no event exists for "my parent died")
        await anyio.sleep(0.5)


async def _until_signalled(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` until it returns, SIGTERM/SIGINT/SIGHUP arrives or the demo process dies. The
    signal receiver stays installed until the body has left its runtime, so a second signal
    (Ctrl-C reaches the whole process group, then the demo sends SIGTERM) cannot kill an agent
    half-way through leaving."""
    parent = os.getppid()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            async def stop_when_orphaned() -> None:
                await _parent_gone(parent)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_on_signal)
            tg.start_soon(stop_when_orphaned)
            await body()
            tg.cancel_scope.cancel()


async def worker(url: str, index: int, run: str) -> None:
    async def body() -> None:
        async with _runtime(f"worker-{index}", "work", url) as rt:
            await rt.channel(JOBS_CHANNEL, "queue", max_attempts=3)

            waiting: dict[str, bool] = {}  # another run's coordinator -> is it online (waiting for results)?

            async def someone_waits(coordinator_id: str) -> bool:
                if coordinator_id not in waiting:
                    waiting[coordinator_id] = any(a.id == coordinator_id for a in await rt.agents())
                return waiting[coordinator_id]

            @rt.on(JOBS_CHANNEL, kind="queue")
            async def work(msg: Message[dict[str, Any]]) -> None:
                if msg.payload.get("run") != run and not await someone_waits(str(msg.payload.get("reply_to"))):
                    # Left by an earlier, interrupted demo whose coordinator is gone: dropped (acked).
                    _emit(role="worker", event="stale", job=msg.payload.get("job"))
                    return
                job = msg.payload["job"]
                async with rt.lock(f"demo.job:{job}", ttl=5) as lease:
                    await anyio.sleep(0.02)  # the work
                    await rt.send(msg.payload["reply_to"], {"job": job, "worker": rt.name, "token": lease.token},
                                  idempotency_key=f"done:{run}:{job}")

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


async def coordinator(url: str, jobs: int, run: str) -> None:
    async def body() -> None:
        async with _runtime("coordinator", "coordinate", url) as rt:
            await rt.channel(JOBS_CHANNEL, "queue", max_attempts=3)
            _emit(role="coordinator", event="ready", agent_id=rt.agent_id)
            for start in range(0, jobs, 1000):  # batches: one round trip per thousand jobs
                await rt.publish_many(JOBS_CHANNEL, [{"job": i, "run": run, "reply_to": rt.agent_id}
                                                     for i in range(start, min(start + 1000, jobs))])
            done: set[int] = set()
            async for msg in rt.inbox():
                done.add(msg.payload["job"])
                await msg.ack()
                _emit(role="coordinator", event="done", job=msg.payload["job"], worker=msg.payload["worker"],
                      count=len(done))
                if len(done) == jobs:
                    break
            _emit(role="coordinator", event="finished", count=len(done))
            await anyio.sleep_forever()  # stays online until the demo has shown the topology

    await _until_signalled(body)


class _Agent:
    """One agent process of the demo, and what it said."""

    def __init__(self, role: str, *args: str) -> None:
        self.role = role
        self.proc = subprocess.Popen([sys.executable, "-m", "agent_runtime.cli.demo", role, *args],
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.agent_id = ""
        self.events: list[dict[str, Any]] = []

    def ready(self) -> bool:
        """Waits for its 'ready' line (it is registered); False if it exited first."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return False
        self.agent_id = json.loads(line)["agent_id"]
        return True

    def lines(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            yield json.loads(line)

    def collect(self) -> None:
        """Keeps reading its events in a thread, so that its pipe never fills up and blocks it."""
        def read() -> None:
            for event in self.lines():
                self.events.append(event)
        threading.Thread(target=read, daemon=True).start()


def run_demo(url: str, *, workers: int = 3, jobs: int = 60, timeout: float | None = None) -> int:
    """Run the whole demo, showing progress; returns the exit status. It reports its own run only:
    its agents, its jobs (tagged with a run id; jobs an interrupted earlier run left in the queue
    are dropped by the workers, and said so) and its agents' metrics."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)  # progress; the results go to standard output
    out = Console()
    run = uuid.uuid4().hex[:8]
    timeout = timeout if timeout is not None else 45.0 + jobs / 20
    agents: list[_Agent] = []
    previous = {signum: signal.getsignal(signum) for signum in (*_STOP_SIGNALS, signal.SIGINT)}
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _stop_demo)
    try:
        with console.status("starting the monitor and workers..."):
            left = anyio.run(_jobs_waiting, url)
            if left:
                console.print(f"{JOBS_CHANNEL} holds {_plural(left, 'job')} left by an earlier, interrupted demo: "
                              "the workers drop them (nobody waits for their results)")
            agents.append(_Agent("monitor", url))
            agents.extend(_Agent("worker", url, str(i), run) for i in range(1, workers + 1))
            for agent in agents:
                if not agent.ready():
                    console.print("[red]an agent process failed to start[/red]")
                    return 1
                agent.collect()
        started = time.monotonic()
        coordinator_agent = _Agent("coordinator", url, str(jobs), run)
        agents.append(coordinator_agent)
        if not coordinator_agent.ready():
            console.print("[red]the coordinator failed to start[/red]")
            return 1
        per_worker: dict[str, int] = {}
        deadline = started + timeout
        with Progress(TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console) as progress:
            task = progress.add_task("", total=jobs)
            for event in coordinator_agent.lines():
                if event["event"] == "finished":
                    break
                per_worker[event["worker"]] = per_worker.get(event["worker"], 0) + 1
                stale = _stale(agents)
                progress.update(task, completed=event["count"],
                                description=" ".join(f"{w}:{n}" for w, n in sorted(per_worker.items()))
                                + (f" (dropped {stale} old)" if stale else ""))
                if time.monotonic() > deadline:
                    console.print("[red]the demo did not finish in time[/red]")
                    return 1
            else:
                console.print("[red]the coordinator stopped before all jobs were done[/red]")
                return 1
        elapsed = time.monotonic() - started
        ids = {agent.agent_id for agent in agents}
        anyio.run(_show_topology, url, out, ids, elapsed)
        _stop(agents)  # the agents flush their metrics and leave
        done = ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items()))
        out.print(Text(f"{_plural(jobs, 'job')} done in {elapsed:.1f} s ({done})"))
        if _stale(agents):
            out.print(Text(f"{_plural(_stale(agents), 'job')} of an earlier run dropped"))
        anyio.run(_show_metrics, url, out, ids, elapsed)
        return 0
    except _Stopped as stopped:
        console.print(f"stopped by {signal.Signals(stopped.signum).name}: the agents leave in order")
        return 128 + stopped.signum
    finally:
        # No signal may interrupt the agents' orderly exit (a second Ctrl-C, the TERM a service
        # manager repeats): ignored until every agent process has gone.
        for signum in (*_STOP_SIGNALS, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        _stop(agents)
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _stale(agents: list[_Agent]) -> int:
    return sum(1 for agent in agents for event in list(agent.events) if event.get("event") == "stale")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


async def _jobs_waiting(url: str) -> int:
    async with Network(url) as net:
        return next((c.ready for c in await net.channels() if c.name == JOBS_CHANNEL), 0)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_demo(signum: int, frame: object) -> None:
    """SIGTERM or SIGHUP to the demo: unwind run_demo, whose ``finally`` stops every agent."""
    raise _Stopped(signum)


def _stop(agents: list[_Agent]) -> None:
    """SIGTERM every agent (each leaves in order), then wait; kill what does not exit in time."""
    procs = [agent.proc for agent in agents]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _own(topo: Topology, ids: set[str]) -> Topology:
    """The part of the topology that belongs to this run: its agents, what they subscribe to, send
    to or own, and their inboxes."""
    subscriptions = [s for s in topo.subscriptions if s.agent_id in ids]
    flows = [f for f in topo.flows if f.from_agent in ids]
    names = {JOBS_CHANNEL, *(f"agent:{i}" for i in ids), *(s.channel for s in subscriptions),
             *(f.channel for f in flows)}
    return msgspec.structs.replace(
        topo, agents=[a for a in topo.agents if a.id in ids], channels=[c for c in topo.channels if c.name in names],
        subscriptions=subscriptions, flows=flows, locks=[lock for lock in topo.locks if lock.owner_id in ids])


async def _show_topology(url: str, console: Any, ids: set[str], elapsed: float) -> None:
    async with Network(url) as net:
        topo = await net.topology(window=math.ceil(elapsed) + 10, include_offline=True)
        console.print(to_table(_own(topo, ids)))


async def _show_metrics(url: str, console: Any, ids: set[str], elapsed: float) -> None:
    async with Network(url) as net:
        rows = [m for m in await net.read_metrics(since=elapsed + 120) if m.agent_id in ids]
    console.print(metrics_table(summarise_metrics(rows, span=elapsed), title="metrics of this run's agents",
                                empty="no metrics recorded"))


def _main(argv: list[str]) -> None:
    role, url, *rest = argv
    if role == "worker":
        anyio.run(worker, url, int(rest[0]), rest[1])
    elif role == "monitor":
        anyio.run(monitor, url)
    elif role == "coordinator":
        anyio.run(coordinator, url, int(rest[0]), rest[1])
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    _main(sys.argv[1:])
