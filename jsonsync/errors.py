"""
Domain exceptions, the one table that maps them to HTTP, and the one
function that renders Kinto's error body.

Code anywhere in jsonsync raises the exceptions below; none of them knows a
status code. L{render} is the only place where an exception becomes a
response.
"""

from __future__ import annotations

from http import HTTPStatus
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


# exception class -> (HTTP status, errno); the most specific class wins.
ERRORS: dict[type, tuple[int, int]] = {
    NotAcceptable: (406, 107),
    UnsupportedMediaType: (415, 107),
    InvalidParameters: (400, 107),
    Unauthenticated: (401, 104),
    Forbidden: (403, 121),
    ParentNotFound: (404, 111),
    ObjectNotFound: (404, 110),
    RouteNotFound: (404, 111),
    VersionNotAvailable: (404, 116),
    MethodNotAllowed: (405, 115),
    PreconditionFailed: (412, 114),
    ObjectExists: (409, 122),
    WriteConflict: (409, 122),
    RequestTooLarge: (413, 113),
    RequestHeadTimeout: (408, 107),
    RequestLineTooLong: (414, 113),
    HeaderFieldsTooLarge: (431, 113),
    BackendUnavailable: (503, 201),
    ServiceDeprecated: (410, 202),
    ListenerRejected: (400, 107),
    UnexpectedError: (500, 999),
}


def status_of(exc: JsonSyncError) -> tuple[int, int]:
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return ERRORS[UnexpectedError]


def error_body(exc: JsonSyncError, info_link: str | None = None) -> tuple[int, dict]:
    """
    Kinto's error body for C{exc}: C{code}, C{errno}, C{error}, and
    C{message}, C{info}, C{details} when they have something to say.
    """
    status, errno = status_of(exc)
    body: dict[str, Any] = {
        "code": status,
        "errno": errno,
        "error": HTTPStatus(status).phrase,
    }
    if isinstance(exc, InvalidParameters) and status == 400:
        body["error"] = "Invalid parameters"
    if exc.message:
        body["message"] = exc.message
    if status == 500 and info_link:
        body["info"] = info_link
    if exc.details is not None:
        body["details"] = exc.details
    return status, body


def error_headers(exc: JsonSyncError, retry_after: int) -> list[tuple[str, str]]:
    """The headers an error carries beside its body."""
    headers = []
    if isinstance(exc, Unauthenticated):
        headers.extend(("WWW-Authenticate", c) for c in exc.challenges)
    elif isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers.append(("Allow", ", ".join(exc.allowed)))
    elif isinstance(exc, (BackendUnavailable, ObjectExists, WriteConflict)):
        headers.append(("Retry-After", str(retry_after)))
    elif isinstance(exc, PreconditionFailed) and exc.timestamp is not None:
        from jsonsync.http import validators

        headers.extend(validators(exc.timestamp))
    return headers
