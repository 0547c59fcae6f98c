#!/usr/bin/env python3
"""
Creates the benchmark's webhook (bucket b, collection c, every action) on a
jsonsync server through its API, then prints the Authorization header value
the workloads send: a drop-in for bench/ab.sh's B_AUTH_CMD.

    python3 bench/make_webhook.py http://127.0.0.1:18894/v1 http://127.0.0.1:18895/hook [--auth bench:bench]

The server needs `-s includes=webhooks -s webhooks.allow_private_targets=true`
(the receiver, bench/webhook_receiver.py, listens on 127.0.0.1). Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", help="the server's /v1 URL")
    parser.add_argument("target", help="the receiver's URL")
    parser.add_argument("--auth", default="bench:bench")
    parser.add_argument("--bucket", default="b")
    parser.add_argument("--collection", default="c")
    args = parser.parse_args()
    header = "Basic " + base64.b64encode(args.auth.encode()).decode()
    body = json.dumps({"data": {"url": args.target, "collection": args.collection,
                                "secret": "bench-webhook-secret-0123456789"}}).encode()
    request = urllib.request.Request(
        f"{args.base}/buckets/{args.bucket}/webhooks/bench", data=body, method="PUT",
        headers={"Authorization": header, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status not in (200, 201):
            sys.exit(f"webhook not created: HTTP {response.status}")
    print(f"webhook {args.base}/buckets/{args.bucket}/webhooks/bench -> {args.target}", file=sys.stderr)
    print(header)


if __name__ == "__main__":
    main()
