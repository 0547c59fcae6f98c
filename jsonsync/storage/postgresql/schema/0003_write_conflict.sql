-- A compare-and-swap write (an update or delete that names the version of
-- the object it decided on) that finds another version stored must fail
-- its whole statement, so that nothing sent with it (the object's ACL)
-- commits alone. The write statement calls this for each refused object;
-- the server turns SQLSTATE JS409 into a retry of the request.
CREATE OR REPLACE FUNCTION jsonsync_write_conflict(object_id text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'object % was written by another transaction meanwhile', object_id
        USING ERRCODE = 'JS409';
END
$$;
