"""Publisher throughput against a real server: N events to one connected user, published one
request at a time, with 16 requests in flight, and in batches of 100 (one request each).

    python bench_publish.py <switchboard binary> [events=5000]
"""

from __future__ import annotations

import asyncio
import sys
import time

sys.path.insert(0, "tests")
from conftest import ADMIN, Server, free_port, token  # noqa: E402

from switchboard_client import Consumer, Envelope, Publisher  # noqa: E402


async def drain(c: Consumer, n: int) -> None:
    for _ in range(n):
        await asyncio.wait_for(c.__anext__(), 30)


async def main(n: int) -> None:
    server = Server(free_port())
    try:
        async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, token("bench")) as c:
            env = lambda i: Envelope("acme", "notice", {"i": i}, user="bench")  # noqa: E731

            async def one_by_one():
                for i in range(n):
                    await pub.publish(env(i))

            async def in_flight(k: int):
                sem = asyncio.Semaphore(k)

                async def send(i):
                    async with sem:
                        await pub.publish(env(i))

                await asyncio.gather(*(send(i) for i in range(n)))

            async def batched():
                for i in range(0, n, 100):
                    await pub.publish_batch([env(j) for j in range(i, min(n, i + 100))])

            for label, run in [("one request per event", one_by_one), ("16 requests in flight", lambda: in_flight(16)),
                               ("batches of 100", batched)]:
                t = time.perf_counter()
                await asyncio.gather(run(), drain(c, n))
                dt = time.perf_counter() - t
                print(f"| {label} | {n} | {dt:.2f} s | {n / dt:,.0f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    import os
    os.environ["SWITCHBOARD_BIN"] = sys.argv[1]
    asyncio.run(main(int(sys.argv[2]) if len(sys.argv) > 2 else 5000))
