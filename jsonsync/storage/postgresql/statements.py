"""
Statement text: psycopg2's placeholders rewritten into the server-side
prepared form (C{$n}) and the C{EXECUTE} calls that run it, lists sent as
array literals, and JSON as the text PostgreSQL reads. No I/O here.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import psycopg2.extensions

from jsonsync import jsonutil

# A psycopg2 placeholder: C{%(name)s} or C{%s}.
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
# Statement shapes remembered (with their prepared form); past this many
# (filters and sorts make new ones) statements are no longer prepared.
_STATEMENTS_MAX = 500
_statements: dict[str, tuple[str, str, list]] = {}
_split_cache: dict[str, list[str]] = {}


def dumps(value: Any) -> str:
    """The JSON text of C{value}, for a C{::jsonb} parameter."""
    return jsonutil.dumps(value).decode("utf-8")


# JSONB from the database: orjson where exact (jsonutil falls back to the
# standard library for integers beyond 64 bits).
loads = jsonutil.loads


def pieces(sql: str) -> list[str]:
    """The statements of C{sql}, split at each C{;} (statement texts hold none elsewhere)."""
    found = _split_cache.get(sql)
    if found is None:
        found = [piece.strip() for piece in sql.split(";") if piece.strip()]
        if len(_split_cache) < 1000:
            _split_cache[sql] = found
    return found


def prepared_form(sql: str) -> tuple[str, str, list]:
    """
    C{(name, text, order)}: a server-side prepared statement for C{sql}
    (psycopg2 placeholders turned into C{$n}), and the order in which to
    pass the parameters.
    """
    found = _statements.get(sql)
    if found is None:
        order: list = []

        def number(match):
            key = match.group(1)
            if key is None:
                order.append(None)
                return f"${len(order)}"
            if key not in order:
                order.append(key)
            return f"${order.index(key) + 1}"

        text = PLACEHOLDER.sub(number, sql)
        name = "js_" + hashlib.sha1(sql.encode("utf-8")).hexdigest()[:20]
        found = (name, text, order)
        if len(_statements) < _STATEMENTS_MAX:
            _statements[sql] = found
    return found


def render_prepared(sql: str, params, known: set[str]) -> tuple[str, list, list[tuple[str, str]]] | None:
    """
    C{sql} (one statement or several, separated by C{;}) as C{EXECUTE}s of
    prepared statements: C{(text, values, missing)}, where C{missing} lists
    the C{(name, text)} to C{PREPARE} first (those not in C{known}).
    C{None} when C{sql} should run unprepared: past L{_STATEMENTS_MAX}
    shapes, each connection would otherwise hold a plan for every one.
    """
    split = pieces(sql)
    if len(_statements) >= _STATEMENTS_MAX and any(p not in _statements for p in split):
        return None
    calls, values = [], []
    missing: list[tuple[str, str]] = []
    positional = None if isinstance(params, dict) else list(params or ())
    for piece in split:
        name, text, order = prepared_form(piece)
        mine: list
        if positional is None:
            mine = [params[k] for k in order]
        else:
            mine, positional[: len(order)] = positional[: len(order)], []
        values += [array_literal(v) if isinstance(v, (list, tuple)) else v for v in mine]
        calls.append(f"EXECUTE {name}" + (f" ({', '.join(['%s'] * len(mine))})" if mine else ""))
        if name not in known:
            missing.append((name, text))
    return "; ".join(calls), values, missing


class ArrayLiteral:
    """A Python list sent as an untyped array literal, which PostgreSQL
    coerces to the parameter's declared type (text[], jsonb[], bigint[])."""

    def __init__(self, text: str):
        self.text = text
        self._quoted = psycopg2.extensions.QuotedString(text)

    def prepare(self, conn):
        self._quoted.prepare(conn)

    def getquoted(self):
        return self._quoted.getquoted()


psycopg2.extensions.register_adapter(ArrayLiteral, lambda v: v)


def array_literal(values) -> ArrayLiteral:
    """C{values} as an array literal (the parameter of a prepared statement)."""
    parts: list[str] = []
    append = parts.append
    for v in values:
        kind = type(v)
        if kind is str:
            if "\\" in v or '"' in v:
                v = v.replace("\\", "\\\\").replace('"', '\\"')
            append('"' + v + '"')
        elif v is None:
            append("NULL")
        elif kind is int or kind is float:
            append(repr(v))
        elif kind is bool:
            append("true" if v else "false")
        else:
            text = str(v).replace("\\", "\\\\").replace('"', '\\"')
            append('"' + text + '"')
    return ArrayLiteral("{" + ",".join(parts) + "}")
