"""
Resource events: collected while a request (or a whole batch) runs, merged
per resource, action and parent, handed to the listeners before the commit
(inside the transaction) and after it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from jsonsync.interfaces import IResourceEvent

_log = Logger()

WRITE_ACTIONS = frozenset({"create", "update", "delete"})


@implementer(IResourceEvent)
class ResourceEvent:
    def __init__(self, action, resource_name, parent_id, user_id, timestamp, impacted, payload):
        self.action = action
        self.resource_name = resource_name
        self.parent_id = parent_id
        self.user_id = user_id
        self.timestamp = timestamp
        self.impacted_objects = impacted
        self.payload = payload

    def __repr__(self):
        return (
            f"<ResourceEvent {self.action} {self.resource_name} under {self.parent_id!r}: "
            f"{len(self.impacted_objects)} objects>"
        )


def wanted(registry, action: str) -> bool:
    """Whether any listener subscribes to C{action} (reads are skipped unless one does)."""
    for listener in registry.listeners:
        actions = listener.actions if listener.actions is not None else WRITE_ACTIONS
        if action in actions:
            return True
    return False


def notify(request, action: str, location, impacted, timestamp: int) -> None:
    """
    Record an event on the request's context, merged with an earlier alike
    one. C{impacted} may be a callable building the list, so that reads
    nobody listens to cost nothing.
    """
    if action == "read" and request.registry is not None and not wanted(request.registry, "read"):
        return
    if callable(impacted):
        impacted = impacted()
    ctx = request.ctx
    resource_name = location.resource.name
    for event in ctx.events:
        if (
            event.action == action
            and event.resource_name == resource_name
            and event.parent_id == location.parent_uri
        ):
            event.impacted_objects.extend(impacted)
            event.timestamp = max(event.timestamp, timestamp)
            return
    payload: dict[str, Any] = {
        "timestamp": timestamp,
        "action": action,
        "uri": request.path[len("/v1") :] if request.path.startswith("/v1") else request.path,
        "user_id": request.user_id,
        "resource_name": resource_name,
        **location.payload(),
    }
    ctx.events.append(
        ResourceEvent(
            action, resource_name, location.parent_uri, request.user_id, timestamp, list(impacted), payload
        )
    )


def _wants(listener, event) -> bool:
    actions = listener.actions if listener.actions is not None else WRITE_ACTIONS
    if event.action not in actions:
        return False
    return listener.resource_names is None or event.resource_name in listener.resource_names


async def before_commit(registry, ctx) -> None:
    """
    Give every event to the listeners inside the transaction; an exception
    propagates, so the request rolls back. Listeners may emit further events
    (they are handled in the same loop).
    """
    if not registry.listeners:
        ctx.events = []
        return
    done = 0
    while done < len(ctx.events):
        event = ctx.events[done]
        done += 1
        for listener in registry.listeners:
            if _wants(listener, event):
                await listener.before_commit(event, ctx.txn)
    events, ctx.events = ctx.events, []

    async def after():
        for event in events:
            for listener in registry.listeners:
                if _wants(listener, event):
                    try:
                        await listener.after_commit(event)
                    except Exception:
                        _log.failure(
                            "listener {listener!r} failed after commit on {event!r}",
                            listener=listener,
                            event=event,
                        )

    ctx.txn.after_commit(after)
