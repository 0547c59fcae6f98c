"""
The running server: builds the application once the reactor runs, listens,
and closes the backends on stop.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import server

from jsonsync.http import LimitedRequest

_log = Logger()


class QuietSite(server.Site):
    """A site whose access log can be switched off (it costs about a fifth of the throughput)."""

    access_log = True

    def log(self, request):
        if self.access_log:
            super().log(request)


def make_site(app, settings) -> server.Site:
    site = QuietSite(app.resource())
    site.requestFactory = LimitedRequest
    site.max_body = settings["max_request_body_bytes"]
    site.access_log = settings["access_log"]
    site.displayTracebacks = False
    return site


class JsonSyncService(service.Service):
    def __init__(self, settings, discovered, listen: str, reactor=None):
        self.settings = settings
        self.discovered = discovered
        self.listen = listen
        self._reactor = reactor
        self.app = None
        self.port = None
        self.ready: defer.Deferred = defer.Deferred()

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self):
        super().startService()
        d = defer.Deferred.fromCoroutine(self._start())
        d.addErrback(self._failed)

    async def _start(self):
        from jsonsync.server import build

        self.app = await build(self.settings, self.reactor, self.discovered)
        site = make_site(self.app, self.settings)
        endpoint = serverFromString(self.reactor, self.listen)
        self.port = await endpoint.listen(site)
        address = self.port.getHost()
        _log.info(
            "jsonsync listening on {host}:{port} (storage: {storage}, plugins: {plugins})",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
            storage=self.settings["storage_backend"],
            plugins=" ".join(self.settings["includes"]) or "none",
        )
        self.ready.callback(self.port)

    def _failed(self, failure):
        _log.failure("jsonsync could not start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        if self.port is not None:
            await self.port.stopListening()
        if self.app is not None:
            await self.app.registry.close()
