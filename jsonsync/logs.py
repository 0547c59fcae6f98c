"""
Logs an operator can use: readable text on a terminal, otherwise one plain
JSON object per line (C{json.loads} on each line works, unlike Twisted's
own JSON records, which start with a 0x1E byte and carry Twisted's
internals), and a short summary of each request in place of the
Apache-style access line.
"""

from __future__ import annotations

import datetime
import os
import re
import time

from twisted.logger import FileLogObserver, Logger, formatEvent, textFileLogObserver

from jsonsync import jsonutil

_log = Logger(namespace="jsonsync.request")

# Values copied from an event into its JSON line (Twisted's own keys, which
# start with log_, are left out: they hold objects, not data).
_PLAIN = (str, int, float, bool, type(None))

# A client's request id is kept only when it is short and harmless in a log
# line or a header; otherwise the server makes one.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

_SUMMARY = "{method} {path} {status} {duration_ms}ms {bytes}B user={user_id} id={request_id}"


def _time(event: dict) -> str:
    return (
        datetime.datetime.fromtimestamp(event.get("log_time") or time.time(), datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def json_line(event: dict) -> str | None:
    """One event as a JSON object on one line."""
    fields = event.get("log_summary")
    if fields is not None:
        # A request summary: one per request, so no template formatting
        # (Twisted's formatter took two thirds of the line's cost).
        record = {
            "time": _time(event),
            "level": "info",
            "namespace": "jsonsync.request",
            "message": f"{fields['method']} {fields['path']} {fields['status']}",
            **fields,
        }
        return jsonutil.dumps(record).decode() + "\n"
    record = {
        "time": _time(event),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    return jsonutil.dumps(record).decode() + "\n"


def json_lines_observer(out) -> FileLogObserver:
    return FileLogObserver(out, json_line)


def observer_factory(log_format: str, out=None):
    """The file observer factory for a C{log_format} of text, json or auto (json unless on a terminal)."""
    if log_format == "auto":
        isatty = getattr(out, "isatty", None)
        log_format = "text" if isatty is not None and isatty() else "json"
    return textFileLogObserver if log_format == "text" else json_lines_observer


def use_log_format(options, settings) -> None:
    """
    Under C{twist}, choose the observer twist installs on its log file:
    the C{log_format} setting when it is text or json, else twist's own
    C{--log-format} when given (its json meaning our JSON lines), else
    text on a terminal and JSON lines otherwise.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return
    wanted = settings.get("log_format", "auto")
    if wanted == "auto":
        explicit = parent.get("logFormat") if "fileLogObserverFactory" in parent else None
        wanted = explicit or "auto"
    parent["fileLogObserverFactory"] = observer_factory(wanted, parent.get("logFile"))


def request_id(header: str | None) -> str:
    if header is not None and _REQUEST_ID.match(header):
        return header
    return os.urandom(12).hex()


def summary(request) -> dict:
    """The fields of one request's summary (see L{QuietSite.log})."""
    api = getattr(request, "jsonsync", None)
    started = getattr(request, "jsonsync_started", None)
    return {
        "method": request.method.decode("ascii", "replace"),
        # The path only: query strings can carry tokens and filters on
        # private data, and the summary should stay short.
        "path": request.path.decode("latin-1"),
        "status": request.code,
        "errno": getattr(api, "errno", None),
        "duration_ms": round((time.monotonic() - started) * 1000, 2) if started is not None else None,
        "bytes": request.sentLength,
        "user_id": getattr(api, "user_id", None),
        "request_id": getattr(request, "jsonsync_request_id", None),
        "client": getattr(request, "jsonsync_client", None) or peer(request),
        "route": getattr(api, "route_name", None),
    }


def peer(request) -> str | None:
    """The address of the connection's other end (the client, or the nearest proxy)."""
    try:
        return request.getClientAddress().host
    except Exception:
        return None


def log_summary(fields: dict) -> None:
    _log.info(_SUMMARY, log_summary=fields, **fields)
