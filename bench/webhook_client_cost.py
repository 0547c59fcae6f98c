"""
The CPU one webhook delivery costs the server's process, by HTTP client:
treq (Twisted's Agent, with a persistent connection pool) against the
deliveries' own client (jsonsync/plugins/webhook_http.py), one request at a
time per connection and pipelined. Each sends N signed POSTs of an event-sized
body to a receiver (bench/webhook_receiver.c for the least noise), at most
IN_FLIGHT at once, and reports the process's CPU time per request.

    cc -O2 -o /tmp/webhook_receiver bench/webhook_receiver.c && /tmp/webhook_receiver 18895 &
    .venv/bin/python bench/webhook_client_cost.py http://127.0.0.1:18895/hook --requests 20000

Why it exists: the webhooks issue (#13) asked for treq; this measures what
that would cost against the 15 % speed goal, so the choice can be revisited
with numbers (a newer treq, Twisted or CPython).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from urllib.parse import urlsplit

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import HTTPConnectionPool

BODY = json.dumps({
    "id": "0" * 36, "action": "update", "resource_name": "record",
    "uri": "/buckets/b/collections/c/records/r0000042", "bucket_id": "b", "collection_id": "c",
    "timestamp": 1765000000000, "data": {"id": "r0000042", "last_modified": 1765000000000,
                                         "title": "x" * 200, "counter": 42, "tags": ["a", "b", "c"]},
    "webhook": "/buckets/b/webhooks/bench",
}).encode()
SECRET = "s" * 32


def headers_of(n: int) -> dict[str, str]:
    """The headers of a delivery, as the worker signs them."""
    from jsonsync.plugins import webhooks

    stamp = str(int(time.time()))
    return {"Content-Type": "application/json", webhooks.EVENT_HEADER: f"{n:036d}", webhooks.TIMESTAMP_HEADER: stamp,
            webhooks.SIGNATURE_HEADER: webhooks.sign(SECRET, stamp, BODY), webhooks.ATTEMPT_HEADER: "1"}


async def run_treq(reactor, url: str, count: int, in_flight: int) -> None:
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    # Its best case: one client and agent for all, connections kept open and reused.
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = in_flight
    client = HTTPClient(Agent(reactor, pool=pool))
    sem = defer.DeferredSemaphore(in_flight)

    async def one(n):
        response = await client.post(url, data=BODY, headers=headers_of(n))
        await response.content()
        if response.code >= 300:
            raise SystemExit(f"the receiver answered {response.code}")

    await defer.gatherResults([sem.run(lambda n=n: defer.ensureDeferred(one(n))) for n in range(count)])
    await pool.closeCachedConnections()


async def run_pool(reactor, url: str, count: int, in_flight: int, depth: int) -> None:
    from jsonsync.plugins.webhook_http import ConnectionPool

    parts = urlsplit(url)
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port)
    key = ("http", parts.hostname, parts.port, parts.netloc)
    pool = ConnectionPool(depth=depth, per_receiver=max(1, in_flight // depth))
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n".encode()

    def request(n):
        h = headers_of(n)
        extra = "".join(f"{k}: {v}\r\n" for k, v in h.items() if k != "Content-Type")
        return head + f"{extra}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY

    sent = 0
    done = defer.Deferred()
    on_way = 0
    failed = []

    def more(result=None, answered=False):
        nonlocal sent, on_way
        if answered:
            on_way -= 1
            if not (isinstance(result, int) and result < 300):
                failed.append(result)  # (a failure, or a status that is no success)
        if sent >= count and on_way == 0 and not done.called:
            done.callback(None)
            return
        take = min(in_flight - on_way, count - sent)
        if take <= 0:
            return
        ds = pool.request_many(key, endpoint.connect, [request(sent + i) for i in range(take)], depth)
        sent += take
        on_way += take
        for d in ds:
            d.addBoth(more, answered=True)

    more()
    await done
    pool.close()
    if failed:
        raise SystemExit(f"{len(failed)} of {count} requests failed, the first: {failed[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--clients", default="treq,pool,pool-pipelined")
    args = parser.parse_args()

    async def all_of(reactor):
        for name in args.clients.split(","):
            for _ in range(2):  # (the second run of each is the one reported: warm)
                before = resource.getrusage(resource.RUSAGE_SELF)
                wall = time.monotonic()
                if name == "treq":
                    await run_treq(reactor, args.url, args.requests, args.in_flight)
                else:
                    depth = 4 if name == "pool-pipelined" else 1
                    await run_pool(reactor, args.url, args.requests, args.in_flight, depth)
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                wall = time.monotonic() - wall
            print(f"{name:15} {args.requests} requests in {wall:.2f} s: "
                  f"{cpu / args.requests * 1e6:.1f} us of CPU per request "
                  f"(user {(after.ru_utime - before.ru_utime) / args.requests * 1e6:.1f})", flush=True)

    task.react(lambda reactor: defer.ensureDeferred(all_of(reactor)))


if __name__ == "__main__":
    main()
