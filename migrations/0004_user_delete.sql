-- 0004_user_delete: deleting a user names the posts that went with it, so that the server can drop
-- exactly those from its cache (instead of moving the whole cache to a new epoch).
-- Migration format (pgapi migrate): lines above the "-- +up" marker line are comments; the SQL after the
-- "-- +up" line applies the change, the SQL after the "-- +down" line undoes it exactly. Each part runs in
-- one transaction taken by `pgapi migrate`, so there is no BEGIN/COMMIT here.
-- Why a function and not one statement: a statement sees one snapshot, so a post inserted for the user
-- by a transaction that commits while the DELETE waits for the user's row would be removed by the
-- foreign key's cascade without being listed. Here the user's row is locked FOR UPDATE first, which
-- conflicts with the FOR KEY SHARE lock any insert of a post for this user (or move of a post to it)
-- takes: once it is held no post can join, and the next statement, on a new snapshot (READ COMMITTED,
-- a VOLATILE function), sees every post the user has.
-- +up
CREATE FUNCTION user_delete(uid bigint) RETURNS TABLE (id bigint, post_ids bigint[])
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    gone bigint[];
BEGIN
    PERFORM 1 FROM users u WHERE u.id = uid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    WITH d AS (DELETE FROM posts p WHERE p.user_id = uid RETURNING p.id)
    SELECT COALESCE(array_agg(d.id ORDER BY d.id), '{}') INTO gone FROM d;
    RETURN QUERY DELETE FROM users u WHERE u.id = uid RETURNING u.id, gone;
END;
$$;

-- +down
DROP FUNCTION user_delete(bigint);
