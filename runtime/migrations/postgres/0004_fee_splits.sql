-- The revenue split of every `marketplace-fee` ledger entry, written in the
-- same transaction as its entry (runtime/src/ledger/postgres.rs), as the
-- redb ledger's `ledger_fee_splits` table: a replayed fee writes neither.
-- author_micros + platform_micros = fee_micros = the entry's cost.
CREATE TABLE ledger_fee_splits (
    entry_id BIGINT PRIMARY KEY REFERENCES ledger_entries (id),
    month TEXT NOT NULL,
    author TEXT NOT NULL,
    listing TEXT NOT NULL,
    version TEXT NOT NULL,
    fee_micros BIGINT NOT NULL CHECK (fee_micros >= 0),
    author_micros BIGINT NOT NULL CHECK (author_micros >= 0),
    platform_micros BIGINT NOT NULL CHECK (platform_micros >= 0)
);
CREATE INDEX ledger_fee_splits_month ON ledger_fee_splits (month, entry_id);
