// Drives a running jsonsync with the real kinto.js (offline-first sync) and
// kinto-http.js clients from npm, configured as issue 4 describes:
// accounts, default bucket, history, flush, paginate_by = 5, permissions endpoint.
// Usage: node kinto-js-sync.mjs http://127.0.0.1:PORT/v1
import "fake-indexeddb/auto";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { default: Kinto, KintoClient } = require("kinto");

const remote = process.argv[2];
const basic = (u, p) => "Basic " + Buffer.from(`${u}:${p}`).toString("base64");
let failures = 0;
function check(cond, what) {
  console.log(`${cond ? "ok  " : "FAIL"} ${what}`);
  if (!cond) failures++;
}

async function raw(method, path, body, auth) {
  const headers = { "Content-Type": "application/json" };
  if (auth) headers.Authorization = auth;
  const r = await fetch(remote + path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

const alice = basic("alice", "s3cret-alice");
const bob = basic("bob", "s3cret-bob");

// accounts: sign up anonymously, then log in
check((await raw("PUT", "/accounts/alice", { data: { password: "s3cret-alice" } })).status === 201, "alice signs up");
check((await raw("PUT", "/accounts/bob", { data: { password: "s3cret-bob" } })).status === 201, "bob signs up");
const hello = await raw("GET", "/", null, alice);
check(hello.body.user && hello.body.user.id === "account:alice", "hello shows account:alice");
check(typeof hello.body.user.bucket === "string", "hello shows the default bucket id");
check((await raw("GET", "/", null, basic("alice", "wrong"))).body.user === undefined, "a wrong password is not alice");

// kinto.js: two offline-first devices of alice (each its own IndexedDB) syncing
// through the default bucket
const device = (name) =>
  new Kinto({ remote, headers: { Authorization: alice }, adapterOptions: { dbName: name } }).collection("tasks");
const one = device("device-one");
const two = device("device-two");
for (let i = 0; i < 12; i++) await one.create({ title: `task ${i}`, done: i % 3 === 0 });
let result = await one.sync();
check(result.ok && result.published.length === 12, `device one publishes 12 (got ${result.published.length})`);

result = await two.sync();
const pulled = (await two.list()).data;
check(result.ok && pulled.length === 12, `device two pulls 12 over pages of 5 (got ${pulled.length})`);

// changes on device two reach device one through _since
const target = pulled.find((r) => r.title === "task 4");
await two.update({ ...target, done: true });
const doomed = pulled.find((r) => r.title === "task 5");
await two.delete(doomed.id);
result = await two.sync();
check(result.ok && result.published.length === 2, "device two publishes an update and a deletion");
result = await one.sync();
const seen = (await one.list()).data;
check(result.ok && seen.length === 11, `device one sees the deletion (has ${seen.length})`);
check(seen.find((r) => r.id === target.id).done === true, "device one sees the update");

// a conflict, resolved by the client
const shared = seen[0];
await one.update({ ...shared, title: "from one" });
await two.update({ ...(await two.get(shared.id)).data, title: "from two" });
await one.sync();
result = await two.sync();
check(result.conflicts.length === 1, `device two is told of the conflict (${result.conflicts.length})`);
if (result.conflicts.length) {
  await two.resolve(result.conflicts[0], result.conflicts[0].remote);
  result = await two.sync();
  check(result.ok, "the conflict is resolved and synced");
}

// kinto-http.js: listing with pagination, history, permissions, sharing
const client = new KintoClient(remote, { headers: { Authorization: alice } });
const bucket = client.bucket("default");
const all = await bucket.collection("tasks").listRecords({ pages: Infinity });
check(all.data.length === 11, `kinto-http lists 11 records through pages (got ${all.data.length})`);
const firstPage = await bucket.collection("tasks").listRecords({ limit: 5 });
check(firstPage.data.length === 5 && firstPage.hasNextPage, "pages of 5 with a next page");
const filtered = await bucket.collection("tasks").listRecords({ filters: { done: true }, pages: Infinity });
check(filtered.data.every((r) => r.done === true) && filtered.data.length > 0, `filters work (${filtered.data.length})`);
const history = await bucket.listHistory({ pages: Infinity });
check(history.data.length >= 14, `history has the changes (${history.data.length} entries)`);
check(history.data.some((e) => e.action === "delete" && e.resource_name === "record"), "history has the deletion");
const perms = await client.listPermissions({ pages: Infinity });
check(perms.data.some((p) => p.resource_name === "bucket"), "the permissions endpoint lists alice's bucket");

// share the collection with bob, who reads it from his own client
const bucketId = hello.body.user.bucket;
await client.bucket(bucketId).collection("tasks").setPermissions({ read: ["account:bob"] }, { patch: true });
const asBob = new KintoClient(remote, { headers: { Authorization: bob } });
const bobSees = await asBob.bucket(bucketId).collection("tasks").listRecords({ pages: Infinity });
check(bobSees.data.length === 11, `bob reads the shared collection (${bobSees.data.length})`);
let denied = false;
try { await asBob.bucket(bucketId).collection("tasks").createRecord({ title: "intruder" }); } catch (e) { denied = e.data && e.data.code === 403; }
check(denied, "bob cannot write there (403)");

// batch through kinto-http
const res = await client.bucket("default").collection("batched").batch((b) => {
  for (let i = 0; i < 7; i++) b.createRecord({ n: i });
});
check(res.length === 7 && res.every((r) => r.status === 201), "a batch of 7 creations");

check((await raw("POST", "/__flush__")).status === 202, "flush empties the test server");
check((await raw("GET", "/", null, alice)).body.user === undefined, "accounts are gone after flush");

console.log(failures ? `${failures} FAILED` : "ALL OK");
process.exit(failures ? 1 : 0);
