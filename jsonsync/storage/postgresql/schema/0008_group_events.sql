-- jsonsync schema, version 8: the group write of records writes its
-- webhooks' events in its own statement (GROUP_WRITE_EVENTS in
-- jsonsync/storage/postgresql/group.py), and the row trigger writes those of
-- every other write. Both build the events with the two functions below, so
-- that an event has one shape whoever writes it.
--
-- Why: per row, the trigger costs a PL/pgSQL call and a look-up of the
-- webhooks through SPI; in the group's statement the look-up runs once per
-- group and the events are built as a set. Measured with pgbench on one
-- connection, an update of three records with one webhook: 37 us of
-- PostgreSQL time per row by the trigger, 16 by the statement.
--
-- The row trigger now skips the rows of a transaction that set
-- jsonsync.events to 'written' (the group write sets it, local to its
-- transaction, just before its statement). The triggers are (re)created by
-- jsonsync_webhook_triggers(), which the webhooks plugin calls at start; a
-- database that has the fan-out trigger gets the new one here, in place, so
-- that no write goes without its events in between. A process of an older
-- version still running on the database sets no jsonsync.events: the
-- trigger keeps writing its events, once.

-- The live webhooks that hear of a change under bucket (and collection
-- coll, if any): the bucket's (all of them, or those naming the
-- collection), then the collection's own. Two index probes. Inlined by the
-- planner where it is called.
CREATE OR REPLACE FUNCTION jsonsync_webhook_targets(bucket text, coll text)
RETURNS TABLE (target text, actions jsonb)
LANGUAGE sql STABLE AS $$
    SELECT o.parent_id || '/webhooks/' || o.id, o.data->'actions'
      FROM objects o
     WHERE o.resource_name = 'webhook' AND o.parent_id = '/buckets/' || bucket AND NOT o.deleted
       AND (o.data->>'collection' IS NULL OR o.data->>'collection' = coll)
    UNION ALL
    SELECT o.parent_id || '/webhooks/' || o.id, o.data->'actions'
      FROM objects o
     WHERE coll IS NOT NULL
       AND o.resource_name = 'collection_webhook'
       AND o.parent_id = '/buckets/' || bucket || '/collections/' || coll AND NOT o.deleted
$$;

-- The body of an event, without its id (the worker adds it). For a
-- deletion, "old" carries the object before it (for the filters; it is not
-- sent).
CREATE OR REPLACE FUNCTION jsonsync_webhook_event(
    act text, resource_name text, uri text, bucket text, coll text, stamp bigint, body text, old text, target text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT '{"action":"' || act || '","resource_name":"' || resource_name
           || '","uri":' || to_json(uri)::text
           || ',"bucket_id":' || to_json(bucket)::text
           || ',"collection_id":' || coalesce(to_json(coll)::text, 'null')
           || ',"timestamp":' || stamp
           || ',"data":' || body
           || CASE WHEN act = 'delete' THEN ',"old":' || old ELSE '' END
           || ',"webhook":' || to_json(target)::text || '}'
$$;

CREATE OR REPLACE FUNCTION jsonsync_webhook_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bucket text;
    coll text;
    act text;
    plural text;
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
           jsonsync_webhook_event(act, NEW.resource_name, NEW.parent_id || '/' || plural || '/' || NEW.id,
                                  bucket, coll, NEW.last_modified, coalesce(NEW.body, NEW.data::text),
                                  CASE WHEN act = 'delete' THEN coalesce(OLD.body, OLD.data::text) END, w.target)
      FROM jsonsync_webhook_targets(bucket, coll) w
     WHERE w.actions IS NULL OR w.actions ? act;
    RETURN NULL;
END
$$;

-- The webhooks' triggers, created or brought up to date (at the webhooks
-- plugin's start, under an advisory lock): the fan-out trigger on the
-- changes of records, collections and groups, but not on the rows of a
-- statement that wrote their events itself, and the triggers that keep
-- the webhooks' cursors.
CREATE OR REPLACE FUNCTION jsonsync_webhook_triggers() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgname = 'jsonsync_webhook_fanout' AND tgrelid = 'objects'::regclass
                      AND pg_get_triggerdef(oid) LIKE '%jsonsync.events%') THEN
        DROP TRIGGER IF EXISTS jsonsync_webhook_fanout ON objects;
        CREATE TRIGGER jsonsync_webhook_fanout AFTER INSERT OR UPDATE ON objects FOR EACH ROW
        WHEN (NEW.resource_name IN ('record', 'collection', 'group')
              AND current_setting('jsonsync.events', true) IS DISTINCT FROM 'written')
        EXECUTE FUNCTION jsonsync_webhook_fanout();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgname = 'jsonsync_webhook_cursor' AND tgrelid = 'objects'::regclass) THEN
        CREATE TRIGGER jsonsync_webhook_cursor AFTER INSERT OR UPDATE ON objects FOR EACH ROW
        WHEN (NEW.resource_name IN ('webhook', 'collection_webhook'))
        EXECUTE FUNCTION jsonsync_webhook_cursor();
        CREATE TRIGGER jsonsync_webhook_cursor_gone AFTER DELETE ON objects FOR EACH ROW
        WHEN (OLD.resource_name IN ('webhook', 'collection_webhook'))
        EXECUTE FUNCTION jsonsync_webhook_cursor();
    END IF;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'jsonsync_webhook_fanout' AND tgrelid = 'objects'::regclass) THEN
        PERFORM jsonsync_webhook_triggers();
    END IF;
END
$$;
