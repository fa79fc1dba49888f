//! Where the marketplace's records live: [`Records`], the one seam between
//! the marketplace (authors, versions, installs, prices) and its storage.
//!
//! Every marketplace table is string key → JSON bytes, and every write is
//! one read-modify-write of a few keys of one table. So the seam is small:
//! [`Records::read`] and [`Records::write`] run a closure over one table's
//! [`Rows`] (get, ordered prefix scan, and for writes put and remove) in
//! one transaction.
//!
//! - **redb** (the default): the table of that name in the node database;
//!   a write is one durable redb transaction (redb has one writer at a
//!   time), a scan hands the visitor each row's bytes without copying.
//! - **PostgreSQL** (`[store] backend = "postgres"`): one table,
//!   `market_records (tbl, key BYTEA, value BYTEA, rev)` (migration 5),
//!   shared by every daemon of a fleet. A write is one transaction that
//!   first takes a transaction-level advisory lock of its table, so the
//!   fleet's writes of one table are serialized exactly as redb's are:
//!   a check-then-write (a name not taken, a tenant's count under its cap)
//!   holds across daemons. Keys are `BYTEA`, so their order is byte order
//!   (as redb's `&str` keys; a collation would reorder them) and a prefix
//!   scan is one index range. Scans stream rows (`query_raw`), so a scan of
//!   every version never holds them all in memory. Each put stamps the row
//!   with a fleet-wide sequence number: [`Records::revision`] tells a
//!   daemon cheaply whether another one changed a table (its search index
//!   follows the shared versions that way).

use std::sync::Arc;

use postgres::{GenericClient, fallible_iterator::FallibleIterator};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use soma_host_api::storage::LazyDatabase;

use super::error::{MarketError, storage};
use crate::store::{
    Backend, StoreConfig,
    postgres::{PgError, PgStore},
};

/// One marketplace table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// author name → `Author`.
    Authors,
    /// `author/name@version` → `Submission`.
    Versions,
    /// `tenant\0author/name` → `TenantPin`.
    Installs,
    /// `author/name` → `PriceHistory`.
    Prices,
}

impl Table {
    /// The redb table's name, also the `tbl` column on PostgreSQL.
    pub fn name(self) -> &'static str {
        match self {
            Self::Authors => "market_authors",
            Self::Versions => "market_versions",
            Self::Installs => "market_installs",
            Self::Prices => "market_prices",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }

    /// The advisory lock a PostgreSQL write of this table takes ("somk"
    /// and the table's number: apart from the migrations' "soma").
    fn lock(self) -> i64 {
        0x736f_6d6b_0000 + self as i64
    }
}

/// What a scan calls with each row's key and value: `Ok(false)` stops it.
pub type Visit<'a> = dyn FnMut(&str, &[u8]) -> Result<bool, MarketError> + 'a;

/// One table's rows, inside a transaction.
pub trait Rows {
    /// The value under `key`.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, MarketError>;

    /// Every row whose key starts with `prefix` (all rows for `""`), in
    /// byte order of the keys, until `visit` returns `false`.
    fn scan(&mut self, prefix: &str, visit: &mut Visit<'_>) -> Result<(), MarketError>;
}

/// One table's rows inside a write transaction.
pub trait RowsMut: Rows {
    /// Set `key` to `value`.
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), MarketError>;

    /// Remove `key`; its value, if it had one.
    fn remove(&mut self, key: &str) -> Result<Option<Vec<u8>>, MarketError>;
}

/// Where the marketplace tables are. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Records {
    /// The data directory's redb database (this node only).
    Redb(Arc<LazyDatabase>),
    /// The shared PostgreSQL store (every daemon of the fleet).
    Postgres(PgStore),
}

impl From<Arc<LazyDatabase>> for Records {
    fn from(db: Arc<LazyDatabase>) -> Self {
        Self::Redb(db)
    }
}

impl Records {
    /// The engine's records: its shared PostgreSQL store when `[store]`
    /// names one (the pool its ledger uses), else its data directory's
    /// database.
    pub fn of(engine: &crate::Engine) -> Self {
        Self::over(
            engine.metering().shared_store(),
            engine.data().database().clone(),
        )
    }

    /// The records on `shared` (a pool the caller already has, e.g. its
    /// books' [`crate::meter::BudgetLedger::shared_store`]), else in `db`.
    pub fn over(shared: Option<&PgStore>, db: Arc<LazyDatabase>) -> Self {
        match shared {
            Some(pg) => Self::Postgres(pg.clone()),
            None => Self::Redb(db),
        }
    }

    /// The records `store` configures: `db` for redb, else a new pool on
    /// the PostgreSQL database it names (migrated). For processes without
    /// an engine (the CLI's reports).
    pub fn open(store: &StoreConfig, db: Arc<LazyDatabase>) -> Result<Self, MarketError> {
        Ok(match store.backend {
            Backend::Redb => Self::Redb(db),
            Backend::Postgres => Self::Postgres(PgStore::open(store)?),
        })
    }

    /// Whether the records are shared with other daemons.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Run `f` over `table` in one read transaction (a missing redb table
    /// reads as empty). Cost: one read transaction.
    pub fn read<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut dyn Rows) -> Result<T, MarketError>,
    ) -> Result<T, MarketError> {
        match self {
            Self::Redb(db) => {
                let db = db.get()?;
                let txn = db.begin_read().map_err(storage)?;
                match txn.open_table(table.definition()) {
                    Ok(t) => f(&mut RedbRows(t)),
                    Err(redb::TableError::TableDoesNotExist(_)) => f(&mut Empty),
                    Err(e) => Err(storage(e)),
                }
            }
            Self::Postgres(pg) => {
                let mut conn = pg.conn()?;
                f(&mut PgRows {
                    client: &mut *conn,
                    table,
                })
            }
        }
    }

    /// Run `f` over `table` in one durable write transaction, committed
    /// only if `f` succeeds (nothing is written otherwise). Writes of one
    /// table are serialized: on PostgreSQL across every daemon of the
    /// fleet. Cost: one durable write transaction.
    pub fn write<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut dyn RowsMut) -> Result<T, MarketError>,
    ) -> Result<T, MarketError> {
        self.write_with_events(table, |rows, _| f(rows))
    }

    /// [`Records::write`] whose `f` may also add analytics events: on redb
    /// they are written to the outbox in the same transaction (no event
    /// without its record, and the other way round). The PostgreSQL store
    /// has no outbox yet: there they are dropped.
    pub fn write_with_events<T>(
        &self,
        table: Table,
        f: impl FnOnce(&mut dyn RowsMut, &mut Vec<crate::analytics::Event>) -> Result<T, MarketError>,
    ) -> Result<T, MarketError> {
        let mut events = Vec::new();
        match self {
            Self::Redb(db) => {
                let db = db.get()?;
                let mut txn = db.begin_write().map_err(storage)?;
                txn.set_durability(Durability::Immediate).map_err(storage)?;
                let out = {
                    let t = txn.open_table(table.definition()).map_err(storage)?;
                    f(&mut RedbRows(t), &mut events)?
                };
                crate::analytics::outbox::push(&txn, &events).map_err(storage)?;
                txn.commit().map_err(storage)?;
                Ok(out)
            }
            Self::Postgres(pg) => {
                let mut conn = pg.conn()?;
                let mut txn = conn.transaction().map_err(PgError::from)?;
                txn.execute("SELECT pg_advisory_xact_lock($1)", &[&table.lock()])
                    .map_err(PgError::from)?;
                let out = f(
                    &mut PgRows {
                        client: &mut txn,
                        table,
                    },
                    &mut events,
                )?;
                txn.commit().map_err(PgError::from)?;
                Ok(out)
            }
        }
    }

    /// A number that changes whenever a row of `table` is put or removed
    /// by any daemon, on PostgreSQL; `None` on redb (this node's own
    /// writes are the only ones). Cost: one index scan of the table's
    /// revisions.
    pub fn revision(&self, table: Table) -> Result<Option<(i64, i64)>, MarketError> {
        match self {
            Self::Redb(_) => Ok(None),
            Self::Postgres(pg) => {
                let mut conn = pg.conn()?;
                let row = conn
                    .query_one(
                        "SELECT coalesce(max(rev), 0), count(*) FROM market_records WHERE tbl = $1",
                        &[&table.name()],
                    )
                    .map_err(PgError::from)?;
                let rev: i64 = row.try_get(0).map_err(PgError::from)?;
                let count: i64 = row.try_get(1).map_err(PgError::from)?;
                Ok(Some((rev, count)))
            }
        }
    }
}

/// A redb table that does not exist yet: no rows.
struct Empty;

impl Rows for Empty {
    fn get(&mut self, _: &str) -> Result<Option<Vec<u8>>, MarketError> {
        Ok(None)
    }

    fn scan(&mut self, _: &str, _: &mut Visit<'_>) -> Result<(), MarketError> {
        Ok(())
    }
}

/// A redb table (read-only or in a write transaction).
struct RedbRows<T>(T);

impl<T: ReadableTable<&'static str, &'static [u8]>> Rows for RedbRows<T> {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, MarketError> {
        Ok(self
            .0
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    fn scan(&mut self, prefix: &str, visit: &mut Visit<'_>) -> Result<(), MarketError> {
        for row in self.0.range::<&str>(prefix..).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let key = k.value();
            if !key.starts_with(prefix) || !visit(key, v.value())? {
                break;
            }
        }
        Ok(())
    }
}

impl RowsMut for RedbRows<redb::Table<'_, &'static str, &'static [u8]>> {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), MarketError> {
        self.0.insert(key, value).map_err(storage)?;
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<Option<Vec<u8>>, MarketError> {
        Ok(self
            .0
            .remove(key)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }
}

/// `market_records` rows of one table, on a connection or in a transaction.
struct PgRows<'a, C> {
    client: &'a mut C,
    table: Table,
}

/// The smallest byte string greater than every string starting with
/// `prefix`; `None` if there is none (empty, or all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn key_text(key: Vec<u8>) -> Result<String, MarketError> {
    String::from_utf8(key).map_err(|e| MarketError::Corrupt {
        key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        message: "the key is not UTF-8".to_owned(),
    })
}

impl<C: GenericClient> Rows for PgRows<'_, C> {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, MarketError> {
        let row = self
            .client
            .query_opt(
                "SELECT value FROM market_records WHERE tbl = $1 AND key = $2",
                &[&self.table.name(), &key.as_bytes()],
            )
            .map_err(PgError::from)?;
        Ok(match row {
            Some(r) => Some(r.try_get(0).map_err(PgError::from)?),
            None => None,
        })
    }

    fn scan(&mut self, prefix: &str, visit: &mut Visit<'_>) -> Result<(), MarketError> {
        let tbl = self.table.name();
        let start = prefix.as_bytes();
        let mut rows = match prefix_end(start) {
            Some(end) => self.client.query_raw(
                "SELECT key, value FROM market_records \
                 WHERE tbl = $1 AND key >= $2 AND key < $3 ORDER BY key",
                [
                    &tbl as &(dyn postgres::types::ToSql + Sync),
                    &start,
                    &end.as_slice(),
                ],
            ),
            None => self.client.query_raw(
                "SELECT key, value FROM market_records WHERE tbl = $1 ORDER BY key",
                [&tbl as &(dyn postgres::types::ToSql + Sync)],
            ),
        }
        .map_err(PgError::from)?;
        while let Some(row) = rows.next().map_err(PgError::from)? {
            let key: Vec<u8> = row.try_get(0).map_err(PgError::from)?;
            let value: &[u8] = row.try_get(1).map_err(PgError::from)?;
            if !visit(&key_text(key)?, value)? {
                break;
            }
        }
        Ok(())
    }
}

impl<C: GenericClient> RowsMut for PgRows<'_, C> {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), MarketError> {
        self.client
            .execute(
                "INSERT INTO market_records (tbl, key, value, rev) \
                 VALUES ($1, $2, $3, nextval('market_records_rev')) \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value, rev = EXCLUDED.rev",
                &[&self.table.name(), &key.as_bytes(), &value],
            )
            .map_err(PgError::from)?;
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<Option<Vec<u8>>, MarketError> {
        let row = self
            .client
            .query_opt(
                "DELETE FROM market_records WHERE tbl = $1 AND key = $2 RETURNING value",
                &[&self.table.name(), &key.as_bytes()],
            )
            .map_err(PgError::from)?;
        Ok(match row {
            Some(r) => Some(r.try_get(0).map_err(PgError::from)?),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_byte_successor() {
        assert_eq!(prefix_end(b"acme/"), Some(b"acme0".to_vec()));
        assert_eq!(prefix_end(b"a\0"), Some(b"a\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn redb_records_scan_a_prefix_in_order_and_write_all_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = Records::from(Arc::new(LazyDatabase::new(dir.path().join("soma.redb"))));
        let seen = records
            .read(Table::Installs, |rows| {
                let mut n = 0;
                rows.scan("", &mut |_, _| {
                    n += 1;
                    Ok(true)
                })?;
                Ok((n, rows.get("a")?))
            })
            .expect("read of a missing table");
        assert_eq!(seen, (0, None));
        records
            .write(Table::Installs, |rows| {
                for k in ["b\0x", "a\0z", "a\0y", "ab\0w"] {
                    rows.put(k, k.as_bytes())?;
                }
                Ok(())
            })
            .expect("write");
        let failed = records.write(Table::Installs, |rows| {
            rows.put("a\0new", b"1")?;
            Err::<(), _>(MarketError::TooManyPins { max: 1 })
        });
        assert!(matches!(failed, Err(MarketError::TooManyPins { .. })));
        let keys = records
            .read(Table::Installs, |rows| {
                let mut keys = Vec::new();
                rows.scan("a\0", &mut |k, v| {
                    assert_eq!(k.as_bytes(), v);
                    keys.push(k.to_owned());
                    Ok(true)
                })?;
                Ok(keys)
            })
            .expect("scan");
        assert_eq!(
            keys,
            ["a\0y", "a\0z"],
            "in order, the failed write left nothing"
        );
        let removed = records
            .write(Table::Installs, |rows| rows.remove("a\0y"))
            .expect("remove");
        assert_eq!(removed.as_deref(), Some(b"a\0y".as_slice()));
        assert_eq!(records.revision(Table::Installs).expect("revision"), None);
    }
}
