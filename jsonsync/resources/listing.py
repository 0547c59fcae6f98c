"""
Lists for the engine's verbs: the querystring of a list request, one page
of it with its Next-Page URL, the single-use DELETE pagination tokens, and
the cache headers of anonymous reads.
"""

from __future__ import annotations

from jsonsync.errors import (
    InvalidParameters,
)
from jsonsync.http import (
    ApiRequest,
    http_date,
)
from jsonsync.jsonutil import Encoded, EncodedPage, decoded
from jsonsync.query import Query
from jsonsync.resources import querystring
from jsonsync.resources.access import Access
from jsonsync.resources.model import (
    Location,
)


class Listing(Access):
    """The engine's part that pages through lists (on top of access decisions)."""

    def list_request(self, req: ApiRequest, loc: Location) -> querystring.ListRequest:
        return querystring.parse_list_request(
            req.query,
            paginate_by=self.settings("paginate_by"),
            max_fetch=self.settings("storage_max_fetch_size", 10000),
            strict_fields=loc.resource.strict_fields,
            limits=querystring.QueryLimits.of(self.registry.settings),
        )

    @staticmethod
    def page_query(listing: querystring.ListRequest, ids: frozenset[str] | None) -> Query:
        """The query of one page (one object more than the page, to know whether another follows)."""
        query: Query = listing.query
        query.ids = ids
        query.limit = listing.limit + 1
        return query

    async def fetch_page(
        self, req: ApiRequest, loc: Location, listing: querystring.ListRequest, ids: frozenset[str] | None,
        snapshot: bool = False, encoded: bool = False, ahead=None,
    ):
        """
        One page and its Next-Page URL; with C{snapshot}, also the list
        timestamp the page is consistent with (C{(objects, next, timestamp)}),
        and with C{encoded} the objects may be L{Encoded} (only sent on).
        C{ahead}: the C{(timestamp, objects)} of that page, already read.
        """
        query = self.page_query(listing, ids)
        limit = listing.limit
        timestamp = None
        if ahead is not None:
            timestamp, objects = ahead
        elif snapshot:
            if encoded:
                timestamp, objects = await self.storage.list_snapshot(
                    req.txn, loc.resource.name, loc.parent_uri, query, encoded=True
                )
            else:
                timestamp, objects = await self.storage.list_snapshot(
                    req.txn, loc.resource.name, loc.parent_uri, query
                )
        else:
            objects = await self.storage.list(req.txn, loc.resource.name, loc.parent_uri, query)
        next_page = None
        if isinstance(objects, EncodedPage):
            more = objects.found > limit
            if more:
                # The query found one object more than the page: the page's
                # last one came, its text is kept.
                assert objects.last is not None
                last_object = Encoded(objects.last)
        else:
            more = len(objects) > limit
            if more:
                objects = objects[:limit]
                last_object = objects[-1]
        if more:
            last = querystring.last_object_of(decoded(last_object), query.sorting)
            params = [(k, v) for k, v in req.query if k not in ("_limit", "_token")]
            params.append(("_limit", str(limit)))
            params.append(("_token", querystring.encode_token(last)))
            next_page = req.url(query=params)
        if snapshot:
            return objects, next_page, timestamp
        return objects, next_page

    async def cache_headers(self, req: ApiRequest, loc: Location) -> list[tuple[str, str]]:
        """
        Anonymous reads may be cached when the operator says so
        (C{<resource>_cache_expires_seconds}) or the resource type's
        C{cache_expiry} hook does (records: see
        L{jsonsync.resources.core.record_cache_expiry}); the largest value wins.
        """
        if req.authenticated:
            return []
        rt = loc.resource
        candidates = [self.registry.settings.get(f"{rt.name}_cache_expires_seconds")]
        if rt.cache_expiry is not None:
            candidates += await rt.cache_expiry(req, loc)
        values = [v for v in candidates if isinstance(v, int) and not isinstance(v, bool)]
        if not values:
            return []
        ttl = max(values)
        if ttl <= 0:
            return [("Cache-Control", "max-age=0, must-revalidate, no-cache, no-store"), ("Pragma", "no-cache")]
        expires = http_date((querystring.now_ms() // 1000 + ttl) * 1000)
        return [("Cache-Control", f"max-age={ttl}"), ("Expires", expires)]


    def spend_token(self, req: ApiRequest, listing: querystring.ListRequest) -> None:
        """
        DELETE pagination tokens are single use and expire: a reused one
        would delete objects that were never on the page the client saw.
        Used nonces are remembered per process for the token validity (a
        request run again after a write conflict may use its own again).
        """
        if not listing.token_given:
            return
        validity = self.settings("pagination_token_validity_seconds", 600) * 1000
        now = querystring.now_ms()
        used = self._used_tokens
        for nonce, expiry in list(used.items()):
            if expiry < now:
                del used[nonce]
        expired = listing.token_issued is not None and listing.token_issued + validity < now
        reused = listing.token_nonce in used and listing.token_nonce != req.spent_token
        if expired or not listing.token_nonce or reused:
            raise InvalidParameters("querystring", "_token", "_token was already used or has expired.")
        used[listing.token_nonce] = now + validity
        req.spent_token = listing.token_nonce

