"""
Query building: a L{jsonsync.query.Query} as SQL over the JSONB of
C{objects}, with the same meaning as L{jsonsync.query.matches} and
L{jsonsync.query.ordering_key} (type ranks, C-collated strings, dotted keys).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from jsonsync.query import MISSING, Filter, Op, Query, Sort, rank
from jsonsync.storage.postgresql.statements import dumps

_RANK_SQL = (
    "(CASE jsonb_typeof({v}) WHEN 'null' THEN 0 WHEN 'string' THEN 1 WHEN 'number' THEN 2"
    " WHEN 'boolean' THEN 3 WHEN 'array' THEN 4 WHEN 'object' THEN 5 ELSE 6 END)"
)
_STRICT = {Op.LT: "<", Op.MAX: "<", Op.GT: ">", Op.MIN: ">"}
_SQL_OP = {Op.LT: "<", Op.MAX: "<=", Op.GT: ">", Op.MIN: ">="}
_COLUMNS = {"id": ("o.id", 1), "last_modified": ("o.last_modified", 2)}
# Keys with dots are reachable (as in query.resolve) by trying every way to
# split the path; past this many parts only the two extreme splits are tried.
_MAX_SPLIT_PARTS = 5


def _splits(path: str) -> list[list[str]]:
    """The ways C{query.resolve} tries to read C{path}, in its order."""
    result = [[path]]
    if "." in path:
        parts = path.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:cut])
            for rest in _splits(".".join(parts[cut:])):
                result.append([head, *rest])
    return result


def _path_candidates(path: str) -> list[list[str]]:
    if path.count(".") + 1 > _MAX_SPLIT_PARTS:
        return [[path], path.split(".")]
    return _splits(path)


def _like(value: str) -> str:
    """The ILIKE pattern of Kinto's C{like_} filter (C{*} is the wildcard)."""
    if "*" not in value:
        value = f"*{value}*"
    escaped = (
        part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        for part in value.split("*")
    )
    return "%".join(escaped)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (list, dict))


def _integral(value: Any) -> bool:
    return rank(value) == 2 and (isinstance(value, int) or float(value).is_integer())


class _SqlQuery:
    """
    Builds the C{FROM ... WHERE ... ORDER BY} part of a list query. JSON
    fields are read once each, in a C{LATERAL} sub-select, and compared with
    explicit type ranks so that the results match L{jsonsync.query} exactly
    (JSONB's own order puts an empty array before null and compares strings
    with the database collation).
    """

    def __init__(self):
        self.params: list[Any] = []
        self._fields: dict[str, str] = {}
        self._field_sql: list[str] = []
        self._field_params: list[Any] = []

    # fields

    def field(self, path: str) -> str:
        alias = self._fields.get(path)
        if alias is None:
            alias = f"f.f{len(self._fields)}"
            self._fields[path] = alias
            candidates = []
            for segments in _path_candidates(path):
                candidates.append("o.data" + " -> %s::text" * len(segments))
                self._field_params.extend(segments)
            expr = candidates[0] if len(candidates) == 1 else f"COALESCE({', '.join(candidates)})"
            self._field_sql.append(f"{expr} AS {alias[2:]}")
        return alias

    def from_clause(self) -> tuple[str, list[Any]]:
        if not self._fields:
            return "objects o", []
        lateral = ", ".join(self._field_sql)
        return f"objects o CROSS JOIN LATERAL (SELECT {lateral}) f", list(self._field_params)

    def param(self, value: Any) -> str:
        self.params.append(value)
        return "%s"

    def json(self, value: Any) -> str:
        self.params.append(dumps(value))
        return "%s::jsonb"

    # filters

    def condition(self, flt: Filter) -> str:
        column = _COLUMNS.get(flt.field)
        if column is not None:
            return self._column_condition(column[0], column[1], flt)
        return self._json_condition(self.field(flt.field), flt)

    def conjunction(self, filters: Iterable[Filter]) -> str:
        parts = [self.condition(f) for f in filters]
        return " AND ".join(parts) if parts else "TRUE"

    def _json_condition(self, v: str, flt: Filter) -> str:
        op, value = flt.op, flt.value
        rank_v = _RANK_SQL.format(v=v)
        if op is Op.EQ or op is Op.NOT:
            test = f"{v} IS NULL" if value is MISSING else f"({v} = {self.json(value)})"
            return test if op is Op.EQ else f"({test}) IS NOT TRUE"
        if op is Op.IN or op is Op.EXCLUDE:
            values = list(value)
            tests = []
            present = [dumps(x) for x in values if x is not MISSING]
            if present:
                tests.append(f"{v} = ANY({self.param(present)}::jsonb[])")
            if len(present) < len(values):
                tests.append(f"{v} IS NULL")
            test = f"({' OR '.join(tests)})" if tests else "FALSE"
            return test if op is Op.IN else f"({test}) IS NOT TRUE"
        if op is Op.HAS:
            return f"{v} IS NOT NULL" if value else f"{v} IS NULL"
        if op is Op.LIKE:
            return f"(jsonb_typeof({v}) = 'string' AND ({v} #>> '{{}}') ILIKE {self.param(_like(value))})"
        if op is Op.CONTAINS or op is Op.CONTAINS_ANY:
            wanted = list(value)
            tests = []
            scalars = [x for x in wanted if _is_scalar(x)]
            if op is Op.CONTAINS and scalars:
                tests.append(f"{v} @> {self.json(scalars)}")
            else:
                tests.extend(f"{v} @> {self.json([x])}" for x in scalars)
            tests.extend(
                f"EXISTS (SELECT 1 FROM jsonb_array_elements({v}) e WHERE e = {self.json(x)})"
                for x in wanted
                if not _is_scalar(x)
            )
            if op is Op.CONTAINS:
                inner = " AND ".join(tests) if tests else "TRUE"
            else:
                inner = " OR ".join(tests) if tests else "FALSE"
            return f"(jsonb_typeof({v}) = 'array' AND ({inner}))"
        # LT, MAX, GT, MIN: by type rank first, then within the type.
        r = rank(value)
        strict, sql_op = _STRICT[op], _SQL_OP[op]
        if r == 6:
            return {
                Op.LT: f"{v} IS NOT NULL",
                Op.MAX: "TRUE",
                Op.GT: "FALSE",
                Op.MIN: f"{v} IS NULL",
            }[op]
        if r == 0:
            same = "TRUE" if op in (Op.MAX, Op.MIN) else "FALSE"
        elif r == 1:
            same = f"({v} #>> '{{}}') COLLATE \"C\" {sql_op} {self.param(value)}"
        elif r == 2:
            same = f"({v})::numeric {sql_op} {self.param(value)}"
        elif r == 3:
            same = f"({v})::boolean {sql_op} {self.param(value)}"
        else:
            same = f"{v} {sql_op} {self.json(value)}"
        return f"(CASE WHEN {rank_v} = {r} THEN {same} ELSE {rank_v} {strict} {r} END)"

    def _column_condition(self, col: str, col_rank: int, flt: Filter) -> str:
        """
        Filters on C{id} (always a string) and C{last_modified} (always an
        integer) use the columns, so that the indexes serve them.
        """
        op, value = flt.op, flt.value

        def fits(x):
            return isinstance(x, str) if col_rank == 1 else _integral(x)

        def norm(x):
            return x if col_rank == 1 else int(x)

        if op is Op.EQ:
            return f"{col} = {self.param(norm(value))}" if fits(value) else "FALSE"
        if op is Op.NOT:
            return f"{col} <> {self.param(norm(value))}" if fits(value) else "TRUE"
        if op is Op.IN or op is Op.EXCLUDE:
            values = sorted({norm(x) for x in value if fits(x)})
            test = f"{col} = ANY({self.param(values)})" if values else "FALSE"
            return test if op is Op.IN else f"NOT ({test})"
        if op is Op.HAS:
            return "TRUE" if value else "FALSE"
        if op is Op.LIKE:
            if col_rank != 1:
                return "FALSE"
            return f"{col} ILIKE {self.param(_like(value))}"
        if op is Op.CONTAINS or op is Op.CONTAINS_ANY:
            return "FALSE"
        r = rank(value)
        if r != col_rank:
            strict = _STRICT[op]
            return "TRUE" if (col_rank < r if strict == "<" else col_rank > r) else "FALSE"
        if col_rank == 2 and not _integral(value):
            # A bigint column against a fractional bound: round the bound so
            # the comparison stays on integers (and on the index).
            if op is Op.GT or op is Op.MAX:
                value = math.floor(value)
            else:
                value = math.ceil(value)
        return f"{col} {_SQL_OP[op]} {self.param(norm(value))}"

    # sorting

    def order_by(self, sorting: tuple[Sort, ...]) -> str:
        terms = []
        for sort in sorting:
            d = "ASC" if sort.direction > 0 else "DESC"
            column = _COLUMNS.get(sort.field)
            if column is not None:
                terms.append(f"{column[0]} {d}")
                continue
            v = self.field(sort.field)
            terms.extend(
                [
                    f"{_RANK_SQL.format(v=v)} {d}",
                    f"(CASE WHEN jsonb_typeof({v}) = 'string' THEN {v} #>> '{{}}' END)"
                    f' COLLATE "C" {d}',
                    f"(CASE WHEN jsonb_typeof({v}) = 'number' THEN ({v})::numeric END) {d}",
                    f"(CASE WHEN jsonb_typeof({v}) = 'boolean' THEN ({v})::boolean END) {d}",
                    f"(CASE WHEN jsonb_typeof({v}) IN ('array', 'object') THEN {v} END) {d}",
                ]
            )
        # Ties (client-forced timestamps, equal sort values) are broken as the
        # memory backend's timestamp index does: by id, in the direction of
        # a last_modified-only sort.
        fields = [s.field for s in sorting]
        if "id" not in fields:
            d = "DESC" if fields == ["last_modified"] and sorting[0].direction < 0 else "ASC"
            terms.append(f"o.id {d}")
        return ", ".join(terms)



def build_select(
    what: str, resource_name: str, parent_id: str, query: Query, *, listing: bool,
    extra_where: str | None = None,
) -> tuple[str, list[Any]]:
    """
    C{SELECT what FROM objects ...} for the list C{(resource_name,
    parent_id)} and C{query}, and its parameters (psycopg2 C{%s} style).
    C{listing}: a page (pagination, order, limit, tombstones when the
    query asks for them) rather than a count. C{extra_where}: one more
    condition, as SQL.
    """
    q = _SqlQuery()
    where = [
        f"o.resource_name = {q.param(resource_name)}",
        f"o.parent_id = {q.param(parent_id)}",
    ]
    if extra_where:
        where.append(extra_where)
    if not (listing and query.include_deleted):
        where.append("NOT o.deleted")
    if query.ids is not None:
        where.append(f"o.id = ANY({q.param(sorted(query.ids))})")
    for flt in query.filters:
        where.append(q.condition(flt))
    order = ""
    limit = ""
    if listing:
        if query.pagination:
            rules = " OR ".join(f"({q.conjunction(rule)})" for rule in query.pagination)
            where.append(f"({rules})")
        order = f" ORDER BY {q.order_by(tuple(query.sorting) or (Sort('last_modified', -1),))}"
        if query.limit is not None:
            limit = f" LIMIT {q.param(int(query.limit))}"
    source, source_params = q.from_clause()
    sql = f"SELECT {what} FROM {source} WHERE {' AND '.join(where)}{order}{limit}"
    return sql, source_params + q.params



def escape_like(text: str) -> str:
    """C{text} matched literally by C{LIKE} (its wildcards and backslashes escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
