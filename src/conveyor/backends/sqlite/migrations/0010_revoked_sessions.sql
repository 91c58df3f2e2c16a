-- migrate:up
-- Dashboard sessions signed out before they expired: every `conveyor serve` sharing the store
-- refuses them. A row is kept until the session would have expired anyway.
CREATE TABLE conveyor_revoked_sessions (
    nonce TEXT PRIMARY KEY,
    until REAL NOT NULL
);

-- migrate:down
DROP TABLE conveyor_revoked_sessions;
