// Drives a running jsonsync with the attachment plugin through kinto-http.js
// (bundled in the kinto package): addAttachment / removeAttachment, in a
// named bucket and in the default bucket (see tests/test_plugin_attachment_clients.py).
// Usage: node kinto-http-attachment.mjs http://127.0.0.1:PORT/v1
import { createHash } from "node:crypto";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { KintoClient } = require("kinto");

const remote = process.argv[2];
let failures = 0;
function check(cond, what) {
  console.log(`${cond ? "ok  " : "FAIL"} ${what}`);
  if (!cond) failures++;
}

const signup = await fetch(`${remote}/accounts/carol`, {
  method: "PUT",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ data: { password: "s3cret-carol" } }),
});
check(signup.status === 201, "carol signs up");
const headers = { Authorization: "Basic " + Buffer.from("carol:s3cret-carol").toString("base64") };
const client = new KintoClient(remote, { headers });

// A 1x1 PNG.
const png = Buffer.from(
  "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082",
  "hex",
);
const dataURI = `data:image/png;name=dot.png;base64,${png.toString("base64")}`;

await client.createBucket("pics");
const coll = client.bucket("pics").collection("dots");
await client.bucket("pics").createCollection("dots");

const { data: record } = await coll.addAttachment(dataURI, { id: "one", title: "a dot" }, {
  permissions: { read: ["system.Authenticated"] },
});
const att = record.attachment;
check(att && att.filename === "dot.png", `filename (${att && att.filename})`);
check(att && att.mimetype === "image/png", `mimetype (${att && att.mimetype})`);
check(att && att.size === png.length, `size (${att && att.size})`);
check(att && att.hash === createHash("sha256").update(png).digest("hex"), "sha256 of the bytes sent");
check(att && /^pics\/dots\/[0-9a-f]{32}\.png$/.test(att.location), `location (${att && att.location})`);
check(record.title === "a dot", "the record's fields are set too");
const { permissions } = await coll.getRecord("one");
check(permissions.read && permissions.read.includes("system.Authenticated"), "the permissions are set");

// Bytes that are not what the data URI says: refused with Kinto's 400.
try {
  await coll.addAttachment("data:image/png;name=fake.png;base64," + Buffer.from("not a png").toString("base64"), { id: "two" });
  check(false, "a text declared as image/png is refused");
} catch (e) {
  check(e.data && e.data.code === 400 && e.data.errno === 107, `a text declared as image/png is refused (${e.message})`);
}

await coll.removeAttachment("one");
const { data: after } = await coll.getRecord("one");
check(after.attachment === null, "removeAttachment leaves attachment: null");
check(after.title === "a dot", "and keeps the other fields");

// The default bucket: created with the collection on first use.
const mine = client.bucket("default").collection("files");
const { data: inDefault } = await mine.addAttachment(
  "data:text/plain;name=notes.txt;base64," + Buffer.from("hello from js").toString("base64"), { id: "n1" },
);
check(inDefault.attachment && inDefault.attachment.mimetype === "text/plain", "upload through the default bucket");
const hello = await client.fetchServerInfo();
check(inDefault.attachment && inDefault.attachment.location.startsWith(hello.user.bucket + "/files/"),
  "stored under the real bucket id");
check(hello.capabilities.attachments && hello.capabilities.attachments.base_url === "http://files.example.org/",
  "capability with base_url");

if (failures) {
  console.log(`${failures} FAILED`);
  process.exit(1);
}
console.log("ALL OK");
