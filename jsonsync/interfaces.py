"""
The contracts between jsonsync's core and whatever plugs into it.

Every provider found through C{twisted.plugin.getPlugins} or built by one is
checked with L{zope.interface.verify.verifyObject} when it is activated, so a
third-party package that misses a method is refused at start, by name.

Asynchronous methods are documented as returning C{Awaitable[T]}: providers
write them as C{async def} (or return a L{Deferred}).
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class ITransaction(Interface):
    """
    One unit of work: every storage and permission write made through it
    becomes visible to others together, at L{commit}, or not at all.

    Backends enlist themselves lazily (a PostgreSQL backend takes a
    connection and opens C{BEGIN} the first time it is used) so a request
    that touches nothing costs nothing.
    """

    def enlist(key, open_resource):
        """
        Return the resource registered under C{key}, creating it with
        C{await open_resource()} the first time. The resource must provide
        C{commit()} and C{rollback()} coroutines.

        @rtype: C{Awaitable[object]}
        """

    def enlisted(key):
        """
        The resource enlisted under C{key}, or C{None}: a backend reads
        through the transaction's connection once it has written, and
        straight from its pool before.
        """

    last_write = Attribute(
        "Set by the request, just before a storage write, when that write is"
        " the last thing its transaction does before the commit: a backend"
        " may then commit in the same round trip (and must reset the flag"
        " when it does). Backends may ignore it."
    )

    lock_shared = Attribute(
        "Like C{lock_lists}, for locks a backend named in the C{shared} part"
        " of a L{jsonsync.errors.WriteConflict}: taken in shared mode."
    )

    snapshot = Attribute(
        "True when every read of the transaction must see one state of the"
        " storage (a read-only transaction whose reads decide together, such as"
        " a permission check and the page it filters). Optional for a backend"
        " whose reads of one transaction always agree; C{False} by default."
    )
    lock_lists = Attribute(
        "C{(resource_name, parent_id)} lists the transaction is going to"
        " write, known before it starts (a request run again after a"
        " L{jsonsync.errors.WriteConflict}): a backend that serialises a"
        " list's writers takes these locks before its first read, in one"
        " canonical order, so that the reads see the state the writes"
        " commit over. Empty for a first attempt. Backends may ignore it."
    )

    def only(key):
        """
        Whether nothing but the resource under C{key} (if anything) is
        enlisted: committing that one early then commits everything.
        """

    def after_commit(callback):
        """
        Call C{callback()} (which may return an awaitable) once the
        transaction committed. Never called after a rollback.
        """

    def commit():
        """
        Commit every enlisted resource, then run the after-commit callbacks.
        @rtype: C{Awaitable[None]}
        """

    def rollback():
        """
        Roll back every enlisted resource. Idempotent.
        @rtype: C{Awaitable[None]}
        """


class IStorage(Interface):
    """
    Objects (JSON mappings) stored by C{(resource_name, parent_id, id)}.

    Guarantees every provider gives (the contract suite in
    L{jsonsync.testing} checks them):
      - each I{list} (one C{resource_name} under one C{parent_id}) has a
        timestamp, in epoch milliseconds, and every write in the list gets
        a C{last_modified} strictly greater than any before it in that list;
      - a deleted object leaves a tombstone C{{"id", "last_modified",
        "deleted": True}} that list queries return when asked to;
      - filters, sorting and keyset pagination (L{jsonsync.query}) have the
        same meaning on every backend, including the cross-type order
        C{null < string < number < boolean < array < object < missing}.

    Objects a provider returns belong to the caller only at the top level:
    nested values may be shared with the stored copy, so callers never
    modify them in place (build new mappings instead).
    """

    def transaction():
        """
        A new L{ITransaction} for one request (or one batch).
        """

    def get(txn, resource_name, parent_id, object_id):
        """
        The live object, or C{None} (a tombstone counts as missing).
        @rtype: C{Awaitable[dict | None]}
        """

    def get_many(txn, keys):
        """
        The live objects at C{keys} (C{(resource_name, parent_id, id)}
        triples), in one look-up: a list in the order of C{keys}, C{None}
        where nothing lives.
        @rtype: C{Awaitable[list[dict | None]]}
        """

    def create(txn, resource_name, parent_id, obj, within=()):
        """
        Store C{obj} (which carries its C{id}) as a new object and return it
        with its C{last_modified}. A C{last_modified} integer in C{obj} is
        honoured (replication); otherwise the list's next timestamp is used.
        A tombstone with the same id is replaced. The check that no live
        object holds the id is made in the write itself, so that of two
        concurrent creates of one id exactly one succeeds.

        C{within}: the C{(resource_name, parent_id, id)} of the objects the
        new one lives under (its bucket and collection). The write happens
        only while they are all live, and their deletion (which removes
        everything below them) cannot interleave with it: either the
        deletion sees the new object and removes it, or the write sees the
        deletion and is refused. L{update} and L{delete} take it too.
        @raise jsonsync.errors.ObjectExists: a live object has that id.
        @raise jsonsync.errors.WriteConflict: an object of C{within} is
            not live.
        @rtype: C{Awaitable[dict]}
        """

    def update(txn, resource_name, parent_id, object_id, obj, expected=None, within=()):
        """
        Replace (or create) the object and return it with its new
        C{last_modified} (the given one when it is an integer greater than
        the stored one, the list's next timestamp otherwise).

        C{expected} (compare-and-swap): the C{last_modified} of the live
        object the caller decided on. When given, the write happens only if
        that very version is still the stored one when the write runs
        (checked under the list's write serialisation, in the write itself);
        otherwise nothing is written.
        @raise jsonsync.errors.WriteConflict: C{expected} no longer holds.
        @rtype: C{Awaitable[dict]}
        """

    def guard(txn, resource_name, parent_id, object_id, expected):
        """
        Make C{txn} depend on an object it does not write (a record written
        after validation against its collection's schema): the transaction
        commits only while that object is still the live version
        C{expected}, and writes to that object wait for the transaction or
        conflict with it meanwhile.
        @raise jsonsync.errors.WriteConflict: it is no longer that version.
        @rtype: C{Awaitable[None]}
        """

    def delete(txn, resource_name, parent_id, object_id, last_modified=None, expected=None, within=()):
        """
        Replace the live object by a tombstone and return the tombstone.
        C{expected}: as for L{update}.
        @raise jsonsync.errors.ObjectNotFound: no live object has that id
            (and no C{expected} was given).
        @raise jsonsync.errors.WriteConflict: C{expected} no longer holds.
        @rtype: C{Awaitable[dict]}
        """

    def purge(txn, parent_prefix):
        """
        Remove, without tombstones, every object and tombstone whose parent
        is C{parent_prefix} or lies below it (C{parent_prefix + "/..."}), and
        the timestamps of those lists. Used for cascading deletes.
        @rtype: C{Awaitable[None]}
        """

    def list(txn, resource_name, parent_id, query):
        """
        The objects of one list matching a L{jsonsync.query.Query}: its
        filters, its keyset C{pagination} rules, its C{ids} restriction,
        its C{sorting} and its C{limit}. Tombstones are included only when
        C{query.include_deleted} is true.
        @rtype: C{Awaitable[list[dict]]}
        """

    def list_snapshot(txn, resource_name, parent_id, query, encoded=False):
        """
        C{(timestamp, objects)}: the list's timestamp and the objects of
        L{list} as of that timestamp, read together, so that no object
        committed after the timestamp is returned (a client syncing with
        C{_since=<timestamp>} then never receives a change twice).

        With C{encoded}, a backend that holds objects as JSON text may
        return them as L{jsonsync.jsonutil.Encoded} values (the caller only
        sends them on); dicts are always acceptable.
        @rtype: C{Awaitable[tuple[int, list[dict | Encoded]]]}
        """

    def count(txn, resource_name, parent_id, query):
        """
        How many live objects match the query's filters and ids (not its
        limit or pagination).
        @rtype: C{Awaitable[int]}
        """

    def list_timestamp(txn, resource_name, parent_id):
        """
        The list's current timestamp; a list never written gets one now,
        which then stays until a write.
        @rtype: C{Awaitable[int]}
        """

    def flush():
        """
        Remove everything. @rtype: C{Awaitable[None]}
        """

    def heartbeat():
        """
        C{True} when the backend answers. @rtype: C{Awaitable[bool]}
        """

    def close():
        """
        Release connections and timers (the server is stopping).
        @rtype: C{Awaitable[None]}
        """


class IPermissionStore(Interface):
    """
    Access control entries per object URI, and group membership.

    An ACE is C{(object_uri, permission_name) -> set of principals}. Group
    membership is stored per member string: C{add_user_principal(member,
    group_uri)}. A provider takes part in the same L{ITransaction} as the
    storage it is paired with.
    """

    def get_object_permissions(txn, object_uri):
        """
        C{{permission: set(principals)}} for one object (names with no
        principal are left out).
        @rtype: C{Awaitable[dict[str, set[str]]]}
        """

    def replace_object_permissions(txn, object_uri, permissions):
        """
        For each name in C{permissions}, replace that ACE by the given
        principals (an empty collection removes it). Names not given are
        kept.
        @rtype: C{Awaitable[None]}
        """

    def delete_object_permissions(txn, uri_prefix):
        """
        Remove the ACEs of C{uri_prefix} and of every URI below it.
        @rtype: C{Awaitable[None]}
        """

    def check(txn, principals, grants):
        """
        Whether any of C{principals} holds any of the C{(uri, permission)}
        pairs of C{grants}, answered in one look-up.
        @rtype: C{Awaitable[bool]}
        """

    def authorize(txn, principals, grants, members=None, acl_uri=None):
        """
        One look-up answering what a request needs first: C{(allowed,
        groups, acl)} where C{groups} are the group principals of
        C{members} (C{None} when no members are given), C{allowed} tells
        whether C{principals} or those groups hold any of C{grants}, and
        C{acl} is the ACL of C{acl_uri} (C{None} when not asked), as
        L{get_object_permissions} gives it.
        @rtype: C{Awaitable[tuple[bool, set[str] | None, dict | None]]}
        """

    def accessible_children(txn, principals, uri_prefix, permissions):
        """
        The ids of the objects directly under C{uri_prefix} (URIs
        C{uri_prefix + id}, with no further slash) on which one of
        C{principals} explicitly holds one of C{permissions}.
        @rtype: C{Awaitable[set[str]]}
        """

    def accessible_objects(txn, principals):
        """
        C{{uri: set(permissions)}} for every object on which one of
        C{principals} holds an explicit ACE.
        @rtype: C{Awaitable[dict[str, set[str]]]}
        """

    def user_principals(txn, members):
        """
        The group principals of every member string in C{members} (a user
        id and C{system.Authenticated}, say), in one look-up.
        @rtype: C{Awaitable[set[str]]}
        """

    def add_user_principal(txn, member, principal):
        """@rtype: C{Awaitable[None]}"""

    def remove_user_principal(txn, member, principal):
        """@rtype: C{Awaitable[None]}"""

    def remove_principal(txn, principal):
        """
        Remove C{principal} from every member (a group was deleted) and
        from every ACE.
        @rtype: C{Awaitable[None]}
        """

    def remove_principal_prefix(txn, prefix):
        """
        Remove every group principal starting with C{prefix} from every
        member (a bucket and all its groups were deleted).
        @rtype: C{Awaitable[None]}
        """

    def flush():
        """@rtype: C{Awaitable[None]}"""

    def heartbeat():
        """C{True} when the backend answers. @rtype: C{Awaitable[bool]}"""

    def close():
        """Release connections and timers. @rtype: C{Awaitable[None]}"""


class IOutbox(Interface):
    """
    A transactional outbox: messages written in a request's transaction
    (committed with the change they describe, or rolled back with it), then
    claimed and delivered after the commit by a worker, at least once.

    A backend offers one as the C{outbox} attribute of its L{IStorage}
    provider (optional: the C{webhooks} plugin refuses to start without
    it). Each message goes to one C{target} (a webhook's URI) and carries
    an opaque C{body} (text). Its C{status} is C{"pending"} until it is
    C{"delivered"} or C{"failed"}.

    A claim leases messages to one worker: nobody else claims them until
    the lease ends, so a worker killed mid-delivery leaves them to another
    after its lease. The calls that end or postpone a claimed message name
    the claim (C{token}); a worker whose lease ran out and whose message
    another worker claimed since changes nothing.

    A backend may settle the messages of one claim together (PostgreSQL
    reads new events by cursor and moves it once per claimed batch): the
    call that ends a message may then return only when every message of
    its claim has ended, so a worker ends the messages it claimed
    concurrently, never one after the other.
    """

    def fan_out():
        """
        Ask the backend to write the messages of webhooks itself, in the
        statement that writes each change (a database trigger), for every
        created, updated or deleted collection, group or record of a bucket
        holding live C{webhook} objects whose C{collection} and C{actions}
        match: bodies as the C{webhooks} plugin writes them. Returns whether
        it will (otherwise the plugin's listener calls L{append}).
        @rtype: C{Awaitable[bool]}
        """

    def append(txn, messages):
        """
        Write C{messages} (mappings with C{id}, C{target}, C{body}) within
        C{txn}: they become claimable when it commits, and never exist if
        it rolls back.
        @rtype: C{Awaitable[None]}
        """

    def claim(limit, lease, worker):
        """
        Lease up to C{limit} pending messages that are due to C{worker} for
        C{lease} seconds, oldest due first, never one another worker holds
        a live lease on. Returns mappings with C{id}, C{target}, C{body},
        C{attempts} (counting this claim), C{age} (seconds since the message
        was created, or last redelivered) and C{token}.
        @rtype: C{Awaitable[list[dict]]}
        """

    def complete(message_id, token, attempt):
        """
        Mark a claimed message delivered and log C{attempt} (a mapping:
        C{attempt}, C{status_code}, C{latency_ms}, C{error}, C{worker}).
        Returns whether the claim still held.
        @rtype: C{Awaitable[bool]}
        """

    def complete_many(completions):
        """
        L{complete} for several C{(message_id, token, attempt)} at once (one
        statement where the backend can); returns how many claims held.
        @rtype: C{Awaitable[int]}
        """

    def reschedule(message_id, token, delay, attempt):
        """Log C{attempt} and make the message due again in C{delay} seconds. @rtype: C{Awaitable[bool]}"""

    def fail(message_id, token, attempt):
        """Log C{attempt} and mark the message failed (no more retries). @rtype: C{Awaitable[bool]}"""

    def discard(message_id, token):
        """Remove a claimed message that has nowhere to go (its target is gone). @rtype: C{Awaitable[bool]}"""

    def deliveries(target, limit, before=None):
        """
        The newest messages of C{target} (created before message C{before}
        when given), newest first, each a mapping with C{id}, C{status},
        C{attempts}, C{created} (epoch ms), C{next_attempt} (epoch ms or
        C{None}), C{body} and C{log} (its attempts, oldest first); C{None} when
        C{before} is not a message of C{target} (nor, for a backend whose ids
        order its messages, the id of one that was pruned).
        @rtype: C{Awaitable[list[dict] | None]}
        """

    def redeliver(target, message_id):
        """
        Make a message of C{target} pending and due now, with a fresh retry
        period; returns whether it exists.
        @rtype: C{Awaitable[bool]}
        """

    def prune(older_than):
        """
        Remove delivered and failed messages (and their logs) that ended
        more than C{older_than} seconds ago.
        @rtype: C{Awaitable[int]}
        """

    def add_close_hook(hook):
        """
        C{hook()} (may return an awaitable) runs when the backend closes,
        before its connections go: a worker stops there.
        """


class IChangeNotifier(Interface):
    """
    Tells who subscribes that a list moved: C{(resource_name, parent_id,
    timestamp)} after a write to it committed, in this process and (for a
    shared database) in every process on it. A notification only says
    "read again from your cursor": it carries no data, may come twice, late,
    or (rarely: a process that died between its commit and the notice) not
    at all, so subscribers also read again now and then. A storage offers
    one through C{change_notifier()}.
    """

    def publish(resource_name, parent_id, timestamp):
        """A write to the list committed (called after the commit)."""

    def subscribe(callback):
        """
        C{callback(resource_name, parent_id, timestamp)} for each notice;
        C{callback(None, None, None)} when notices may have been lost (a
        reconnection): every list may have moved. Returns a function that
        unsubscribes.
        """

    def close():
        """Stop listening (may return a L{Deferred})."""


class ISyncHorizon(Interface):
    """
    Where a storage forgot deletions: tombstones of a list up to its
    horizon were purged, so a C{_since} below it cannot be answered in full.
    """

    def sync_horizon(resource_name, parent_id, since=None):
        """
        (Deferred) the list's horizon (a timestamp: tombstones up to it may
        be gone), or C{None} when nothing was purged; with C{since}, C{None}
        too when C{since} is at or above the horizon (a backend may answer
        that without a look-up).
        """


class IRequestPrefetch(Interface):
    """
    Optional, for a backend whose storage and permission store share one
    database: the first look-ups of an object request in one round trip.
    The engine falls back to L{IStorage.get_many} and
    L{IPermissionStore.authorize} when the storage does not provide it.
    """

    def prefetch(txn, keys, principals, checks, members=None, acl_uri=None, page=None):
        """
        C{(found, allowed, groups, acl)}: the objects at C{keys} as
        L{IStorage.get_many} gives them; for each list of C{(uri,
        permission)} grants in C{checks}, whether C{principals} (plus the
        groups of C{members}) hold one; and C{groups} and C{acl} as
        L{IPermissionStore.authorize} gives them.

        With C{page=(resource_name, parent_id, query)}, a fifth item: the
        C{(timestamp, objects)} that L{IStorage.list_snapshot} with
        C{encoded} would return, read in the same snapshot (C{objects} may
        be a L{jsonsync.jsonutil.EncodedPage}), or C{None} when the backend
        could not read it so (the caller then calls C{list_snapshot}). A
        list request asks before it knows whether the user may see the whole
        list, and drops the page when not.
        @rtype: C{Awaitable[tuple[list, list[bool], set | None, dict | None]]}
        """


class IAuthenticationPolicy(Interface):
    """
    Turns a request's credentials into a user id.
    """

    name = Attribute("The policy's name; user ids it returns are prefixed C{name + ':'}.")
    challenge = Attribute(
        "The C{WWW-Authenticate} value to send with a 401 (for example "
        "C{'Basic realm=\"Realm\"'}), or C{None}."
    )

    def authenticate(request, txn):
        """
        The user id (without prefix) when the request carries credentials
        this policy accepts, C{None} when it carries none it knows (so the
        next policy is tried). A policy whose credentials act for another
        user (a scoped token) returns a L{jsonsync.auth.Identity} instead:
        that user's complete id (not prefixed) and an L{IRestriction} that
        narrows every permission check of the request.
        @param request: a L{jsonsync.http.ApiRequest}.
        @rtype: C{Awaitable[str | jsonsync.auth.Identity | None]}
        """


class IRestriction(Interface):
    """
    What a request's credentials may do at most, whatever its user may: the
    server grants a permission only when the user's principals hold it
    (ACLs, the tree, the settings) I{and} the restriction permits it, in
    every check: object requests, lists (only the objects it permits are
    listed), C{/batch} sub-requests, C{/permissions}. Carried by
    C{request.restriction} (C{None}, the common case, costs nothing).
    """

    label = Attribute("A name for the credentials (a token id), for logs and the audit.")

    def permits(uri, permission):
        """
        Whether C{permission} on the object C{uri} (C{""} for the root) may
        be used: C{read}, C{read:attributes}, C{write}, C{<type>:create},
        and the pseudo-permission C{share}, asked before a request changes
        an object's ACL. Synchronous and quick: it runs for every check.
        """

    def named_children(list_prefix):
        """
        The ids of the objects directly under C{list_prefix} (a list URI
        with a trailing slash) that the restriction names explicitly, so
        that a list the restriction does not cover whole still shows them
        (where the user may see them).
        """


class IResourceEvent(Interface):
    """
    What happened to objects of one resource type under one parent.
    """

    action = Attribute("C{'create'}, C{'update'}, C{'delete'} or C{'read'}.")
    resource_name = Attribute("C{'bucket'}, C{'collection'}, C{'group'}, C{'record'}, ...")
    parent_id = Attribute("The storage parent of the objects.")
    user_id = Attribute("The prefixed user id of the request, or C{None}.")
    timestamp = Attribute("The list timestamp after the change.")
    impacted_objects = Attribute(
        "A list of C{{'old': obj, 'new': obj}} (no C{'old'} on create, the "
        "tombstone as C{'new'} on delete, no C{'old'} on read)."
    )
    payload = Attribute("Kinto's event payload: ids of bucket, collection, ...")


class IResourceListener(Interface):
    """
    Told of changes to resources. A listener is registered for some
    actions and resource names (all when C{None}).
    """

    actions = Attribute("A set of action names, or C{None} for create, update and delete.")
    resource_names = Attribute("A set of resource names, or C{None} for all.")

    def before_commit(event, txn):
        """
        Called inside the request's transaction, once per event, before
        the commit. Raising L{jsonsync.errors.ListenerRejected} (or any
        L{jsonsync.errors.ApiError}) rolls the whole request back and sends
        the error to the client. The listener may alter C{new} objects
        through the storage it is given.
        @rtype: C{Awaitable[None]}
        """

    def after_commit(event):
        """
        Called once the change is durable. Failures are logged, never sent
        to the client.
        @rtype: C{Awaitable[None]}
        """


class IRegistry(Interface):
    """
    The plugin API: what a plugin may use of the server. A plugin receives
    the registry in C{install(registry, settings)} and extends the server
    only through the calls below; views and listeners may keep it and read
    its attributes later. Everything else of jsonsync is internal.
    """

    settings = Attribute("The server's settings (L{jsonsync.config.Settings}); read-only.")
    reactor = Attribute("The reactor the server runs on.")
    storage = Attribute("The active L{IStorage}.")
    permissions = Attribute("The active L{IPermissionStore}.")
    engine = Attribute(
        "The generic object engine (L{jsonsync.resources.engine.Engine}): its verbs serve any "
        "resource type; a plugin may subclass it for its own types."
    )
    resource_types = Attribute(
        "C{{name: ResourceType}} of the declared types; read-only (use add_resource_type). A "
        "plugin may append checks to a type's C{validators}."
    )

    def add_resource_type(resource_type, engine=None, plural=True, single=True):
        """
        Declare a kind of object (L{jsonsync.resources.model.ResourceType}) and
        mount its routes: the plural endpoint (list, create, delete many) unless
        C{plural} is false, the object endpoint (read, replace, modify, delete)
        unless C{single} is false, both served by C{engine} (the registry's
        engine by default). Returns the L{Route}s mounted, so that a plugin can
        wrap their views before the server starts.
        """

    def add_route(route):
        """Mount one more endpoint (a L{jsonsync.registry.Route}) under C{/v1}."""

    def add_listener(listener):
        """Add an L{IResourceListener} (checked with C{verifyObject})."""

    def add_capability(name, description, url="", **extra):
        """Announce a feature in the C{capabilities} of C{GET /v1/}."""

    def add_heartbeat(name, check):
        """One more key in C{/__heartbeat__}: C{check} is C{async () -> bool}."""

    def add_hello_extension(extend):
        """C{extend(request, document)} (may be a coroutine) adds fields to C{GET /v1/}."""

    def add_public_setting(name, value):
        """Show a setting in the C{settings} of C{GET /v1/}."""

    def add_root_permission(permission):
        """A permission granted on the root (C{"<type>:create"} for a top-level type)."""

    def add_body_limit(pattern, limit):
        """
        Request paths matching C{pattern} (a compiled bytes regex) take bodies
        up to C{limit} bytes instead of C{max_request_body_bytes}.
        """

    def add_request_observer(observer):
        """C{observer(twisted_request)} is called for every finished request (metrics)."""

    def add_response_observer(observer):
        """
        C{observer(request, response)} (an L{jsonsync.http.ApiRequest} and its
        L{jsonsync.http.ApiResponse}) is called once a request's answer is
        final: after its commit (or rollback), for each C{/batch} sub-request
        too (before the batch commits), and for errors. It runs on the
        reactor thread in the request's path, so it must be quick and must
        not raise: queue work, do not do it there. With an observer, requests
        carry C{request.client} (the client's address after trusted proxies).
        Nothing is done per request while no observer is registered.
        """

    def dispatch(request, path):
        """
        Run C{request} (an L{jsonsync.http.ApiRequest}) as if it had been sent
        to C{path} (with its C{/v1} prefix), in the same transaction: routes it,
        sets C{request.path} and C{request.params}, and returns the view's
        L{jsonsync.http.ApiResponse}. Raises L{jsonsync.errors.RouteNotFound}
        or L{jsonsync.errors.MethodNotAllowed} when no route takes it.
        """

    def route(name):
        """The mounted L{jsonsync.registry.Route} called C{name}, or C{None} (another plugin's, say)."""

    def location(uri):
        """The L{jsonsync.resources.model.Location} of an object URI, or C{None}."""


class IStorageBackend(IPlugin):
    """
    A storage backend that can be chosen by name (C{storage_backend} and
    C{permission_backend} settings).
    """

    name = Attribute("The name used in the configuration.")
    settings = Attribute("C{{setting name: default}} the backend accepts.")

    def open_storage(settings, reactor):
        """
        An L{IStorage} provider, connected (or connecting).
        @rtype: C{Awaitable[IStorage]}
        """

    def open_permissions(settings, reactor, storage):
        """
        An L{IPermissionStore} provider; C{storage} is the opened storage,
        so that a backend can share its connections and transactions.
        @rtype: C{Awaitable[IPermissionStore]}
        """


class IAuthenticationPolicyFactory(IPlugin):
    """
    An authentication policy that can be named in C{multiauth.policies}.
    """

    name = Attribute("The name used in C{multiauth.policies}.")
    settings = Attribute(
        "C{{setting name: default}} the policy reads (accepted when the policy is listed)."
    )

    def build(settings, registry):
        """
        An L{IAuthenticationPolicy} provider.
        """


class IJsonSyncPlugin(IPlugin):
    """
    A feature activated by listing its name in the C{includes} setting.
    """

    name = Attribute("The name used in C{includes}.")
    settings = Attribute(
        "C{{setting name: default}} the plugin accepts (a name ending in "
        "C{'.*'} accepts any setting below that prefix)."
    )

    def install(registry, settings):
        """
        Add routes, listeners, capabilities, authentication policies or
        permission rules to C{registry} (a L{jsonsync.registry.Registry}).
        @rtype: C{Awaitable[None] | None}
        """


class IFileStore(Interface):
    """
    Where the attachment plugin keeps uploaded files. Names are chosen by
    the plugin (C{bucket/collection/uuid.ext}: never a client's path). The
    methods block (disk or network I/O): the plugin calls them in a thread.
    """

    def save(name, source):
        """
        Store the content of C{source} (a binary file, read from its start
        to its end) under C{name}, replacing nothing: C{name} is new. The
        file appears whole or not at all.
        """

    def delete(name):
        """Remove the file stored under C{name}; a missing file is not an error."""

    def exists(name):
        """Whether a file is stored under C{name}."""

    def url(name):
        """The location of C{name} relative to the store's base URL."""

    def purge(prefix, before):
        """
        Remove the files under C{prefix} (C{bucket} or C{bucket/collection})
        stored before C{before} (seconds since the epoch): the files of a
        deleted bucket or collection, sparing any stored since its deletion
        was committed (a collection created again at once).
        """
