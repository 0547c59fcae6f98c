"""
Review of issues 15 and 17 (h/review2): hostile requests that still get a
500, a 503 "retry later", or no answer at all. Each test sends the request
through a real socket and fails on main as merged at 29c61d5.
"""

from __future__ import annotations

import json

import treq

from jsonsync.testclient import basic, with_postgresql_variants
from tests.test_hostile_http import _Served as _RawServed
from tests.test_hostile_http import parse_responses
from tests.test_hostile_querying import RECS, q
from tests.test_hostile_querying import _Served as _QueryServed

# Python refuses int() of a decimal string over 4,300 digits (ValueError).
HUGE = "1" * 5000


class HugeIntegerTests(_QueryServed):
    """A timestamp or ETag over 4,300 digits: 400, not 500."""

    async def test_timestamp_parameters(self):
        for name in ("_since", "_before", "_to", "gt_last_modified", "last_modified",
                     "in_last_modified", "exclude_last_modified"):
            self.assertInvalid(await self.call("GET", f"{RECS}?{name}={HUGE}"), "querystring", name)

    async def test_timestamp_parameter_in_a_batch(self):
        self.assertInvalid(await self.batch(f"{RECS}?_since={HUGE}"), "querystring", "_since")

    async def test_preconditions(self):
        # Expected: 400 errno 107 on the header, as for any malformed If-Match.
        for header in ("If-Match", "If-None-Match"):
            response = await treq.get(
                (self.base + RECS).encode(), pool=self.pool,
                headers={"Authorization": basic("alice", "secret"), header: f'"{HUGE}"'},
            )
            body = json.loads(await response.content())
            self.assertEqual((response.code, body["errno"]), (400, 107), (header, body))


class LongFieldPathTests(_QueryServed):
    """
    A field path of 5,000 dotted parts: PostgreSQL answered 503 errno 201
    ("retry later") for a request that can never succeed; memory 200.
    Expected: the same answer on both backends (a documented limit, 400).
    """

    path = ".".join(["a"] * 5000)

    async def test_sort(self):
        status, body = await self.call("GET", f"{RECS}?_sort={q(self.path)}")
        self.assertNotEqual(status, 503, body)
        self.assertLess(status, 500, body)

    async def test_filter(self):
        for name in (self.path, "has_" + self.path, "gt_" + self.path):
            status, body = await self.call("GET", f"{RECS}?{q(name)}=1")
            self.assertLess(status, 500, (name[:20], body))


class HugeContentLengthTests(_RawServed):
    """
    Content-Length with over 4,300 digits (even "000…02", which is 2):
    twisted.web's int() raises inside the parser, the connection is dropped
    without an answer and an "Unhandled Error" traceback is logged.
    """

    async def test_answered_in_json(self):
        for value in (b"1" * 5000, b"0" * 5000 + b"2"):
            client = await self.send(b"PUT /v1/buckets/b HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                     + value + b"\r\n\r\n{}")
            data = await client.until_closed()
            answers = parse_responses(data)
            self.assertEqual(len(answers), 1, data[:200])
            status, headers, body = answers[0]
            self.assertIn(status, (400, 413), body)
            self.assertEqual(headers.get("content-type"), "application/json")
        self.flushLoggedErrors(ValueError)


with_postgresql_variants(globals())


from twisted.trial.unittest import TestCase  # noqa: E402

from tests.test_operators_proxy import ProxyTests as _ProxyBase  # noqa: E402


class ForgedForwardedBehindNginxTests(TestCase):
    """
    Behind contrib/nginx.conf (which sets X-Forwarded-For/-Proto/-Host and
    passes the client's own Forwarded header along untouched), a client's
    Forwarded header wins over the proxy's X-Forwarded-*: the client picks
    the address in the logs and the scheme and host of every URL written.
    Its proto/host are also read from the element nearest the client (the
    forgeable one) even when a proxy appends its own element.
    """

    serve, call, urls = _ProxyBase.serve, _ProxyBase.call, _ProxyBase.urls

    async def test_client_forwarded_header_is_not_believed(self):
        await self.serve("127.0.0.1")
        headers = {
            # What nginx sends on: its own X-Forwarded-*, the client's Forwarded.
            "X-Forwarded-For": "198.51.100.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "sync.example.org",
            "Forwarded": "for=203.0.113.7;host=evil.example;proto=http",
        }
        hello, next_page, location = await self.urls(headers)
        self.assertNotIn("evil.example", hello)
        self.assertNotIn("evil.example", next_page)
        self.assertNotIn("evil.example", location)
        self.assertNotIn("203.0.113.7", self.clients)

    async def test_appending_proxy_host_comes_from_its_own_element(self):
        await self.serve("127.0.0.1", family="forwarded")
        # A proxy that appends to Forwarded (RFC 7239): the client's forged
        # element first, the proxy's own last.
        headers = {"Forwarded": 'for=203.0.113.7;host=evil.example;proto=http, '
                                'for=198.51.100.9;host=sync.example.org;proto=https'}
        hello, _, _ = await self.urls(headers)
        self.assertEqual(hello, "https://sync.example.org/v1/")


from twisted.internet.defer import Deferred, DeferredSemaphore  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from tests.test_hostile_accounts import BcryptCostTests as _Bcrypt  # noqa: E402
from tests.test_hostile_accounts import _Served as _AccountsServed  # noqa: E402


class RenewalFloodTests(_AccountsServed):
    """
    Background renewals skip the 503 admission (AccountPolicy._renew): a
    client that got N wrong or unknown credentials remembered (each admitted
    once, at the limiter's pace) and touches them after their ttl queues N
    renewals for free. Seen on a real twist jsonsync (rounds 12, ttl 3 s,
    40 remembered unknown credentials touched once a second): every new
    login answered 503 for as long as the touching went on, and a user
    logged in before waited up to 7.8 s every ~10 s.
    Expected: renewing a failed outcome never shuts out a new login (e.g.
    renew only successful outcomes, or renew only when the queue is empty).
    """

    wait_until = _Bcrypt.wait_until

    async def test_touching_remembered_failures_does_not_shut_out_new_logins(self):
        await self.signup("bob", "bobpw")
        clock = Clock()
        self.policy.clock = clock
        flood = [(f"rnd{i}", "x") for i in range(20)]
        for user, password in flood:  # each admitted and checked once
            self.assertNotEqual(await self.user_id(user, password), f"account:{user}")
        clock.advance(31)  # past the ttl: fresh no more, still remembered
        self.policy.limiter = DeferredSemaphore(1)
        await self.policy.limiter.acquire()  # bcrypt busy (the test holds the slot)
        self.policy._slot_seconds = 0.3  # what one bcrypt of 12 rounds takes
        for user, password in flood:  # answered from memory, each queues a renewal
            self.assertNotEqual(await self.user_id(user, password), f"account:{user}")
        # bob logs in for the first time: on main, 503 at once (20 renewals queued).
        login = Deferred.fromCoroutine(self.call("GET", "/", auth=("bob", "bobpw")))
        queued = len(self.policy.limiter.waiting)
        await self.wait_until(lambda: login.called or len(self.policy.limiter.waiting) > queued)
        self.policy.limiter.release()
        status, body, _ = await login
        self.assertEqual(status, 200, body)
        self.assertEqual(body["user"]["id"], "account:bob")
