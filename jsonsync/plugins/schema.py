"""
The C{schema} plugin: JSON Schema validation of records against their
collection's C{schema} and their bucket's C{record:schema}, of collections
against C{collection:schema} and of groups against C{group:schema}.

Validators are compiled once per schema version and cached; large
documents are validated in a thread so the reactor never stalls.
"""

from __future__ import annotations

from collections import OrderedDict

import jsonschema
from jsonschema.validators import validator_for
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from jsonsync.errors import InvalidParameters
from jsonsync.interfaces import IJsonSyncPlugin

_IGNORED = ("last_modified", "schema")
_BIG = 20_000  # characters of repr: beyond this, validate in a thread


class _Validators:
    """A small LRU of compiled validators keyed by (uri, version)."""

    def __init__(self, size=256):
        self._cache: OrderedDict = OrderedDict()
        self._size = size

    def get(self, key, schema):
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        cls = validator_for(schema, default=jsonschema.validators.validator_for({}))
        found = cls(schema)
        self._cache[key] = found
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return found


def _error_details(error: jsonschema.ValidationError) -> InvalidParameters:
    if error.validator == "required" and error.path is not None and not error.path:
        missing = error.message.split("'")[1] if "'" in error.message else None
        name = missing
    else:
        name = ".".join(str(p) for p in error.path) or None
    return InvalidParameters("body", name, error.message)


async def _validate(validator, instance):
    def run():
        return jsonschema.exceptions.best_match(validator.iter_errors(instance))

    if len(repr(instance)) > _BIG:
        error = await deferToThread(run)
    else:
        error = run()
    if error is not None:
        raise _error_details(error)


def _instance(data: dict, schema: dict) -> dict:
    instance = {k: v for k, v in data.items() if k not in _IGNORED}
    if "id" not in schema.get("properties", {}):
        instance.pop("id", None)
    return instance


@implementer(IJsonSyncPlugin)
class SchemaPlugin:
    name = "schema"
    settings: dict = {}

    def install(self, registry, settings):
        cache = _Validators()
        storage = registry.storage

        # A write validated against a schema commits only while that schema
        # is still the stored one (storage.guard): a schema changed
        # meanwhile makes the request run again, against the new schema.
        async def bucket_schema(req, bucket_id, field):
            bucket = await storage.get(req.txn, "bucket", "", bucket_id)
            schema = bucket.get(field) if bucket else None
            if isinstance(schema, dict) and schema:
                await storage.guard(req.txn, "bucket", "", bucket_id, bucket["last_modified"])
                return cache.get((f"/buckets/{bucket_id}", field, bucket["last_modified"]), schema), schema
            return None, None

        async def validate_record(req, loc, data, existing):
            (_, bid), (_, cid) = loc.ancestors[0], loc.ancestors[1]
            data = {k: v for k, v in data.items() if k != "schema"}
            collection = await storage.get(req.txn, "collection", f"/buckets/{bid}", cid)
            schema = collection.get("schema") if collection else None
            if isinstance(schema, dict) and schema:
                await storage.guard(req.txn, "collection", f"/buckets/{bid}", cid, collection["last_modified"])
                key = (f"/buckets/{bid}/collections/{cid}", "schema", collection["last_modified"])
                await _validate(cache.get(key, schema), _instance(data, schema))
                data["schema"] = collection["last_modified"]
            validator, bschema = await bucket_schema(req, bid, "record:schema")
            if validator is not None:
                await _validate(validator, _instance(data, bschema))
            return data

        def for_bucket_field(field):
            async def check(req, loc, data, existing):
                bid = loc.ancestors[0][1]
                validator, schema = await bucket_schema(req, bid, field)
                if validator is not None:
                    await _validate(validator, _instance(data, schema))
                return data

            return check

        registry.resource_types["record"].validators.append(validate_record)
        registry.resource_types["collection"].validators.append(for_bucket_field("collection:schema"))
        registry.resource_types["group"].validators.append(for_bucket_field("group:schema"))
        registry.add_capability(
            "schema",
            "Validates collection records with JSON schemas.",
            "https://kinto.readthedocs.io/en/latest/api/1.x/collections.html#collection-json-schema",
        )
