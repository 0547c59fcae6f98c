-- The transactional outbox (jsonsync.interfaces.IOutbox, used by the webhooks
-- plugin): one row per message to deliver, inserted in the transaction of
-- the change it describes; workers claim due rows with FOR UPDATE SKIP
-- LOCKED and lease them by moving due_at past the lease, so a worker killed
-- mid-delivery leaves its rows to another once the lease is over.
CREATE TABLE jsonsync_outbox (
    id TEXT COLLATE "C" PRIMARY KEY,
    target TEXT COLLATE "C" NOT NULL,
    body TEXT NOT NULL,
    -- pending, delivered or failed
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- the start of the retry period: creation, or the last redelivery
    since TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    due_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- the current claim (NULL when none)
    token TEXT,
    ended_at TIMESTAMPTZ,
    seq BIGSERIAL NOT NULL
);

-- What the workers poll: pending rows by due time.
CREATE INDEX jsonsync_outbox_due_idx ON jsonsync_outbox (due_at) WHERE status = 'pending';
-- The delivery log of one webhook, newest first.
CREATE INDEX jsonsync_outbox_target_idx ON jsonsync_outbox (target, seq);
-- Pruning of old finished rows.
CREATE INDEX jsonsync_outbox_ended_idx ON jsonsync_outbox (ended_at) WHERE ended_at IS NOT NULL;

CREATE TABLE jsonsync_outbox_attempts (
    message_id TEXT COLLATE "C" NOT NULL REFERENCES jsonsync_outbox (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    status_code INTEGER,
    latency_ms DOUBLE PRECISION,
    error TEXT,
    worker TEXT,
    PRIMARY KEY (message_id, attempt)
);

-- The fan-out of changes to webhooks, as a trigger on objects (created by
-- the webhooks plugin at start, see jsonsync/storage/postgresql/outbox.py):
-- it writes a change's messages in the very statement that writes the
-- object, so a write keeps carrying its commit and sharing its list's group
-- commit. One message per live webhook of the object's bucket whose
-- collection (if any) and actions match; record filters are the worker's.
-- The body is the event without its id (the worker adds it): for a deletion
-- "old" carries the object before it, for the filters, and is not sent.
CREATE OR REPLACE FUNCTION jsonsync_webhook_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bucket text;
    coll text;
    act text;
    plural text;
    head text;
BEGIN
    bucket := split_part(NEW.parent_id, '/', 3);
    IF bucket = '' OR NOT EXISTS (
        SELECT 1 FROM objects
         WHERE resource_name = 'webhook' AND parent_id = '/buckets/' || bucket AND NOT deleted
    ) THEN
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
    head := '{"action":"' || act || '","resource_name":"' || NEW.resource_name
        || '","uri":' || to_json(NEW.parent_id || '/' || plural || '/' || NEW.id)::text
        || ',"bucket_id":' || to_json(bucket)::text
        || ',"collection_id":' || coalesce(to_json(coll)::text, 'null')
        || ',"timestamp":' || NEW.last_modified
        || ',"data":' || coalesce(NEW.body, NEW.data::text);
    IF act = 'delete' THEN
        head := head || ',"old":' || coalesce(OLD.body, OLD.data::text);
    END IF;
    INSERT INTO jsonsync_outbox (id, target, body)
    SELECT gen_random_uuid()::text, '/buckets/' || bucket || '/webhooks/' || w.id,
           head || ',"webhook":' || to_json('/buckets/' || bucket || '/webhooks/' || w.id)::text || '}'
      FROM objects w
     WHERE w.resource_name = 'webhook' AND w.parent_id = '/buckets/' || bucket AND NOT w.deleted
       AND (w.data->>'collection' IS NULL OR w.data->>'collection' = coll)
       AND (w.data->'actions' IS NULL OR w.data->'actions' ? act);
    RETURN NULL;
END
$$;
