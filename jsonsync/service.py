"""
The running server: builds the application once the reactor runs, listens,
and closes the backends on stop.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import server

from jsonsync import logs
from jsonsync.channel import LimitedChannel, LimitedRequest

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort, IProcessTransport

    from jsonsync.app import JsonSyncApp

_log = Logger()

# The exit status of a process whose start failed once the reactor ran
# (EX_CONFIG in sysexits.h); a worker ending with it stops the server.
START_FAILED = 78


class QuietSite(server.Site):
    """
    A site that logs a short summary per request (L{jsonsync.logs}), which
    can be switched off, and tells its request observers (the metrics) of
    every finished request. Twisted's Apache-style line is gone: about 950
    bytes with neither duration, user nor request id, for a fifth of the
    throughput.
    """

    access_log = True
    observers: tuple = ()
    # Set by make_site; read (with defaults) by LimitedChannel and body_limit.
    max_body: int
    max_request_line: int
    max_header_bytes: int
    max_header_count: int
    cors_origins: tuple[str, ...]
    body_limits: tuple

    def log(self, request):
        for observe in self.observers:
            observe(request)
        if self.access_log:
            logs.log_summary(logs.summary(request))


def make_site(app, settings) -> server.Site:
    site = QuietSite(app.resource())
    site.requestFactory = LimitedRequest
    # HTTP/1.1 only: twisted.web's default protocol also negotiates HTTP/2
    # over TLS, which jsonsync does not offer (and whose limits differ).
    # (twisted types HTTPFactory.protocol as the function it defaults to,
    # where any protocol factory will do)
    site.protocol = LimitedChannel  # type: ignore[method-assign,assignment]
    site.max_body = settings["max_request_body_bytes"]
    site.max_request_line = settings["max_request_line_bytes"]
    site.max_header_bytes = settings["max_header_bytes"]
    site.max_header_count = settings["max_header_count"]
    site.cors_origins = tuple(settings["cors_origins"])
    site.access_log = settings["access_log"]
    # Observers of finished requests (metrics), larger body limits of some
    # paths (the attachment plugin's uploads).
    site.observers = tuple(app.registry.request_observers)
    site.body_limits = tuple(app.registry.body_limits)
    site.displayTracebacks = False
    return site


def settle_collector() -> int:
    """
    Move everything the server built at start-up (modules, plugins, routes,
    settings: tens of thousands of objects that live as long as the process)
    out of the cyclic garbage collector's reach, so that its full collections
    only walk what requests create. Without it each full collection walked
    them all, a pause of about 20 ms every few hundred requests: the p99
    latency of a list request under load was five times its median. The
    price: an object alive at this moment that later ends up in a reference
    cycle is never reclaimed (start-up objects only: a bounded, one-time
    cost). Returns how many objects were set aside.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def parse_tcp(description: str) -> tuple[int, str, int]:
    """C{(family, host, port)} of a C{tcp:PORT[:interface=HOST]} (or tcp6) description."""
    parts = description.split(":")
    kind = parts[0]
    if kind not in ("tcp", "tcp6") or len(parts) < 2:
        raise ValueError(f"--workers and --reuse-port need a tcp:PORT endpoint, got {description!r}")
    try:
        port = int(parts[1])
    except ValueError:
        raise ValueError(f"bad port in {description!r}") from None
    if port == 0:
        raise ValueError("--workers and --reuse-port need a fixed port, not 0")
    host = "::" if kind == "tcp6" else "0.0.0.0"
    for part in parts[2:]:
        key, _, value = part.partition("=")
        if key == "interface":
            host = value
    family = socket.AF_INET6 if kind == "tcp6" or ":" in host else socket.AF_INET
    return family, host, port


def listen_reusing_port(reactor, description: str, factory):
    """Listen with SO_REUSEPORT: the kernel spreads connections over every process listening."""
    family, host, port = parse_tcp(description)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()


class _ReactorMixin:
    """The reactor given at construction, or the global one, imported only when used."""

    _reactor = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor


class JsonSyncService(_ReactorMixin, service.Service):
    def __init__(self, settings, discovered, listen: str, reactor=None, reuse_port: bool = False):
        self.settings = settings
        self.discovered = discovered
        self.listen = listen
        self.reuse_port = reuse_port
        self._reactor = reactor
        self.app: JsonSyncApp | None = None
        self.port: IListeningPort | None = None
        self.ready: defer.Deferred = defer.Deferred()

    def startService(self):
        super().startService()
        d = defer.Deferred.fromCoroutine(self._start())
        d.addErrback(self._failed)

    async def _start(self):
        from jsonsync.server import build

        self.app = await build(self.settings, self.reactor, self.discovered)
        site = make_site(self.app, self.settings)
        port: IListeningPort
        if self.reuse_port:
            port = self.port = listen_reusing_port(self.reactor, self.listen, site)
            self._watch_parent()
        else:
            endpoint = serverFromString(self.reactor, self.listen)
            port = self.port = await endpoint.listen(site)
        address = port.getHost()
        settle_collector()
        _log.info(
            "jsonsync listening on {host}:{port} (storage: {storage}, plugins: {plugins})",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
            storage=self.settings["storage_backend"],
            plugins=" ".join(self.settings["includes"]) or "none",
        )
        self.ready.callback(self.port)

    def _watch_parent(self):
        """A worker whose parent died (even by SIGKILL) stops instead of lingering."""
        from twisted.internet.task import LoopingCall

        parent = os.getppid()

        def check():
            if os.getppid() != parent and self.reactor.running:
                _log.warn("parent process {pid} is gone; stopping", pid=parent)
                self.reactor.stop()

        self._parent_watch = LoopingCall(check)
        self._parent_watch.clock = self.reactor
        self._parent_watch.start(1.0, now=False)

    # Set by twist jsonsync: reports the failure in one line and ends the
    # process with a non-zero status (instead of a traceback and a process
    # left running with nothing listening). Given a Failure.
    on_start_failure: Callable[[Any], object] | None = None

    def _failed(self, failure):
        if self.on_start_failure is not None:
            if not self.ready.called:
                self.ready.errback(failure)
                self.ready.addErrback(lambda _: None)
            self.on_start_failure(failure)
            return
        _log.failure("jsonsync could not start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        watch = getattr(self, "_parent_watch", None)
        if watch is not None and watch.running:
            watch.stop()
        if self.port is not None:
            stopped = self.port.stopListening()  # None when it stopped at once
            if stopped is not None:
                await stopped
        if self.app is not None:
            await self.app.registry.close()


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, workers: Workers, number: int):
        self.workers = workers
        self.number = number

    def processEnded(self, reason):
        self.workers.ended(self, getattr(reason.value, "exitCode", None))


class Workers(_ReactorMixin, service.MultiService):
    """
    The first process serves like any other and starts C{count - 1} more
    with the same configuration, all listening on one port with
    SO_REUSEPORT. A worker that dies is started again; stopping this
    service stops them all.
    """

    def __init__(self, main: JsonSyncService, count: int, child_args: list[str], reactor=None):
        super().__init__()
        main.reuse_port = True
        main.setServiceParent(self)
        self.count = count
        self.child_args = child_args
        self._reactor = reactor
        self.children: dict[int, IProcessTransport] = {}
        self.stopping = False

    def startService(self):
        super().startService()
        for number in range(1, self.count):
            self.spawn(number)

    def spawn(self, number: int):
        proto = _WorkerProtocol(self, number)
        transport = self.reactor.spawnProcess(
            proto, sys.executable, [sys.executable, *self.child_args], env=os.environ,
            childFDs={0: "w", 1: 1, 2: 2},
        )
        self.children[number] = transport
        _log.info("started worker {number} (pid {pid})", number=number, pid=transport.pid)

    # Set by twist jsonsync: called when a worker reports that it could not start.
    on_start_failure: Callable[[str], object] | None = None

    def ended(self, proto: _WorkerProtocol, status: int | None = None):
        self.children.pop(proto.number, None)
        if not self.stopping and status == START_FAILED and self.on_start_failure is not None:
            # Starting it again would fail the same way: stop the whole server.
            self.on_start_failure(f"worker {proto.number} could not start")
        elif not self.stopping:
            _log.warn("worker {number} ended; starting it again", number=proto.number)
            self.reactor.callLater(1, self.spawn, proto.number)

    def stopService(self):
        self.stopping = True
        for transport in list(self.children.values()):
            try:
                transport.signalProcess("TERM")
            except Exception:
                pass
        return super().stopService()
