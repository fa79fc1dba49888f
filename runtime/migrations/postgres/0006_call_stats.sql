-- Per-capsule daily call statistics (the marketplace's cost cards), the
-- sums of the redb ledger's `ledger_call_stats` (runtime/src/ledger/calls.rs)
-- as columns, summed from the entries in their own transaction by one
-- upsert that adds to them; `latency` is the latency histogram's count per
-- bucket (LATENCY_BUCKETS of them). A failed call is counted once per
-- run/node/attempt; keys older than the statistics' window (31 days) are
-- deleted as new ones come.
CREATE TABLE ledger_call_stats (
    capsule TEXT NOT NULL,
    day BIGINT NOT NULL,
    calls BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    fuel BIGINT NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    fee_micros BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    latency BIGINT[] NOT NULL,
    PRIMARY KEY (capsule, day)
);
CREATE TABLE ledger_call_failures (
    call TEXT PRIMARY KEY,
    day BIGINT NOT NULL
);
CREATE INDEX ledger_call_failures_day ON ledger_call_failures (day);
