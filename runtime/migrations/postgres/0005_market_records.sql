-- The marketplace's tables (authors, versions, installs, prices), shared
-- by every daemon of a fleet (see runtime/src/market/records.rs). Each is
-- string key -> JSON, as the redb tables of the same names: `tbl` is the
-- table's name, `key` its key as bytes (BYTEA: byte order, as redb's, and
-- NUL is allowed), `value` the record's JSON. Writes of one table hold a
-- transaction-level advisory lock. `rev` is a fleet-wide sequence number
-- stamped by each write, so a daemon sees cheaply that a table changed.
CREATE SEQUENCE market_records_rev;
CREATE TABLE market_records (
    tbl TEXT NOT NULL,
    key BYTEA NOT NULL,
    value BYTEA NOT NULL,
    rev BIGINT NOT NULL,
    PRIMARY KEY (tbl, key)
);
CREATE INDEX market_records_by_rev ON market_records (tbl, rev);
