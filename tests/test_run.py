"""Running an agent until a signal: `await rt.run_forever()` and `agent_runtime.run(main)` turn
SIGINT/SIGTERM into an orderly exit (status 0, no traceback, the agent marked offline)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest

SCRIPTS = {
    # The README's first agent: handlers only, asyncio.run, run_forever.
    "asyncio_run_forever": """
        import asyncio, sys
        from agent_runtime import AgentRuntime

        async def main(url):
            async with AgentRuntime("svc", url=url, janitor=False) as rt:
                @rt.on("svc.tasks", kind="queue")
                async def handle(msg):
                    pass
                print("ready", rt.agent_id, flush=True)
                await rt.run_forever()
            print("left", flush=True)

        asyncio.run(main(sys.argv[1]))
    """,
    "run_with_run_forever": """
        import sys
        import agent_runtime

        async def main(url):
            async with agent_runtime.AgentRuntime("svc", url=url, janitor=False) as rt:
                print("ready", rt.agent_id, flush=True)
                await rt.run_forever()
            print("left", flush=True)

        agent_runtime.run(main, sys.argv[1])
    """,
    # Ctrl-C twice: the second arrives while it leaves (the test sends it once the agent says
    # "leaving", and only then lets it go on), however slow the machine is.
    "run_with_run_forever_leaving_slowly": """
        import os, sys
        import anyio
        import agent_runtime

        async def main(url, go):
            async with agent_runtime.AgentRuntime("svc", url=url, janitor=False) as rt:
                print("ready", rt.agent_id, flush=True)
                await rt.run_forever()
                print("leaving", flush=True)
                while not os.path.exists(go):
                    await anyio.sleep(0.01)
                await anyio.sleep(0.1)  # (the second signal, sent before go was made, is handled by now)
            print("left", flush=True)

        agent_runtime.run(main, sys.argv[1], sys.argv[2])
    """,
    "run_with_sleep_forever": """
        import sys
        import anyio
        import agent_runtime

        async def main(url):
            try:
                async with agent_runtime.AgentRuntime("svc", url=url, janitor=False) as rt:
                    print("ready", rt.agent_id, flush=True)
                    await anyio.sleep_forever()
            finally:
                print("left", flush=True)

        agent_runtime.run(main, sys.argv[1])
    """,
}


def _readme_first_agent() -> str:
    """The README's 'A first agent' block, printing its id once started so the test knows it runs."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("### A first agent", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "await rt.run_forever()" in block and "agent_runtime.run(main)" in block
    return block.replace("        await rt.run_forever()",
                         "        print('ready', rt.agent_id, flush=True)\n        await rt.run_forever()")


SCRIPTS["readme_first_agent"] = _readme_first_agent()


async def _online(db_url: str) -> list[str]:
    conn = await asyncpg.connect(db_url)
    try:
        return [a["id"] for a in json.loads(await conn.fetchval("select list_agents()::text"))]
    finally:
        await conn.close()


def _wait_for_signal_handlers(pid: int, within: float = 10.0) -> None:
    """Until the child catches SIGTERM (its bit in /proc's SigCgt): the signal receiver is open, so
    the agent is inside run_forever or run(). (SIGINT is always caught by Python itself.)"""
    deadline = time.monotonic() + within
    status = Path(f"/proc/{pid}/status")
    if not status.exists():  # (no /proc: not Linux) a pause instead
        time.sleep(0.5)
        return
    while time.monotonic() < deadline:
        caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.01)
    raise AssertionError(f"the agent (pid {pid}) never installed its signal handlers")


@pytest.mark.parametrize(("script", "signals"), [
    ("asyncio_run_forever", [signal.SIGINT]),
    ("asyncio_run_forever", [signal.SIGTERM]),
    ("run_with_run_forever", [signal.SIGTERM]),
    ("run_with_run_forever_leaving_slowly", [signal.SIGINT, signal.SIGINT]),  # a second Ctrl-C while it leaves
    ("run_with_sleep_forever", [signal.SIGINT]),
    ("readme_first_agent", [signal.SIGTERM]),
])
def test_a_signal_is_an_orderly_exit(script: str, signals: list[signal.Signals], db_url: str,
                                     tmp_path: Path) -> None:
    """The agent runs until the signal, then leaves: exit status 0, no traceback, offline."""
    path = tmp_path / f"{script}.py"
    path.write_text(textwrap.dedent(SCRIPTS[script]))
    env = {**os.environ, "AGENT_RUNTIME_URL": db_url}  # the README's agent takes its database from there
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, str(path), db_url, str(go)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["ready"], (first, proc.stderr.read() if proc.stderr else "")
        agent_id = first[1]
        assert agent_id in asyncio.run(_online(db_url))
        _wait_for_signal_handlers(proc.pid)
        proc.send_signal(signals[0])
        if len(signals) > 1:
            assert proc.stdout.readline().strip() == "leaving"
            for signum in signals[1:]:
                proc.send_signal(signum)
            go.touch()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "left" in out or script == "readme_first_agent"
    assert agent_id not in asyncio.run(_online(db_url))
