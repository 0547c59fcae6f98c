"""
An example jsonsync plugin, written against the public plugin API
(L{jsonsync.interfaces.IRegistry}) alone. It

  - declares a resource type, notes kept in buckets
    (C{/v1/buckets/<bid>/notes/<id>}), with its own validation: the engine
    serves every verb of it, with Kinto's permissions, preconditions,
    tombstones, filtering and paging;
  - counts the records created on the server (a listener told after each
    commit) and serves the count at C{GET /v1/hello/counts} (a route);
  - announces itself in the hello view (a capability).
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from jsonsync.errors import InvalidParameters
from jsonsync.http import ApiResponse
from jsonsync.interfaces import IJsonSyncPlugin, IResourceListener
from jsonsync.registry import Route
from jsonsync.resources.model import ResourceType

MAX_NOTE_LENGTH = 1000


async def check_note(request, location, data, existing):
    """A note is a C{text} of at most MAX_NOTE_LENGTH characters (and whatever else the client adds)."""
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidParameters("body", "data.text", "data.text in body: a note needs a text")
    if len(text) > MAX_NOTE_LENGTH:
        raise InvalidParameters("body", "data.text", f"data.text in body: at most {MAX_NOTE_LENGTH} characters")
    return data


# Notes live in buckets: whoever may write a bucket may create notes in it,
# whoever may read it reads them, and a note's own ACL can share it further.
NOTE = ResourceType("note", "notes", "bucket", ("read", "write"), validate=check_note)


@implementer(IResourceListener)
class CreationCounter:
    actions = {"create"}
    resource_names = {"record"}

    def __init__(self):
        self.created = 0

    async def before_commit(self, event, txn):
        # Refuse records whose title is "forbidden": the whole request rolls back.
        from jsonsync.errors import ListenerRejected

        for change in event.impacted_objects:
            if change["new"].get("title") == "forbidden":
                raise ListenerRejected("hello plugin: this title is not allowed")

    async def after_commit(self, event):
        self.created += len(event.impacted_objects)


@implementer(IPlugin, IJsonSyncPlugin)
class HelloPlugin:
    name = "hello"
    settings = {"hello.greeting": "hello"}

    def install(self, registry, settings):
        counter = CreationCounter()
        greeting = settings["hello.greeting"]

        async def counts(request):
            return ApiResponse({"greeting": greeting, "records_created": counter.created})

        # The type and its two endpoints (plural and object), served by the engine.
        registry.add_resource_type(NOTE)
        registry.add_listener(counter)
        registry.add_route(Route("/hello/counts", ("GET",), counts, "hello-counts", summary="Records created"))
        registry.add_capability(
            "hello", "Notes in buckets; counts the records created since start.", "https://example.org/hello"
        )
