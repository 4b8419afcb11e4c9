-- 0006_cache_purge_primary: the primary the deployment's caches were last purged for (docs/consistency.md,
-- "High availability"). A worker that finds another primary here than the one its health check sees
-- (a promotion: a new timeline) records a purge, once for the whole deployment (the UPDATE is
-- conditional), even when no server saw the former primary: values cached from it never come back.
-- +up
ALTER TABLE pgapi_cache_purge ADD COLUMN primary_id text NOT NULL DEFAULT '';

-- +down
ALTER TABLE pgapi_cache_purge DROP COLUMN primary_id;
