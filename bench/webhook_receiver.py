#!/usr/bin/env python3
"""
A tiny, fast webhook receiver for benchmarks: HTTP/1.1 keep-alive on asyncio,
answers 204 to every POST without parsing the body, counts what it received.

    python3 bench/webhook_receiver.py --port 18895 [--count-file /tmp/hooks.count]

Prints (and writes to --count-file, every second) "<requests> <bytes>". Stop it with
SIGTERM or Ctrl-C. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
counts = {"requests": 0, "bytes": 0}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            counts["requests"] += 1
            counts["bytes"] += length
            writer.write(ANSWER)
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18895)
    parser.add_argument("--count-file")
    args = parser.parse_args()
    server = await asyncio.start_server(serve, args.host, args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def report():
        while True:
            await asyncio.sleep(1)
            if args.count_file:
                with open(args.count_file, "w") as f:
                    f.write(f"{counts['requests']} {counts['bytes']}\n")

    reporter = asyncio.ensure_future(report())
    print(f"webhook receiver on http://{args.host}:{args.port}/", flush=True)
    async with server:
        await stop.wait()
    reporter.cancel()
    print(f"{counts['requests']} {counts['bytes']}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
