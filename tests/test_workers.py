"""`twist jsonsync --workers N`: several processes serving one port, stopped together."""

import os
import signal
import subprocess
import time
import urllib.request

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.pg import SKIP, scratch_url
from tests.test_postgresql_processes import TWIST, free_port


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class WorkersTests(TestCase):
    skip = SKIP
    timeout = 60

    async def test_workers_share_the_port_and_stop_together(self):
        url = await scratch_url(self)
        port = free_port()
        proc = subprocess.Popen(
            [TWIST, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "3",
             "-s", "storage_backend=postgresql", "-s", "permission_backend=postgresql",
             "-s", f"storage_url={url}", "-s", "storage_pool_size=2", "-s", "access_log=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: (proc.poll() is None and proc.kill(), proc.wait()))
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/__heartbeat__", timeout=1)
                if len(children_of(proc.pid)) == 2:
                    break
            except OSError:
                pass
            await deferLater(reactor, 0.05, lambda: None)
        workers = children_of(proc.pid)
        self.assertEqual(len(workers), 2)
        for _ in range(30):  # every process answers on the shared port
            with urllib.request.urlopen(base + "/__heartbeat__", timeout=5) as r:
                self.assertEqual(r.status, 200)

        os.kill(workers[0], signal.SIGKILL)  # a dead worker is started again
        deadline = time.monotonic() + 10
        while True:
            now = children_of(proc.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            self.assertLess(time.monotonic(), deadline, now)
            await deferLater(reactor, 0.1, lambda: None)

        survivors = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                  for pid in survivors):
            self.assertLess(time.monotonic(), deadline, "workers outlived their parent")
            await deferLater(reactor, 0.1, lambda: None)

    def test_workers_refused_on_memory_backend(self):
        out = subprocess.run([TWIST, "jsonsync", "--workers", "2"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("--workers needs a shared backend", out.stdout + out.stderr)
