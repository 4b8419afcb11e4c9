-- 0002_create_posts: posts belong to a user and go with it (ON DELETE CASCADE).
-- Migration format (pgapi migrate): lines above the "-- +up" marker line are comments; the SQL after the
-- "-- +up" line applies the change, the SQL after the "-- +down" line undoes it exactly. Each part runs in
-- one transaction taken by `pgapi migrate`, so there is no BEGIN/COMMIT here.
-- posts_user_id_idx serves "posts of user X, in id order" (keyset pagination) and the foreign key's
-- cascade on user delete.
-- +up
CREATE TABLE posts (
    id         bigserial   PRIMARY KEY,
    title      text        NOT NULL
               CONSTRAINT posts_title_check CHECK (char_length(title) BETWEEN 1 AND 200),
    content    text        NOT NULL DEFAULT ''
               CONSTRAINT posts_content_check CHECK (char_length(content) <= 10000),
    user_id    bigint      NOT NULL
               CONSTRAINT posts_user_id_fkey REFERENCES users (id) ON DELETE CASCADE,
    version    bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX posts_user_id_idx ON posts (user_id, id);

-- +down
DROP INDEX posts_user_id_idx;
DROP TABLE posts;
