-- 0003_version_triggers: every UPDATE of a user or post bumps version and updated_at, even one that
-- forgets to (or sets version itself), so optimistic concurrency (WHERE version = $n) can be trusted.
-- Migration format (pgapi migrate): lines above the "-- +up" marker line are comments; the SQL after the
-- "-- +up" line applies the change, the SQL after the "-- +down" line undoes it exactly. Each part runs in
-- one transaction taken by `pgapi migrate`, so there is no BEGIN/COMMIT here.
-- +up
CREATE FUNCTION bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_bump_version BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION bump_version();

CREATE TRIGGER posts_bump_version BEFORE UPDATE ON posts
    FOR EACH ROW EXECUTE FUNCTION bump_version();

-- +down
DROP TRIGGER posts_bump_version ON posts;
DROP TRIGGER users_bump_version ON users;
DROP FUNCTION bump_version();
