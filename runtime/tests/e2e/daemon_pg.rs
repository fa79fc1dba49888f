//! Two `soma daemon`s on one PostgreSQL database (`[store] backend =
//! "postgres"`, issue 17): an API token created with `soma token create`
//! on either node is accepted by both, and a token revoked through one
//! daemon's API is refused by the other within its refresh (~1 s).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use soma_tests::{
    daemon::{self as harness, DaemonProcess as Daemon},
    postgres::Postgres,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// `soma --config CONFIG token create …` (on the shared store): the token.
fn token(data: &Path, config: &Path, tenant: &str, scopes: &str) -> (String, String) {
    let out = harness::soma(bin(), data)
        .arg("--config")
        .arg(config)
        .args([
            "token", "create", "--tenant", tenant, "--scopes", scopes, "--json",
        ])
        .output()
        .expect("run soma token create");
    assert!(
        out.status.success(),
        "soma token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        doc["token"].as_str().expect("token").to_owned(),
        doc["id"].as_str().expect("id").to_owned(),
    )
}

#[test]
fn two_daemons_on_one_postgres_share_api_tokens() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let store = format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n");
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut configs = Vec::new();
    for dir in [&a_dir, &b_dir] {
        let config = dir.path().join("soma.toml");
        std::fs::write(&config, harness::config_text("", &store)).expect("config");
        configs.push(config);
    }
    // Tokens made on node A's data directory, before any daemon runs.
    let (ops, _) = token(a_dir.path(), &configs[0], "ops", "operator");
    let (reader, reader_id) = token(a_dir.path(), &configs[0], "acme", "read");
    let a = Daemon::spawn(bin(), a_dir.path(), &configs[0]);
    let b = Daemon::spawn(bin(), b_dir.path(), &configs[1]);
    for d in [&a, &b] {
        assert_eq!(d.get("/v1/capsules", &reader).0, 200, "{}", d.url);
    }
    // Revoked through A's API: B refuses it within about a second.
    let (status, body, _) = a.request(
        reqwest::Method::DELETE,
        &format!("/v1/tokens/{reader_id}"),
        Some(&ops),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.get("/v1/capsules", &reader).0, 401, "at once on A");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = b.get("/v1/capsules", &reader).0;
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "B still accepts a revoked token");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A token made on B's node (while both run) works on A.
    let (second, _) = token(b_dir.path(), &configs[1], "acme", "read");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("/v1/capsules", &second).0 != 200 {
        assert!(Instant::now() < deadline, "A never saw B's token");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.get("/v1/tokens", &ops).0, 200);
}

/// A pull through daemon A is recorded on the shared store: daemon B
/// (whose blob cache has never seen it) pulls and verifies it itself and
/// serves it within its catalog refresh; a `DELETE` through B removes it
/// from A. A daemon started later serves the pull from the start.
#[test]
fn two_daemons_on_one_postgres_share_the_catalog() {
    let registry = soma_tests::registry::Registry::start();
    let mut pg = Postgres::start();
    let url = pg.create_database();
    let store = format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n\
         [[trust.rules]]\nrepository = \"*/acme/*\"\naccept_unsigned = true\n"
    );
    let fleet = Fleet::new(&store);
    let reference = format!("{}/acme/echo:1", registry.host());
    let push = fleet.soma(&["push", soma_capsules::ECHO_COMPONENT, &reference]);
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let (ops, _) = token(fleet.dirs[2].path(), &fleet.configs[2], "ops", "operator");
    let (acme, _) = token(fleet.dirs[2].path(), &fleet.configs[2], "acme", "run,read");
    let (a, b) = (fleet.spawn(0), fleet.spawn(1));
    let served = |d: &Daemon, name: &str| -> Option<String> {
        let (s, list) = d.get("/v1/capsules", &acme);
        assert_eq!(s, 200, "{list}");
        list.as_array()
            .expect("list")
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["digest"].as_str().expect("digest").to_owned())
    };
    let wait = |d: &Daemon, want: Option<&str>, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while served(d, "echo-1").as_deref() != want {
            assert!(Instant::now() < deadline, "{}: {what}", d.url);
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (s, pulled) = a.post(
        "/v1/capsules/pull",
        &ops,
        &serde_json::json!({"name": "echo-1", "reference": reference}),
    );
    assert_eq!(s, 201, "{pulled}");
    let digest = pulled["digest"].as_str().expect("digest");
    assert_eq!(
        served(&a, "echo-1").as_deref(),
        Some(digest),
        "at once on A"
    );
    wait(&b, Some(digest), "B never served A's pull");
    let (s, v) = b.post(
        "/v1/runs",
        &acme,
        &serde_json::json!({"capsule": "echo-1", "input": "hi"}),
    );
    assert_eq!(
        (s, v["output"].clone()),
        (200, serde_json::json!("hi")),
        "{v}"
    );
    // A third daemon, started now, serves it from the start.
    let c = Daemon::spawn(bin(), fleet.dirs[2].path(), &fleet.configs[2]);
    assert_eq!(served(&c, "echo-1").as_deref(), Some(digest));
    drop(c);
    let (s, v, _) = b.request(
        reqwest::Method::DELETE,
        "/v1/capsules/echo-1",
        Some(&ops),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(served(&b, "echo-1"), None, "at once on B");
    wait(&a, None, "A still serves a removed pull");
    // The database down: a pull is refused as retryable, nothing served.
    pg.stop();
    let (s, v) = a.post(
        "/v1/capsules/pull",
        &ops,
        &serde_json::json!({"name": "echo-2", "reference": reference}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("store-unavailable")),
        "{v}"
    );
    assert_eq!(served(&a, "echo-2"), None);
    pg.resume();
}

/// `[store]` on `url` plus prices that make every call reserve its worst
/// case (1 micro-unit per fuel unit, `fuel` per call).
fn priced_store(url: &str, fuel: u64) -> String {
    format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 8\n\
         [ledger]\nfuel_price_per_1k_micros = 1000\n\
         [limits]\nfuel = {fuel}\n"
    )
}

/// Two daemons over one database, each with its own data directory.
struct Fleet {
    dirs: Vec<tempfile::TempDir>,
    configs: Vec<std::path::PathBuf>,
}

impl Fleet {
    fn new(store: &str) -> Self {
        // Two daemons' data directories, and a third for the CLI (a
        // daemon owns its directory's database).
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let configs = dirs
            .iter()
            .map(|d| {
                let config = d.path().join("soma.toml");
                std::fs::write(&config, harness::config_text("", store)).expect("config");
                config
            })
            .collect();
        Self { dirs, configs }
    }

    fn spawn(&self, i: usize) -> Daemon {
        Daemon::spawn(bin(), self.dirs[i].path(), &self.configs[i])
    }

    fn soma(&self, args: &[&str]) -> std::process::Output {
        harness::soma(bin(), self.dirs[2].path())
            .arg("--config")
            .arg(&self.configs[2])
            .args(args)
            .output()
            .expect("run soma")
    }

    /// `soma ledger check --json` on the shared store: must pass.
    fn check(&self) -> serde_json::Value {
        let out = self.soma(&["ledger", "check", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success() && report["ok"] == true, "{report}");
        report
    }
}

/// `POST /v1/runs` of `echo`: (status, body).
fn call(d: &Daemon, token: &str, i: usize) -> (u16, serde_json::Value) {
    d.post(
        "/v1/runs",
        token,
        &serde_json::json!({"capsule": "echo", "input": {"i": i}}),
    )
}

/// Every entry of `tenant` on the shared ledger, through `d`.
fn entries(d: &Daemon, token: &str) -> Vec<serde_json::Value> {
    let (s, v) = d.get("/v1/ledger?limit=10000", token);
    assert_eq!(s, 200, "{v}");
    v.as_array().expect("entries").clone()
}

/// The ledger entries of each run: (run → wall-time charges, fuel charges).
fn charges_by_run(
    entries: &[serde_json::Value],
) -> std::collections::HashMap<String, (usize, usize)> {
    let mut by_run: std::collections::HashMap<String, (usize, usize)> = Default::default();
    for e in entries {
        let run = e["run"].as_str().expect("run").to_owned();
        let row = by_run.entry(run).or_default();
        match e["kind"].as_str() {
            Some("wall-time") => row.0 += 1,
            Some("fuel") => row.1 += 1,
            other => panic!("unexpected charge {other:?}: {e}"),
        }
    }
    by_run
}

/// 16 parallel calls spread over two daemons against one tenant budget:
/// the shared reservations keep the total spent within the budget, every
/// call is either charged exactly once or refused with the budget error;
/// each daemon shows a tenant only its own ledger; `soma ledger check` on
/// the shared store passes.
#[test]
fn two_daemons_share_one_budget_and_ledger() {
    const FUEL: u64 = 5_000_000;
    let pg = Postgres::start();
    let fleet = Fleet::new(&priced_store(&pg.create_database(), FUEL));
    let (ops, _) = token(fleet.dirs[0].path(), &fleet.configs[0], "ops", "operator");
    let (acme, _) = token(fleet.dirs[0].path(), &fleet.configs[0], "acme", "run,read");
    let (globex, _) = token(
        fleet.dirs[0].path(),
        &fleet.configs[0],
        "globex",
        "run,read",
    );
    let daemons = [fleet.spawn(0), fleet.spawn(1)];
    // What one call costs (globex has no budget).
    let (s, v) = call(&daemons[1], &globex, 0);
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)), "{v}");
    let one: u64 = entries(&daemons[0], &globex)
        .iter()
        .map(|e| e["cost_micros"].as_u64().expect("cost"))
        .sum();
    assert!(one > 0 && one < FUEL, "one call costs {one}");
    // Room for one reservation plus three calls' actual cost.
    let budget = FUEL + 3 * one;
    let (s, v, _) = daemons[0].request(
        reqwest::Method::PUT,
        "/v1/budgets",
        Some(&ops),
        Some(serde_json::json!({"scope": "tenant:acme", "micros": budget}).to_string()),
    );
    assert_eq!(s, 200, "{v}");
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (d, acme) = (&daemons[i % 2], &acme);
                s.spawn(move || call(d, acme, i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caller"))
            .collect()
    });
    let acme_entries = entries(&daemons[1], &acme);
    let by_run = charges_by_run(&acme_entries);
    let mut ok = 0;
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        let run = v["run"].as_str().expect("run");
        if v["ok"] == true {
            ok += 1;
            assert_eq!(by_run.get(run), Some(&(1, 1)), "{run} charged once: {v}");
        } else {
            let text = v.to_string();
            assert!(text.contains("budget"), "refused for its budget: {v}");
            assert_eq!(by_run.get(run), None, "a refused call is not charged: {v}");
        }
    }
    assert!(ok >= 1, "{results:?}");
    let spent: u64 = acme_entries
        .iter()
        .map(|e| e["cost_micros"].as_u64().expect("cost"))
        .sum();
    assert!(
        spent <= budget + FUEL,
        "spent {spent} > budget {budget} + one reservation"
    );
    // The budget as both daemons see it: what the ledger holds, no holds left.
    for d in &daemons {
        let (s, v) = d.get("/v1/budgets", &acme);
        assert_eq!(s, 200, "{v}");
        let account = &v[0]["account"];
        assert_eq!(account["spent_micros"].as_u64(), Some(spent), "{v}");
        assert_eq!(account["reserved_micros"].as_u64(), Some(0), "{v}");
    }
    // Tenants see only their own ledger, on either daemon.
    for d in &daemons {
        let theirs = entries(d, &globex);
        assert!(
            theirs.iter().all(|e| e["tenant"] == "globex") && !theirs.is_empty(),
            "{theirs:?}"
        );
        assert_eq!(d.get("/v1/ledger?tenant=acme", &globex).0, 403);
    }
    let report = fleet.check();
    assert_eq!(
        report["entries"].as_u64(),
        Some(u64::try_from(acme_entries.len() + 2).expect("count")),
        "{report}"
    );
}

/// `kill -9` of one daemon mid-traffic: the other keeps serving, the
/// killed one restarts and serves, and every call answered `ok` is charged
/// exactly once. Then PostgreSQL stops for 5 s: calls fail with a
/// retryable error naming the store, nothing is half-written, and after
/// it is back calls are charged again and the ledger checks out.
#[test]
fn a_killed_daemon_and_a_stopped_database_leave_one_charge_per_call() {
    let mut pg = Postgres::start();
    let fleet = Fleet::new(&priced_store(&pg.create_database(), 5_000_000));
    let (acme, _) = token(fleet.dirs[0].path(), &fleet.configs[0], "acme", "run,read");
    let a = fleet.spawn(0);
    let b = fleet.spawn(1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answered: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let traffic: Vec<_> = [&a, &b]
            .into_iter()
            .flat_map(|d| std::iter::repeat_n(d, 2))
            .enumerate()
            .map(|(t, d)| {
                let (stop, acme) = (&stop, &acme);
                let url = d.url.clone();
                let client = harness::client();
                s.spawn(move || {
                    let mut got = Vec::new();
                    let mut i = t * 10_000;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        let body = serde_json::json!({"capsule": "echo", "input": {"i": i}});
                        let sent = client
                            .post(format!("{url}/v1/runs"))
                            .bearer_auth(acme)
                            .json(&body)
                            .send()
                            .and_then(|r| {
                                let status = r.status().as_u16();
                                r.json::<serde_json::Value>().map(|v| (status, v))
                            });
                        match sent {
                            Ok(answer) => got.push(answer),
                            // The killed daemon (refused, or cut off mid-call).
                            Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                    got
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        let (data, config) = a.kill9();
        let b_before = b.get("/v1/ledger?limit=10000", &acme).1;
        std::thread::sleep(Duration::from_millis(500));
        // B kept serving while A was down.
        let (s, v) = call(&b, &acme, 1);
        assert_eq!((s, v["ok"].as_bool()), (200, Some(true)), "{v}");
        assert!(
            b.get("/v1/ledger?limit=10000", &acme)
                .1
                .as_array()
                .map(Vec::len)
                > b_before.as_array().map(Vec::len)
        );
        let a = Daemon::spawn(bin(), &data, &config);
        let (s, v) = call(&a, &acme, 2);
        assert_eq!(
            (s, v["ok"].as_bool()),
            (200, Some(true)),
            "restarted A: {v}"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let got = traffic
            .into_iter()
            .flat_map(|h| h.join().expect("traffic"))
            .collect();
        drop(a);
        got
    });
    let a = fleet.spawn(0);
    let all = entries(&a, &acme);
    let by_run = charges_by_run(&all);
    let ok: Vec<&str> = answered
        .iter()
        .filter(|(s, v)| *s == 200 && v["ok"] == true)
        .map(|(_, v)| v["run"].as_str().expect("run"))
        .collect();
    assert!(ok.len() > 4, "{} calls answered", answered.len());
    for run in &ok {
        assert_eq!(by_run.get(*run), Some(&(1, 1)), "{run} charged once");
    }
    // No run of any call (answered or cut off by the kill) is charged twice.
    assert!(
        by_run.values().all(|&(w, f)| w == 1 && f <= 1),
        "{by_run:?}"
    );
    fleet.check();

    // PostgreSQL down for 5 s: a retryable error naming the store.
    let before = entries(&a, &acme).len();
    pg.stop();
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let (s, v) = call(&b, &acme, 3);
        if s == 401 {
            panic!("tokens are cached; a store outage must not log callers out: {v}");
        }
        let text = v.to_string();
        assert!(v["ok"] != true, "a call was served without its charge: {v}");
        assert!(
            text.contains("PostgreSQL") && text.contains("retryable"),
            "({s}) {v}"
        );
        refused += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(refused > 0);
    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = call(&b, &acme, 4);
        if s == 200 && v["ok"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = entries(&a, &acme);
    assert_eq!(
        after.len(),
        before + 2,
        "one charge (2 entries) for the one call"
    );
    let (s, v) = a.get("/v1/budgets", &acme);
    assert_eq!(s, 200, "{v}");
    fleet.check();
}

/// A priced marketplace capsule on a PostgreSQL fleet: calls through
/// either daemon each pay one fee, split 80/20 into the shared ledger in
/// the fee's own transaction; `soma market payouts` and `soma ledger
/// check` (splits, and every fee for a version published at that price)
/// on a third node read the same books. Before the splits were on this
/// store, the PostgreSQL ledger refused fee entries and every call failed.
#[test]
fn priced_marketplace_capsules_are_charged_and_split_on_a_postgres_fleet() {
    const PRICE: u64 = 2_500;
    let pg = Postgres::start();
    let url = pg.create_database();
    let store = format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n");
    let fleet = Fleet::new(&store);
    // Published once, on the shared store: every daemon charges for it.
    soma_tests::market::publish_priced(
        &soma_runtime::market::store::Market::new(shared_records(&url)),
        "acme/calc",
        "1.0.0",
        soma_capsules::CALCULATOR_COMPONENT,
        &format!("model = \"per-call\"\nmicros = {PRICE}"),
    );
    let (buyer, _) = token(fleet.dirs[0].path(), &fleet.configs[0], "buyer", "run,read");
    let daemons = [fleet.spawn(0), fleet.spawn(1)];
    for (i, d) in [&daemons[0], &daemons[1], &daemons[0]]
        .into_iter()
        .enumerate()
    {
        let (s, v) = d.post(
            "/v1/runs",
            &buyer,
            &serde_json::json!({"capsule": "calculator", "input": {"expr": format!("{i}+1")}}),
        );
        assert_eq!((s, v["ok"].as_bool()), (200, Some(true)), "call {i}: {v}");
    }
    let all = entries(&daemons[1], &buyer);
    let fees: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| e["kind"] == "marketplace-fee")
        .collect();
    assert_eq!(fees.len(), 3, "one fee per call, whichever daemon: {all:?}");
    for f in &fees {
        assert_eq!(f["cost_micros"].as_u64(), Some(PRICE), "{f}");
        assert_eq!(f["model"], "acme/calc@1.0.0", "{f}");
    }
    for d in daemons {
        assert!(d.stop().success());
    }

    let month = &soma_runtime::ledger::day_of(soma_runtime::market::store::now_ms())[..7];
    let out = fleet.soma(&["market", "payouts", "--month", month, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["revenue_micros"].as_u64(), Some(3 * PRICE), "{p}");
    assert_eq!(p["net_micros"].as_u64(), Some(3 * PRICE * 80 / 100), "{p}");
    assert_eq!(
        p["authors"][0]["listings"][0]["calls"].as_u64(),
        Some(3),
        "{p}"
    );
    // Passes only if every fee has its split and was for a version this
    // node's market published at that price.
    let report = fleet.check();
    assert_eq!(
        report["entries"].as_u64(),
        Some(9),
        "fuel, wall time, fee: {report}"
    );
}

/// The marketplace records on the shared store at `url`.
fn shared_records(url: &str) -> soma_runtime::market::records::Records {
    let config = soma_runtime::store::StoreConfig {
        backend: soma_runtime::store::Backend::Postgres,
        url: Some(url.to_owned()),
        ..Default::default()
    };
    soma_runtime::market::records::Records::Postgres(
        soma_runtime::store::postgres::PgStore::open(&config).expect("shared store"),
    )
}

/// Poll `f` every 100 ms until it answers `true`, for at most 20 s (a
/// daemon follows the fleet's marketplace within its search sync, 2 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One marketplace for a fleet: an author namespace registered through
/// daemon 0 is owned on daemon 1 too (another tenant cannot take it there,
/// the owner submits through it), a version published through daemon 0 is
/// found by daemon 1's search (whose index had never seen it), installed
/// for one tenant through daemon 1 and run by `market:` name through
/// daemon 0 (charged, and split, once; counted on daemon 1's cost card),
/// its yank through daemon 1 hides it from daemon 0's search; no tenant
/// sees another's pins on either.
#[test]
fn a_fleet_shares_one_marketplace_through_every_daemon() {
    use serde_json::json;
    use soma_tests::market::{author_body, push_signed};
    const PASSWORD: &str = "fleet-market";
    let registry = soma_tests::registry::Registry::start();
    let pg = Postgres::start();
    let url = pg.create_database();
    let keys = tempfile::tempdir().expect("tempdir");
    let (private, public) = soma_runtime::verify::KeyPair::generate()
        .save(&keys.path().join("market"), PASSWORD.as_bytes())
        .expect("market key");
    let extra = format!(
        "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n\
         [market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\n",
        private.display().to_string(),
        public.display().to_string(),
        registry.host()
    );
    let fleet = Fleet::new(&extra);
    let cli = (fleet.dirs[2].path(), &fleet.configs[2]);
    let (a, _) = token(cli.0, cli.1, "tenant-a", "admin");
    let (b, _) = token(cli.0, cli.1, "tenant-b", "admin");
    let (ops, _) = token(cli.0, cli.1, "ops", "operator");
    let d: Vec<Daemon> = (0..2)
        .map(|i| {
            Daemon::start_with_env(
                bin(),
                fleet.dirs[i].path(),
                "",
                &extra,
                &[("SOMA_PASSWORD", PASSWORD)],
            )
        })
        .collect();
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    // --- Authors: registered through 0, owned through 1.
    let (acme, beta) = (
        soma_runtime::verify::KeyPair::generate(),
        soma_runtime::verify::KeyPair::generate(),
    );
    let (s, v) = d[0].post(
        "/v1/market/authors",
        &a,
        &author_body("acme", &acme, "tenant-a"),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d[1].get("/v1/market/authors/acme", &a);
    assert_eq!((s, v["yours"].clone()), (200, json!(true)), "{v}");
    let (s, v) = d[1].post(
        "/v1/market/authors",
        &b,
        &author_body("acme", &beta, "tenant-b"),
    );
    assert_eq!((s, code(&v)), (409, "namespace-taken".to_owned()), "{v}");

    // --- Submitted (and reviewed) through 1, published through 0.
    let reference = push_signed(
        &registry,
        "acme/calc",
        "1.0.0",
        soma_capsules::CALCULATOR_COMPONENT,
        &acme,
    );
    let listing = json!({
        "name": "acme/calc",
        "version": "1.0.0",
        "summary": "Evaluate arithmetic expressions.",
        "readme": "# calculator\nEvaluates `+ - * / ^` with parentheses.",
        "keywords": ["math", "calculator"],
        "categories": ["math"],
        "license": "Apache-2.0",
        "examples": [{"input": {"expr": "2*(3+4)"}}],
        "price": {"model": "per-call", "micros": 1500},
    });
    let body = json!({"listing": listing, "reference": reference});
    let (s, v) = d[1].post("/v1/market/submissions", &b, &body);
    assert_eq!((s, code(&v)), (403, "foreign-namespace".to_owned()), "{v}");
    let (s, v) = d[1].post("/v1/market/submissions", &a, &body);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["submission"]["state"], json!("approved"), "{v}");
    let path = "/v1/market/submissions/acme%2Fcalc@1.0.0";
    let (s, v) = d[0].get(path, &b);
    assert_eq!(
        s, 404,
        "unpublished: B does not see it through 0 either: {v}"
    );
    let (s, v) = d[0].post(&format!("{path}/publish"), &ops, &json!({}));
    assert_eq!(s, 200, "{v}");

    // --- Daemon 1's search index follows the shared versions.
    let total = |d: &Daemon| {
        let (s, v) = d.get("/v1/market/search?q=calculater", &b);
        assert_eq!(s, 200, "{v}");
        v["total"].as_u64()
    };
    eventually("daemon 1 finds the version published through 0", || {
        total(&d[1]) == Some(1)
    });
    assert_eq!(total(&d[0]), Some(1));

    // --- Installed through 1 for B only; run through 0.
    let (s, v) = d[1].post("/v1/market/installs", &b, &json!({"name": "acme/calc@^1"}));
    assert_eq!(s, 201, "{v}");
    for daemon in &d {
        let (s, v) = daemon.get("/v1/market/installs", &b);
        assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)), "{v}");
        let (s, v) = daemon.get("/v1/market/installs", &a);
        assert_eq!((s, v), (200, json!([])), "A sees none of B's pins");
    }
    let call = json!({"capsule": "market:acme/calc@^1", "input": {"expr": "6*7"}});
    let (s, v) = d[0].post("/v1/runs", &b, &call);
    assert_eq!((s, v["ok"].clone()), (200, json!(true)), "{v}");
    let (s, v) = d[0].post("/v1/runs", &a, &call);
    assert_eq!(s, 400, "A installed nothing: {v}");
    let fees: Vec<serde_json::Value> = entries(&d[1], &b)
        .into_iter()
        .filter(|e| e["kind"] == "marketplace-fee")
        .collect();
    assert_eq!(fees.len(), 1, "{fees:?}");
    assert_eq!(fees[0]["cost_micros"].as_u64(), Some(1500), "{fees:?}");
    // Its cost card through daemon 1 counts the call made through 0.
    eventually("daemon 1's cost card counts daemon 0's call", || {
        let (s, v) = d[1].get("/v1/market/listings/acme/calc", &b);
        assert_eq!(s, 200, "{v}");
        v["versions"][0]["cost_card"]["calls"] == json!(1)
    });

    // --- Yanked through 1: gone from 0's search.
    let (s, v) = d[1].post(&format!("{path}/yank"), &ops, &json!({"reason": "test"}));
    assert_eq!(s, 200, "{v}");
    eventually("daemon 0 hides the version yanked through 1", || {
        total(&d[0]) == Some(0)
    });
    let (s, v, _) = d[0].request(
        reqwest::Method::DELETE,
        "/v1/market/installs/acme/calc",
        Some(&b),
        None,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(d[1].get("/v1/market/installs", &b).1, json!([]));
    for daemon in d {
        assert!(daemon.stop().success());
    }
    // The fee was for a version the shared marketplace published at that price.
    fleet.check();
}
