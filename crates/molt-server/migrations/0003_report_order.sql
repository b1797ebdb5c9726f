-- The sequence number of the state and health report a device row holds, so
-- that a report arriving late (a resend, or one overtaken on another topic)
-- never replaces a newer one.

ALTER TABLE devices ADD COLUMN reported_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN health_seq BIGINT NOT NULL DEFAULT 0;
