//! The ClickHouse sink: batches of events as `INSERT … FORMAT
//! JSONEachRow` over ClickHouse's HTTP interface, into a
//! `ReplacingMergeTree` keyed by `(tenant, id)` so a redelivered event
//! collapses into one row (read with `FINAL`, or once parts merge).
//!
//! Batching is client-side (ClickHouse's guidance: at least 1,000 rows or
//! 1 s, whichever comes first; 18.16 has no async inserts): the sink waits
//! up to `linger_ms` for `min_batch` events, and sends at most `max_batch`
//! per insert. The DDL ([`DDL`], also `docs/deploy/clickhouse.sql`) is run
//! at the first delivery when `create_table` is on. The SQL keeps to what
//! ClickHouse 18.16 (Debian 12's package, the one tested) has and current
//! releases still document (the `MATERIALIZED` time column, `PARTITION BY`
//! / `ORDER BY`); newer servers are not tested.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Pace, Sink, SinkError};
use crate::analytics::{Body, Event, outbox::Held};

/// The table's DDL; `{db}` and `{table}` are replaced by the configured
/// names. `docs/deploy/clickhouse.sql` is [`ddl_file`]'s text (a test
/// checks it).
pub const DDL: &str = "CREATE TABLE IF NOT EXISTS {db}.{table} (
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
ORDER BY (tenant, id)";

/// The DDL as shipped in `docs/deploy/clickhouse.sql`: the database and
/// the table under their default names.
pub fn ddl_file() -> String {
    format!(
        "-- The analytics sink's table (soma: runtime/src/analytics/sink/clickhouse.rs).\n\
         -- ClickHouse 18.16 and later. The sink runs this itself when\n\
         -- [analytics.clickhouse] create_table = true (the default).\n\
         CREATE DATABASE IF NOT EXISTS soma;\n\n{};\n",
        DDL.replace("{db}", "soma").replace("{table}", "events")
    )
}

/// `[analytics.clickhouse]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The database. Default `soma`.
    pub database: String,
    /// The table. Default `events`.
    pub table: String,
    /// The user (HTTP basic auth). Default `default`.
    pub user: String,
    /// The environment variable holding the user's password (none: no password).
    pub password_env: Option<String>,
    /// Create the database and table when missing. Default true.
    pub create_table: bool,
    /// Fewest events per insert before `linger_ms` passes. Default 1,000.
    pub min_batch: u32,
    /// Most events per insert. Default 100,000.
    pub max_batch: u32,
    /// How long fewer than `min_batch` events wait for more, ms. Default 1,000.
    pub linger_ms: u64,
    /// How long one insert may take, ms. Default 30,000.
    pub timeout_ms: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            database: "soma".into(),
            table: "events".into(),
            user: "default".into(),
            password_env: None,
            create_table: true,
            min_batch: 1_000,
            max_batch: 100_000,
            linger_ms: 1_000,
            timeout_ms: 30_000,
        }
    }
}

fn identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

impl ClickHouseConfig {
    /// Refuse what cannot work (`soma config check`).
    pub fn check(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "analytics.clickhouse.url `{}` must be the HTTP interface, e.g. http://127.0.0.1:8123",
                self.url
            ));
        }
        for (what, name) in [("database", &self.database), ("table", &self.table)] {
            if !identifier(name) {
                return Err(format!(
                    "analytics.clickhouse.{what} `{name}` must be a plain identifier (letters, digits, _)"
                ));
            }
        }
        if self.min_batch == 0 || self.max_batch < self.min_batch || self.timeout_ms == 0 {
            return Err(
                "analytics.clickhouse: min_batch must be positive, max_batch at least min_batch, \
                 timeout_ms positive"
                    .into(),
            );
        }
        Ok(())
    }

    fn password(&self) -> Option<String> {
        self.password_env
            .as_deref()
            .and_then(|v| std::env::var(v).ok())
    }
}

/// The sink: an HTTP client (made on the sink's thread) and whether the
/// table is known to exist.
#[derive(Debug)]
pub struct ClickHouseSink {
    config: ClickHouseConfig,
    client: Option<reqwest::blocking::Client>,
    ready: bool,
}

impl ClickHouseSink {
    /// A sink for `config` (checked). Connects on the first delivery.
    pub fn new(config: ClickHouseConfig) -> Self {
        Self {
            config,
            client: None,
            ready: false,
        }
    }

    /// Run one statement (with `body` as its data, if any).
    fn run(&mut self, query: &str, body: Vec<u8>) -> Result<(), SinkError> {
        if self.client.is_none() {
            self.client = Some(
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_millis(self.config.timeout_ms))
                    .build()
                    .map_err(SinkError::Http)?,
            );
        }
        let Some(client) = &self.client else {
            return Ok(());
        };
        let mut request = client
            .post(&self.config.url)
            .query(&[("query", query)])
            .body(body);
        request = request.basic_auth(&self.config.user, self.config.password());
        let response = request.send().map_err(SinkError::Http)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().unwrap_or_default();
        Err(SinkError::ClickHouse {
            status: status.as_u16(),
            body: crate::analytics::event::cut(text.trim(), 500).to_owned(),
        })
    }

    fn prepare(&mut self) -> Result<(), SinkError> {
        if self.ready || !self.config.create_table {
            return Ok(());
        }
        let db = self.config.database.clone();
        let ddl = DDL
            .replace("{db}", &db)
            .replace("{table}", &self.config.table);
        self.run(&format!("CREATE DATABASE IF NOT EXISTS {db}"), Vec::new())?;
        self.run(&ddl, Vec::new())?;
        self.ready = true;
        Ok(())
    }
}

/// One row of the table.
#[derive(Serialize, Default)]
struct Row<'a> {
    id: &'a str,
    v: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    tenant: &'a str,
    time_ms: u64,
    run: &'a str,
    node: &'a str,
    attempt: u32,
    capsule_digest: &'a str,
    capsule_name: &'a str,
    outcome: &'a str,
    failure_class: &'a str,
    fuel: u64,
    wall_us: u64,
    peak_memory_bytes: u64,
    cost_micros: u64,
    direction: &'a str,
    tokens: u64,
    provider: &'a str,
    model: &'a str,
    estimated: u8,
    score: f64,
    scored: u8,
    approved: u8,
    event: &'a str,
}

impl<'a> Row<'a> {
    fn of(e: &'a Event, json: &'a str) -> Self {
        let mut r = Row {
            id: &e.id,
            v: e.v,
            kind: e.body.kind(),
            tenant: &e.tenant,
            time_ms: e.time_ms,
            event: json,
            ..Row::default()
        };
        match &e.body {
            Body::RunStarted { run, .. } => r.run = run,
            Body::RunFinished { run, outcome } => {
                r.run = run;
                r.outcome = outcome;
            }
            Body::NodeStarted { run, node, attempt }
            | Body::NodeSucceeded { run, node, attempt } => {
                (r.run, r.node, r.attempt) = (run, node, *attempt);
            }
            Body::NodeFailed {
                run,
                node,
                attempt,
                failure_class,
            } => {
                (r.run, r.node, r.attempt) = (run, node, *attempt);
                r.failure_class = failure_class;
            }
            Body::Call {
                site,
                capsule_name,
                fuel,
                wall_us,
                peak_memory_bytes,
                cost_micros,
            } => {
                r.site(site);
                r.capsule_name = capsule_name.as_deref().unwrap_or("");
                r.fuel = fuel.unwrap_or(0);
                r.wall_us = *wall_us;
                r.peak_memory_bytes = peak_memory_bytes.unwrap_or(0);
                r.cost_micros = *cost_micros;
            }
            Body::CallFailed {
                site,
                failure_class,
            } => {
                r.site(site);
                r.failure_class = failure_class;
            }
            Body::LlmTokens {
                site,
                direction,
                tokens,
                provider,
                model,
                cost_micros,
                estimated,
            } => {
                r.site(site);
                r.direction = direction;
                r.tokens = *tokens;
                r.provider = provider.as_deref().unwrap_or("");
                r.model = model.as_deref().unwrap_or("");
                r.cost_micros = *cost_micros;
                r.estimated = u8::from(*estimated);
            }
            Body::GateVerdict {
                run,
                node,
                score,
                approved,
            } => {
                (r.run, r.node) = (run, node);
                r.score = score.unwrap_or(0.0);
                r.scored = u8::from(score.is_some());
                r.approved = u8::from(*approved);
            }
            Body::BudgetExceeded {
                run, node, attempt, ..
            } => {
                r.run = run.as_deref().unwrap_or("");
                r.node = node.as_deref().unwrap_or("");
                r.attempt = attempt.unwrap_or(0);
            }
            Body::MarketInstall { capsule_digest, .. }
            | Body::CapsuleEvent { capsule_digest, .. } => r.capsule_digest = capsule_digest,
            Body::MarketFee {
                site, cost_micros, ..
            } => {
                r.site(site);
                r.cost_micros = *cost_micros;
            }
        }
        r
    }

    fn site(&mut self, site: &'a crate::analytics::Site) {
        self.run = &site.run;
        self.node = &site.node;
        self.attempt = site.attempt;
        self.capsule_digest = &site.capsule_digest;
    }
}

/// The events as JSONEachRow lines.
fn rows(events: &[Held]) -> Result<Vec<u8>, SinkError> {
    let mut out = Vec::with_capacity(events.len() * 512);
    for h in events {
        let corrupt = |source| SinkError::Corrupt { seq: h.seq, source };
        let e: Event = serde_json::from_slice(&h.json).map_err(corrupt)?;
        let json = std::str::from_utf8(&h.json).unwrap_or_default();
        serde_json::to_writer(&mut out, &Row::of(&e, json)).map_err(corrupt)?;
        out.push(b'\n');
    }
    Ok(out)
}

impl Sink for ClickHouseSink {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn pace(&self) -> Pace {
        Pace {
            max: self.config.max_batch as usize,
            min: self.config.min_batch as usize,
            linger: Duration::from_millis(self.config.linger_ms),
        }
    }

    fn deliver(&mut self, events: &[Held]) -> Result<(), SinkError> {
        self.prepare()?;
        let body = rows(events)?;
        let insert = format!(
            "INSERT INTO {}.{} FORMAT JSONEachRow",
            self.config.database, self.config.table
        );
        self.run(&insert, body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::analytics::Site;

    #[test]
    fn a_row_carries_the_columns_of_its_event_and_the_event_itself() {
        let e = Event::new(
            "r/n/0/3/wall",
            "acme",
            1_700_000_000_123,
            Body::Call {
                site: Site {
                    run: "r".into(),
                    node: "n".into(),
                    attempt: 0,
                    capsule_digest: "sha256:ab".into(),
                },
                capsule_name: Some("echo".into()),
                fuel: Some(42),
                wall_us: 7,
                peak_memory_bytes: None,
                cost_micros: 9,
            },
        );
        let json = serde_json::to_vec(&e).unwrap();
        let body = rows(&[Held {
            seq: 1,
            json: json.clone(),
        }])
        .unwrap();
        let row: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(row["id"], "call:r/n/0/3/wall");
        assert_eq!(row["type"], "call");
        assert_eq!(row["tenant"], "acme");
        assert_eq!(row["fuel"], 42);
        assert_eq!(row["capsule_name"], "echo");
        assert_eq!(row["peak_memory_bytes"], 0);
        assert_eq!(row["event"], String::from_utf8(json).unwrap());
        assert!(body.ends_with(b"\n"));
    }

    #[test]
    fn the_shipped_ddl_is_the_sinks() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/clickhouse.sql");
        if std::env::var_os("SOMA_BLESS").is_some() {
            std::fs::write(&path, ddl_file()).unwrap();
        }
        assert!(
            std::fs::read_to_string(&path).unwrap_or_default() == ddl_file(),
            "docs/deploy/clickhouse.sql is out of date; regenerate it with \
             `SOMA_BLESS=1 cargo test -p soma-runtime --lib clickhouse` and commit it"
        );
    }

    #[test]
    fn names_that_would_break_the_sql_are_refused() {
        let ok = ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            ..ClickHouseConfig::default()
        };
        assert!(ok.check().is_ok());
        for bad in ["ev ents", "a;drop", "", "1x"] {
            let c = ClickHouseConfig {
                table: bad.into(),
                ..ok.clone()
            };
            assert!(c.check().is_err(), "{bad}");
        }
        let c = ClickHouseConfig {
            url: "127.0.0.1:8123".into(),
            ..ok
        };
        assert!(c.check().unwrap_err().contains("HTTP interface"));
    }
}
