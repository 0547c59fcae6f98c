-- jsonsync schema, version 1: objects, per-list timestamps, ACEs, group membership.
--
-- Text keys use the "C" collation: comparisons are then byte-wise, which is
-- code point order for UTF-8 (the order the memory backend and Python use),
-- and a plain btree on such a column serves LIKE 'prefix%' look-ups, so the
-- prefix deletes need no separate text_pattern_ops index.

CREATE TABLE objects (
    resource_name TEXT COLLATE "C" NOT NULL,
    parent_id TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    last_modified BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    -- The whole object as returned to clients, id and last_modified included,
    -- so that filters and sorts on any field read one JSONB value.
    data JSONB NOT NULL,
    PRIMARY KEY (resource_name, parent_id, id)
);

-- The sync cursor: default order (newest first), _since/_before and keyset
-- pages all walk this index; id breaks ties between client-forced timestamps.
CREATE INDEX objects_list_last_modified_idx
    ON objects (resource_name, parent_id, last_modified, id);

-- One row per list ever written (or whose timestamp was read): the list's
-- current timestamp, updated under the list's advisory lock.
CREATE TABLE timestamps (
    resource_name TEXT COLLATE "C" NOT NULL,
    parent_id TEXT COLLATE "C" NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (resource_name, parent_id)
);

-- purge(parent_prefix) finds the lists below a parent here, then deletes
-- their objects through the objects primary key.
CREATE INDEX timestamps_parent_idx ON timestamps (parent_id);

CREATE TABLE access_control_entries (
    object_id TEXT COLLATE "C" NOT NULL,
    permission TEXT COLLATE "C" NOT NULL,
    principal TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (object_id, permission, principal)
);

-- accessible_children / accessible_objects / remove_principal start from the
-- principal; object_id second serves the children prefix.
CREATE INDEX access_control_entries_principal_idx
    ON access_control_entries (principal, object_id);

CREATE TABLE user_principals (
    member TEXT COLLATE "C" NOT NULL,
    principal TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (member, principal)
);

-- remove_principal and remove_principal_prefix look members up by group.
CREATE INDEX user_principals_principal_idx ON user_principals (principal);
