"""
Hostile clients of the accounts plugin, through a real socket: what a
client can make the server spend on bcrypt, who can reach an account, what
another's account id tells, and whether every byte of a password counts.
"""

from __future__ import annotations

import bcrypt
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from jsonsync import jsonutil
from jsonsync.plugins import accounts
from jsonsync.service import make_site
from jsonsync.testclient import basic, build_app

SETTINGS = {
    "includes": "accounts",
    "multiauth.policies": "account basicauth",
    "account_create_principals": "system.Everyone",
    "account_write_principals": "account:admin",
    "account_bcrypt_rounds": "4",
}


class _Served(TestCase):
    async def setUp(self):
        self.app = await build_app(SETTINGS)
        self.addCleanup(lambda: self.app.registry.close())
        self.port = reactor.listenTCP(0, make_site(self.app, self.app.settings), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}/v1"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        [self.policy] = [p for p in self.app.registry.policies if isinstance(p, accounts.AccountPolicy)]

    async def call(self, method, path, body=None, auth=None, headers=None):
        """C{(status, JSON body, response)} of one request."""
        sent = dict(headers or {})
        kwargs = {"headers": sent, "pool": self.pool}
        if auth is not None:
            sent["Authorization"] = basic(*auth)
        if body is not None:
            kwargs["data"] = jsonutil.dumps(body)
            sent["Content-Type"] = "application/json"
        response = await treq.request(method, self.base + path, **kwargs)
        content = await response.content()
        return response.code, (jsonutil.loads(content) if content else None), response

    async def signup(self, account_id, password):
        status, body, _ = await self.call("PUT", f"/accounts/{account_id}", {"data": {"password": password}})
        self.assertEqual(status, 201, body)

    async def user_id(self, user, password):
        status, body, _ = await self.call("GET", "/", auth=(user, password))
        self.assertEqual(status, 200, body)
        return body.get("user", {}).get("id")

    def count_checks(self):
        checks = []
        real = accounts.check_password

        def spy(password, hashed):
            checks.append(hashed)
            return real(password, hashed)

        self.patch(accounts, "check_password", spy)
        return checks


class BcryptCostTests(_Served):
    """Point 3: the bcrypt work an unknown or repeated client can cause is bounded."""

    async def test_unknown_credentials_cost_one_bcrypt_not_one_per_request(self):
        await self.signup("alice", "pw")
        checks = self.count_checks()
        for _ in range(4):
            self.assertNotEqual(await self.user_id("ghost", "guess"), "account:ghost")
            self.assertNotEqual(await self.user_id("alice", "guess"), "account:alice")
        # One for the unknown account, one for the wrong password: the same
        # for both, so that costs do not tell which accounts exist.
        self.assertEqual(len(checks), 2)

    async def test_concurrent_requests_of_one_user_share_one_bcrypt(self):
        await self.signup("alice", "pw")
        checks = self.count_checks()
        calls = [Deferred.fromCoroutine(self.user_id("alice", "pw")) for _ in range(8)]
        self.assertEqual(await gatherResults(calls), ["account:alice"] * 8)
        self.assertEqual(len(checks), 1)

    async def test_no_burst_of_checks_when_the_cache_expires(self):
        await self.signup("alice", "pw")
        clock = Clock()
        self.policy.clock = clock
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        checks = self.count_checks()
        clock.advance(31)  # past account_cache_ttl_seconds
        calls = [Deferred.fromCoroutine(self.user_id("alice", "pw")) for _ in range(8)]
        self.assertEqual(await gatherResults(calls), ["account:alice"] * 8)
        # Served from the expired outcome while one check renews it.
        for job in list(getattr(self.policy, "_running", {}).values()):
            job.append(Deferred())
            await job[-1]
        self.assertEqual(len(checks), 1)

    async def wait_until(self, condition):
        while not condition():
            await deferLater(reactor, 0.01, lambda: None)

    async def test_distinct_credentials_queue_behind_the_limiter(self):
        checks = self.count_checks()
        self.policy.limiter = DeferredSemaphore(1)
        await self.policy.limiter.acquire()  # the one slot, held by the test
        calls = [Deferred.fromCoroutine(self.user_id(f"rnd{i}", "x")) for i in range(3)]
        await self.wait_until(lambda: len(self.policy.limiter.waiting) == 3 or len(checks) == 3)
        self.assertEqual(checks, [])
        self.policy.limiter.release()
        users = await gatherResults(calls)
        self.assertTrue(all(u.startswith("basicauth:") for u in users), users)
        self.assertEqual(len(checks), 3)

    async def test_flood_beyond_the_queue_gets_a_quick_503(self):
        self.policy.limiter = DeferredSemaphore(1)
        await self.policy.limiter.acquire()
        self.policy._slot_seconds = 1.0
        self.policy.max_wait = 2.5
        queued = [Deferred.fromCoroutine(self.user_id(f"rnd{i}", "x")) for i in range(2)]
        await self.wait_until(lambda: len(self.policy.limiter.waiting) == 2 or all(d.called for d in queued))
        status, body, response = await self.call("GET", "/", auth=("rnd-late", "x"))
        self.assertEqual(status, 503, body)
        self.assertEqual(body["errno"], 201)
        self.assertTrue(response.headers.hasHeader("Retry-After"))
        self.policy.limiter.release()
        for d in queued:
            self.assertTrue((await d).startswith("basicauth:"))

    async def test_changed_password_refused_at_once(self):
        await self.signup("alice", "old")
        self.assertEqual(await self.user_id("alice", "old"), "account:alice")
        status, body, _ = await self.call(
            "PATCH", "/accounts/alice", {"data": {"password": "new"}}, auth=("alice", "old")
        )
        self.assertEqual(status, 200, body)
        self.assertNotEqual(await self.user_id("alice", "old"), "account:alice")
        self.assertEqual(await self.user_id("alice", "new"), "account:alice")


class OwnerOnlyTests(_Served):
    """Point 4: an ACE given to others never opens an account."""

    async def setUp(self):
        await super().setUp()
        await self.signup("alice", "a")
        await self.signup("bob", "b")
        await self.signup("admin", "root")
        status, body, _ = await self.call(
            "PATCH",
            "/accounts/alice",
            {"permissions": {"write": ["account:bob", "system.Everyone"], "read": ["system.Everyone"]}},
            auth=("alice", "a"),
        )
        self.assertEqual(status, 200, body)

    async def test_grantee_cannot_read_change_or_delete(self):
        bob = ("bob", "b")
        self.assertEqual((await self.call("GET", "/accounts/alice", auth=bob))[0], 403)
        self.assertEqual((await self.call("HEAD", "/accounts/alice", auth=bob))[0], 403)
        status, _, _ = await self.call("PATCH", "/accounts/alice", {"data": {"password": "x"}}, auth=bob)
        self.assertEqual(status, 403)
        status, _, _ = await self.call("PUT", "/accounts/alice", {"data": {"password": "x"}}, auth=bob)
        self.assertEqual(status, 400)
        self.assertEqual((await self.call("DELETE", "/accounts/alice", auth=bob))[0], 403)
        self.assertEqual(await self.user_id("alice", "a"), "account:alice")

    async def test_grantee_lists_and_deletes_only_own_account(self):
        bob = ("bob", "b")
        status, body, _ = await self.call("GET", "/accounts", auth=bob)
        self.assertEqual(status, 200)
        self.assertEqual([a["id"] for a in body["data"]], ["bob"])
        status, body, _ = await self.call("DELETE", "/accounts", auth=bob)
        self.assertEqual(status, 200)
        self.assertEqual([a["id"] for a in body["data"]], ["bob"])
        self.assertEqual(await self.user_id("alice", "a"), "account:alice")

    async def test_everyone_ace_opens_nothing_to_anonymous(self):
        self.assertEqual((await self.call("GET", "/accounts/alice"))[0], 401)
        self.assertEqual((await self.call("DELETE", "/accounts/alice"))[0], 401)
        status, _, _ = await self.call("PATCH", "/accounts/alice", {"data": {"password": "x"}})
        self.assertEqual(status, 401)
        status, _, _ = await self.call("PUT", "/accounts/alice", {"data": {"password": "x"}})
        self.assertEqual(status, 401)
        self.assertEqual(await self.user_id("alice", "a"), "account:alice")
        self.assertNotEqual(await self.user_id("alice", "x"), "account:alice")

    async def test_authenticated_everyone_cannot_either(self):
        carol = ("carol", "not-an-account")  # a basicauth user
        self.assertEqual((await self.call("GET", "/accounts/alice", auth=carol))[0], 403)
        self.assertEqual((await self.call("DELETE", "/accounts/alice", auth=carol))[0], 403)
        status, body, _ = await self.call("GET", "/accounts", auth=carol)
        self.assertEqual((status, body["data"]), (200, []))

    async def test_owner_and_admin_still_can(self):
        self.assertEqual((await self.call("GET", "/accounts/alice", auth=("alice", "a")))[0], 200)
        admin = ("admin", "root")
        status, body, _ = await self.call("GET", "/accounts", auth=admin)
        self.assertEqual(sorted(a["id"] for a in body["data"]), ["admin", "alice", "bob"])
        self.assertEqual((await self.call("DELETE", "/accounts/alice", auth=admin))[0], 200)


class ExistenceOracleTests(_Served):
    """Point 5: another's account id gets one answer, whether it exists or not."""

    async def test_same_answer_for_existing_and_missing_accounts(self):
        await self.signup("bob", "b")
        await self.signup("carol", "c")
        bob = ("bob", "b")
        requests = [
            ("PUT", "/accounts/{}", {"data": {"password": "x"}}),
            ("PATCH", "/accounts/{}", {"data": {"password": "x"}}),
            ("GET", "/accounts/{}", None),
            ("DELETE", "/accounts/{}", None),
        ]
        for method, path, body in requests:
            existing = await self.call(method, path.format("carol"), body, auth=bob)
            missing = await self.call(method, path.format("nobody"), body, auth=bob)
            self.assertEqual(existing[:2], missing[:2], method)
        for target in ("carol", "nobody"):
            status, body, _ = await self.call(
                "POST", "/accounts", {"data": {"id": target, "password": "x"}}, auth=bob
            )
            self.assertEqual(status, 400, body)
            self.assertEqual(body["message"], "data.id in body: Username and account ID do not match.")
        self.assertEqual(await self.user_id("carol", "c"), "account:carol")
        self.assertNotEqual(await self.user_id("nobody", "x"), "account:nobody")


class PasswordLengthTests(_Served):
    """Point 9: every byte of a password counts; hashes made before keep working."""

    async def test_bytes_past_72_count(self):
        long = "p" * 100
        await self.signup("dave", long)
        self.assertEqual(await self.user_id("dave", long), "account:dave")
        self.assertNotEqual(await self.user_id("dave", long[:72]), "account:dave")
        self.assertNotEqual(await self.user_id("dave", long[:72] + "q" * 28), "account:dave")

    async def test_changed_long_password_too(self):
        await self.signup("dave", "short")
        long = "é" * 60  # 120 bytes
        status, body, _ = await self.call(
            "PATCH", "/accounts/dave", {"data": {"password": long}}, auth=("dave", "short")
        )
        self.assertEqual(status, 200, body)
        self.assertEqual(await self.user_id("dave", long), "account:dave")
        self.assertNotEqual(await self.user_id("dave", "é" * 36), "account:dave")

    async def test_plain_bcrypt_hashes_keep_working(self):
        long = "k" * 100
        stored = {
            "old": bcrypt.hashpw(b"kept", bcrypt.gensalt(4)).decode(),
            # Made by a bcrypt that cut at 72 bytes, as Kinto's did.
            "older": bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4)).decode(),
        }
        registry = self.app.registry
        txn = registry.storage.transaction()
        for account_id, hashed in stored.items():
            await registry.storage.create(txn, "account", "", {"id": account_id, "password": hashed})
            await registry.permissions.replace_object_permissions(
                txn, f"/accounts/{account_id}", {"write": {f"account:{account_id}"}}
            )
        await txn.commit()
        self.assertEqual(await self.user_id("old", "kept"), "account:old")
        self.assertNotEqual(await self.user_id("old", "kept2"), "account:old")
        self.assertEqual(await self.user_id("older", long), "account:older")
        # A new password gets the new kind of hash.
        status, body, _ = await self.call(
            "PATCH", "/accounts/old", {"data": {"password": long}}, auth=("old", "kept")
        )
        self.assertEqual(status, 200, body)
        self.assertNotEqual(await self.user_id("old", long[:72]), "account:old")
        self.assertEqual(await self.user_id("old", long), "account:old")
