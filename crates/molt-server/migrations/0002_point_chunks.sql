-- Telemetry points packed per (device, seq, metric): one row per message
-- and metric instead of one per point (src/points.rs says why and gives
-- the blob's layout). `points` stays as the legacy table: Store::open
-- moves any rows it still holds into chunks, so it is empty afterwards.

CREATE TABLE point_chunks (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    metric TEXT NOT NULL,
    t_min BIGINT NOT NULL,
    t_max BIGINT NOT NULL,
    n BIGINT NOT NULL,
    points BLOB NOT NULL
);
CREATE INDEX point_chunks_by_metric ON point_chunks (device, metric, t_max);
CREATE INDEX point_chunks_by_time ON point_chunks (t_max);
