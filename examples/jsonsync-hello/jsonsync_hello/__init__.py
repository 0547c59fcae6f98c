"""
An example jsonsync plugin. It counts the records created on the server
(a listener told after each commit), serves the count at
C{GET /v1/hello/counts} (a route) and announces itself in the hello view
(a capability).
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from jsonsync.http import ApiResponse
from jsonsync.interfaces import IJsonSyncPlugin, IResourceListener
from jsonsync.registry import Route


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

        registry.add_listener(counter)
        registry.add_route(Route("/hello/counts", ("GET",), counts, "hello-counts", summary="Records created"))
        registry.add_capability("hello", "Counts the records created since start.", "https://example.org/hello")
