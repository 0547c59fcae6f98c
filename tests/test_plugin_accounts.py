"""
The C{accounts} plugin and the C{account} authentication policy, through
HTTP (L{jsonsync.testclient.StubClient}).
"""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jsonsync.config import ConfigurationError
from jsonsync.plugins import accounts
from jsonsync.registry import discover
from jsonsync.testclient import StubClient, build_app
from tests import pg

SETTINGS = {
    "includes": "accounts",
    "multiauth.policies": "account basicauth",
    "account_create_principals": "system.Everyone",
    "account_write_principals": "account:admin",
    "bucket_create_principals": "system.Authenticated",
    "account_bcrypt_rounds": "4",
}


class AccountsTestCase(TestCase):
    settings: dict = SETTINGS
    backend: dict = {}

    async def setUp(self):
        if self.backend:
            # Other runs of this module (a full test run beside this one)
            # share the database: take turns, one test at a time.
            lock = await deferToThread(_pg_lock)
            self.addCleanup(lock.close)
        self.app = await build_app({**self.settings, **self.backend})
        self.addCleanup(lambda: self.app.registry.close())
        if self.backend:
            await self.app.registry.storage.flush()
            await self.app.registry.permissions.flush()
        self.client = StubClient(self.app)

    async def signup(self, account_id, password="secret"):
        r = await self.client.put(f"/v1/accounts/{account_id}", {"data": {"password": password}})
        self.assertEqual(r.status, 201, r)
        return r

    async def user_id(self, account_id, password="secret"):
        r = await self.client.as_user(account_id, password).get("/v1/")
        self.assertEqual(r.status, 200, r)
        return (r.json.get("user") or {}).get("id")

    def policy(self) -> accounts.AccountPolicy:
        [policy] = [p for p in self.app.registry.policies if isinstance(p, accounts.AccountPolicy)]
        return policy

    def count_checks(self):
        """Record every bcrypt check: C{(hash, ran on the main thread)}."""
        calls = []
        real = accounts.check_password

        def spy(password, hashed):
            calls.append((hashed, threading.current_thread() is threading.main_thread()))
            return real(password, hashed)

        self.patch(accounts, "check_password", spy)
        return calls


class DiscoveryTests(AccountsTestCase):
    async def test_plugin_and_policy_are_discovered_by_name(self):
        found = discover()
        self.assertIn("accounts", found.plugins)
        self.assertIn("account", found.policies)
        self.assertIn("account", [p.name for p in self.app.registry.policies])
        self.assertIn("accounts", [p.name for p in self.app.registry.plugins])

    async def test_capability(self):
        r = await self.client.get("/v1/")
        capability = r.json["capabilities"]["accounts"]
        self.assertIs(capability["validation_enabled"], False)
        self.assertEqual(capability["description"], "Manage user accounts.")

    async def test_settings_are_declared(self):
        for name in (
            "account_create_principals",
            "account_write_principals",
            "account_read_principals",
            "account_cache_ttl_seconds",
            "account_bcrypt_rounds",
        ):
            self.assertIn(name, accounts.AccountsPlugin.settings)
        self.assertEqual(accounts.AccountsPlugin.settings["account_cache_ttl_seconds"], 30)
        # The policy declares what it reads, so that it can be listed alone.
        for name in ("account_cache_ttl_seconds", "account_bcrypt_rounds"):
            self.assertIn(name, accounts.AccountPolicyFactory.settings)
        self.assertEqual(self.app.settings["account_write_principals"], ["account:admin"])


class SignupTests(AccountsTestCase):
    async def test_anonymous_put_creates_account_owned_by_itself(self):
        r = await self.signup("alice")
        self.assertEqual(r.data["id"], "alice")
        self.assertNotIn("password", r.data)
        acl = await self.stored_acl("/accounts/alice")
        self.assertEqual(acl, {"write": {"account:alice"}})
        r = await self.client.as_user("alice", "secret").get("/v1/accounts/alice")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["permissions"], {"write": ["account:alice"]})

    async def stored_acl(self, uri):
        registry = self.app.registry
        txn = registry.storage.transaction()
        try:
            return await registry.permissions.get_object_permissions(txn, uri)
        finally:
            await txn.rollback()

    async def test_anonymous_post_creates_account(self):
        r = await self.client.post(
            "/v1/accounts", {"data": {"id": "bob.b+1@example.com", "password": "pw"}}
        )
        self.assertEqual(r.status, 201, r)
        self.assertEqual(
            await self.user_id("bob.b+1@example.com", "pw"), "account:bob.b+1@example.com"
        )

    async def test_post_without_id(self):
        r = await self.client.post("/v1/accounts", {"data": {"password": "pw"}})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json["message"], "data.id in body: Required")

    async def test_anonymous_post_of_existing_id_is_forbidden(self):
        await self.signup("alice")
        r = await self.client.post("/v1/accounts", {"data": {"id": "alice", "password": "other"}})
        self.assertEqual(r.status, 403)
        self.assertEqual(await self.user_id("alice"), "account:alice")

    async def test_password_required(self):
        for data in ({}, {"password": ""}, {"password": 42}):
            r = await self.client.put("/v1/accounts/alice", {"data": data})
            self.assertEqual(r.status, 400, (data, r))
            self.assertEqual(r.json["details"][0]["name"], "data.password")

    async def test_invalid_id(self):
        r = await self.client.put("/v1/accounts/_alice", {"data": {"password": "pw"}})
        self.assertEqual(r.status, 400)
        r = await self.client.post("/v1/accounts", {"data": {"id": "a b", "password": "pw"}})
        self.assertEqual(r.status, 400)

    async def test_anonymous_cannot_replace_existing_account(self):
        await self.signup("alice")
        r = await self.client.put("/v1/accounts/alice", {"data": {"password": "stolen"}})
        self.assertEqual(r.status, 401)
        self.assertEqual(await self.user_id("alice"), "account:alice")

    async def test_no_signup_without_create_principals(self):
        settings = {**SETTINGS, **self.backend, "account_create_principals": ""}
        app = await build_app(settings)
        self.addCleanup(lambda: app.registry.close())
        r = await StubClient(app).put("/v1/accounts/alice", {"data": {"password": "pw"}})
        self.assertEqual(r.status, 401)


class LoginTests(AccountsTestCase):
    async def test_login(self):
        await self.signup("alice", "pw")
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        r = await self.client.as_user("alice", "pw").get("/v1/")
        self.assertIn("system.Authenticated", r.json["user"]["principals"])

    async def test_wrong_password_falls_through_to_next_policy(self):
        await self.signup("alice", "pw")
        user = await self.user_id("alice", "wrong")
        self.assertNotEqual(user, "account:alice")
        self.assertTrue(user.startswith("basicauth:"))

    async def test_long_passwords(self):
        long = "é" * 100
        await self.signup("alice", long)
        self.assertEqual(await self.user_id("alice", long), "account:alice")
        self.assertNotEqual(await self.user_id("alice", "è" + "é" * 99), "account:alice")

    async def test_account_principal_works_in_acls(self):
        await self.signup("alice")
        alice = self.client.as_user("alice", "secret")
        r = await alice.put("/v1/buckets/b")
        self.assertEqual(r.status, 201)
        self.assertEqual(r.json["permissions"]["write"], ["account:alice"])


class AccountOnlyPolicyTests(AccountsTestCase):
    settings = {**SETTINGS, "multiauth.policies": "account"}

    async def test_wrong_password_is_anonymous(self):
        await self.signup("alice", "pw")
        self.assertIsNone(await self.user_id("alice", "nope"))
        self.assertIsNone(await self.user_id("ghost", "pw"))
        r = await self.client.as_user("alice", "nope").get("/v1/accounts/alice")
        self.assertEqual(r.status, 401)


class PasswordChangeTests(AccountsTestCase):
    async def test_put_changes_password(self):
        await self.signup("alice", "old")
        alice = self.client.as_user("alice", "old")
        self.assertEqual(await self.user_id("alice", "old"), "account:alice")
        r = await alice.put("/v1/accounts/alice", {"data": {"password": "new"}})
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(await self.user_id("alice", "old"), "account:alice")
        self.assertEqual(await self.user_id("alice", "new"), "account:alice")

    async def test_patch_changes_password(self):
        await self.signup("alice", "old")
        r = await self.client.as_user("alice", "old").patch(
            "/v1/accounts/alice", {"data": {"password": "new"}}
        )
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(await self.user_id("alice", "old"), "account:alice")
        self.assertEqual(await self.user_id("alice", "new"), "account:alice")

    async def test_patch_without_password_keeps_it(self):
        await self.signup("alice", "pw")
        hashes = []
        real = accounts.hash_password
        self.patch(accounts, "hash_password", lambda *a: hashes.append(a) or real(*a))
        r = await self.client.as_user("alice", "pw").patch(
            "/v1/accounts/alice", {"data": {"name": "Alice"}}
        )
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data["name"], "Alice")
        self.assertEqual(hashes, [])
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")

    async def test_put_with_same_password_rehashes(self):
        await self.signup("alice", "pw")
        before = await self.stored("alice")
        r = await self.client.as_user("alice", "pw").put(
            "/v1/accounts/alice", {"data": {"password": "pw"}}
        )
        self.assertEqual(r.status, 200, r)
        after = await self.stored("alice")
        self.assertNotEqual(before["password"], after["password"])
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")

    async def stored(self, account_id):
        registry = self.app.registry
        txn = registry.storage.transaction()
        try:
            return await registry.storage.get(txn, "account", "", account_id)
        finally:
            await txn.rollback()

    async def test_stored_password_is_a_bcrypt_hash(self):
        await self.signup("alice", "pw")
        stored = await self.stored("alice")
        self.assertTrue(stored["password"].startswith("hmac-sha256:$2b$04$"), stored)
        self.assertTrue(accounts.check_password("pw", stored["password"]))
        self.assertFalse(accounts.check_password("pw2", stored["password"]))

    async def test_cached_login_refused_after_password_change(self):
        await self.signup("alice", "old")
        self.assertEqual(await self.user_id("alice", "old"), "account:alice")
        checks = self.count_checks()
        self.assertEqual(await self.user_id("alice", "old"), "account:alice")
        self.assertEqual(checks, [])  # remembered
        r = await self.client.as_user("alice", "old").patch(
            "/v1/accounts/alice", {"data": {"password": "new"}}
        )
        self.assertEqual(r.status, 200)
        # The remembered check was made against the old hash: it no longer counts.
        self.assertNotEqual(await self.user_id("alice", "old"), "account:alice")
        self.assertEqual(len(checks), 1)

    async def test_password_change_inside_batch(self):
        await self.signup("alice", "old")
        alice = self.client.as_user("alice", "old")
        r = await alice.post(
            "/v1/batch",
            {
                "requests": [
                    {
                        "method": "PATCH",
                        "path": "/accounts/alice",
                        "body": {"data": {"password": "new"}},
                    },
                    {"method": "GET", "path": "/accounts/alice"},
                ]
            },
        )
        self.assertEqual(r.status, 200, r)
        statuses = [resp["status"] for resp in r.json["responses"]]
        self.assertEqual(statuses[0], 200)
        self.assertNotEqual(statuses[1], 200)


class IsolationTests(AccountsTestCase):
    async def setUp(self):
        await super().setUp()
        await self.signup("alice", "a")
        await self.signup("bob", "b")
        self.alice = self.client.as_user("alice", "a")

    async def test_cannot_create_another_account(self):
        r = await self.alice.put("/v1/accounts/carol", {"data": {"password": "c"}})
        self.assertEqual(r.status, 400)
        self.assertEqual(
            r.json["message"], "data.id in body: Username and account ID do not match."
        )
        r = await self.alice.post("/v1/accounts", {"data": {"id": "carol", "password": "c"}})
        self.assertEqual(r.status, 400)
        self.assertNotEqual(await self.user_id("carol", "c"), "account:carol")

    async def test_cannot_touch_another_account(self):
        for method, body in (
            ("PUT", {"data": {"password": "x"}}),
            ("PATCH", {"data": {"password": "x"}}),
            ("DELETE", None),
            ("GET", None),
        ):
            r = await self.alice.request(method, "/v1/accounts/bob", body)
            self.assertIn(r.status, (400, 403), (method, r))
        self.assertEqual(await self.user_id("bob", "b"), "account:bob")
        self.assertNotEqual(await self.user_id("bob", "x"), "account:bob")

    async def test_basicauth_user_cannot_create_accounts(self):
        r = await self.client.as_user("carol", "c").put(
            "/v1/accounts/carol", {"data": {"password": "c"}}
        )
        self.assertEqual(r.status, 400)

    async def test_listing_shows_only_own_account(self):
        r = await self.alice.get("/v1/accounts")
        self.assertEqual(r.status, 200)
        self.assertEqual([a["id"] for a in r.data], ["alice"])

    async def test_anonymous_listing_is_401(self):
        r = await self.client.get("/v1/accounts")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json["message"], "Cannot read accounts.")
        self.assertIn('Basic realm="Realm"', r.headers_all.get("www-authenticate", []))
        r = await self.client.delete("/v1/accounts")
        self.assertEqual(r.status, 401)
        self.assertEqual(await self.user_id("alice", "a"), "account:alice")

    async def test_anonymous_read_is_401(self):
        r = await self.client.get("/v1/accounts/alice")
        self.assertEqual(r.status, 401)

    async def test_password_filters_and_sorting_refused(self):
        for query in (
            "password=x",
            "like_password=$2b*",
            "gt_password=$",
            "_sort=-password",
            "_sort=id,password",
        ):
            r = await self.alice.get(f"/v1/accounts?{query}")
            self.assertEqual(r.status, 400, (query, r))
        r = await self.alice.get("/v1/accounts?_sort=id")
        self.assertEqual(r.status, 200)


class AdminTests(AccountsTestCase):
    async def setUp(self):
        await super().setUp()
        await self.signup("admin", "root")
        await self.signup("alice", "a")
        self.admin = self.client.as_user("admin", "root")

    async def test_admin_creates_accounts_for_others(self):
        r = await self.admin.put("/v1/accounts/bob", {"data": {"password": "b"}})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json["permissions"]["write"], ["account:admin", "account:bob"])
        r = await self.admin.post("/v1/accounts", {"data": {"id": "carol", "password": "c"}})
        self.assertEqual(r.status, 201, r)
        self.assertIn("account:carol", r.json["permissions"]["write"])
        self.assertEqual(await self.user_id("bob", "b"), "account:bob")
        self.assertEqual(await self.user_id("carol", "c"), "account:carol")
        r = await self.client.as_user("carol", "c").get("/v1/accounts/carol")
        self.assertEqual(r.status, 200)

    async def test_admin_changes_any_password(self):
        r = await self.admin.patch("/v1/accounts/alice", {"data": {"password": "reset"}})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(await self.user_id("alice", "reset"), "account:alice")
        self.assertNotEqual(await self.user_id("alice", "a"), "account:alice")

    async def test_admin_reads_lists_and_deletes_any_account(self):
        r = await self.admin.get("/v1/accounts/alice")
        self.assertEqual(r.status, 200)
        r = await self.admin.get("/v1/accounts")
        self.assertEqual(sorted(a["id"] for a in r.data), ["admin", "alice"])
        r = await self.admin.delete("/v1/accounts/alice")
        self.assertEqual(r.status, 200)
        self.assertNotEqual(await self.user_id("alice", "a"), "account:alice")

    async def test_admin_is_only_who_is_in_write_principals(self):
        alice = self.client.as_user("alice", "a")
        r = await alice.patch("/v1/accounts/admin", {"data": {"password": "x"}})
        self.assertEqual(r.status, 403)
        r = await alice.get("/v1/accounts")
        self.assertEqual([a["id"] for a in r.data], ["alice"])


class ReadAdminTests(AccountsTestCase):
    settings = {**SETTINGS, "account_read_principals": "account:auditor"}

    async def test_readers_read_and_list_but_do_not_write(self):
        await self.signup("auditor", "x")
        await self.signup("alice", "a")
        auditor = self.client.as_user("auditor", "x")
        self.assertEqual((await auditor.get("/v1/accounts/alice")).status, 200)
        r = await auditor.get("/v1/accounts")
        self.assertEqual(sorted(a["id"] for a in r.data), ["alice", "auditor"])
        r = await auditor.patch("/v1/accounts/alice", {"data": {"password": "x"}})
        self.assertEqual(r.status, 403)
        self.assertEqual((await auditor.delete("/v1/accounts/alice")).status, 403)
        r = await auditor.delete("/v1/accounts")
        self.assertEqual([a["id"] for a in r.data], ["auditor"])
        self.assertEqual(await self.user_id("alice", "a"), "account:alice")


class DeletionTests(AccountsTestCase):
    async def test_delete_own_account(self):
        await self.signup("alice", "a")
        alice = self.client.as_user("alice", "a")
        self.assertEqual(await self.user_id("alice", "a"), "account:alice")
        r = await alice.delete("/v1/accounts/alice")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data["id"], "alice")
        self.assertIs(r.data["deleted"], True)
        self.assertNotIn("password", r.data)
        self.assertNotEqual(await self.user_id("alice", "a"), "account:alice")
        registry = self.app.registry
        txn = registry.storage.transaction()
        acl = await registry.permissions.get_object_permissions(txn, "/accounts/alice")
        await txn.rollback()
        self.assertEqual(acl, {})
        # The id is free again.
        await self.signup("alice", "again")
        self.assertEqual(await self.user_id("alice", "again"), "account:alice")

    async def test_tombstone_in_listing(self):
        await self.signup("admin", "root")
        await self.signup("alice", "a")
        admin = self.client.as_user("admin", "root")
        await admin.delete("/v1/accounts/alice")
        r = await admin.get("/v1/accounts?_since=0")
        alice = [a for a in r.data if a["id"] == "alice"]
        self.assertEqual(len(alice), 1)
        self.assertIs(alice[0]["deleted"], True)


class HashNeverShownTests(AccountsTestCase):
    async def test_no_response_carries_the_hash(self):
        seen = []
        r = await self.signup("admin", "root")
        seen.append(r)
        alice_signup = await self.client.post(
            "/v1/accounts", {"data": {"id": "alice", "password": "a"}}
        )
        seen.append(alice_signup)
        alice = self.client.as_user("alice", "a")
        admin = self.client.as_user("admin", "root")
        seen.append(await alice.get("/v1/accounts/alice"))
        seen.append(await alice.get("/v1/accounts/alice?_fields=password"))
        seen.append(await alice.get("/v1/accounts"))
        seen.append(await alice.get("/v1/accounts?_fields=password,id"))
        seen.append(await alice.patch("/v1/accounts/alice", {"data": {"x": 1}}))
        seen.append(
            await alice.patch(
                "/v1/accounts/alice", {"data": {"y": 1}}, headers={"Response-Behavior": "diff"}
            )
        )
        seen.append(await admin.post("/v1/accounts", {"data": {"id": "alice", "password": "z"}}))
        seen.append(await admin.put("/v1/accounts/bob", {"data": {"password": "b"}}))
        seen.append(await admin.get("/v1/accounts"))
        seen.append(
            await self.client.as_user("alice", "a").put(
                "/v1/accounts/alice", {"data": {"password": "n"}}
            )
        )
        seen.append(await admin.delete("/v1/accounts"))
        self.assertEqual(
            [r.status for r in seen],
            [201, 201, 200, 200, 200, 200, 200, 200, 200, 201, 200, 200, 200],
        )
        for r in seen:
            self.assertNotIn(b"$2b$", r.raw, r)
            self.assertNotIn(b"password", r.raw, r)


class ThreadTests(AccountsTestCase):
    async def test_bcrypt_runs_off_the_reactor_thread(self):
        hashed_on = []
        real_hash = accounts.hash_password

        def spy_hash(password, rounds):
            hashed_on.append(threading.current_thread() is threading.main_thread())
            return real_hash(password, rounds)

        self.patch(accounts, "hash_password", spy_hash)
        checks = self.count_checks()
        await self.signup("alice", "pw")
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertNotEqual(await self.user_id("alice", "bad"), "account:alice")
        await self.client.as_user("alice", "pw").patch(
            "/v1/accounts/alice", {"data": {"password": "new"}}
        )
        self.assertEqual(hashed_on, [False, False])
        self.assertEqual(len(checks), 2)
        self.assertEqual([main for _, main in checks], [False, False])


class TimingTests(AccountsTestCase):
    async def test_unknown_account_costs_one_bcrypt_check(self):
        checks = self.count_checks()
        user = await self.user_id("ghost", "pw")
        self.assertNotEqual(user, "account:ghost")
        self.assertEqual(len(checks), 1)
        dummy, on_main = checks[0]
        self.assertFalse(on_main)
        # A real hash of the accounts' cost, so the check takes as long.
        self.assertTrue(dummy.startswith("hmac-sha256:$2b$04$"), dummy)

    async def test_dummy_hash_made_at_start(self):
        self.assertIsNotNone(self.policy()._dummy)

    async def test_known_and_unknown_accounts_cost_the_same_checks(self):
        await self.signup("alice", "pw")
        checks = self.count_checks()
        await self.user_id("alice", "wrong")
        await self.user_id("nobody", "wrong")
        self.assertEqual(len(checks), 2)
        self.assertEqual(checks[0][0][:19], checks[1][0][:19])  # scheme and cost

    async def test_invalid_account_id_is_not_looked_up(self):
        checks = self.count_checks()
        await self.user_id("not valid!", "pw")
        self.assertEqual(checks, [])


class CacheTests(AccountsTestCase):
    async def settle(self):
        """Wait for the policy's background checks."""
        waiters = []
        for job in self.policy()._running.values():
            waiters.append(Deferred())
            job.append(waiters[-1])
        for waiter in waiters:
            await waiter

    async def test_successful_check_is_cached_for_ttl(self):
        await self.signup("alice", "pw")
        clock = Clock()
        self.policy().clock = clock
        checks = self.count_checks()
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(len(checks), 1)
        clock.advance(29)
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(len(checks), 1)
        # Expired: still served, while one check renews it in the background.
        clock.advance(2)
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        await self.settle()
        self.assertEqual(len(checks), 2)
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(len(checks), 2)
        # Unused for another ttl beyond its expiry: forgotten.
        clock.advance(61)
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(len(checks), 3)

    async def test_failed_checks_are_cached_too(self):
        await self.signup("alice", "pw")
        checks = self.count_checks()
        for _ in range(3):
            self.assertNotEqual(await self.user_id("alice", "bad"), "account:alice")
            self.assertNotEqual(await self.user_id("ghost", "bad"), "account:ghost")
        self.assertEqual(len(checks), 2)
        # A failure says nothing of another password.
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(len(checks), 3)

    async def test_concurrent_checks_share_one_bcrypt(self):
        await self.signup("alice", "pw")
        checks = self.count_checks()
        alice = self.client.as_user("alice", "pw")
        ghost = self.client.as_user("ghost", "pw")
        results = await gatherResults(
            [Deferred.fromCoroutine(c.get("/v1/")) for c in [alice] * 5 + [ghost] * 5]
        )
        users = [r.json.get("user", {}).get("id") for r in results]
        self.assertEqual(users[:5], ["account:alice"] * 5)
        self.assertNotIn("account:ghost", users[5:])
        self.assertEqual(len(checks), 2, checks)

    async def test_limiter_bounds_concurrent_bcrypt(self):
        policy = self.policy()
        policy.limiter = DeferredSemaphore(1)
        running = []
        most = []
        real = accounts.check_password

        def spy(password, hashed):
            running.append(1)
            most.append(len(running))
            try:
                return real(password, hashed)
            finally:
                running.pop()

        self.patch(accounts, "check_password", spy)
        clients = [self.client.as_user(f"user{i}", "pw") for i in range(6)]
        results = await gatherResults([Deferred.fromCoroutine(c.get("/v1/")) for c in clients])
        self.assertEqual([r.status for r in results], [200] * 6)
        self.assertEqual(len(most), 6)
        self.assertEqual(max(most), 1)

    async def test_overloaded_checks_answer_503(self):
        policy = self.policy()
        policy.limiter = DeferredSemaphore(1)
        await policy.limiter.acquire()  # the one slot is taken
        policy._slot_seconds = 1.0
        policy.max_wait = 2.5
        first = Deferred.fromCoroutine(self.client.as_user("u1", "pw").get("/v1/"))
        second = Deferred.fromCoroutine(self.client.as_user("u2", "pw").get("/v1/"))
        # (Their account look-ups take a round trip on PostgreSQL.)
        while len(policy.limiter.waiting) < 2 and not (first.called and second.called):
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(policy.limiter.waiting), 2)
        r = await self.client.as_user("u3", "pw").get("/v1/")
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json["errno"], 201)
        self.assertIsNotNone(r.header("Retry-After"))
        # Credentials already being checked just wait for that check.
        third = Deferred.fromCoroutine(self.client.as_user("u1", "pw").get("/v1/"))
        policy.limiter.release()
        for d in (first, second, third):
            self.assertEqual((await d).status, 200)

    async def test_cache_never_accepts_another_password(self):
        await self.signup("alice", "pw")
        checks = self.count_checks()
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertNotEqual(await self.user_id("alice", "pw2"), "account:alice")
        self.assertEqual(len(checks), 2)

    async def test_cache_holds_no_clear_password(self):
        await self.signup("alice", "pw-in-clear")
        await self.user_id("alice", "pw-in-clear")
        self.assertEqual(len(self.policy()._cache), 1)
        self.assertNotIn("pw-in-clear", repr(self.policy()._cache))
        self.assertNotIn(b"pw-in-clear", b"".join(self.policy()._cache))

    async def test_update_without_new_password_keeps_the_check(self):
        await self.signup("alice", "pw")
        await self.user_id("alice", "pw")
        checks = self.count_checks()
        await self.client.as_user("alice", "pw").patch("/v1/accounts/alice", {"data": {"age": 3}})
        self.assertEqual(await self.user_id("alice", "pw"), "account:alice")
        self.assertEqual(checks, [])

    async def test_deleted_account_misses_the_cache(self):
        await self.signup("alice", "pw")
        await self.user_id("alice", "pw")
        r = await self.client.as_user("alice", "pw").delete("/v1/accounts/alice")
        self.assertEqual(r.status, 200)
        self.assertNotEqual(await self.user_id("alice", "pw"), "account:alice")


class CacheDisabledTests(AccountsTestCase):
    settings = {**SETTINGS, "account_cache_ttl_seconds": "0"}

    async def test_every_request_checks(self):
        await self.signup("alice", "pw")
        checks = self.count_checks()
        await self.user_id("alice", "pw")
        await self.user_id("alice", "pw")
        self.assertEqual(len(checks), 2)


class ConfigurationTests(TestCase):
    async def assert_refused(self, changes, fragment):
        with self.assertRaises(ConfigurationError) as caught:
            app = await build_app({**SETTINGS, **changes})
            await app.registry.close()
        self.assertIn(fragment, str(caught.exception))

    async def test_creators_must_be_admins(self):
        await self.assert_refused(
            {"account_create_principals": "system.Everyone account:boss"}, "account:boss"
        )

    async def test_account_policy_required(self):
        await self.assert_refused({"multiauth.policies": "basicauth"}, "multiauth.policies")

    async def test_basicauth_not_before_account(self):
        await self.assert_refused({"multiauth.policies": "basicauth account"}, "basicauth")

    async def test_bcrypt_rounds_range(self):
        await self.assert_refused({"account_bcrypt_rounds": "3"}, "account_bcrypt_rounds")

    async def test_admin_creators_accepted(self):
        app = await build_app({**SETTINGS, "account_create_principals": "account:admin"})
        self.addCleanup(lambda: app.registry.close())
        r = await StubClient(app).put("/v1/accounts/alice", {"data": {"password": "pw"}})
        self.assertEqual(r.status, 401)


# The same behaviour on PostgreSQL, in a database of its own so that test
# runs of other modules cannot flush it under our feet.
def _pg_lock():
    """A connection holding the session lock of this module's database (blocking)."""
    import psycopg2

    conn = psycopg2.connect(pg.ACCOUNTS_URL, connect_timeout=3)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s, %s)", _LOCK_KEY)
    return conn


# Two-integer key: that space never meets the per-list locks of the backend
# (bigint keys), and differs from its schema lock.
_LOCK_KEY = (0x6A73, 0x6163)
_PG = {"storage_backend": "postgresql", "permission_backend": "postgresql", "storage_url": pg.ACCOUNTS_URL}
_PG_SKIP = pg.prepare_accounts_database()

for _case in (
    SignupTests,
    LoginTests,
    PasswordChangeTests,
    IsolationTests,
    AdminTests,
    DeletionTests,
    HashNeverShownTests,
    TimingTests,
    CacheTests,
):
    _name = _case.__name__ + "OnPostgreSQL"
    globals()[_name] = type(_name, (_case,), {"backend": _PG, "skip": _PG_SKIP})
del _case, _name


class CrossProcessTests(AccountsTestCase):
    """Two servers on one database: a remembered check never outlives a password change."""

    backend = _PG
    skip = _PG_SKIP

    async def test_password_changed_by_another_server(self):
        other = await build_app({**self.settings, **self.backend})
        self.addCleanup(lambda: other.registry.close())
        await self.signup("alice", "old")
        self.assertEqual(await self.user_id("alice", "old"), "account:alice")
        r = await StubClient(other).as_user("alice", "old").patch(
            "/v1/accounts/alice", {"data": {"password": "new"}}
        )
        self.assertEqual(r.status, 200, r)
        self.assertNotEqual(await self.user_id("alice", "old"), "account:alice")
        self.assertEqual(await self.user_id("alice", "new"), "account:alice")
