-- Per-capsule daily call statistics (the marketplace's cost cards), as the
-- redb ledger's tables of the same names (runtime/src/ledger/calls.rs):
-- `stats` is the same compact encoding of a CallDay (counts, sums and the
-- latency histogram), summed from the entries in their own transaction.
-- A failed call is counted once per run/node/attempt; keys older than the
-- statistics' window (31 days) are deleted as new ones come.
CREATE TABLE ledger_call_stats (
    capsule TEXT NOT NULL,
    day BIGINT NOT NULL,
    stats BYTEA NOT NULL,
    PRIMARY KEY (capsule, day)
);
CREATE TABLE ledger_call_failures (
    call TEXT PRIMARY KEY,
    day BIGINT NOT NULL
);
CREATE INDEX ledger_call_failures_day ON ledger_call_failures (day);
