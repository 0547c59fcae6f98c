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
from collections.abc import Iterable
from typing import Any

import orjson

# Integers of 19 digits or more may not fit in 64 bits. To find them, map
# every digit to "0" and everything else to a space (bytes.translate runs in
# C at memory speed, many times faster than a regular expression), then look
# for 19 zeros in a row.
_DIGIT_MAP = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


class JSONError(ValueError):
    pass


def _no_constants(name):
    raise JSONError(f"{name} is not valid JSON")


def loads(data: bytes | str) -> Any:
    """Parse one JSON document; L{JSONError} on anything that is not strict JSON."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    try:
        if _LONG_RUN not in data.translate(_DIGIT_MAP):
            return orjson.loads(data)
        value = json.loads(data, parse_constant=_no_constants)
        # orjson refuses an unpaired surrogate escape ("\ud800"); the
        # standard library keeps it, and no UTF-8 writer could store it.
        if b"\\u" in data and _has_lone_surrogate(value):
            raise JSONError("unpaired surrogate in a string")
        return value
    except JSONError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise JSONError(str(e)) from None


class Encoded:
    """
    A JSON value kept as the text a backend holds it in: written into a
    response as it is, parsed only if someone needs the value.
    """

    __slots__ = ("text",)

    def __init__(self, text: str | bytes):
        self.text = text

    def decode(self) -> Any:
        return loads(self.text)

    def __repr__(self):
        return f"Encoded({self.text!r})"


class EncodedPage:
    """
    A page of objects kept as JSON text: the objects joined by commas,
    how many the query found (one more than the page says another page
    follows) and the text of the page's last object.
    """

    __slots__ = ("joined", "found", "last")

    def __init__(self, joined: str, found: int, last: str | None):
        self.joined = joined
        self.found = found
        self.last = last


def decoded(value: Any) -> Any:
    """C{value} itself, or the value an L{Encoded} stands for."""
    return value.decode() if isinstance(value, Encoded) else value


def _fragment(value: Any) -> Any:
    if isinstance(value, Encoded):
        return orjson.Fragment(value.text)
    if isinstance(value, EncodedPage):
        return orjson.Fragment("[" + value.joined + "]")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _plain(value: Any) -> Any:
    if isinstance(value, Encoded):
        return value.decode()
    if isinstance(value, EncodedPage):
        return loads("[" + value.joined + "]")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_fragment)
    except TypeError:
        return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def depth(value: Any, limit: int) -> bool:
    """Whether C{value} nests containers no deeper than C{limit}."""
    stack = [(value, 1)]
    children: Iterable[Any]
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


def _has_lone_surrogate(value: Any) -> bool:
    return _any_string(value, lambda s: not s.isascii() and any("\ud800" <= c <= "\udfff" for c in s))


def has_nul(value: Any) -> bool:
    """Whether a NUL character hides in any string (key or value) of C{value}."""
    return _any_string(value, lambda s: "\x00" in s)


def _any_string(value: Any, test) -> bool:
    """Whether C{test} holds for any string (key or value) of C{value}."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if test(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
