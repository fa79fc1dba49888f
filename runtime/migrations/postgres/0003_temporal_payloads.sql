-- Temporal payloads passed by reference (runtime/src/temporal/payloads.rs):
-- a payload larger than [orchestrator] payload_offload_bytes is stored here
-- under the SHA-256 of its metadata and data, and Temporal holds only the
-- reference. `used_ms` is bumped on every read and write; rows unused for
-- [orchestrator] payload_retention_hours are deleted.
CREATE TABLE temporal_payloads (
    digest TEXT PRIMARY KEY,
    metadata BYTEA NOT NULL,
    data BYTEA NOT NULL,
    used_ms BIGINT NOT NULL
);
CREATE INDEX temporal_payloads_used ON temporal_payloads (used_ms);
