#!/usr/bin/env python3
"""
Measure one large attachment upload (issue 14): start `twist jsonsync` with
the attachment plugin and a raised attachment.max_size, stream a multipart
body of SIZE bytes to it (the client never holds the file: it sends a 1 MiB
block again and again, hashing as it goes), and report the server's RSS
above its idle RSS (peak, from /proc's VmHWM) and the throughput in MB/s.

    .venv/bin/python bench/attachment_upload.py [--size-mb 1024] [--keep]

A measurement, not a test: it asserts nothing but that the server stored
the file with the right hash. Linux only (reads /proc). Uses the memory
backend, so only the upload path is measured; base_path and the spooled
body both go to a temporary directory (about three times SIZE on disk
while the request runs).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = 1 << 20
BOUNDARY = "jsonsync-bench-boundary"
AUTH = "Basic " + base64.b64encode(b"bench:secret").decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def request(base, method, path, body=None, headers=None):
    sent = {"Authorization": AUTH, **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    r = urllib.request.Request(base + path, data=data, method=method, headers=sent)
    with urllib.request.urlopen(r, timeout=60) as answer:
        return answer.status, json.loads(answer.read() or b"null")


def stream_upload(port: int, path: str, size: int):
    """POST a multipart body of C{size} file bytes, streamed: (status, body, sha256, seconds)."""
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"big.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = os.urandom(BLOCK)
    digest = hashlib.sha256()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    started = time.monotonic()
    conn.putrequest("POST", path)
    conn.putheader("Authorization", AUTH)
    conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    conn.putheader("Content-Length", str(len(head) + size + len(tail)))
    conn.endheaders()
    conn.send(head)
    left = size
    while left:
        piece = block if left >= BLOCK else block[:left]
        digest.update(piece)
        conn.send(piece)
        left -= len(piece)
    conn.send(tail)
    answer = conn.getresponse()
    body = answer.read()
    elapsed = time.monotonic() - started
    conn.close()
    return answer.status, json.loads(body), digest.hexdigest(), elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (default 1024)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--gzipped", action="store_true", help="with attachment.gzipped = true")
    args = parser.parse_args(argv)
    size = args.size_mb * BLOCK
    work = tempfile.mkdtemp(prefix="jsonsync-attachment-bench-")
    files = os.path.join(work, "files")
    spool = os.path.join(work, "spool")
    os.makedirs(files)
    os.makedirs(spool)
    config = os.path.join(work, "jsonsync.ini")
    with open(config, "w") as f:
        f.write(
            "[jsonsync]\nincludes = attachment\n"
            f"attachment.base_path = {files}\nattachment.base_url = http://files.invalid/\n"
            f"attachment.max_size = {size + BLOCK}\n"
            f"attachment.gzipped = {'true' if args.gzipped else 'false'}\n"
        )
    twist = os.path.join(os.path.dirname(sys.executable), "twist")
    port = free_port()
    env = {**os.environ, "TMPDIR": spool}
    server = subprocess.Popen(
        [twist, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1", "--config", config],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/__lbheartbeat__", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            print("the server did not start", file=sys.stderr)
            return 1
        request(base, "PUT", "/buckets/b", {})
        request(base, "PUT", "/buckets/b/collections/c", {})
        # Warm up every code path of an upload (a body spooled to disk, the
        # parse in a thread) before taking the idle figure.
        status, _, _, _ = stream_upload(port, "/v1/buckets/b/collections/c/records/warm/attachment", 4 * BLOCK)
        assert status == 201, status
        time.sleep(0.5)
        idle = status_kb(server.pid, "VmRSS")
        # VmHWM is the peak since start: reset it (Linux >= 4.0) so that it
        # holds the upload's peak alone.
        try:
            with open(f"/proc/{server.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        # A second opinion on the peak, for kernels without the reset.
        sampled = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                sampled.append(status_kb(server.pid, "VmRSS"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            status, body, sent_hash, elapsed = stream_upload(
                port, "/v1/buckets/b/collections/c/records/big/attachment", size
            )
        finally:
            done.set()
            sampler.join()
        peak = max(status_kb(server.pid, "VmHWM"), max(sampled))
        after = status_kb(server.pid, "VmRSS")
        sent = body.get("original", body)
        if status != 201 or sent.get("hash") != sent_hash or sent.get("size") != size:
            print(f"upload failed: {status} {body}", file=sys.stderr)
            return 1
        stored = os.path.join(files, body["location"])
        assert os.path.getsize(stored) == body["size"]
        mb = size / 1e6
        how = f", gzipped to {body['size']} bytes" if args.gzipped else ""
        print(f"file: {args.size_mb} MiB ({size} bytes), stored with the right sha256{how}")
        print(f"server RSS idle (after a warm-up upload): {idle / 1024:.1f} MiB")
        print(f"server RSS peak during the upload: {peak / 1024:.1f} MiB  (+{(peak - idle) / 1024:.1f} MiB above idle)")
        print(f"  (VmRSS sampled every 20 ms: {len(sampled)} samples, max {max(sampled) / 1024:.1f} MiB)")
        print(f"server RSS after the upload: {after / 1024:.1f} MiB")
        print(f"time: {elapsed:.1f} s, throughput: {mb / elapsed:.1f} MB/s (request sent to answer received)")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
