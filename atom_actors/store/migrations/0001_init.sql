-- The seed's models. Nothing here identifies a person: a session is known by the sha256 of its
-- token only, and events carry swarm facts (levels, spheres, counts, command ids).

CREATE TABLE agents (
    id          integer PRIMARY KEY,
    sphere      text NOT NULL,
    name        text NOT NULL,
    function    text NOT NULL,
    frequency   double precision NOT NULL,
    status      text NOT NULL,
    pos_x       real NOT NULL,
    pos_y       real NOT NULL,
    pos_z       real NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id              text PRIMARY KEY,          -- sha256 hex of the token
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    sceau_validated boolean NOT NULL DEFAULT true,
    frequency       double precision NOT NULL,
    revoked         boolean NOT NULL DEFAULT false
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE events (
    id       bigserial PRIMARY KEY,
    time     timestamptz NOT NULL,
    kind     text NOT NULL,                    -- dispersal, regroup, retune, safeguard
    payload  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_kind_time ON events (kind, time DESC);
-- A command is recorded once even if a new engine leader applies it again after a failover.
CREATE UNIQUE INDEX events_command ON events (kind, (payload->>'command_id'))
    WHERE payload ? 'command_id';
