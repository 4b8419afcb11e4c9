-- 0001_create_users: the users table; email is unique, version counts updates (see 0003).
-- Migration format (pgapi migrate): lines above the "-- +up" marker line are comments; the SQL after the
-- "-- +up" line applies the change, the SQL after the "-- +down" line undoes it exactly. Each part runs in
-- one transaction taken by `pgapi migrate`, so there is no BEGIN/COMMIT here.
-- Constraint names are explicit (equal to PostgreSQL's defaults) so code reporting violations can rely on them.
-- +up
CREATE TABLE users (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL
               CONSTRAINT users_name_check CHECK (char_length(name) BETWEEN 1 AND 200),
    email      text        NOT NULL
               CONSTRAINT users_email_check
               CHECK (char_length(email) BETWEEN 3 AND 254 AND position('@' in email) > 1),
    version    bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- +down
DROP TABLE users;
