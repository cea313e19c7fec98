"""Every example runs to completion against a fresh database and prints what it promises."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "ping_pong.py": "ping 4 -> {'pong': 4}",
    "worker_pool.py": "dead letters: [({'job': 13}, 'ValueError: job 13 always fails')]",
    "leader_election.py": "terms: [",
    "chat_room.py": "alice reads: bob: hi everyone",
    "typed_messages.py": "warehouse ships 1 x gadget for order 2",
    "fenced_resource.py": "worker-1's late write with token",
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs(example: str, db_url: str) -> None:
    """The example exits 0 and prints its expected line."""
    result = subprocess.run([sys.executable, str(EXAMPLES / example), "--url", db_url],
                            capture_output=True, text=True, timeout=90, cwd=EXAMPLES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert EXPECTED[example] in result.stdout, result.stdout


def test_service_runs_until_a_signal(db_url: str) -> None:
    """examples/service.py: `serve` runs until SIGTERM (then exits 0, no traceback); `ask` reaches it
    through its queue and by request."""
    serve = subprocess.Popen([sys.executable, str(EXAMPLES / "service.py"), "serve", "--url", db_url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=EXAMPLES)
    try:
        assert serve.stdout is not None
        assert serve.stdout.readline().startswith("ready: service-")
        ask = subprocess.run([sys.executable, str(EXAMPLES / "service.py"), "ask", "hi there", "--url", db_url],
                             capture_output=True, text=True, timeout=60, cwd=EXAMPLES)
        assert ask.returncode == 0, ask.stderr[-3000:]
        assert "reply: {'echo': 'hi there'}" in ask.stdout
        assert serve.stdout.readline().strip() == "task: hi there"
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=30)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0 and "Traceback" not in err, err
    assert out.strip().endswith("stopped")
