-- The analytics sink's table (soma: runtime/src/analytics/sink/clickhouse.rs).
-- ClickHouse 18.16 and later. The sink runs this itself when
-- [analytics.clickhouse] create_table = true (the default).
CREATE DATABASE IF NOT EXISTS soma;

CREATE TABLE IF NOT EXISTS soma.events (
    id String,
    v UInt32,
    type String,
    tenant String,
    time_ms UInt64,
    time DateTime MATERIALIZED toDateTime(intDiv(time_ms, 1000)),
    run String,
    node String,
    attempt UInt32,
    capsule_digest String,
    capsule_name String,
    outcome String,
    failure_class String,
    fuel UInt64,
    wall_us UInt64,
    peak_memory_bytes UInt64,
    cost_micros UInt64,
    direction String,
    tokens UInt64,
    provider String,
    model String,
    estimated UInt8,
    score Float64,
    scored UInt8,
    approved UInt8,
    event String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(toDate(toDateTime(intDiv(time_ms, 1000))))
ORDER BY (tenant, id);
