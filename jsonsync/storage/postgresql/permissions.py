"""
L{PostgresPermissions}: access control entries in C{access_control_entries},
group membership in C{user_principals}.
"""

from __future__ import annotations

from zope.interface import implementer

from jsonsync.interfaces import IPermissionStore
from jsonsync.storage.postgresql.base import PostgresProvider, acl_from_entries
from jsonsync.storage.postgresql.select import escape_like


@implementer(IPermissionStore)
class PostgresPermissions(PostgresProvider):
    """ACEs in C{access_control_entries}, group membership in C{user_principals}."""

    async def flush(self):
        await self.pool.run("TRUNCATE access_control_entries, user_principals")

    async def get_object_permissions(self, txn, object_uri):
        rows, _ = await self._read(
            txn,
            "SELECT permission, principal FROM access_control_entries WHERE object_id = %s",
            (object_uri,),
        )
        result: dict[str, set[str]] = {}
        for permission, principal in rows:
            result.setdefault(permission, set()).add(principal)
        return result

    async def replace_object_permissions(self, txn, object_uri, permissions):
        names = sorted(permissions)
        if not names:
            return
        pairs = [(name, p) for name in names for p in sorted(set(permissions[name] or ()))]
        await self._defer(
            txn,
            "DELETE FROM access_control_entries WHERE object_id = %s AND permission = ANY(%s);"
            " INSERT INTO access_control_entries (object_id, permission, principal)"
            " SELECT %s, p, pr FROM unnest(%s::text[], %s::text[]) AS t(p, pr)"
            " ON CONFLICT DO NOTHING",
            (object_uri, names, object_uri, [p[0] for p in pairs], [p[1] for p in pairs]),
        )

    async def delete_object_permissions(self, txn, uri_prefix):
        await self._defer(
            txn,
            "DELETE FROM access_control_entries WHERE object_id = %s OR object_id LIKE %s",
            (uri_prefix, escape_like(uri_prefix) + "/%"),
        )

    async def check(self, txn, principals, grants):
        grants = list(grants)
        principals = sorted(set(principals))
        if not grants or not principals:
            return False
        rows, _ = await self._read(
            txn,
            "SELECT EXISTS (SELECT 1 FROM access_control_entries a"
            " JOIN unnest(%s::text[], %s::text[]) AS g(uri, perm)"
            " ON a.object_id = g.uri AND a.permission = g.perm"
            " WHERE a.principal = ANY(%s::text[]))",
            ([g[0] for g in grants], [g[1] for g in grants], principals),
        )
        return bool(rows[0][0])

    async def authorize(self, txn, principals, grants, members=None, acl_uri=None):
        # Group membership, the grant check and the object's ACL in one round
        # trip: the first thing nearly every request needs.
        grants = list(grants)
        rows, _ = await self._read(
            txn,
            "WITH groups AS ("
            "  SELECT DISTINCT principal FROM user_principals"
            "  WHERE %(has_members)s AND member = ANY(%(members)s::text[])),"
            " everyone AS ("
            "  SELECT unnest(%(principals)s::text[]) AS principal"
            "  UNION SELECT principal FROM groups)"
            " SELECT"
            "  (SELECT array_agg(principal) FROM groups),"
            "  EXISTS (SELECT 1 FROM access_control_entries a"
            "   JOIN unnest(%(uris)s::text[], %(perms)s::text[]) AS g(uri, perm)"
            "   ON a.object_id = g.uri AND a.permission = g.perm"
            "   WHERE a.principal IN (SELECT principal FROM everyone)),"
            "  (SELECT array_agg(permission || ' ' || principal) FROM access_control_entries"
            "   WHERE %(has_acl)s AND object_id = %(acl_uri)s)",
            {
                "has_members": members is not None,
                "members": list(members or ()),
                "principals": sorted(set(principals)),
                "uris": [g[0] for g in grants],
                "perms": [g[1] for g in grants],
                "has_acl": acl_uri is not None,
                "acl_uri": acl_uri or "",
            },
        )
        group_list, allowed, entries = rows[0]
        groups = set(group_list or ()) if members is not None else None
        return bool(allowed), groups, acl_from_entries(entries) if acl_uri is not None else None

    async def accessible_children(self, txn, principals, uri_prefix, permissions):
        principals = sorted(set(principals))
        permissions = sorted(set(permissions))
        if not principals or not permissions:
            return set()
        rows, _ = await self._read(
            txn,
            "SELECT DISTINCT substr(object_id, %s) FROM access_control_entries"
            " WHERE principal = ANY(%s::text[]) AND permission = ANY(%s::text[])"
            " AND object_id LIKE %s AND strpos(substr(object_id, %s), '/') = 0",
            (
                len(uri_prefix) + 1,
                principals,
                permissions,
                escape_like(uri_prefix) + "_%",
                len(uri_prefix) + 1,
            ),
        )
        return {row[0] for row in rows}

    async def accessible_objects(self, txn, principals):
        principals = sorted(set(principals))
        if not principals:
            return {}
        rows, _ = await self._read(
            txn,
            "SELECT DISTINCT object_id, permission FROM access_control_entries"
            " WHERE principal = ANY(%s::text[])",
            (principals,),
        )
        result: dict[str, set[str]] = {}
        for uri, permission in rows:
            result.setdefault(uri, set()).add(permission)
        return result

    async def user_principals(self, txn, members):
        members = sorted(set(members))
        if not members:
            return set()
        rows, _ = await self._read(
            txn,
            "SELECT DISTINCT principal FROM user_principals WHERE member = ANY(%s::text[])",
            (members,),
        )
        return {row[0] for row in rows}

    async def add_user_principal(self, txn, member, principal):
        await self._write(
            txn,
            "INSERT INTO user_principals (member, principal) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (member, principal),
        )

    async def remove_user_principal(self, txn, member, principal):
        await self._write(
            txn,
            "DELETE FROM user_principals WHERE member = %s AND principal = %s",
            (member, principal),
        )

    async def remove_principal(self, txn, principal):
        await self._write(
            txn,
            "DELETE FROM user_principals WHERE principal = %s;"
            " DELETE FROM access_control_entries WHERE principal = %s",
            (principal, principal),
        )

    async def remove_principal_prefix(self, txn, prefix):
        await self._write(
            txn,
            "DELETE FROM user_principals WHERE principal LIKE %s",
            (escape_like(prefix) + "%",),
        )
