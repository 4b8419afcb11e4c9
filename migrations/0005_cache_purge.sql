-- 0005_cache_purge: the deployment's cache purges (docs/consistency.md, "Several servers").
-- A write whose fences could not be made visible in Redis (the invalidation failed or timed out after
-- the commit) is answered 503 write_outcome_unknown and raises `gen` here, with `lsn` at least its commit
-- position. Every worker of every server reads this row each health_interval; a new gen makes it stop
-- trusting what Redis and its local copies hold until the cache has moved to a new epoch with `lsn` as
-- the floor of every fence. One row (id is always true).
-- +up
CREATE TABLE pgapi_cache_purge (
    id  boolean PRIMARY KEY DEFAULT true CONSTRAINT pgapi_cache_purge_one_row CHECK (id),
    gen bigint  NOT NULL DEFAULT 0,
    lsn pg_lsn  NOT NULL DEFAULT '0/0'
);

INSERT INTO pgapi_cache_purge DEFAULT VALUES;

-- +down
DROP TABLE pgapi_cache_purge;
