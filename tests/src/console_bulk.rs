//! A data directory with many runs and many marketplace listings, made
//! fast, for the console's page-timing bench (`benches/console_pages.rs`).
//!
//! What is written is what real runs and publications write, through the
//! same library calls:
//! - **runs**: two real DAG runs are made first by a real `soma daemon`
//!   (a three-node echo chain that succeeds and a capsule that runs out of
//!   fuel); their journal records (every event, the summary) are then
//!   copied [`Journal::create`] + [`Journal::commit`] under fresh run ids,
//!   tenants and times (every `*_ms` field shifted), one in ten failed;
//! - **listings**: the deterministic corpus of `market_corpus` (the search
//!   bench's), each stored as a submission ([`Market::submit`]), reviewed
//!   ([`Market::record_review`]) and published ([`Market::transition`]) by
//!   registered authors, and the search index rebuilt from them
//!   ([`SearchIndex::rebuild`], as `soma market reindex` does).
//!
//! Not written: ledger entries for the copied runs (the two real runs'
//! charges are there), and the listings' components (no registry: their
//! search documents come from the corpus rather than from compiling each
//! component, which is the only difference from `market::pipeline`).

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_runtime::{
    Digest,
    dag::{history::Event, journal::Journal},
    market::{
        listing::{Example, Listing, Price},
        search::{self, PriceModel, ReviewState, SearchIndex},
        state::SubmissionState,
        store::{Market, NewSubmission},
    },
    meter::{BudgetLedger, LedgerConfig},
    store::DataDir,
    verify::KeyPair,
};

use crate::{console_seed, daemon};

/// The tenant whose token the bench signs in with (it owns half the runs).
pub const VIEWER: &str = "acme";
/// The other tenants owning runs.
pub const OTHERS: [&str; 3] = ["globex", "initech", "umbrella"];

/// What [`seed`] wrote.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// A `run,read` token of [`VIEWER`].
    pub token: String,
    /// An operator token.
    pub operator: String,
    /// A run of the viewer's that succeeded, and one that failed.
    pub succeeded_run: String,
    /// See `succeeded_run`.
    pub failed_run: String,
    /// A listing name from the corpus (`author/name`).
    pub listing: String,
    /// Runs written (the two real ones included).
    pub runs: usize,
    /// Listings published.
    pub listings: usize,
    /// How long the runs and the listings took to write.
    pub took: (Duration, Duration),
}

impl Bulk {
    /// As JSON (kept beside a reused data directory).
    pub fn to_json(&self) -> Value {
        json!({
            "token": self.token, "operator": self.operator,
            "succeeded_run": self.succeeded_run, "failed_run": self.failed_run,
            "listing": self.listing, "runs": self.runs, "listings": self.listings,
            "took_ms": [self.took.0.as_millis() as u64, self.took.1.as_millis() as u64],
        })
    }

    /// From [`Bulk::to_json`]'s output; `None` if a field is missing.
    pub fn from_json(v: &Value) -> Option<Self> {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let ms = |i: usize| Duration::from_millis(v["took_ms"][i].as_u64().unwrap_or(0));
        Some(Self {
            token: s("token")?,
            operator: s("operator")?,
            succeeded_run: s("succeeded_run")?,
            failed_run: s("failed_run")?,
            listing: s("listing")?,
            runs: usize::try_from(v["runs"].as_u64()?).ok()?,
            listings: usize::try_from(v["listings"].as_u64()?).ok()?,
            took: (ms(0), ms(1)),
        })
    }
}

/// Make `runs` runs and `listings` listings in the (new, empty) data
/// directory `data`. The daemon `bin` makes the template runs and is
/// stopped before this returns. Cost: two real runs, then ~2 durable
/// commits per run and 3 per listing (≈1 min for 10,000 of each here).
pub fn seed(bin: &Path, data: &Path, runs: usize, listings: usize) -> Bulk {
    let token = daemon::token(bin, data, VIEWER, "run,read");
    let operator = daemon::token(bin, data, "ops", "operator");
    let d = daemon::DaemonProcess::start(bin, data, "", "");
    let start = |spec: &Value| {
        let (s, v) = d.post("/v1/runs", &token, &json!({"dag": spec}));
        assert_eq!(s, 202, "{v}");
        let run = v["run"].as_str().expect("run").to_owned();
        d.wait_finished(&token, &run, Duration::from_secs(60));
        run
    };
    let ok = start(&console_seed::echo_spec("echo-chain"));
    let bad = start(&console_seed::failing_spec());
    assert!(d.stop().success(), "the daemon stopped cleanly");

    let dir = DataDir::new(data);
    let journal = Journal::new(dir.database().clone());
    let metering = BudgetLedger::new(LedgerConfig::default(), dir.database().clone());
    let templates = [template(&journal, &ok), template(&journal, &bad)];
    assert_eq!(templates[0].1["status"], "succeeded");
    assert_eq!(templates[1].1["status"], "failed");

    let started = Instant::now();
    let now = templates[0].1["created_ms"].as_u64().unwrap_or(0);
    let copies = runs.saturating_sub(2);
    for i in 0..copies {
        let (events, summary) = &templates[usize::from(i % 10 == 9)];
        // Newest last, one a minute back from the real runs.
        let created = now.saturating_sub((copies - i) as u64 * 60_000);
        let tenant = if i % 2 == 0 {
            VIEWER
        } else {
            OTHERS[(i / 2) % OTHERS.len()]
        };
        let id = format!("r{:x}{:08x}", created * 1000, i);
        copy_run(&journal, &metering, events, summary, &id, tenant, created);
    }
    let runs_took = started.elapsed();

    let started = Instant::now();
    let listing = publish_listings(&dir, listings);
    let listings_took = started.elapsed();
    Bulk {
        token,
        operator,
        succeeded_run: ok,
        failed_run: bad,
        listing,
        runs: copies + 2,
        listings,
        took: (runs_took, listings_took),
    }
}

/// A run's events and summary, as JSON.
fn template(journal: &Journal, run: &str) -> (Vec<Value>, Value) {
    let events = journal
        .history(run)
        .expect("template history")
        .iter()
        .map(|e| serde_json::to_value(e).expect("event JSON"))
        .collect();
    let summary = serde_json::to_value(journal.summary(run).expect("summary")).expect("JSON");
    (events, summary)
}

/// `v` with the run id, the tenant and every `*_ms` time rewritten.
fn rewrite(v: &Value, from: (&str, &str), to: (&str, &str), shift: i128) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| {
                    let x = match x {
                        Value::String(s) if s == from.0 && k == "run" => json!(to.0),
                        Value::String(s) if s == from.1 && k == "tenant" => json!(to.1),
                        Value::Number(n) if k.ends_with("_ms") => {
                            n.as_u64().filter(|t| *t > 0).map_or(x.clone(), |t| {
                                json!(u64::try_from(i128::from(t) + shift).unwrap_or(t))
                            })
                        }
                        other => rewrite(other, from, to, shift),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|x| rewrite(x, from, to, shift)).collect())
        }
        other => other.clone(),
    }
}

fn copy_run(
    journal: &Journal,
    metering: &BudgetLedger,
    events: &[Value],
    summary: &Value,
    id: &str,
    tenant: &str,
    created_ms: u64,
) {
    let from = (
        summary["run"].as_str().unwrap_or_default(),
        summary["tenant"].as_str().unwrap_or_default(),
    );
    let shift = i128::from(created_ms) - i128::from(summary["created_ms"].as_u64().unwrap_or(0));
    let to = (id, tenant);
    let events: Vec<Event> = events
        .iter()
        .map(|e| serde_json::from_value(rewrite(e, from, to, shift)).expect("event"))
        .collect();
    let summary = serde_json::from_value(rewrite(summary, from, to, shift)).expect("summary");
    journal
        .create(id, &events[0], &summary)
        .expect("journal create");
    if events.len() > 1 {
        journal
            .commit(id, 1, &events[1..], &summary, &[], metering)
            .expect("journal commit");
    }
}

/// Publish the first `n` listings of the corpus; returns one's name.
fn publish_listings(dir: &DataDir, n: usize) -> String {
    let market = Market::new(dir.database().clone());
    let mut docs = crate::market_corpus::listings(n, 15);
    let mut authors = BTreeMap::new();
    let component = Digest::of(b"console bench component");
    for (i, doc) in docs.iter_mut().enumerate() {
        let author = doc.listing.split('/').next().unwrap_or_default().to_owned();
        if !authors.contains_key(&author) {
            // One key, one author (as the store requires).
            market
                .register_author(&author, &KeyPair::generate().public())
                .unwrap_or_else(|e| panic!("author {author}: {e}"));
            authors.insert(author.clone(), ());
        }
        let version: semver::Version = doc.version.parse().expect("corpus version");
        let listing = Listing {
            name: doc.listing.clone(),
            version,
            summary: doc.summary.clone(),
            readme: doc.readme.clone(),
            keywords: doc.keywords.clone(),
            categories: doc.categories.clone(),
            license: doc.license.clone(),
            source: Some(format!("https://example.com/{}", doc.listing)),
            examples: vec![Example {
                name: None,
                input: json!({"text": "hello"}),
            }],
            price: price(doc.price, i as u64),
        };
        let id = listing.id();
        let digest = Digest::of(id.as_bytes());
        market
            .submit(NewSubmission {
                listing,
                repository: format!("registry.example/{}", doc.listing),
                digest,
                component,
                size: 4096,
            })
            .unwrap_or_else(|e| panic!("submit {id}: {e}"));
        market
            .record_review(&id, true, Vec::new(), json!({"steps": []}))
            .unwrap_or_else(|e| panic!("review {id}: {e}"));
        market
            .transition(&id, SubmissionState::Published, None, |_| {})
            .unwrap_or_else(|e| panic!("publish {id}: {e}"));
        // The store says published and reviewed: so does search.
        doc.review = ReviewState::Verified;
        doc.yanked = false;
        doc.deprecated = false;
    }
    let name = docs.first().map(|d| d.listing.clone()).unwrap_or_default();
    SearchIndex::open(&search::default_dir(dir))
        .expect("search index")
        .rebuild(docs)
        .expect("rebuild the search index");
    name
}

fn price(model: PriceModel, salt: u64) -> Price {
    match model {
        PriceModel::Free => Price::Free,
        PriceModel::PerCall => Price::PerCall {
            micros: 100 + salt % 5_000,
        },
        PriceModel::PerKiloTokens => Price::PerKiloTokens {
            micros: 500 + salt % 2_000,
        },
        PriceModel::PerEvent => Price::PerEvent {
            events: [("page".to_owned(), 50 + salt % 500)].into(),
        },
    }
}
