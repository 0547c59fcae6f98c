"""
The C{tokens} plugin and policy: creation and its refusals, the permission
matrix (no token ever does more than its scopes and its creator's current
permissions both allow), lists, expiry, revocation with descendants,
delegation, last_used, /batch and /permissions, kinto-http over a real
socket, and two `twist jsonsync` processes on one PostgreSQL database.
"""

from __future__ import annotations

import itertools
import time

from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from jsonsync.testclient import ClientTestCase, StubClient, basicauth_id, with_postgresql_variants
from tests.pg import SKIP, scratch_url
from tests.test_postgresql_processes import ServerProcesses, _Client
from tests.test_smoke_network import _ServerTest

SETTINGS = {"includes": "tokens", "multiauth.policies": "tokens basicauth"}
ALICE, BOB, CAROL = basicauth_id("alice"), basicauth_id("bob"), basicauth_id("carol")
B = "/v1/buckets/b"
C = B + "/collections/c"
G = B + "/groups/g"
R = C + "/records/r"


async def sleep(seconds):
    await deferLater(reactor, seconds, lambda: None)


class _Base(ClientTestCase):
    settings = SETTINGS

    async def token(self, client, scopes, status=201, **extra):
        body = {"data": {"name": "t", "scopes": [{"path": p, "level": lv} for p, lv in scopes], **extra}}
        r = await client.post("/v1/tokens", body)
        self.assertEqual(r.status, status, r)
        return r.json["data"] if status == 201 else r.json

    async def stored(self, token_id):
        storage = self.app.registry.storage
        txn = storage.transaction()
        try:
            return await storage.get(txn, "token", "", token_id)
        finally:
            await txn.rollback()

    def bearer(self, secret):
        return StubClient(self.app, "Bearer " + secret)

    async def seed(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": [BOB]}}))
        # (Explicit permissions: a PUT resets the whole ACL.)
        await self.ok(self.alice.put(C, {"permissions": {}}))
        await self.ok(self.alice.put(G, {"data": {"members": []}, "permissions": {}}))
        await self.ok(self.alice.put(R, {"data": {"v": 1}, "permissions": {}}))


class CreationTests(_Base):
    async def test_secret_shown_once_hash_never(self):
        made = await self.token(self.alice, [(B, "read")])
        self.assertRegex(made["secret"], r"^jst_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")
        self.assertNotIn("hash", made)
        shown = (await self.alice.get(f"/v1/tokens/{made['id']}")).json["data"]
        self.assertNotIn("secret", shown)
        self.assertNotIn("hash", shown)
        self.assertEqual(shown["scopes"], [{"path": "/buckets/b", "level": "read"}])
        listed = (await self.alice.get("/v1/tokens")).json["data"]
        self.assertEqual([t["id"] for t in listed], [made["id"]])
        self.assertTrue(all("hash" not in t and "secret" not in t for t in listed))
        stored = await self.stored(made["id"])
        self.assertNotIn(made["secret"], repr(stored))
        # Others see nothing of it.
        self.assertEqual((await self.bob.get("/v1/tokens")).json["data"], [])
        self.assertEqual((await self.bob.get(f"/v1/tokens/{made['id']}")).status, 404)

    async def test_bad_bodies_are_400_never_500(self):
        now = int(time.time() * 1000)
        bad = [
            None, [], {"data": []}, {"data": {}}, {"data": {"name": "t"}},
            {"data": {"name": "", "scopes": [{"path": B, "level": "read"}]}},
            {"data": {"name": 3, "scopes": [{"path": B, "level": "read"}]}},
            {"data": {"name": "t", "scopes": []}},
            {"data": {"name": "t", "scopes": "all"}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "admin"}]}},
            {"data": {"name": "t", "scopes": [{"path": B}]}},
            {"data": {"name": "t", "scopes": [{"path": "/accounts/alice", "level": "read"}]}},
            {"data": {"name": "t", "scopes": [{"path": "/buckets/b/x/y", "level": "read"}]}},
            {"data": {"name": "t", "scopes": [{"path": "/buckets/b%20", "level": "read"}]}},
            {"data": {"name": "t", "scopes": [{"path": 7, "level": "read"}]}},
            {"data": {"name": "t", "scopes": [{"path": R, "level": "create-only"}]}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read", "x": 1}]}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read"}], "expires_at": now - 1000}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read"}], "expires_at": "tomorrow"}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read"}], "expires_in": -5}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read"}], "expires_in": True}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read"}], "expires_in": 5, "expires_at": now + 9999}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read"}], "owner": "me"}},
            {"data": {"name": "t", "scopes": [{"path": B, "level": "read"}]}, "permissions": {}},
        ]
        for body in bad:
            r = await self.alice.post("/v1/tokens", body)
            self.assertEqual(r.status, 400, (body, r))
            self.assertEqual(r.json["errno"], 107, r)
            self.assertIn("details", r.json)
        r = await self.alice.post("/v1/tokens", raw=b"{nope", headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 400)
        r = await self.alice.post("/v1/tokens", {"data": {"name": "t", "scopes": [{"path": B + "/", "level": "read"}]}})
        self.assertEqual(r.json["data"]["scopes"][0]["path"], "/buckets/b")

    async def test_anonymous_gets_401(self):
        for method in ("GET", "POST"):
            r = await self.anon.request(method, "/v1/tokens", {"data": {}} if method == "POST" else None)
            self.assertEqual(r.status, 401)
        self.assertEqual((await self.anon.get("/v1/tokens/0123456789abcdef")).status, 401)
        self.assertEqual((await self.alice.get("/v1/tokens/nope")).status, 404)
        self.assertEqual((await self.alice.put("/v1/tokens/x", {})).status, 405)

    async def test_malformed_bearer_headers(self):
        await self.seed()
        for header in ("Bearer jst_", "Bearer jst_zz", "Bearer jst_0123456789abcdef_short",
                       "Bearer jst_0123456789abcdef_" + "A" * 43, "bearer  jst_\x7f"):
            r = await self.anon.get(B, headers={"Authorization": header})
            self.assertEqual(r.status, 401, (header, r))
            self.assertEqual(r.json["errno"], 104)
        made = await self.token(self.alice, [(B, "read")])
        forged = made["secret"][:-1] + ("A" if made["secret"][-1] != "A" else "B")
        r = await self.anon.get(B, headers={"Authorization": "Bearer " + forged})
        self.assertEqual(r.status, 401)
        # Someone else's Bearer scheme is left to other policies: anonymous here.
        r = await self.anon.get("/v1/", headers={"Authorization": "Bearer other-token"})
        self.assertEqual(r.status, 200)
        self.assertNotIn("user", r.json)

    async def test_hello_names_the_token_and_its_user(self):
        made = await self.token(self.alice, [(C, "read")])
        hello = (await self.bearer(made["secret"]).get("/v1/")).json
        self.assertEqual(hello["user"]["id"], ALICE)
        self.assertEqual(hello["user"]["token"]["id"], made["id"])
        self.assertIn("tokens", hello["capabilities"])

    async def test_max_ttl(self):
        await self.make({**SETTINGS, "tokens.max_ttl_seconds": "60", "tokens.default_ttl_seconds": "0"})
        made = await self.token(self.alice, [(B, "read")])
        self.assertLessEqual(made["expires_at"], int(time.time() * 1000) + 61_000)
        await self.token(self.alice, [(B, "read")], status=400, expires_in=3600)


class ConfigurationTests(TestCase):
    async def test_plugin_needs_its_policy(self):
        from jsonsync.config import ConfigurationError
        from jsonsync.testclient import build_app

        with self.assertRaises(ConfigurationError) as caught:
            await build_app({"includes": "tokens"})
        self.assertIn("'tokens' policy is not in multiauth.policies", str(caught.exception.problems))

    def test_settings_are_listed_by_help_settings(self):
        import subprocess

        from tests.test_smoke_network import TWIST, clean_env

        out = subprocess.run([TWIST, "jsonsync", "--help-settings", "-s", "includes=tokens audit",
                              "-s", "multiauth.policies=tokens basicauth"],
                             capture_output=True, text=True, env=clean_env(), timeout=60).stdout
        for name in ("tokens.hmac_secret", "tokens.cache_ms", "tokens.max_ttl_seconds",
                     "audit.record_reads", "audit.retention_days", "audit.flush_ms"):
            self.assertIn(name, out)


# -- the permission matrix --------------------------------------------------------

KINDS = {"bucket": B, "collection": C, "group": G, "record": R}
CHILDREN = {"bucket": [("collections", {}), ("groups", {"members": []})], "collection": [("records", {"v": 2})]}


def verbs(kind):
    path = KINDS[kind]
    out = [
        ("read", "GET", path, None),
        ("write", "PATCH", path, {"data": {"f": 1}}),
        ("share", "PATCH", path, {"permissions": {"read": ["system.Everyone"]}}),
        ("write", "DELETE", path, None),
    ]
    for plural, data in CHILDREN.get(kind, ()):
        out.append(("read", "GET", f"{path}/{plural}", None))
        need = "share" if plural == "groups" else "create"
        out.append((need, "POST", f"{path}/{plural}", {"data": data}))
    return out


def did_something(response) -> bool:
    """A success that read or changed something (an empty list page is neither)."""
    if response.status >= 400:
        return False
    data = response.json.get("data") if isinstance(response.json, dict) else None
    return not (isinstance(data, list) and not data)


def level_allows(level, need, kind):
    if level == "manage":
        return True
    if level == "read":
        return need == "read"
    if level == "create-only":
        return need == "create"
    # contribute
    return need in ("read", "create") or (need == "write" and kind != "group")


class PermissionMatrixTests(_Base):
    async def test_no_token_does_more_than_scope_and_creator_both_allow(self):
        creators = {"alice (owner)": self.alice, "bob (reader)": self.bob, "carol (nothing)": self.carol}
        cases = escalations = token_successes = 0
        mismatches = []
        for (who, creator), level, kind in itertools.product(creators.items(), LEVELS_ALL, KINDS):
            if level == "create-only" and kind in ("group", "record"):
                await self.token(creator, [(KINDS[kind], level)], status=400)
                continue
            made = await self.token(creator, [(KINDS[kind], level)])
            tok = self.bearer(made["secret"])
            for need, method, path, body in verbs(kind):
                await self.seed()
                creator_ok = did_something(await creator.request(method, path, body))
                await self.seed()
                r = await tok.request(method, path, body)
                self.assertLess(r.status, 500, r)
                token_ok = did_something(r)
                cases += 1
                token_successes += token_ok
                allowed = creator_ok and level_allows(level, need, kind)
                if token_ok and not allowed:
                    escalations += 1
                    mismatches.append((who, level, kind, method, path, r.status))
                if r.status >= 400:
                    self.assertIn(r.status, (401, 403, 404), (who, level, kind, method, path, r))
                elif who.startswith("alice") and allowed != token_ok:
                    mismatches.append(("useless", who, level, kind, method, path, r.status))
        self.assertEqual(escalations, 0, mismatches)
        self.assertEqual([m for m in mismatches if m[0] == "useless"], [])
        self.assertGreater(token_successes, 50)
        # 3 creators x 4 levels x 4 kinds, minus the refused create-only
        # scopes (groups, records), x the verbs of each kind (8 for buckets, 6 for collections,
        # 4 for groups and records).
        self.assertEqual(cases, 3 * (4 * 22 - 8))
        print(f"\npermission matrix: {cases} cases, {token_successes} allowed, 0 escalations")

    async def test_revoking_the_creators_access_revokes_the_tokens(self):
        await self.seed()
        made = await self.token(self.bob, [(B, "manage")])
        tok = self.bearer(made["secret"])
        self.assertEqual((await tok.get(R)).status, 200)
        self.assertEqual((await tok.patch(R, {"data": {"x": 1}})).status, 403)  # bob may only read
        await self.ok(self.alice.patch(B, {"permissions": {"read": []}}))
        self.assertEqual((await tok.get(R)).status, 403)

    async def test_lists_show_only_what_the_scopes_cover(self):
        await self.seed()
        await self.ok(self.alice.put(B + "/collections/other", {}))
        await self.ok(self.alice.put("/v1/buckets/b2", {}))
        await self.ok(self.alice.put(C + "/records/r2", {}))
        made = await self.token(self.alice, [(C, "read"), ("/buckets/b2", "read")])
        tok = self.bearer(made["secret"])
        buckets = (await tok.get("/v1/buckets")).json["data"]
        self.assertEqual([b["id"] for b in buckets], ["b2"])
        collections = (await tok.get(B + "/collections")).json["data"]
        self.assertEqual([c["id"] for c in collections], ["c"])
        records = (await tok.get(C + "/records")).json["data"]
        self.assertEqual(sorted(r["id"] for r in records), ["r", "r2"])
        one = await self.token(self.alice, [(R, "read")])
        records = (await self.bearer(one["secret"]).get(C + "/records")).json["data"]
        self.assertEqual([r["id"] for r in records], ["r"])
        # Plural DELETE of a read token: refused, nothing deleted.
        self.assertEqual((await tok.delete(C + "/records")).status, 403)
        self.assertEqual(len((await self.alice.get(C + "/records")).json["data"]), 2)

    async def test_batch_subrequests_are_narrowed_too(self):
        await self.seed()
        made = await self.token(self.alice, [(C, "read")])
        tok = self.bearer(made["secret"])
        body = {"requests": [
            {"method": "GET", "path": "/buckets/b/collections/c/records/r"},
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}}},
            {"method": "PUT", "path": "/buckets/b/collections/x", "body": {}},
            # the owner's credentials in one sub-request do not widen the next
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}},
             "headers": {"Authorization": self.alice.auth}},
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}}},
        ]}
        r = await tok.post("/v1/batch", body)
        self.assertEqual([s["status"] for s in r.json["responses"]], [200, 403, 403, 201, 403])

    async def test_permissions_endpoint_is_narrowed(self):
        await self.make({**SETTINGS, "experimental_permissions_endpoint": "true"})
        await self.seed()
        made = await self.token(self.alice, [(C, "read")])
        entries = (await self.bearer(made["secret"]).get("/v1/permissions")).json["data"]
        self.assertTrue(entries)
        for entry in entries:
            self.assertTrue(entry["uri"].startswith("/buckets/b/collections/c"), entry)
            self.assertLessEqual(set(entry["permissions"]), {"read", "read:attributes"}, entry)

    async def test_tokens_cannot_touch_accounts_of_their_user_or_user_data(self):
        made = await self.token(self.alice, [(B, "manage")])
        tok = self.bearer(made["secret"])
        r = await tok.delete("/v1/__user_data__/" + ALICE)
        self.assertIn(r.status, (403, 404))


LEVELS_ALL = ("read", "create-only", "contribute", "manage")


class LifecycleTests(_Base):
    async def test_expired_token_is_401(self):
        await self.seed()
        made = await self.token(self.alice, [(B, "read")], expires_in=1)
        tok = self.bearer(made["secret"])
        self.assertEqual((await tok.get(R)).status, 200)
        await sleep(1.1)
        r = await tok.get(R)
        self.assertEqual(r.status, 401)
        self.assertIn("expired", r.json["message"])

    async def test_revocation_cascades_to_descendants(self):
        await self.seed()
        parent = await self.token(self.alice, [(B, "manage")])
        ptok = self.bearer(parent["secret"])
        child = await self.token(ptok, [(C, "contribute")])
        self.assertEqual(child["parent"], parent["id"])
        ctok = self.bearer(child["secret"])
        grandchild = await self.token(ctok, [(C, "read")], status=403)  # contribute cannot delegate
        self.assertEqual(grandchild["errno"], 121)
        self.assertEqual((await ctok.get(R)).status, 200)
        # Delegation only narrower, and never outliving the parent.
        await self.token(ptok, [("/buckets/other", "read")], status=403)
        # The parent sees its child, not the other way round.
        self.assertEqual([t["id"] for t in (await ptok.get("/v1/tokens")).json["data"]], [child["id"]])
        self.assertEqual((await ctok.get(f"/v1/tokens/{parent['id']}")).status, 404)
        self.assertEqual(len((await self.alice.get("/v1/tokens")).json["data"]), 2)
        r = await self.alice.delete(f"/v1/tokens/{parent['id']}")
        self.assertEqual(r.status, 200)
        self.assertIsNotNone(r.json["data"]["revoked"])
        for tok in (ptok, ctok):
            r = await tok.get(R)
            self.assertEqual(r.status, 401)
            self.assertIn("revoked", r.json["message"])
        listed = {t["id"]: t for t in (await self.alice.get("/v1/tokens")).json["data"]}
        self.assertIsNotNone(listed[child["id"]]["revoked"])

    async def test_delegated_expiry_is_capped_by_the_parent(self):
        parent = await self.token(self.alice, [(B, "manage")], expires_in=100)
        ptok = self.bearer(parent["secret"])
        await self.token(ptok, [(C, "read")], status=400, expires_in=1000)
        child = await self.token(ptok, [(C, "read")])
        self.assertEqual(child["expires_at"], parent["expires_at"])

    async def test_contribute_cannot_share(self):
        await self.seed()
        made = await self.token(self.alice, [(C, "contribute")])
        tok = self.bearer(made["secret"])
        r = await tok.post(C + "/records", {"data": {}, "permissions": {"read": ["system.Everyone"]}})
        self.assertEqual(r.status, 403)
        r = await tok.post(C + "/records", {"data": {"a": 1}})
        self.assertEqual(r.status, 201)
        self.assertEqual(r.json["permissions"]["write"], [ALICE])  # the creator owns it

    async def test_only_manage_creates_webhooks(self):
        await self.make({**SETTINGS, "includes": "tokens webhooks", "webhooks.worker": "false"})
        await self.seed()
        body = {"data": {"url": "https://example.com/hook"}}
        for level, expected in (("contribute", 403), ("create-only", 403), ("manage", 201)):
            made = await self.token(self.alice, [(B, level)])
            r = await self.bearer(made["secret"]).post(B + "/webhooks", body)
            self.assertEqual(r.status, expected, (level, r))

    async def test_last_used_is_coalesced(self):
        await self.make({**SETTINGS, "tokens.last_used_interval_seconds": "0"})
        await self.seed()
        made = await self.token(self.alice, [(B, "read")])
        tok = self.bearer(made["secret"])
        policy = self.app.registry.policies[0]
        await self.ok(tok.get(R))
        for _ in range(100):  # written in the background, or by this flush
            await policy.flush_last_used()
            shown = (await self.alice.get(f"/v1/tokens/{made['id']}")).json["data"]
            if shown["last_used"] is not None:
                break
            await sleep(0.02)
        self.assertIsNotNone(shown["last_used"])
        self.assertGreaterEqual(shown["last_used"], made["created"])

    async def test_last_used_writes_at_most_every_interval(self):
        await self.seed()
        made = await self.token(self.alice, [(B, "read")])
        tok = self.bearer(made["secret"])
        before = (await self.stored(made["id"]))["last_modified"]
        for _ in range(20):
            await self.ok(tok.get(R))
        after = await self.stored(made["id"])
        self.assertEqual(after["last_modified"], before)  # no write per request
        self.assertIn(made["id"], self.app.registry.policies[0].used)


with_postgresql_variants(globals())


class KintoHttpTests(_ServerTest):
    """kinto-http, the Python client, driving a real `twist jsonsync` with a Bearer token."""

    async def test_kinto_http_with_a_bearer_token(self):
        import kinto_http

        await self.start_server(["-s", "includes=tokens", "-s", "multiauth.policies=tokens basicauth"])
        base = self.base

        def run():
            owner = kinto_http.Client(server_url=base + "/v1", auth=("alice", "secret"))
            owner.create_bucket(id="b")
            owner.create_collection(id="c", bucket="b")
            made = owner.session.request("post", "/tokens", payload={
                "data": {"name": "script", "scopes": [{"path": "/buckets/b/collections/c", "level": "contribute"}]}
            })[0]["data"]
            auth = kinto_http.BearerTokenAuth(made["secret"])
            client = kinto_http.Client(server_url=base + "/v1", auth=auth, bucket="b", collection="c")
            client.create_record(data={"title": "from a token"})
            titles = [r["title"] for r in client.get_records()]
            denied = None
            try:
                client.create_collection(id="other", bucket="b")
            except kinto_http.KintoException as e:
                denied = e.response.status_code
            owner.session.request("delete", f"/tokens/{made['id']}")
            time.sleep(1.1)
            revoked = None
            try:
                client.get_records()
            except kinto_http.KintoException as e:
                revoked = e.response.status_code
            return titles, denied, revoked

        titles, denied, revoked = await threads.deferToThread(run)
        self.assertEqual(titles, ["from a token"])
        self.assertEqual(denied, 403)
        self.assertEqual(revoked, 401)


class TwoProcessesTests(TestCase):
    """Revocation seen by another process on the same PostgreSQL database within a second."""

    skip = SKIP
    timeout = 120

    async def test_revoked_and_expired_on_another_process_within_a_second(self):
        url = await scratch_url(self)
        servers = ServerProcesses(self, url, "includes=tokens", "multiauth.policies=tokens basicauth")
        client = _Client(self, persistent=False)
        started = [servers.start(), servers.start()]
        for proc, base in started:
            await servers.wait_ready(base, client.pool, proc)
        one, two = (base for _, base in started)
        await client.call("PUT", one + "/buckets/b")
        r, parent = await client.call("POST", one + "/tokens", {"data": {"name": "p", "scopes": [
            {"path": "/buckets/b", "level": "manage"}]}})
        self.assertEqual(r.code, 201, parent)
        import json

        import treq

        async def with_bearer(method, url, secret, body=None):
            headers = {b"Authorization": [f"Bearer {secret}".encode()], b"Content-Type": [b"application/json"]}
            data = json.dumps(body).encode() if body is not None else None
            resp = await treq.request(method, url, headers=headers, data=data, pool=client.pool, timeout=10)
            content = await resp.content()
            return resp.code, (json.loads(content) if content else None)

        code, child = await with_bearer("POST", one + "/tokens", parent["data"]["secret"], {"data": {
            "name": "c", "scopes": [{"path": "/buckets/b", "level": "read"}], "expires_in": 3}})
        self.assertEqual(code, 201, child)
        child_secret = child["data"]["secret"]
        self.assertEqual((await with_bearer("GET", two + "/buckets/b", child_secret))[0], 200)
        # Revoke the parent on process one: the child fails on process two within a second.
        r, _ = await client.call("DELETE", one + f"/tokens/{parent['data']['id']}")
        self.assertEqual(r.code, 200)
        revoked_at = time.monotonic()
        while True:
            code, body = await with_bearer("GET", two + "/buckets/b", child_secret)
            if code == 401:
                break
            self.assertLess(time.monotonic() - revoked_at, 1.0, "still accepted after a second")
            await sleep(0.05)
        self.assertLess(time.monotonic() - revoked_at, 1.1)
        # Expiry: a fresh token that expires, checked on the other process.
        r, short = await client.call("POST", one + "/tokens", {"data": {"name": "s", "scopes": [
            {"path": "/buckets/b", "level": "read"}], "expires_in": 1}})
        secret = short["data"]["secret"]
        self.assertEqual((await with_bearer("GET", two + "/buckets/b", secret))[0], 200)
        await sleep(max(0.0, short["data"]["expires_at"] / 1000 - time.time()) + 0.05)
        self.assertEqual((await with_bearer("GET", two + "/buckets/b", secret))[0], 401)


