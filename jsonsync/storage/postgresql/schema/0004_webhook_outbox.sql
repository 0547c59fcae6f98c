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
