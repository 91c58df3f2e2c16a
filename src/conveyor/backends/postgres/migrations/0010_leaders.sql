-- migrate:up
-- Leadership as a lease on the server's clock: a leader that cannot renew it (frozen, cut off,
-- its connection hung) loses it within a lease. `pid` is the server backend of the leader's own
-- connection: when that session is gone (the leader died), the next takes over at once.
CREATE TABLE {schema}.leaders (
    name   text        PRIMARY KEY,
    holder text        NOT NULL,
    until  timestamptz NOT NULL,
    pid    integer     NOT NULL
);

-- migrate:down
DROP TABLE {schema}.leaders;
