"""
The C{default_bucket} plugin: C{/buckets/default} is each user's personal
bucket, created (with the collections reached through it) on first use.

The bucket id is derived from the prefixed user id exactly as Kinto does
(HMAC-SHA256 keyed by C{default_bucket_hmac_secret}, empty by default,
formatted as a UUID), so a user's bucket keeps its id when they move from a
Kinto server to jsonsync.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

from zope.interface import implementer

from jsonsync import events
from jsonsync.auth import challenges
from jsonsync.errors import (
    InvalidParameters,
    ObjectExists,
    Unauthenticated,
)
from jsonsync.http import API_PREFIX
from jsonsync.interfaces import IJsonSyncPlugin
from jsonsync.registry import Route
from jsonsync.resources.engine import Engine
from jsonsync.resources.model import NAME_PATTERN, Location

_THROUGH_COLLECTION = re.compile(r"^collections/([^/]+)(/.*)?$")
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def default_bucket_id(secret: str, user_id: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return str(uuid.UUID(hex=digest[:32]))


@implementer(IJsonSyncPlugin)
class DefaultBucketPlugin:
    name = "default_bucket"
    settings = {"default_bucket_hmac_secret": ""}

    def install(self, registry, settings):
        secret = settings["default_bucket_hmac_secret"]
        bucket_type = registry.resource_types["bucket"]
        collection_type = registry.resource_types["collection"]

        async def ensure(req, rt, parent_uri, ancestors, oid):
            """Create an implicit object (owned by the user) unless it exists."""
            storage = registry.storage
            if await storage.get(req.txn, rt.name, parent_uri, oid) is not None:
                return
            loc = Location(rt, parent_uri, ancestors, oid)
            try:
                # within: a bucket deleted meanwhile refuses the implicit
                # collection (the request then runs again) instead of
                # leaving it orphaned.
                obj = await storage.create(
                    req.txn, rt.name, parent_uri, {"id": oid}, within=Engine.ancestry(loc)
                )
            except ObjectExists:
                return  # created meanwhile by a concurrent request
            await registry.permissions.replace_object_permissions(req.txn, loc.uri, {"write": [req.user_id]})
            events.notify(req, "create", loc, [{"new": obj}], obj["last_modified"])

        async def view(req):
            if not req.authenticated:
                raise Unauthenticated(challenges(registry))
            bid = default_bucket_id(secret, req.user_id)
            sub = req.params.get("subpath", "")
            target = f"{API_PREFIX}/buckets/{bid}" + (f"/{sub}" if sub else "")
            if not (req.method == "PUT" and not sub):
                await ensure(req, bucket_type, "", [], bid)
            through = _THROUGH_COLLECTION.match(sub)
            if through is not None:
                cid = through.group(1)
                if not NAME_PATTERN.match(cid):
                    raise InvalidParameters("path", None, "Invalid collection id")
                if not (req.method == "PUT" and not through.group(2)):
                    await ensure(req, collection_type, f"/buckets/{bid}", [(bucket_type, bid)], cid)
            if not sub and req.body:
                body = req.json()
                if isinstance(body, dict) and isinstance(body.get("data"), dict) and body["data"].get("id") == "default":
                    body["data"]["id"] = bid
                    req.set_json(body)
            return await registry.dispatch(req, target)

        registry.add_route(Route("/buckets/default", ALL_METHODS, view, "default-bucket", "resource",
                                 summary="The user's personal bucket"))
        registry.add_route(Route("/buckets/default/<path:subpath>", ALL_METHODS, view, "default-bucket-sub",
                                 "resource", summary="Objects in the user's personal bucket"))

        def hello(req, doc):
            if req.authenticated and "user" in doc:
                doc["user"]["bucket"] = default_bucket_id(secret, req.user_id)

        registry.add_hello_extension(hello)
        registry.add_capability(
            "default_bucket",
            "The default bucket is an alias for a personal bucket where collections are created implicitly.",
            "https://kinto.readthedocs.io/en/latest/api/1.x/buckets.html#personal-bucket-default",
        )
