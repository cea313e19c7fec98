"""A first two-process agent: a long-running service, and a client that talks to it.

    python examples/service.py serve [--url postgresql://...]   # runs until Ctrl-C or SIGTERM
    python examples/service.py ask TEXT [--url ...]             # in another terminal

The service handles a queue channel (each message once, by one consumer) and answers requests;
``await rt.run_forever()`` keeps it serving until a signal, then the ``async with`` leaves in order
(in-flight handlers finish, the agent is marked offline) without a traceback.
"""

from __future__ import annotations

import argparse

import agent_runtime
from agent_runtime import AgentRuntime, Message

QUEUE = "examples.service.tasks"


async def serve(url: str | None) -> None:
    async with AgentRuntime("service", capabilities=["echo"], url=url) as rt:
        await rt.channel(QUEUE, "queue")  # create it before anyone publishes: queues keep what arrives

        @rt.on(QUEUE, kind="queue")
        async def task(msg: Message[dict[str, str]]) -> None:
            print(f"task: {msg.payload['text']}", flush=True)  # acked when this returns

        @rt.on_request
        async def echo(msg: Message[dict[str, str]]) -> dict[str, str]:
            return {"echo": msg.payload["text"]}

        print(f"ready: {rt.agent_id} (Ctrl-C to stop)", flush=True)
        await rt.run_forever()
    print("stopped", flush=True)


async def ask(url: str | None, text: str) -> None:
    async with AgentRuntime("client", url=url, janitor=False) as rt:
        services = await rt.agents(capability="echo")
        if not services:
            raise SystemExit("no service is running: start `python examples/service.py serve` first")
        await rt.publish(QUEUE, {"text": text})
        reply = await rt.request(services[0].id, {"text": text}, timeout=10)
        print(f"reply: {reply}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["serve", "ask"])
    parser.add_argument("text", nargs="?", default="hello")
    parser.add_argument("--url", help="postgresql://... (default: AGENT_RUNTIME_URL or the embedded database)")
    args = parser.parse_args()
    if args.role == "serve":
        agent_runtime.run(serve, args.url)
    else:
        agent_runtime.run(ask, args.url, args.text)


if __name__ == "__main__":
    main()
