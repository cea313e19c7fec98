"""Fencing on the resource's side: the resource stores the token of the last write it accepted and
refuses a lower one (compare-and-set). This works wherever the resource lives (another database, a
storage service, an API) because the check and the write are one operation there: no fencing
transaction in the runtime's database is needed.

Two workers share a document. The first leads, then stalls (as after a long GC pause or a
partition) while its lease runs out and the second takes over and writes; when the first wakes
up and writes with its older token, the document refuses it.

    python examples/fenced_resource.py [--url postgresql://...]
"""

from __future__ import annotations

import anyio
import asyncpg
from _common import parse_url

import agent_runtime
from agent_runtime import AgentRuntime
from agent_runtime.local import embedded

# The compare-and-set: the write happens only if no write with a newer token has been accepted.
WRITE = """
update examples_documents set body = $2, fence_token = $3
where id = $1 and fence_token <= $3
"""


async def write(doc: asyncpg.Connection, body: str, token: int) -> bool:
    return await doc.execute(WRITE, "plan", body, token) == "UPDATE 1"


async def main(url: str | None) -> None:
    url = url or (await anyio.to_thread.run_sync(embedded.ensure_running)).url()
    doc = await asyncpg.connect(url)  # stands for any store that can compare and set
    try:
        await doc.execute("create table if not exists examples_documents "
                          "(id text primary key, body text not null, fence_token bigint not null)")
        await doc.execute("insert into examples_documents values ('plan', '', 0) "
                          "on conflict (id) do update set body = '', fence_token = 0")
        async with AgentRuntime("worker-1", url=url) as one, AgentRuntime("worker-2", url=url) as two:
            async with one.lock("examples.document", ttl=1) as first:
                assert await write(doc, "draft by worker-1", first.token)
            stale_token = first.token  # worker-1 stalls here, still believing it leads
            async with two.lock("examples.document", ttl=5, wait=5) as second:
                assert await write(doc, "final by worker-2", second.token)
            accepted = await write(doc, "late draft by worker-1", stale_token)
            print(f"worker-1's late write with token {stale_token}: {'accepted' if accepted else 'refused'}")
            body, token = await doc.fetchrow("select body, fence_token from examples_documents where id = 'plan'")
            print(f"document: {body!r} (token {token})")
            assert not accepted and token == second.token
    finally:
        await doc.close()


if __name__ == "__main__":
    agent_runtime.run(main, parse_url(__doc__ or ""))  # Ctrl-C / SIGTERM: an orderly exit
