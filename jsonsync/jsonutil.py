"""
JSON in and out.

orjson parses and writes several times faster than the standard library,
which matters on every request; it is used except where it would change a
value: integers beyond 64 bits, which orjson turns into floats on input and
refuses on output. Those (rare) documents go through the standard library,
so nothing a client stored is ever altered.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_INT = re.compile(rb"\d{19,}")


class JSONError(ValueError):
    pass


def _no_constants(name):
    raise JSONError(f"{name} is not valid JSON")


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; L{JSONError} on anything that is not strict JSON."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    try:
        if _LONG_INT.search(data) is None:
            return orjson.loads(data)
        return json.loads(data, parse_constant=_no_constants)
    except JSONError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise JSONError(str(e)) from None


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def depth(value: Any, limit: int) -> bool:
    """Whether C{value} nests containers no deeper than C{limit}."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return False
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, level + 1))
    return True


def has_nul(value: Any) -> bool:
    """Whether a NUL character hides in any string (key or value) of C{value}."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
