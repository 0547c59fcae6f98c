"""
From a plural request's query string to a L{jsonsync.query.Query}:
filters with Kinto's value typing, C{_sort}, C{_limit}, C{_token},
C{_fields}, C{_since}/C{_before}/C{_to}, and their validation.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from jsonsync import jsonutil
from jsonsync.errors import InvalidParameters
from jsonsync.query import MISSING, Filter, Op, Query, Sort, keyset_rules
from jsonsync.storage import now_ms

_OPERATOR = re.compile(
    r"^(lt|min|max|not|eq|gt|in|exclude|like|has|contains_any|contains)_([\w.]+)$"
)
_SORT_TOKEN = re.compile(r"^[-+]?[\w.]+$")
# ASCII digits only, and no more than an integer of 64 bits can hold: int()
# refuses decimal strings of over 4,300 digits with an error of its own.
_TIMESTAMP = re.compile(r'^"?([0-9]{1,19})"?$')
_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class QueryLimits:
    """
    How much one query string may ask for: each bound keeps a request's
    cost in proportion to what a client reasonably needs, and is checked
    here, before any backend sees the query, so both backends refuse the
    same requests with the same 400.

    @ivar max_depth: nesting of a JSON filter value (and of a C{_token}'s
        values); deeper ones would make the backends recurse
        (C{json_max_depth}).
    @ivar max_sort_fields: fields in C{_sort}; PostgreSQL orders by five
        terms per field and refuses a few hundred
        (C{querystring_max_sort_fields}).
    @ivar max_filters: filters in one query string, each one more condition
        on every row (C{querystring_max_filters}).
    @ivar max_fields: fields in C{_fields}, each looked up in every object
        of a page (C{querystring_max_fields}).
    @ivar max_values: values in one C{in_}/C{exclude_} list or one
        C{contains_}/C{contains_any_} array (C{querystring_max_values});
        sync clients send C{in_id} with a whole page of ids.
    """

    max_depth: int = 64
    max_sort_fields: int = 10
    max_filters: int = 20
    max_fields: int = 100
    max_values: int = 10000
    # Not settings (no client needs more; documented in docs/limits.md):
    # a field path of thousands of dotted parts makes PostgreSQL recurse
    # past its stack depth (a "retry later" 503 before), and each value of
    # a contains_/contains_any_ array is one more containment test per row.
    max_path_parts: int = 32
    max_path_length: int = 512
    max_array_values: int = 100

    @classmethod
    def of(cls, settings) -> QueryLimits:
        """The limits of a server's settings (worked out once per settings object)."""
        cached = getattr(settings, "_query_limits", None)
        if isinstance(cached, cls):
            return cached
        default = cls()
        limits = cls(
            max_depth=settings.get("json_max_depth", default.max_depth),
            max_sort_fields=settings.get("querystring_max_sort_fields", default.max_sort_fields),
            max_filters=settings.get("querystring_max_filters", default.max_filters),
            max_fields=settings.get("querystring_max_fields", default.max_fields),
            max_values=settings.get("querystring_max_values", default.max_values),
        )
        try:
            settings._query_limits = limits
        except AttributeError:
            pass  # a plain mapping: worked out again next time
        return limits


DEFAULT_LIMITS = QueryLimits()


@dataclass
class ListRequest:
    query: Query
    limit: int
    fields: list[str] | None = None
    deprecated_to: bool = False
    token_given: bool = False
    token_nonce: str | None = None
    token_issued: int | None = None
    filters_params: list[tuple[str, str]] = field(default_factory=list)


def _bad(name: str, description: str) -> InvalidParameters:
    return InvalidParameters("querystring", name, description)


def _check_path(name: str, fieldname: str, limits: QueryLimits) -> None:
    """Refuse a field path no client needs and that would cost a backend dearly."""
    if len(fieldname) > limits.max_path_length or fieldname.count(".") >= limits.max_path_parts:
        raise _bad(
            name,
            f"Invalid field '{fieldname[:64]}...': at most {limits.max_path_parts} dotted parts"
            f" and {limits.max_path_length} characters",
        )


def typed(raw: str) -> Any:
    """A filter value: JSON when it parses as JSON, the raw string otherwise."""
    try:
        return jsonutil.loads(raw)
    except jsonutil.JSONError:
        return raw


def _timestamp(name: str, raw: str) -> int:
    match = _TIMESTAMP.match(raw.strip())
    if match is None:
        shown = raw if len(raw) <= 64 else raw[:64] + "..."
        raise _bad(name, f"Invalid value for {name}: {shown!r} is not a timestamp")
    value = int(match.group(1))
    if value >= now_ms() + _DAY_MS:
        raise _bad(name, f"Invalid value for {name}: {raw!r} is too far in the future")
    return value


def since_value(raw: str) -> int:
    """The timestamp of a C{_since} value (quoted or not)."""
    return _timestamp("_since", raw)


def _check_value(name: str, raw: str, value: Any, limits: QueryLimits) -> None:
    """Refuse a typed filter value no backend could handle alike."""
    if isinstance(value, (list, dict)) and not jsonutil.depth(value, limits.max_depth):
        raise _bad(name, f"Invalid value for {name}: JSON nested deeper than {limits.max_depth} levels")
    # PostgreSQL's JSONB and text cannot hold U+0000, so no stored object
    # can contain it: refuse it as the body of a write is refused, rather
    # than let one backend answer and the other fail.
    if "\\u0000" in raw and jsonutil.has_nul(value):
        raise _bad(name, f"Invalid value for {name}: filter values cannot contain the NUL character")


def parse_filter(
    name: str, raw: str, strict_fields: frozenset[str] | None, limits: QueryLimits = DEFAULT_LIMITS
) -> Filter:
    match = _OPERATOR.match(name)
    if match:
        op, fieldname = Op(match.group(1)), match.group(2)
    else:
        op, fieldname = Op.EQ, name
    _check_path(name, fieldname, limits)
    if strict_fields is not None and fieldname.split(".")[0] not in strict_fields:
        raise _bad(name, f"Unknown filter field '{fieldname}'")
    if op in (Op.IN, Op.EXCLUDE):
        parts = raw.split(",")
        if len(parts) > limits.max_values:
            raise _bad(name, f"Invalid value for {name}: more than {limits.max_values} values")
        value: Any = [typed(part) for part in parts]
        for part, typed_part in zip(parts, value, strict=True):
            _check_value(name, part, typed_part, limits)
    elif op in (Op.CONTAINS, Op.CONTAINS_ANY):
        if fieldname in ("id", "last_modified"):
            raise _bad(name, f"Field '{fieldname}' is not an array")
        value = typed(raw)
        _check_value(name, raw, value, limits)
        if not isinstance(value, list):
            value = [value]
        elif len(value) > limits.max_array_values:
            raise _bad(name, f"Invalid value for {name}: more than {limits.max_array_values} values")
    else:
        value = typed(raw)
        _check_value(name, raw, value, limits)

    if fieldname == "last_modified":
        if op in (Op.IN, Op.EXCLUDE):
            value = [_timestamp(name, str(v)) for v in value]
        elif op is not Op.HAS:
            value = _timestamp(name, raw)
    elif fieldname == "id":
        if op in (Op.IN, Op.EXCLUDE):
            value = [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
            if not all(isinstance(v, str) for v in value):
                raise _bad(name, f"Invalid value for {name}: ids must be strings")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and op is not Op.HAS:
            value = raw
    if op is Op.LIKE and not isinstance(value, str):
        raise _bad(name, f"Invalid value for {name}: must be a string")
    if op is Op.HAS:
        value = bool(value) and value not in ("false", "0")
    return Filter(fieldname, value, op)


# Nonces only need to differ (DELETE tokens are single use): a random
# prefix per process and a counter, without a system call per token.
_NONCE_PREFIX = secrets.token_hex(8)
_nonces = itertools.count()


def encode_token(last: dict) -> str:
    payload = {"last_object": last, "nonce": f"pagination-token-{_NONCE_PREFIX}-{next(_nonces)}", "issued": now_ms()}
    return base64.urlsafe_b64encode(jsonutil.dumps(payload)).decode("ascii")


def decode_token(raw: str, sorting: tuple[Sort, ...], limits: QueryLimits = DEFAULT_LIMITS) -> dict:
    """The token's payload: C{last_object} (checked against C{sorting}), C{nonce}, C{issued}."""
    try:
        padded = raw + "=" * (-len(raw) % 4)
        decoded = base64.urlsafe_b64decode(padded.encode("ascii"))
        payload = jsonutil.loads(decoded)
        last = payload["last_object"]
        if not isinstance(last, dict) or not isinstance(payload.get("nonce", ""), str):
            raise ValueError
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeEncodeError):
        raise _bad("_token", "_token has invalid content") from None
    wanted = {s.field for s in sorting}
    if not set(last) <= wanted:
        raise _bad("_token", "_token has invalid content")
    # A forged token's values become filters too: the same bounds apply.
    if not jsonutil.depth(last, limits.max_depth + 1) or (b"\\u0000" in decoded and jsonutil.has_nul(last)):
        raise _bad("_token", "_token has invalid content")
    return payload


def parse_list_request(
    params: list[tuple[str, str]],
    *,
    paginate_by: int | None,
    max_fetch: int,
    strict_fields: frozenset[str] | None = None,
    default_sort: tuple[Sort, ...] = (Sort("last_modified", -1),),
    tiebreak: str = "last_modified",
    limits: QueryLimits = DEFAULT_LIMITS,
) -> ListRequest:
    filters: list[Filter] = []
    sorting: tuple[Sort, ...] | None = None
    limit: int | None = None
    token: str | None = None
    fields: list[str] | None = None
    deprecated_to = False
    filter_params: list[tuple[str, str]] = []

    for name, raw in params:
        if "\x00" in name or "\x00" in raw:
            raise _bad(name.replace("\x00", ""), "Invalid character 0x00")
        if name == "_limit":
            try:
                limit = int(raw)
            except ValueError:
                raise _bad("_limit", f"Invalid value for _limit: {raw!r} is not an integer") from None
            if limit < 0:
                raise _bad("_limit", "Invalid value for _limit: must be positive")
        elif name == "_token":
            token = raw
        elif name == "_sort":
            parts = [p.strip() for p in raw.split(",") if _SORT_TOKEN.match(p.strip())]
            if len(parts) > limits.max_sort_fields:
                raise _bad("_sort", f"Invalid value for _sort: more than {limits.max_sort_fields} fields")
            order: list[Sort] = []
            for part in parts:
                direction = -1 if part.startswith("-") else 1
                fieldname = part.lstrip("+-")
                _check_path("_sort", fieldname, limits)
                if strict_fields is not None and fieldname.split(".")[0] not in strict_fields:
                    raise _bad("_sort", f"Unknown sort field '{fieldname}'")
                order.append(Sort(fieldname, direction))
            sorting = tuple(order)
        elif name == "_fields":
            fields = _fields_of(raw, strict_fields, limits)
        elif name in ("_since", "_before", "_to"):
            if name == "_since" and raw.strip() in ("null", ""):
                continue
            value = _timestamp(name, raw)
            op = Op.GT if name == "_since" else Op.LT
            deprecated_to = deprecated_to or name == "_to"
            filters.append(Filter("last_modified", value, op))
        elif name.startswith("_"):
            continue  # reserved for clients: _expected and such are ignored
        else:
            if len(filter_params) >= limits.max_filters:
                raise _bad(name, f"Too many filters: at most {limits.max_filters} in one query string")
            filters.append(parse_filter(name, raw, strict_fields, limits))
            filter_params.append((name, raw))

    if not sorting:
        sorting = default_sort
    if not any(s.field == tiebreak for s in sorting):
        sorting = sorting + (Sort(tiebreak, -1),)

    if limit == 0:
        limit = None  # Kinto lets _limit=0 escape paginate_by; we treat it as "default size"
    if limit is not None and paginate_by is not None:
        effective = min(limit, paginate_by)
    elif limit is not None:
        effective = limit
    elif paginate_by is not None:
        effective = paginate_by
    else:
        effective = max_fetch
    effective = min(effective, max_fetch)

    include_deleted = any(f.field == "last_modified" for f in filters)
    query = Query(filters=filters, sorting=sorting, limit=effective, include_deleted=include_deleted)
    result = ListRequest(
        query, effective, fields, deprecated_to, token_given=bool(token), filters_params=filter_params
    )
    if token:
        payload = decode_token(token, sorting, limits)
        last = payload["last_object"]
        full = {s.field: last.get(s.field, MISSING) for s in sorting}
        query.pagination = keyset_rules(sorting, full)
        result.token_nonce = payload.get("nonce")
        issued = payload.get("issued")
        result.token_issued = issued if isinstance(issued, int) else None
    return result


def _fields_of(raw: str, strict_fields, limits: QueryLimits) -> list[str]:
    fields = [f.strip() for f in raw.split(",") if f.strip()]
    if len(fields) > limits.max_fields:
        raise _bad("_fields", f"Invalid value for _fields: more than {limits.max_fields} fields")
    for f in fields:
        _check_path("_fields", f, limits)
    if strict_fields is not None:
        for f in fields:
            if f.split(".")[0] not in strict_fields:
                raise InvalidParameters("querystring", "_fields", f"Unknown field '{f}'")
    return fields


def parse_fields(
    params: list[tuple[str, str]], strict_fields=None, limits: QueryLimits = DEFAULT_LIMITS
) -> list[str] | None:
    """The C{_fields} of an object GET."""
    fields = None
    for name, raw in params:
        if name == "_fields":
            if "\x00" in raw:
                raise _bad("_fields", "Invalid character 0x00")
            fields = _fields_of(raw, strict_fields, limits)
    return fields


def last_object_of(obj: dict, sorting: tuple[Sort, ...]) -> dict:
    """What a token remembers of the last object of a page: its sort values."""
    from jsonsync.query import resolve

    last = {}
    for sort in sorting:
        value = resolve(obj, sort.field)
        if value is not MISSING:
            last[sort.field] = value
    return last


def project(obj: dict, fields: list[str] | None) -> dict:
    """Keep only the requested fields (dotted for nested), plus C{id} and C{last_modified}."""
    if not fields:
        return obj
    result: dict[str, Any] = {}
    for key in ("id", "last_modified", "deleted"):
        if key in obj:
            result[key] = obj[key]
    for path in fields:
        if path in obj:
            result[path] = obj[path]
            continue
        parts = path.split(".")
        source: Any = obj
        for part in parts:
            if isinstance(source, dict) and part in source:
                source = source[part]
            else:
                source = MISSING
                break
        if source is MISSING:
            continue
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            target[parts[-1]] = source
    return result
