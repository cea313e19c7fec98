"""Running an agent until a signal: `await rt.run_forever()` and `agent_runtime.run(main)` turn
SIGINT/SIGTERM into an orderly exit (status 0, no traceback, the agent marked offline)."""

from __future__ import annotations

import asyncio
import json
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


async def _online(db_url: str) -> list[str]:
    conn = await asyncpg.connect(db_url)
    try:
        return [a["id"] for a in json.loads(await conn.fetchval("select list_agents()::text"))]
    finally:
        await conn.close()


@pytest.mark.parametrize(("script", "signals"), [
    ("asyncio_run_forever", [signal.SIGINT]),
    ("asyncio_run_forever", [signal.SIGTERM]),
    ("run_with_run_forever", [signal.SIGTERM]),
    ("run_with_run_forever", [signal.SIGINT, signal.SIGINT]),  # a second Ctrl-C while it leaves
    ("run_with_sleep_forever", [signal.SIGINT]),
])
def test_a_signal_is_an_orderly_exit(script: str, signals: list[signal.Signals], db_url: str,
                                     tmp_path: Path) -> None:
    """The agent runs until the signal, then leaves: exit status 0, no traceback, offline."""
    path = tmp_path / f"{script}.py"
    path.write_text(textwrap.dedent(SCRIPTS[script]))
    proc = subprocess.Popen([sys.executable, str(path), db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["ready"], (first, proc.stderr.read() if proc.stderr else "")
        agent_id = first[1]
        assert agent_id in asyncio.run(_online(db_url))
        time.sleep(0.3)  # let it settle into run_forever
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "left" in out
    assert agent_id not in asyncio.run(_online(db_url))
