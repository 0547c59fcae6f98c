-- jsonsync schema, version 7: webhooks of a collection; windows read by position.
--
-- Besides a bucket's webhooks (resource_name 'webhook', parent
-- /buckets/<bid>), a collection has its own (resource_name
-- 'collection_webhook', parent /buckets/<bid>/collections/<cid>), managed by
-- the collection's writers. They hear of the collection and its records. A
-- webhook's URI, its events' target and its cursor's key are now written
-- parent_id || '/webhooks/' || id for both kinds.
--
-- The cursor trigger's function of version 6 named its variable after a
-- column and qualified it with the function's name, which PL/pgSQL does not
-- take for a declared variable: deleting a webhook (or its bucket) failed.
--
-- The triggers are created by the webhooks plugin at start, with the types
-- they watch in their WHEN clause: they are dropped here so that the plugin
-- creates them again with the new clause.

-- A cursor's position in its window is now (last_xid, last_seq): a window
-- is read in primary key order, each part from where the last one ended,
-- instead of in seq order, which read the whole rest of the window again
-- for each part (a backlog of n events cost about n²/batch row visits).
ALTER TABLE jsonsync_webhook_cursors ADD COLUMN last_xid xid8 NOT NULL DEFAULT '0';
-- A window left open by version 6 is read again from its start (at least
-- once: its first events may be delivered twice).
UPDATE jsonsync_webhook_cursors SET last_seq = 0 WHERE upto IS NOT NULL;

DROP TRIGGER IF EXISTS jsonsync_webhook_cursor ON objects;
DROP TRIGGER IF EXISTS jsonsync_webhook_cursor_gone ON objects;
DROP TRIGGER IF EXISTS jsonsync_webhook_fanout ON objects;

-- One event per live webhook that matches: the bucket's (all of them, or
-- those naming the collection) and, for a collection or one of its
-- records, the collection's own. The bucket's and the collection's
-- webhooks are two index probes (none match in a bucket without webhooks).
CREATE OR REPLACE FUNCTION jsonsync_webhook_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bucket text;
    coll text;
    act text;
    plural text;
    body text;
BEGIN
    bucket := split_part(NEW.parent_id, '/', 3);
    IF bucket = '' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.deleted THEN
            RETURN NULL;
        END IF;
        act := 'create';
    ELSIF NEW.deleted THEN
        IF OLD.deleted THEN
            RETURN NULL;
        END IF;
        act := 'delete';
    ELSIF OLD.deleted THEN
        act := 'create';
    ELSE
        act := 'update';
    END IF;
    IF NEW.resource_name = 'record' THEN
        coll := split_part(NEW.parent_id, '/', 5);
        plural := 'records';
    ELSIF NEW.resource_name = 'collection' THEN
        coll := NEW.id;
        plural := 'collections';
    ELSE
        coll := NULL;
        plural := 'groups';
    END IF;
    INSERT INTO jsonsync_webhook_events (target, body)
    SELECT w.target,
           '{"action":"' || act || '","resource_name":"' || NEW.resource_name
           || '","uri":' || to_json(NEW.parent_id || '/' || plural || '/' || NEW.id)::text
           || ',"bucket_id":' || to_json(bucket)::text
           || ',"collection_id":' || coalesce(to_json(coll)::text, 'null')
           || ',"timestamp":' || NEW.last_modified
           || ',"data":' || coalesce(NEW.body, NEW.data::text)
           || CASE WHEN act = 'delete' THEN ',"old":' || coalesce(OLD.body, OLD.data::text) ELSE '' END
           || ',"webhook":' || to_json(w.target)::text || '}'
      FROM (
        SELECT o.parent_id || '/webhooks/' || o.id AS target
          FROM objects o
         WHERE o.resource_name = 'webhook' AND o.parent_id = '/buckets/' || bucket AND NOT o.deleted
           AND (o.data->>'collection' IS NULL OR o.data->>'collection' = coll)
           AND (o.data->'actions' IS NULL OR o.data->'actions' ? act)
        UNION ALL
        SELECT o.parent_id || '/webhooks/' || o.id
          FROM objects o
         WHERE coll IS NOT NULL
           AND o.resource_name = 'collection_webhook'
           AND o.parent_id = '/buckets/' || bucket || '/collections/' || coll AND NOT o.deleted
           AND (o.data->'actions' IS NULL OR o.data->'actions' ? act)
      ) w;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION jsonsync_webhook_cursor() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hook text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        hook := OLD.parent_id || '/webhooks/' || OLD.id;
    ELSE
        hook := NEW.parent_id || '/webhooks/' || NEW.id;
    END IF;
    IF TG_OP = 'DELETE' OR NEW.deleted THEN
        DELETE FROM jsonsync_webhook_cursors WHERE target = hook;
        DELETE FROM jsonsync_webhook_events WHERE target = hook;
        DELETE FROM jsonsync_outbox WHERE target = hook;
    ELSE
        INSERT INTO jsonsync_webhook_cursors (target) VALUES (hook) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
