#!/usr/bin/env python3
"""
A tiny, fast webhook receiver for benchmarks: HTTP/1.1 keep-alive on an asyncio protocol,
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
MAX_HEAD = 64 * 1024
counts = {"requests": 0, "bytes": 0}


class Receiver(asyncio.Protocol):
    """
    One connection: requests read from a buffer (pipelined ones too), each
    answered as soon as its body is in. A protocol rather than asyncio's
    streams: the receiver shares the benchmark's machine, and streams cost
    it about twice the CPU per request.
    """

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""
        self.body_left = 0  # bytes of the current request's body still to come

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        answers = 0
        while True:
            if self.body_left:
                take = min(self.body_left, len(buffer))
                self.body_left -= take
                buffer = buffer[take:]
                if self.body_left:
                    break
                answers += 1
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self.transport.close()
                    return
                break
            head, buffer = buffer[:end], buffer[end + 4 :]
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        self.transport.close()
                        return
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            counts["requests"] += 1
            counts["bytes"] += length
            if close:
                self.transport.write(ANSWER * (answers + 1))
                self.transport.close()
                return
            if length:
                self.body_left = length
            else:
                answers += 1
        self.buffer = buffer
        if answers:
            self.transport.write(ANSWER * answers)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18895)
    parser.add_argument("--count-file")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, args.host, args.port, backlog=1024)
    stop = asyncio.Event()
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
