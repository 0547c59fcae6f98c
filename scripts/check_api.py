#!/usr/bin/env python3
"""
Fuzz a real jsonsync server with schemathesis, driven by its own
C{GET /v1/__api__}.

The script starts C{twist jsonsync} on 127.0.0.1 (memory backend, the
accounts, default_bucket and history plugins), seeds data owned by the
fuzzing user (a bucket, a collection, a group, records, an account), then
runs C{schemathesis run} with every check. The seeded ids are given to
schemathesis as fixed path parameters (for every method but C{PUT}, whose
ids are generated), so that operations reach their handlers instead of
stopping at 401, 403 or 404; whenever a request changed or deleted data,
a hook puts the seed back (a C{DELETE /buckets} would otherwise leave
nothing to read for the rest of the run).

    python scripts/check_api.py                      # 50 examples per operation
    python scripts/check_api.py --max-examples 5 --port 18301

Exit status: schemathesis' own (0 when no check failed). Needs
C{pip install schemathesis} (it is not a dependency of jsonsync: with its
coverage phase a run takes minutes, too long for the suite; the suite has
tests/test_openapi.py instead).

What it must not find: a server error (ST101), an undocumented status
(ST103), a response that does not match its schema, a schema-valid request
refused (ST202). What it may find (ST201, "schema-violating request
accepted"), all of them Kinto's leniency kept on purpose:
  - a C{_sort} part that is no field name (C{_sort=%C2%98}) is ignored;
  - JSON-Patch operations outside /data and /permissions (C{"path": ""})
    are ignored, as Kinto does;
  - a POST of an existing id answers the stored object whatever the body;
  - a body of blanks is an empty body.
And, rarely, a ST202 for a collection's C{schema} that is an object but
not a valid JSON Schema (a document cannot embed the meta-schema's rules).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

USER = ("fuzzer", "secret")
BUCKET, COLLECTION, GROUP, RECORD, ACCOUNT = "fuzz", "things", "team", "r1", "victim"


def auth_header() -> str:
    return "Basic " + base64.b64encode(":".join(USER).encode()).decode()


def basicauth_principal() -> str:
    import hashlib
    import hmac

    digest = hmac.new(b"", ":".join(USER).encode(), hashlib.sha256).hexdigest()
    return f"basicauth:{digest}"


def seed_requests() -> list[dict]:
    """The batch that (re)creates the fuzzing user's data."""
    b = f"/buckets/{BUCKET}"
    c = f"{b}/collections/{COLLECTION}"
    return [
        {"method": "PUT", "path": b, "body": {"data": {}}},
        {"method": "PUT", "path": c, "body": {"data": {}}},
        {"method": "PUT", "path": f"{b}/groups/{GROUP}", "body": {"data": {"members": [basicauth_principal()]}}},
        {"method": "PUT", "path": f"{c}/records/{RECORD}", "body": {"data": {"title": "one", "n": 1}}},
        {"method": "PUT", "path": f"{c}/records/r2", "body": {"data": {"title": "two", "n": 2}}},
        {"method": "PUT", "path": f"/accounts/{ACCOUNT}", "body": {"data": {"password": "pw"}}},
        # The user's default bucket, reached through its alias.
        {"method": "PUT", "path": f"/buckets/default/collections/{COLLECTION}/records/{RECORD}",
         "body": {"data": {"title": "one"}}},
        {"method": "PUT", "path": f"/buckets/default/groups/{GROUP}", "body": {"data": {"members": []}}},
    ]


def seed(base: str) -> None:
    body = json.dumps({"requests": seed_requests()}).encode()
    request = urllib.request.Request(
        base + "/batch", body, method="POST",
        headers={"Authorization": auth_header(), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answers = json.load(response)["responses"]
    bad = [a for a in answers if a["status"] >= 400]
    if bad:
        raise SystemExit(f"seeding failed: {bad}")


HOOKS = '''
import os
import time
import urllib.request

import schemathesis

_SEED = os.environ["JSONSYNC_CHECK_SEED"].encode()
_BASE = os.environ["JSONSYNC_CHECK_BASE"]
_AUTH = os.environ["JSONSYNC_CHECK_AUTH"]


@schemathesis.hook
def filter_query(context, query):
    if not query:
        return True
    # A pagination token is opaque (the server's own encoding of the last
    # object of a page): one made up is always refused, as it should be.
    if "_token" in query:
        return False
    # Timestamps up to a day ahead of the server's clock are accepted: the
    # document states the bound as it was when it was fetched, so values
    # just past it are no longer refused a moment later.
    limit = int(time.time() * 1000)
    for name in ("_since", "_before"):
        try:
            if int(str(query.get(name, 0)).strip().strip('"')) > limit:
                return False
        except ValueError:
            pass
    return True


@schemathesis.hook
def filter_body(context, body):
    # Of JSON-Patch operations only "add" applies to any object: whether
    # remove, replace, move, copy or test apply depends on what the object
    # holds, which no schema says (they answer 400 when they do not apply).
    if isinstance(body, list):
        return all(isinstance(op, dict) and op.get("op") == "add" for op in body)
    return True


@schemathesis.hook
def after_call(context, case, response):
    # Put the seeded data back after anything that may have changed it.
    if case.method.upper() in ("GET", "HEAD", "OPTIONS") or response.status_code >= 400:
        return
    request = urllib.request.Request(
        _BASE + "/batch", _SEED, method="POST",
        headers={"Authorization": _AUTH, "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=30).read()
'''


def config_toml() -> str:
    """schemathesis.toml: the seeded ids as fixed path parameters."""
    ids = {
        "/buckets/{id}": BUCKET,
        "/buckets/{bucket_id}/collections/{id}": COLLECTION,
        "/buckets/{bucket_id}/groups/{id}": GROUP,
        "/buckets/{bucket_id}/collections/{collection_id}/records/{id}": RECORD,
        "/accounts/{id}": ACCOUNT,
        "/buckets/default/collections/{id}": COLLECTION,
        "/buckets/default/groups/{id}": GROUP,
        "/buckets/default/collections/{collection_id}/records/{id}": RECORD,
    }
    parents = f'"path.bucket_id" = "{BUCKET}", "path.collection_id" = "{COLLECTION}"'
    lines = [
        "[parameters]",
        f'"path.bucket_id" = "{BUCKET}"',
        f'"path.collection_id" = "{COLLECTION}"',
        f'"path.target" = "{COLLECTION}@0"',
        f'"path.principal" = "account:{ACCOUNT}"',
    ]
    # An operation's own parameters replace the global ones: repeat them.
    for path, oid in ids.items():
        for method in ("GET", "HEAD", "PATCH", "DELETE"):
            lines += [
                "",
                "[[operations]]",
                f'include-name = "{method} {path}"',
                f'parameters = {{ {parents}, "path.id" = "{oid}" }}',
            ]
    return "\n".join(lines) + "\n"


def wait_until_up(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            urllib.request.urlopen(base + "/__lbheartbeat__", timeout=2).read()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SystemExit("the server did not start within 30 s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--max-examples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", default="1")
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--report", help="write schemathesis' JSON run report to this file")
    parser.add_argument("extra", nargs="*", help="more schemathesis run arguments (after --)")
    args = parser.parse_args(argv)

    base = f"http://127.0.0.1:{args.port}/v1"
    workdir = tempfile.mkdtemp(prefix="jsonsync-check-api-")
    env = dict(os.environ)
    for name in [n for n in env if n.startswith("JSONSYNC_")]:
        del env[name]  # the server is configured here only
    settings = {
        "includes": "accounts default_bucket history",
        "multiauth.policies": "account basicauth",
        "account_create_principals": "system.Everyone",
        "account_write_principals": basicauth_principal(),
        "account_bcrypt_rounds": "4",
        "experimental_permissions_endpoint": "true",
        "user-data_delete_principals": basicauth_principal(),
        "version_json_path": os.path.join(workdir, "version.json"),
    }
    with open(settings["version_json_path"], "w") as f:
        json.dump({"name": "jsonsync", "version": "check", "source": "local", "commit": "none"}, f)
    command = [sys.executable, "-m", "twisted", "jsonsync", "--listen", f"tcp:{args.port}:interface=127.0.0.1"]
    for name, value in settings.items():
        command += ["--setting", f"{name}={value}"]
    server = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_up(base, server)
        seed(base)
        with open(os.path.join(workdir, "schemathesis.toml"), "w") as f:
            f.write(config_toml())
        with open(os.path.join(workdir, "jsonsync_check_hooks.py"), "w") as f:
            f.write(HOOKS)
        env.update(
            SCHEMATHESIS_HOOKS="jsonsync_check_hooks",
            PYTHONPATH=workdir,
            JSONSYNC_CHECK_SEED=json.dumps({"requests": seed_requests()}),
            JSONSYNC_CHECK_BASE=base,
            JSONSYNC_CHECK_AUTH=auth_header(),
        )
        st = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or "schemathesis"
        run = [
            st, "run", base + "/__api__",
            "--checks", "all",
            "--max-examples", str(args.max_examples),
            "--seed", str(args.seed),
            "--generation-deterministic",
            # Bodies and query strings cannot hold U+0000 (PostgreSQL cannot
            # store it; the server refuses it everywhere, docs/limits.md).
            "--generation-allow-x00", "false",
            "--workers", args.workers,
            "--phases", args.phases,
            "--auth", ":".join(USER),
            "--no-color",
        ]
        if args.report:
            run += ["--report", "json", "--report-json-path", os.path.abspath(args.report)]
        run += args.extra
        print("$", " ".join(run), flush=True)
        return subprocess.call(run, env=env, cwd=workdir)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
