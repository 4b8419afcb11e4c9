-- 0007_idempotency_keys: the answers of writes sent with an Idempotency-Key (README, "Safe retries";
-- worker/api/idempotency.h). The statement that writes stores its answer here in the same statement (a CTE,
-- so it works through PgBouncer's transaction mode), and a repeat of the key gets it back instead of writing
-- again. scope is the caller (the token's subject, '' when anonymous): keys of different callers never
-- meet. request_hash is the MD5 of the method, the path and the body's fields as parsed (and If-Match's
-- tags): the same key with another request is refused. Only writes that happened are stored (a 2xx);
-- body is NULL for a 204. Rows older than [idempotency] ttl count as absent and are deleted by a periodic
-- job on the primary (created_at's index).
-- +up
CREATE TABLE pgapi_idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL
                 CONSTRAINT pgapi_idempotency_keys_key_check CHECK (octet_length(key) BETWEEN 1 AND 255),
    request_hash text        NOT NULL,
    status       smallint    NOT NULL,
    row_id       text        NOT NULL,
    body         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pgapi_idempotency_keys_pkey PRIMARY KEY (scope, key)
);

CREATE INDEX pgapi_idempotency_keys_created_at ON pgapi_idempotency_keys (created_at);

-- +down
DROP TABLE pgapi_idempotency_keys;
