-- jsonsync schema, version 6: webhook events as an append-only log read by
-- cursor (jsonsync/storage/postgresql/outbox.py).
--
-- Version 4 wrote one outbox row per event, then changed it twice (claimed,
-- delivered) and logged the attempt in another table: four row writes and a
-- dozen index entries per change, which cost writes a third of their speed.
-- Now a change writes one row (its event, in the write's own statement) and
-- nothing else happens to it on the way out:
--
-- * jsonsync_webhook_events: one row per change and webhook, never updated.
--   `xid` is the writing transaction: events are read by commit, not by
--   insertion order (a transaction that inserts first may commit last).
-- * jsonsync_webhook_cursors: one row per webhook. `done` is a snapshot:
--   every event whose transaction it shows as committed has been handled.
--   A worker leases the row, sets `upto` to the snapshot of the moment and
--   delivers the events committed between `done` and `upto` in `seq` order
--   (`last_seq`: how far it got), then moves `done` to `upto`. One lease and
--   one update per batch of events, whatever the batch's size.
-- * jsonsync_outbox (version 4) keeps the events that failed once: their
--   retries, back-off and final state, claimed as before.
-- * jsonsync_outbox_attempts logs every attempt of both paths (the
--   reference to jsonsync_outbox goes: a first attempt that succeeded has
--   no row there).

CREATE TABLE jsonsync_webhook_events (
    target TEXT COLLATE "C" NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq BIGSERIAL NOT NULL,
    -- NULL for the events the trigger writes (their id is "<xid>-<seq>")
    id TEXT COLLATE "C",
    body TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (target, xid, seq)
);
-- Pruning by age (append-only, so a summarising index is enough).
CREATE INDEX jsonsync_webhook_events_created_idx ON jsonsync_webhook_events USING brin (created_at);

CREATE TABLE jsonsync_webhook_cursors (
    target TEXT COLLATE "C" PRIMARY KEY,
    done pg_snapshot NOT NULL DEFAULT '1:1:',
    upto pg_snapshot,
    last_seq BIGINT NOT NULL DEFAULT 0,
    token TEXT,
    lease_until TIMESTAMPTZ
);

INSERT INTO jsonsync_webhook_cursors (target)
SELECT '/buckets/' || split_part(parent_id, '/', 3) || '/webhooks/' || id
  FROM objects WHERE resource_name = 'webhook' AND NOT deleted
ON CONFLICT DO NOTHING;

ALTER TABLE jsonsync_outbox_attempts DROP CONSTRAINT IF EXISTS jsonsync_outbox_attempts_message_id_fkey;
CREATE INDEX jsonsync_outbox_attempts_at_idx ON jsonsync_outbox_attempts USING brin (at);

-- The fan-out trigger's function, now writing events (the trigger itself is
-- created by the webhooks plugin at start). One event per live webhook of
-- the object's bucket whose collection (if any) and actions match; record
-- filters are the worker's. The body is the event without its id (the
-- worker adds it): for a deletion "old" carries the object before it, for
-- the filters, and is not sent.
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
    -- One statement: the body is built only for the webhooks that match
    -- (none, in a bucket without webhooks: one index probe).
    INSERT INTO jsonsync_webhook_events (target, body)
    SELECT '/buckets/' || bucket || '/webhooks/' || w.id,
           '{"action":"' || act || '","resource_name":"' || NEW.resource_name
           || '","uri":' || to_json(NEW.parent_id || '/' || plural || '/' || NEW.id)::text
           || ',"bucket_id":' || to_json(bucket)::text
           || ',"collection_id":' || coalesce(to_json(coll)::text, 'null')
           || ',"timestamp":' || NEW.last_modified
           || ',"data":' || coalesce(NEW.body, NEW.data::text)
           || CASE WHEN act = 'delete' THEN ',"old":' || coalesce(OLD.body, OLD.data::text) ELSE '' END
           || ',"webhook":' || to_json('/buckets/' || bucket || '/webhooks/' || w.id)::text || '}'
      FROM objects w
     WHERE w.resource_name = 'webhook' AND w.parent_id = '/buckets/' || bucket AND NOT w.deleted
       AND (w.data->>'collection' IS NULL OR w.data->>'collection' = coll)
       AND (w.data->'actions' IS NULL OR w.data->'actions' ? act);
    RETURN NULL;
END
$$;

-- A webhook's cursor exists while the webhook does: created with it (from
-- the start of its events), dropped with its events and retries when it is
-- deleted, so that a webhook created again under the same id starts afresh.
CREATE OR REPLACE FUNCTION jsonsync_webhook_cursor() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    target text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        target := '/buckets/' || split_part(OLD.parent_id, '/', 3) || '/webhooks/' || OLD.id;
    ELSE
        target := '/buckets/' || split_part(NEW.parent_id, '/', 3) || '/webhooks/' || NEW.id;
    END IF;
    IF TG_OP = 'DELETE' OR NEW.deleted THEN
        DELETE FROM jsonsync_webhook_cursors c WHERE c.target = jsonsync_webhook_cursor.target;
        DELETE FROM jsonsync_webhook_events e WHERE e.target = jsonsync_webhook_cursor.target;
        DELETE FROM jsonsync_outbox o WHERE o.target = jsonsync_webhook_cursor.target;
    ELSE
        INSERT INTO jsonsync_webhook_cursors (target) VALUES (target) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
