-- Soma's shared state (issue 17): the ledger, budgets and API tokens of
-- every daemon of a fleet. Applied once, in a transaction, by the first
-- daemon that opens the database (see runtime/src/store/postgres.rs).
-- Amounts are BIGINT: the PostgreSQL store refuses quantities, prices and
-- costs above 2^63 - 1 micro-units, and rollups saturate there.

-- One row per charge. `idem_key` is the ledger's idempotency key
-- `run/node/attempt/seq/kind`: a retried charge conflicts and is skipped.
CREATE TABLE ledger_entries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idem_key TEXT NOT NULL UNIQUE,
    time_ms BIGINT NOT NULL CHECK (time_ms >= 0),
    tenant TEXT NOT NULL,
    run TEXT NOT NULL,
    node TEXT NOT NULL,
    attempt BIGINT NOT NULL CHECK (attempt >= 0),
    seq BIGINT NOT NULL CHECK (seq >= 0),
    capsule TEXT NOT NULL,
    kind TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity >= 0),
    unit_price_micros BIGINT NOT NULL CHECK (unit_price_micros >= 0),
    cost_micros BIGINT NOT NULL CHECK (cost_micros >= 0),
    provider TEXT,
    model TEXT,
    estimated BOOLEAN NOT NULL
);
CREATE INDEX ledger_entries_run ON ledger_entries (run, id);
CREATE INDEX ledger_entries_tenant ON ledger_entries (tenant, id);
CREATE INDEX ledger_entries_capsule ON ledger_entries (capsule, id);
CREATE INDEX ledger_entries_time ON ledger_entries (time_ms);

-- Daily rollups, written in the same transaction as their entries.
CREATE TABLE ledger_daily (
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    capsule TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    unit_price_micros BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    count BIGINT NOT NULL,
    estimated BIGINT NOT NULL,
    PRIMARY KEY (day, tenant, capsule, model, kind, unit_price_micros)
);
CREATE INDEX ledger_daily_tenant ON ledger_daily (tenant, day);

-- Budgets: the limit, what was charged, what calls in flight hold.
CREATE TABLE budgets (
    scope TEXT PRIMARY KEY,
    limit_tokens BIGINT,
    limit_micros BIGINT,
    spent_tokens BIGINT NOT NULL DEFAULT 0,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    reserved_tokens BIGINT NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    reserved_micros BIGINT NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0)
);

-- One row per reservation held by a call in flight on any daemon.
CREATE TABLE budget_holds (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scopes TEXT[] NOT NULL,
    tokens BIGINT NOT NULL,
    micros BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- API tokens: the record as the redb store keeps it (JSON, hash only).
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    record TEXT NOT NULL
);
