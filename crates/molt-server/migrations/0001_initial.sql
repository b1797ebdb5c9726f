-- molt-server schema. Portable SQL: $N placeholders, ON CONFLICT, no
-- SQLite-only types, so a PostgreSQL migration set can follow.

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    hardware_class TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '{}',
    created_ms BIGINT NOT NULL,
    last_seen_ms BIGINT,
    online INTEGER NOT NULL DEFAULT 0,
    revoked_ms BIGINT,
    cert_serial TEXT,
    key_fingerprint TEXT UNIQUE,
    stored_through BIGINT NOT NULL DEFAULT 0,
    reported TEXT,
    reported_ms BIGINT,
    health TEXT,
    health_ms BIGINT,
    desired_generation BIGINT NOT NULL DEFAULT 0,
    desired_release BIGINT,
    desired_rollout TEXT
);

-- The dedupe ledger: one row per stored uplink message.
CREATE TABLE uplink (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (device, seq)
);

CREATE TABLE points (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    metric TEXT NOT NULL,
    sensor BIGINT NOT NULL,
    t_ms BIGINT NOT NULL,
    value DOUBLE PRECISION
);
CREATE INDEX points_by_metric ON points (device, metric, t_ms);
CREATE INDEX points_by_time ON points (t_ms);

CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    policy TEXT NOT NULL,
    sensor BIGINT NOT NULL,
    t_ms BIGINT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    updated_ms BIGINT NOT NULL
);
CREATE INDEX alerts_by_state ON alerts (state, t_ms);

CREATE TABLE events (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    t_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_device ON events (device, t_ms);

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    uses_max BIGINT NOT NULL,
    uses BIGINT NOT NULL DEFAULT 0,
    hardware_class TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    created_by TEXT NOT NULL
);

CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT
);

CREATE TABLE device_groups (
    name TEXT PRIMARY KEY,
    query TEXT,
    created_ms BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL,
    device TEXT NOT NULL,
    PRIMARY KEY (group_name, device)
);
