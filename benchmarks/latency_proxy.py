"""A TCP proxy that delays every byte by a fixed time each way: an S3 farther than loopback.

``python benchmarks/latency_proxy.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_MS`` forwards
each connection to the upstream and holds what it reads, in either direction, for DELAY_MS
before writing it on (order kept, no bandwidth limit), so every request's round trip gains
twice DELAY_MS, as from a web host to S3 in its region (a small object's ``PutObject`` there
answers in some tens of milliseconds). A process of its own, so that its CPU is not counted in
the benchmark's. The kernel's ``netem`` would be the tool, but this machine's kernel has no
``sch_netem``. Prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while data := await reader.read(1 << 16):
            held.put_nowait((time.monotonic() + delay, data))
        held.put_nowait((time.monotonic() + delay, b""))

    async def write() -> None:
        while True:
            due, data = await held.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(port: int, host: str, upstream: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=256)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    listen, up_host, up_port, ms = sys.argv[1:5]
    asyncio.run(main(int(listen), up_host, int(up_port), float(ms) / 1000))
