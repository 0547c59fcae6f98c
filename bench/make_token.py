#!/usr/bin/env python3
"""Print an Authorization value for the benchmarks: a `contribute` token on /buckets/b.

Usage: python3 bench/make_token.py BASE_URL [--auth bench:bench] [--path /buckets/b] [--level contribute]

BASE_URL includes the API prefix (http://127.0.0.1:18894/v1). The token is made with Basic
credentials (bench/seed.py's seeding user) on a server running the `tokens` plugin with the
`tokens` policy; it prints `Bearer <secret>` on stdout and nothing else. Standard library only.
"""
import argparse
import base64
import json
import sys
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--auth", default="bench:bench")
    parser.add_argument("--path", default="/buckets/b")
    parser.add_argument("--level", default="contribute")
    parser.add_argument("--expires-in", type=int, default=24 * 3600)
    args = parser.parse_args()
    body = {"data": {"name": "bench", "scopes": [{"path": args.path, "level": args.level}],
                     "expires_in": args.expires_in}}
    request = urllib.request.Request(
        args.base.rstrip("/") + "/tokens",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(args.auth.encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            made = json.load(response)
    except urllib.error.HTTPError as e:
        print(f"make_token: {e.code} {e.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    print("Bearer " + made["data"]["secret"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
