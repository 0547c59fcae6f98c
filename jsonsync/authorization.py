"""
The permission tree: which C{(object URI, permission)} pairs grant a
permission on an object, and which settings ACL stands for each pair.

Inherited permissions are resolved by position in the tree (bucket ->
collection -> record, bucket -> group, ...), never copied to children:

  - C{write} on an object is granted by C{write} on it or on any ancestor;
  - C{read} by C{read} or C{write} on it or on any ancestor;
  - C{read:attributes} (reading the object itself) also by any of the
    object's own C{<child>:create} permissions;
  - C{<child>:create} by C{write} on it or any ancestor, or by itself.

Pure functions over URIs: no storage here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class PermissionTree:
    def __init__(self):
        # plural path segment -> resource name; (parent's plural, plural) ->
        # resource name where two types share a plural under different
        # parents (webhooks of a bucket and of a collection)
        self._plurals: dict[str, str] = {}
        self._nested: dict[tuple[str, str], str] = {}
        self._permissions: dict[str, tuple[str, ...]] = {"root": ()}

    def register(self, name: str, plural: str, permissions: Iterable[str], parent_plural: str = ""):
        self._plurals.setdefault(plural, name)
        self._nested[(parent_plural, plural)] = name
        self._permissions[name] = tuple(permissions)

    def add_root_permission(self, permission: str):
        self._permissions["root"] = self._permissions["root"] + (permission,)

    def permissions_of(self, resource_name: str) -> tuple[str, ...]:
        return self._permissions.get(resource_name, ("read", "write"))

    def type_of(self, uri: str) -> str:
        if not uri or uri == "/":
            return "root"
        parts = uri.rsplit("/", 4)
        if len(parts) < 3:
            return "root"
        plural = parts[-2]
        parent_plural = parts[-4] if len(parts) == 5 else ""
        return self._nested.get((parent_plural, plural)) or self._plurals.get(plural, plural)

    @staticmethod
    def chain(uri: str) -> list[str]:
        """The URIs of the object's ancestors and of the object, top first."""
        if not uri or uri == "/":
            return []
        parts = uri.strip("/").split("/")
        return ["/" + "/".join(parts[: i + 2]) for i in range(0, len(parts) - 1, 2)]

    def grants(self, uri: str, permission: str) -> list[tuple[str, str]]:
        chain = self.chain(uri)
        if not chain:
            return [("", permission)]
        if permission == "write":
            return [(u, "write") for u in chain]
        if permission in ("read", "read:attributes"):
            pairs = [(u, p) for u in chain for p in ("read", "write")]
            if permission == "read:attributes":
                own = self.permissions_of(self.type_of(uri))
                pairs.extend((uri, p) for p in own if p.endswith(":create"))
            return pairs
        if permission.endswith(":create"):
            return [(u, "write") for u in chain] + [(uri, permission)]
        return [(uri, permission)]

    def setting_name(self, uri: str, permission: str) -> str:
        """The C{<resource>_<perm>_principals} setting that grants C{(uri, permission)}."""
        if permission.endswith(":create"):
            return f"{permission[: -len(':create')]}_create_principals"
        return f"{self.type_of(uri)}_{permission}_principals"


class SettingsACL:
    """
    The ACLs given in settings (C{bucket_create_principals = ...}): each
    grants a permission on every object of a type.
    """

    def __init__(self, tree: PermissionTree, settings: Mapping):
        self._tree = tree
        self._acl: dict[str, frozenset[str]] = {}
        for name, value in settings.items():
            if name.endswith("_principals") and value:
                self._acl[name] = frozenset(value if not isinstance(value, str) else value.split())

    def principals(self, setting_name: str) -> frozenset[str]:
        return self._acl.get(setting_name, frozenset())

    def grants_any(self, principals: Iterable[str], pairs: Iterable[tuple[str, str]]) -> bool:
        mine = set(principals)
        for uri, permission in pairs:
            holders = self._acl.get(self._tree.setting_name(uri, permission))
            if holders and not holders.isdisjoint(mine):
                return True
        return False

    def granted_on_type(self, principals: Iterable[str], resource_name: str, permission: str) -> bool:
        holders = self._acl.get(f"{resource_name}_{permission}_principals")
        return holders is not None and not holders.isdisjoint(set(principals))
