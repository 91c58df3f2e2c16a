-- migrate:up
-- Dashboard sessions signed out before they expired: every `conveyor serve` sharing the store
-- refuses them. A row is kept until the session would have expired anyway.
CREATE TABLE {schema}.revoked_sessions (
    nonce text        PRIMARY KEY,
    until timestamptz NOT NULL
);

-- migrate:down
DROP TABLE {schema}.revoked_sessions;
