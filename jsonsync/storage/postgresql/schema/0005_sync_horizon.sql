-- jsonsync schema, version 5: the sync horizon of each list.
--
-- `jsonsync purge-deleted` records here, for each list, the newest
-- tombstone it is about to remove, before removing any: a `_since` below a
-- list's horizon can no longer be answered in full (a deletion after it
-- may be gone), and the server refuses it (410) so that the client
-- synchronises again instead of keeping deleted records alive.
-- Independent of the other versions' content.

CREATE TABLE IF NOT EXISTS sync_horizons (
    resource_name TEXT COLLATE "C" NOT NULL,
    parent_id TEXT COLLATE "C" NOT NULL,
    horizon BIGINT NOT NULL,
    PRIMARY KEY (resource_name, parent_id)
);

-- The servers read max(horizon) now and then: a _since above it needs no look-up.
CREATE INDEX IF NOT EXISTS sync_horizons_horizon_idx ON sync_horizons (horizon);
