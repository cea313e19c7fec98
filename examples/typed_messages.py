"""Typed messages with msgspec: the subscriber declares the payload type; payloads are validated
and decoded, and one that does not fit goes to the dead letters with the reason.

    python examples/typed_messages.py [--url postgresql://...]
"""

from __future__ import annotations

import anyio
import msgspec
from _common import parse_url

import agent_runtime
from agent_runtime import AgentRuntime

CHANNEL = "examples.orders"


class Order(msgspec.Struct):
    order_id: int
    item: str
    quantity: int = 1


async def main(url: str | None) -> None:
    async with AgentRuntime("shop", url=url) as shop, AgentRuntime("warehouse", url=url) as warehouse:
        await shop.channel(CHANNEL, "queue", max_attempts=3)
        async with warehouse.subscribe(CHANNEL, type=Order) as orders:
            await shop.publish(CHANNEL, Order(order_id=1, item="widget", quantity=3))  # Structs encode as-is
            await shop.publish(CHANNEL, {"order_id": "not a number", "item": 5})  # will not decode
            await shop.publish(CHANNEL, Order(order_id=2, item="gadget"))
            seen = 0
            with anyio.fail_after(10):
                async for msg in orders:
                    order: Order = msg.payload
                    print(f"warehouse ships {order.quantity} x {order.item} for order {order.order_id}")
                    await msg.ack()
                    seen += 1
                    if seen == 2:
                        break
        for dead in await shop.dead_letters(CHANNEL):
            print(f"dead letter {dead.id}: {dead.reason}")


if __name__ == "__main__":
    agent_runtime.run(main, parse_url(__doc__ or ""))  # Ctrl-C / SIGTERM: an orderly exit
