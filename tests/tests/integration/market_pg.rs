//! The marketplace's tables on a real PostgreSQL (issue 17): the same
//! operations give the same records, orders and refusals as on redb, a
//! tenant sees none of another's pins on either, and two daemons' pools
//! writing at once keep the marketplace's rules (a tenant's namespace cap,
//! one key per author) because the fleet's writes of a table are
//! serialized as redb's are.

use std::{path::Path, sync::Barrier};

use serde_json::Value;
use soma_runtime::{
    digest::Digest,
    market::{
        error::MarketError,
        installs::Installs,
        listing::{Listing, Price},
        lock::Pin,
        pricing,
        records::Records,
        store::{MAX_AUTHORS_PER_TENANT, Market, NewSubmission, SubmissionState, author_statement},
    },
    store::{Backend, DataDir, StoreConfig, postgres::PgStore},
    verify::KeyPair,
};
use soma_tests::postgres::Postgres;

/// 2024-03-01T00:00:00Z.
const T0: u64 = 1_709_251_200_000;

fn shared(url: &str) -> Records {
    let config = StoreConfig {
        backend: Backend::Postgres,
        url: Some(url.to_owned()),
        pool_size: 8,
        ..StoreConfig::default()
    };
    Records::Postgres(PgStore::open(&config).expect("open the PostgreSQL store"))
}

fn new(name: &str, version: &str, component: &[u8]) -> NewSubmission {
    let listing = Listing::parse(
        &format!(
            "name = \"{name}\"\nversion = \"{version}\"\nsummary = \"s\"\nlicense = \"MIT\"\n\
             [price]\nmodel = \"per-call\"\nmicros = 1000\n"
        ),
        Path::new("listing.toml"),
    )
    .expect("listing");
    NewSubmission {
        listing,
        repository: format!("127.0.0.1:1/{name}"),
        digest: Digest::of(component),
        component: Digest::of(component),
        size: component.len() as u64,
    }
}

fn pin(version: &str) -> Pin {
    Pin {
        range: "^1".into(),
        version: version.into(),
        digest: Digest::of(version.as_bytes()),
        component: Digest::of(b"c"),
        reference: "r/acme/calc@sha256:0".into(),
    }
}

/// The variant of a refusal, for comparing stores.
fn refusal<T: std::fmt::Debug, E: std::fmt::Debug>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => format!("{e:?}")
            .split([' ', '(', '{'])
            .next()
            .unwrap_or("")
            .to_owned(),
    }
}

/// Every marketplace operation on `records`; what a user sees of it
/// (times left out: they differ between runs).
fn scenario(records: Records) -> Vec<String> {
    let market = Market::new(records.clone());
    let installs = Installs::new(records.clone());
    let mut seen = Vec::new();
    let (acme, t1) = (KeyPair::generate(), KeyPair::generate());
    market
        .register_author("acme", &acme.public())
        .expect("acme");
    let proof = t1.sign(author_statement("tone", Some("t1")).as_bytes());
    market
        .register_author_proven("tone", &t1.public(), Some("t1"), &proof)
        .expect("tone");
    seen.push(refusal(market.register_author("other", &acme.public())));
    let proof = t1.sign(author_statement("acme", Some("t2")).as_bytes());
    seen.push(refusal(market.register_author_proven(
        "acme",
        &t1.public(),
        Some("t2"),
        &proof,
    )));
    seen.extend(
        market
            .authors()
            .expect("authors")
            .iter()
            .map(|a| format!("author {} {:?}", a.name, a.tenant)),
    );

    for (name, version, component) in [
        ("acme/calc", "1.10.0", b"c110".as_slice()),
        ("acme/calc", "1.2.0", b"c12"),
        ("acme/calc", "2.0.0", b"c2"),
        ("acme/calcx", "1.0.0", b"x1"),
        ("tone/echo", "0.1.0", b"e1"),
    ] {
        let (_, created) = market
            .submit(new(name, version, component))
            .expect("submit");
        assert!(created);
    }
    let (_, created) = market
        .submit(new("acme/calc", "1.2.0", b"c12"))
        .expect("again");
    assert!(!created, "the same version and component: idempotent");
    seen.push(refusal(market.submit(new("acme/calc", "1.2.0", b"other"))));
    let (page, total) = market.awaiting_review(1, 2).expect("queue");
    seen.push(format!(
        "queue {total}: {:?}",
        page.iter().map(|s| s.id()).collect::<Vec<_>>()
    ));
    for id in ["acme/calc@1.2.0", "acme/calc@1.10.0", "acme/calcx@1.0.0"] {
        market
            .record_review(id, true, Vec::new(), Value::Null)
            .expect("review");
        market
            .transition(id, SubmissionState::Published, None, |s| {
                s.published_ms = Some(T0);
            })
            .expect("publish");
    }
    market
        .record_review("acme/calc@2.0.0", false, vec!["schema".into()], Value::Null)
        .expect("review");
    seen.push(refusal(market.transition(
        "acme/calc@2.0.0",
        SubmissionState::Published,
        None,
        |_| {},
    )));
    market
        .transition("acme/calc@1.10.0", SubmissionState::Yanked, None, |_| {})
        .expect("yank");
    let (page, total) = market.awaiting_review(0, 10).expect("queue");
    seen.push(format!(
        "queue {total}: {:?}",
        page.iter().map(|s| s.id()).collect::<Vec<_>>()
    ));
    for s in market.versions(Some("acme/calc")).expect("versions") {
        seen.push(format!("{} {}", s.id(), s.state));
    }
    seen.push(format!(
        "acme has {}, all {}",
        market.author_versions("acme").expect("acme's").len(),
        market.versions(None).expect("all").len()
    ));
    let newest = market
        .newest("acme/calc", &"^1".parse().expect("range"), 0, T0 + 1)
        .expect("newest");
    seen.push(format!("newest ^1: {}", newest.id()));
    assert!(market.get("acme/calc@9.9.9").expect("get").is_none());

    // Pins: tenant `a` never sees `ab`'s (a prefix of its name).
    installs.pin("a", "acme/calc", pin("1.2.0")).expect("pin");
    installs.pin("ab", "acme/calcx", pin("1.0.0")).expect("pin");
    let previous = installs
        .pin("a", "acme/calc", pin("1.10.0"))
        .expect("re-pin");
    seen.push(format!(
        "re-pin replaced {:?}",
        previous.map(|p| p.pin.version)
    ));
    for tenant in ["a", "ab", "b"] {
        let names: Vec<String> = installs
            .list(tenant)
            .expect("list")
            .into_iter()
            .map(|p| p.name)
            .collect();
        seen.push(format!("{tenant} pins {names:?}"));
    }
    assert!(installs.remove("b", "acme/calc").expect("remove").is_none());
    assert!(installs.get("a", "acme/calc").expect("get").is_some());
    assert!(installs.remove("a", "acme/calc").expect("remove").is_some());
    assert!(installs.get("a", "acme/calc").expect("get").is_none());

    // Prices: an increase waits for its notice; history is kept.
    let up = pricing::set_price(
        &records,
        "acme/calc",
        Price::PerCall { micros: 3000 },
        T0 + 1,
        14,
    )
    .expect("raise");
    seen.push(format!("raise: increase {}, seq {}", up.increase, up.seq));
    let down = pricing::set_price(
        &records,
        "acme/calc",
        Price::PerCall { micros: 500 },
        T0 + 2,
        14,
    )
    .expect("lower");
    seen.push(format!(
        "lower: increase {}, seq {}",
        down.increase, down.seq
    ));
    let history = pricing::history(&records, "acme/calc").expect("history");
    seen.push(format!(
        "history: {:?}",
        history
            .changes
            .iter()
            .map(|c| (c.seq, c.takes_effect()))
            .collect::<Vec<_>>()
    ));
    seen.push(format!(
        "histories: {:?}",
        pricing::histories(&records)
            .expect("histories")
            .keys()
            .collect::<Vec<_>>()
    ));
    seen.push(refusal(pricing::set_price(
        &records,
        "tone/echo",
        Price::Free,
        T0,
        14,
    )));
    seen
}

#[test]
fn marketplace_records_on_postgres_behave_as_on_redb() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let dir = tempfile::tempdir().expect("tempdir");
    let on_redb = scenario(DataDir::new(dir.path()).database().clone().into());
    let on_pg = scenario(shared(&url));
    assert_eq!(on_redb, on_pg);
    // The expected orders and refusals, not only agreement.
    let expected = [
        "KeyTaken",
        "NamespaceOwned",
        "queue 5: [\"acme/calc@1.2.0\", \"acme/calc@2.0.0\"]",
        "VersionImmutable",
        "queue 1: [\"tone/echo@0.1.0\"]",
        "acme/calc@1.2.0 published",
        "acme/calc@1.10.0 yanked",
        "newest ^1: acme/calc@1.2.0",
        "a pins [\"acme/calc\"]",
        "ab pins [\"acme/calcx\"]",
        "b pins []",
        "raise: increase true, seq 1",
        "history: [(1, false), (2, true)]",
    ];
    for e in expected {
        assert!(on_pg.iter().any(|s| s == e), "{e:?} not in {on_pg:#?}");
    }
    // A second pool (another daemon) reads what the first wrote.
    let other = Market::new(shared(&url));
    assert_eq!(other.versions(None).expect("versions").len(), 5);
}

/// `act(prepare(i))` on `n` threads, each released once all are prepared:
/// each outcome, a refusal by its variant's name.
fn race<P: Send>(
    n: usize,
    prepare: impl Fn(usize) -> P + Sync,
    act: impl Fn(P) -> Result<(), MarketError> + Sync,
) -> Vec<Result<(), String>> {
    let start = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (start, prepare, act) = (&start, &prepare, &act);
                s.spawn(move || {
                    let prepared = prepare(i);
                    start.wait();
                    act(prepared).map_err(|e| refusal::<(), _>(Err(e)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
}

/// How many of `outcomes` succeeded, checking that every other one is the
/// refusal `refused`.
fn successes(outcomes: &[Result<(), String>], refused: &str) -> usize {
    assert!(
        outcomes
            .iter()
            .all(|o| o.as_ref().is_ok() || o.as_ref().is_err_and(|e| e == refused)),
        "{outcomes:?}"
    );
    outcomes.iter().filter(|o| o.is_ok()).count()
}

/// 2 × 16 threads, half on each of two pools (two daemons), register 32
/// namespaces for one tenant at once: exactly the cap succeeds. Then 8
/// register different names with one key at once: exactly one does.
/// Without the table's lock, each would check its count or key before
/// the others committed, and more would pass.
#[test]
fn two_daemons_registering_at_once_keep_the_marketplace_rules() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let pools = [Market::new(shared(&url)), Market::new(shared(&url))];
    let outcomes = race(
        2 * MAX_AUTHORS_PER_TENANT,
        |i| {
            let key = KeyPair::generate();
            let name = format!("ns{i}");
            let proof = key.sign(author_statement(&name, Some("t")).as_bytes());
            (i, key, name, proof)
        },
        |(i, key, name, proof)| {
            pools[i % 2]
                .register_author_proven(&name, &key.public(), Some("t"), &proof)
                .map(|_| ())
        },
    );
    assert_eq!(
        successes(&outcomes, "TooManyAuthors"),
        MAX_AUTHORS_PER_TENANT,
        "{outcomes:?}"
    );

    let key = KeyPair::generate();
    let outcomes = race(
        8,
        |i| i,
        |i| {
            pools[i % 2]
                .register_author(&format!("one{i}"), &key.public())
                .map(|_| ())
        },
    );
    assert_eq!(successes(&outcomes, "KeyTaken"), 1, "{outcomes:?}");
}
