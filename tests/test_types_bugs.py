"""
Bugs that mypy found (issue #16): each test fails on the code before its fix.
"""

from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsonsync.resources.querystring import parse_list_request
from jsonsync.service import JsonSyncService


class ListRequestFieldsTests(SynchronousTestCase):
    """
    L{parse_list_request} fills each field of the L{ListRequest} it
    returns with what that field is for.
    """

    def test_filters_are_not_a_token_nonce(self) -> None:
        """
        A query string with filters and no C{_token} gives a request
        with no token nonce; its filters are kept as filter parameters.
        (The filter list went into the C{token_nonce} slot, positionally.)
        """
        listing = parse_list_request([("a", "1"), ("_limit", "2"), ("gt_n", "3")], paginate_by=None, max_fetch=10)
        self.assertIsNone(listing.token_nonce)
        self.assertIsNone(listing.token_issued)
        self.assertFalse(listing.token_given)
        self.assertEqual(listing.filters_params, [("a", "1"), ("gt_n", "3")])

    def test_no_filters_no_nonce(self) -> None:
        """Without filters the nonce is C{None} as well, not an empty list."""
        listing = parse_list_request([], paginate_by=5, max_fetch=10)
        self.assertIsNone(listing.token_nonce)
        self.assertEqual(listing.filters_params, [])
        self.assertEqual(listing.limit, 5)


class ServiceStopTests(TestCase):
    """L{JsonSyncService} stops with any L{IListeningPort}."""

    async def test_port_that_stops_at_once(self) -> None:
        """
        A port whose C{stopListening} completes at once returns C{None}
        (the interface allows it; twisted's own C{MemoryReactor} ports do):
        the service still stops cleanly. (It awaited that C{None}.)
        """
        reactor = MemoryReactor()
        svc = JsonSyncService({}, None, "tcp:0", reactor=reactor)
        svc.port = reactor.listenTCP(0, Factory())
        self.assertIsNone(svc.port.stopListening())
        await svc.stopService()
        self.assertIsNone(svc.app)
