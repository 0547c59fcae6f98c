"""
The domain exceptions jsonsync raises, from storage to views.

None of them knows a status code, and this module imports nothing of
jsonsync: L{jsonsync.http} holds the one table that maps each to its HTTP
status and errno, and the one function that renders Kinto's error body.
"""

from __future__ import annotations

from typing import Any


class JsonSyncError(Exception):
    """Base of every error jsonsync reports to a client."""

    message: str | None = None

    def __init__(self, message: str | None = None, details: Any = None):
        super().__init__(message or self.message or self.__class__.__name__)
        if message is not None:
            self.message = message
        self.details = details


class InvalidParameters(JsonSyncError):
    """
    Bad input. C{details} is a list of C{{"location", "name",
    "description"}} mappings.
    """

    def __init__(self, location: str, name: str | None, description: str, more=()):
        items = [{"location": location, "name": name, "description": description}]
        items.extend(more)
        items.sort(key=lambda d: d["name"] or "")
        super().__init__(_describe(items[0]), items)


def _describe(item: dict) -> str:
    name, location, text = item["name"], item["location"], item["description"]
    if name is None:
        return f"{location}: {text}"
    if name in text:
        return text
    return f"{name} in {location}: {text}"


class InvalidPostedData(InvalidParameters):
    """
    A posted form is not what the endpoint takes (Kinto's errno 109,
    C{INVALID_POSTED_DATA}: kinto-attachment's answer to a missing file or
    a bad form field).
    """


class ValueRefused(InvalidParameters):
    """
    A storage backend refused a value the JSON layer accepted (a NUL in a
    string, an integer beyond what the backend stores). Storage raises this
    without knowing where the value came from; the client sees it as bad
    input in the request body.
    """

    def __init__(self, description: str):
        super().__init__("body", None, description)


class NotAcceptable(InvalidParameters):
    def __init__(self, accepted=("application/json",)):
        super().__init__(
            "header", "Accept", "Accept header should be one of " + ", ".join(accepted)
        )


class UnsupportedMediaType(InvalidParameters):
    def __init__(self, content_type: str, accepted=("application/json",)):
        super().__init__(
            "header",
            "Content-Type",
            f"Content-Type header should be one of {', '.join(accepted)}"
            + (f" (got {content_type!r})" if content_type else ""),
        )


class Unauthenticated(JsonSyncError):
    message = "Please authenticate yourself to use this endpoint."

    def __init__(self, challenges=(), message=None):
        super().__init__(message)
        self.challenges = list(challenges)


class Forbidden(JsonSyncError):
    message = "This user cannot access this resource."


class ObjectNotFound(JsonSyncError):
    """The object of an object URL does not exist."""

    message = None

    def __init__(self, resource_name: str, object_id: str):
        super().__init__(None, {"id": object_id, "resource_name": resource_name})
        self.resource_name = resource_name
        self.object_id = object_id


class ParentNotFound(ObjectNotFound):
    """An object on the path above the target does not exist."""


class RouteNotFound(JsonSyncError):
    message = "The resource you are looking for could not be found."


class VersionNotAvailable(JsonSyncError):
    message = "The requested API version is not available on this server."


class MethodNotAllowed(JsonSyncError):
    message = "Method not allowed on this endpoint."

    def __init__(self, allowed=(), message=None):
        super().__init__(message)
        self.allowed = sorted(set(allowed))


class PreconditionFailed(JsonSyncError):
    message = "Resource was modified meanwhile"

    def __init__(self, existing: dict | None = None, timestamp: int | None = None):
        super().__init__(None, {"existing": existing} if existing is not None else None)
        self.timestamp = timestamp


class ObjectExists(JsonSyncError):
    """A create met a live object with the same id (an integrity error)."""

    message = "Integrity constraint violated, please retry."


class WriteConflict(JsonSyncError):
    """
    A write found its object (or its list) changed since the reads it
    decided on: the request is run again from the start (see
    L{jsonsync.app.JsonSyncApp.process}); a client only sees this error
    when every attempt met a concurrent writer.

    C{lists}: the C{(resource_name, parent_id)} lists the next attempt
    should lock before it reads, so that it cannot meet the same conflict;
    C{shared}: those it should lock in shared mode (backend-defined keys).
    """

    message = "The object was modified meanwhile by another request, please retry."

    def __init__(self, lists=(), message: str | None = None, deadlock: bool = False, shared=()):
        super().__init__(message)
        self.lists = frozenset(lists)
        self.shared = frozenset(shared) - self.lists
        # The backend found (and broke) a deadlock: a cost its lock order
        # is meant to avoid, worth seeing in tests.
        self.deadlock = deadlock


class RequestTooLarge(JsonSyncError):
    message = "Request body too large."


class RequestLineTooLong(JsonSyncError):
    """The request line (method, target with its query string, version) is over the limit."""

    message = "Request line too long."


class RequestHeadTimeout(JsonSyncError):
    """The request head did not arrive whole within the time allowed."""

    message = "The request head was not received in time."


class HeaderFieldsTooLarge(JsonSyncError):
    """The header section is over the size or count limit."""

    message = "Request header fields too large."


class BackendUnavailable(JsonSyncError):
    message = (
        "Service temporary unavailable due to overloading or maintenance, please retry later."
    )


class ServiceDeprecated(JsonSyncError):
    message = "The service you are trying to connect no longer exists at this location."


class ListenerRejected(JsonSyncError):
    """A before-commit listener refused the change; its message is shown."""


class UnexpectedError(JsonSyncError):
    message = "A programmatic error occurred, developers have been informed."
