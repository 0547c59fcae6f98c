-- jsonsync schema, version 8: the group write of records writes their
-- webhooks' events in its own statement (GROUP_WRITE in
-- jsonsync/storage/postgresql/group.py): one look-up of the list's webhooks
-- per group instead of a trigger call and a look-up per row, which cost the
-- writes of a collection with webhooks more than the rest of their
-- statement. The row trigger stays for every other write; it now skips the
-- rows of a transaction that set jsonsync.events to 'written' (the group
-- write sets it, local to its transaction, just before its statement).
--
-- The trigger is created by the webhooks plugin at start with that
-- condition: it is dropped here so that the plugin creates it again. A
-- process of an older version on the same database would write such rows'
-- events twice (the trigger of version 7 has no condition): upgrade them
-- together.

DROP TRIGGER IF EXISTS jsonsync_webhook_fanout ON objects;
