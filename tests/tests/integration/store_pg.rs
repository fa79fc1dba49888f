//! Shared state on a real PostgreSQL (issue 17): the ledger behaves as the
//! redb one (same charges, idempotency, rollups, check), tenants never see
//! each other, budgets hold across two stores (two daemons' pools) on one
//! database, tokens are shared, and an outage fails calls with a retryable
//! error and leaves nothing half-written.

use std::{
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use soma_runtime::{
    budget::{
        Limit, Scope,
        postgres::{PgBudgets, ReserveError},
    },
    daemon::auth::{TokenScope, Tokens, postgres::PgTokens},
    ledger::{
        CallDay, Entry, FailedCall, Filter, GroupBy, Kind, Ledger, LedgerError, LedgerStore,
        day_number_of, postgres::PgLedger,
    },
    store::{Backend, DataDir, StoreConfig, postgres::PgStore},
};
use soma_tests::postgres::Postgres;

const DAY_MS: u64 = 86_400_000;
/// 2024-03-01T00:00:00Z.
const MAR_1: u64 = 1_709_251_200_000;

fn store_config(url: &str) -> StoreConfig {
    StoreConfig {
        backend: Backend::Postgres,
        url: Some(url.to_owned()),
        pool_size: 8,
        connect_timeout_ms: 2_000,
        statement_timeout_ms: 10_000,
        ..StoreConfig::default()
    }
}

fn open(url: &str) -> PgStore {
    PgStore::open(&store_config(url)).expect("open the PostgreSQL store")
}

#[allow(clippy::too_many_arguments)]
fn entry(
    tenant: &str,
    run: &str,
    node: &str,
    seq: u32,
    day: u64,
    kind: Kind,
    model: Option<&str>,
    quantity: u64,
    price: u64,
) -> Entry {
    Entry {
        id: 0,
        time_ms: MAR_1 + day * DAY_MS + 3_600_000 + u64::from(seq),
        tenant: tenant.into(),
        run: run.into(),
        node: node.into(),
        attempt: 0,
        seq,
        capsule: format!("sha256:{:064}", seq % 2),
        kind,
        quantity,
        unit_price_micros: price,
        cost_micros: Entry::cost_for(quantity, price),
        provider: model.map(|_| "openai".into()),
        model: model.map(Into::into),
        estimated: seq.is_multiple_of(3),
    }
}

/// 2 tenants, 2 capsules, 2 models, 3 days; every kind the PostgreSQL
/// store keeps.
fn mixed() -> Vec<Entry> {
    let mut v = Vec::new();
    let mut seq = 0;
    for day in 0..3u64 {
        for tenant in ["acme", "globex"] {
            let run = format!("r-{tenant}-{day}");
            for (kind, model, q, p) in [
                (Kind::LlmTokensInput, Some("gpt-a"), 1200, 2_500),
                (Kind::LlmTokensOutput, Some("gpt-a"), 300, 10_000),
                (Kind::LlmTokensInput, Some("gpt-b"), 999, 150),
                (Kind::Fuel, None, 5_000_000, 1),
                (Kind::WallTime, None, 42, 20),
            ] {
                v.push(entry(tenant, &run, "n", seq, day, kind, model, q, p));
                seq += 1;
            }
        }
    }
    v
}

/// Everything a ledger answers, from any store.
fn answers(
    s: &dyn LedgerStore,
) -> (
    Vec<Entry>,
    Vec<Vec<soma_runtime::ledger::SummaryRow>>,
    soma_runtime::ledger::Invoice,
    soma_runtime::ledger::Forecast,
    Vec<Entry>,
) {
    let all = s.ls(&Filter::default()).expect("ls");
    let summaries = [
        GroupBy::Capsule,
        GroupBy::Tenant,
        GroupBy::Model,
        GroupBy::Day,
        GroupBy::Kind,
    ]
    .into_iter()
    .map(|by| {
        s.summary(by, Some("2024-03-02"), None, None)
            .expect("summary")
    })
    .collect();
    let bill = s.bill("acme", "2024-03").expect("bill");
    let forecast = s
        .forecast_through("acme", 3, "2024-03-03")
        .expect("forecast");
    let run = s
        .ls(&Filter {
            run: Some("r-globex-1".into()),
            limit: Some(3),
            ..Filter::default()
        })
        .expect("ls run");
    (all, summaries, bill, forecast, run)
}

/// Append the same batches (with replays inside and across batches) to a
/// ledger; what each append reports.
fn feed(s: &dyn LedgerStore) -> Vec<(usize, usize)> {
    let entries = mixed();
    let (a, b) = entries.split_at(entries.len() / 2);
    let mut with_replay = b.to_vec();
    with_replay.push(b[0].clone()); // a duplicate inside the batch
    let mut out = Vec::new();
    for batch in [a.to_vec(), with_replay, a[..3].to_vec()] {
        let r = s.append(&batch).expect("append");
        out.push((r.inserted.len(), r.duplicates));
    }
    out
}

#[test]
fn the_postgres_ledger_answers_as_the_redb_ledger() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = Ledger::open(&DataDir::new(dir.path()));
    let shared = PgLedger::new(open(&url));

    let fed_redb = feed(&redb);
    let fed_pg = feed(&shared);
    assert_eq!(fed_redb, fed_pg, "the same inserts and duplicates");
    assert_eq!(fed_pg, vec![(15, 0), (15, 1), (0, 3)]);

    let (r, p) = (answers(&redb), answers(&shared));
    assert_eq!(r.0.len(), 30);
    assert_eq!(r.0, p.0, "the same entries, ids and order");
    assert_eq!(r.1, p.1, "the same summaries");
    assert!(r.2.total_micros > 0);
    assert_eq!(r.2, p.2, "the same invoice");
    assert_eq!(r.3, p.3, "the same forecast");
    assert_eq!(r.4.len(), 3);
    assert_eq!(r.4, p.4, "the same run lookup");

    let (rc, pc) = (
        LedgerStore::check_integrity(&redb).expect("check redb"),
        shared.check_integrity().expect("check pg"),
    );
    assert!(rc.ok && pc.ok, "{rc:?} {pc:?}");
    assert_eq!(
        (rc.entries, rc.keys, rc.rollup_rows),
        (pc.entries, pc.keys, pc.rollup_rows)
    );

    // Refused like redb (nothing written), plus what BIGINT cannot hold.
    let mut bad = entry("acme", "r/x", "n", 99, 0, Kind::Fuel, None, 1, 1);
    assert!(matches!(
        shared.append(std::slice::from_ref(&bad)),
        Err(LedgerError::InvalidEntry { index: 0, .. })
    ));
    bad.run = "r-big".into();
    bad.quantity = u64::MAX;
    let err = shared.append(&[bad]).expect_err("too big for BIGINT");
    assert!(err.to_string().contains("2^63"), "{err}");
    assert_eq!(shared.ls(&Filter::default()).expect("ls").len(), 30);

    // A second store over the same database (another daemon) sees it all
    // and cannot charge a recorded key again.
    let other = PgLedger::new(open(&url));
    assert_eq!(other.ls(&Filter::default()).expect("ls").len(), 30);
    let again = other.append(&mixed()).expect("replay");
    assert_eq!((again.inserted.len(), again.duplicates), (0, 30));
    assert!(other.check_integrity().expect("check").ok);
}

/// Every capsule's call statistics over the days `mixed()` covers and
/// the 40 after.
fn call_stats(s: &dyn LedgerStore) -> Vec<(String, i64, CallDay)> {
    let first = day_number_of(MAR_1);
    let mut out = Vec::new();
    for capsule in 0..2 {
        let capsule = format!("sha256:{capsule:064}");
        for (day, stats) in s.call_days(&capsule, first, first + 45).expect("call days") {
            out.push((capsule.clone(), day - first, stats));
        }
    }
    out
}

/// The marketplace's cost cards read the same call statistics on either
/// store: summed from the entries in their transaction (replays not
/// counted), a failure counted once however many daemons replay it, rows
/// past the 31-day window pruned.
#[test]
fn call_statistics_on_postgres_are_those_of_redb() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = Ledger::open(&DataDir::new(dir.path()));
    let shared = PgLedger::new(open(&url));
    let other = PgLedger::new(open(&url));
    feed(&redb);
    feed(&shared);
    let (r, p) = (call_stats(&redb), call_stats(&shared));
    assert_eq!(r, p, "the same statistics");
    let calls: u64 = p.iter().map(|(_, _, d)| d.calls).sum();
    assert_eq!(calls, 6, "one wall-time entry per day and tenant: {p:?}");
    assert!(
        p.iter()
            .all(|(_, _, d)| d.cost_micros > 0 && d.failures == 0)
    );

    let capsule = format!("sha256:{:064}", 0);
    let at = MAR_1 + DAY_MS + 5;
    let failed = FailedCall {
        tenant: "acme",
        class: "trap",
    };
    for (store, first) in [
        (&redb as &dyn LedgerStore, true),
        (&shared, true),
        (&other, false),
    ] {
        assert_eq!(
            store
                .record_call_failure("r-acme-1", "n", 0, &capsule, at, &failed)
                .expect("failure"),
            first
        );
        assert!(
            !store
                .record_call_failure("r-acme-1", "n", 0, &capsule, at, &failed)
                .expect("replay"),
            "a replayed attempt is not counted again"
        );
    }
    let (r, p) = (call_stats(&redb), call_stats(&shared));
    assert_eq!(r, p);
    assert_eq!(
        p.iter().map(|(_, _, d)| d.failures).sum::<u64>(),
        1,
        "{p:?}"
    );

    // A call 40 days on prunes the capsule's rows older than 31 days
    // before it, on both stores.
    let late = entry("acme", "r-late", "n", 0, 40, Kind::WallTime, None, 7, 1);
    for s in [&redb as &dyn LedgerStore, &shared] {
        s.append(std::slice::from_ref(&late)).expect("late");
    }
    let (r, p) = (call_stats(&redb), call_stats(&shared));
    assert_eq!(r, p);
    assert!(
        p.iter().all(|(c, day, _)| c != &capsule || *day == 40),
        "{p:?}"
    );
    assert!(
        p.iter().any(|(c, _, _)| c != &capsule),
        "the other capsule keeps its rows"
    );
}

/// Fees of two listings over two months (2024-03 and 2024-04), split
/// 80/20 and 70/30, tagged as the call path tags them.
fn fees() -> Vec<Entry> {
    let mut v = Vec::new();
    for (seq, (day, listing, share, price)) in [
        (0u64, "acme/calc@1.0.0", 80u8, 2_500_000u64),
        (1, "acme/calc@1.1.0", 80, 2_500_000),
        (20, "globex/sum@0.1.0", 70, 999),
        (31, "acme/calc@1.1.0", 80, 3_000_000),
        (32, "globex/sum@0.1.0", 70, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let tenant = if seq % 2 == 0 { "buyer-a" } else { "buyer-b" };
        let run = format!("r-fee-{seq}");
        let seq = u32::try_from(seq).expect("seq");
        let mut e = entry(
            tenant,
            &run,
            "n",
            seq,
            day,
            Kind::MarketplaceFee,
            None,
            1,
            price,
        );
        let (provider, model) = soma_runtime::ledger::fee_tags(listing, share);
        e.provider = Some(provider);
        e.model = Some(model);
        v.push(e);
    }
    v
}

#[test]
fn marketplace_fees_are_split_on_postgres_as_on_redb_and_tampering_is_caught() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = Ledger::open(&DataDir::new(dir.path()));
    let shared = PgLedger::new(open(&url));
    let mut batch = mixed();
    batch.extend(fees());
    for s in [&redb as &dyn LedgerStore, &shared] {
        let first = s.append(&batch).expect("append");
        assert_eq!((first.inserted.len(), first.duplicates), (35, 0));
        // A replayed fee (another daemon retrying) writes no second split.
        let again = s.append(&fees()).expect("replay");
        assert_eq!((again.inserted.len(), again.duplicates), (0, 5));
    }
    for month in [Some("2024-03"), Some("2024-04"), None] {
        let (r, p) = (
            redb.fees(month).expect("redb fees"),
            shared.fees(month).expect("pg fees"),
        );
        assert_eq!(r, p, "the same fees and splits for {month:?}");
    }
    let march = shared.fees(Some("2024-03")).expect("march");
    assert_eq!(march.len(), 3);
    for (split, entry) in &march {
        assert_eq!(
            split.author_micros + split.platform_micros,
            entry.cost_micros
        );
    }
    assert_eq!(
        (march[0].0.author_micros, march[0].0.platform_micros),
        (2_000, 500),
        "80/20 of 2,500 µ (one unit at 2,500,000 per 1,000)"
    );
    assert!(matches!(
        shared.fees(Some("2024-13")),
        Err(LedgerError::InvalidMonth(_))
    ));
    let payouts = |s: &dyn LedgerStore| {
        soma_runtime::market::payouts::report(s, "2024-03", None).expect("payouts")
    };
    assert_eq!(payouts(&redb), payouts(&shared), "the same payouts");
    assert_eq!(payouts(&shared).authors.len(), 2);
    let (rc, pc) = (
        LedgerStore::check_integrity(&redb).expect("check redb"),
        shared.check_integrity().expect("check pg"),
    );
    assert!(rc.ok && pc.ok, "{rc:?} {pc:?}");

    // An untagged fee is refused whole on both stores: nothing written.
    let mut untagged = fees()[0].clone();
    untagged.run = "r-untagged".into();
    untagged.model = None;
    for s in [&redb as &dyn LedgerStore, &shared] {
        assert!(matches!(
            s.append(&[mixed()[0].clone(), untagged.clone()]),
            Err(LedgerError::InvalidEntry { index: 1, .. })
        ));
    }
    assert_eq!(shared.ls(&Filter::default()).expect("ls").len(), 35);

    // Tampered split rows are found by the check.
    let (a, b) = (march[0].0.id, march[1].0.id);
    let mut conn = shared.store().conn().expect("conn");
    conn.execute(
        "UPDATE ledger_fee_splits SET author_micros = author_micros + 1 WHERE entry_id = $1",
        &[&i64::try_from(a).expect("id")],
    )
    .expect("tamper");
    conn.execute(
        "DELETE FROM ledger_fee_splits WHERE entry_id = $1",
        &[&i64::try_from(b).expect("id")],
    )
    .expect("delete");
    drop(conn);
    let report = shared.check_integrity().expect("check");
    assert!(!report.ok, "{report:?}");
    use soma_runtime::ledger::FeeProblem;
    assert!(
        report
            .fee_problems
            .iter()
            .any(|p| matches!(p, FeeProblem::SplitMismatch { id, .. } if *id == a)),
        "{report:?}"
    );
    assert!(
        report
            .fee_problems
            .contains(&FeeProblem::MissingSplit { id: b }),
        "{report:?}"
    );
}

#[test]
fn a_tenant_never_reads_another_tenants_entries_on_postgres() {
    let pg = Postgres::start();
    let shared = PgLedger::new(open(&pg.create_database()));
    shared.append(&mixed()).expect("append");
    let acme = shared
        .ls(&Filter {
            tenant: Some("acme".into()),
            ..Filter::default()
        })
        .expect("ls acme");
    assert_eq!(acme.len(), 15);
    assert!(acme.iter().all(|e| e.tenant == "acme"));
    // A run of globex asked for as acme: nothing.
    let cross = shared
        .ls(&Filter {
            tenant: Some("acme".into()),
            run: Some("r-globex-0".into()),
            ..Filter::default()
        })
        .expect("ls cross");
    assert!(cross.is_empty(), "{cross:?}");
    for by in [GroupBy::Tenant, GroupBy::Capsule, GroupBy::Day] {
        let rows = shared
            .summary(by, None, None, Some("acme"))
            .expect("summary");
        let count: u64 = rows.iter().map(|r| r.count).sum();
        assert_eq!(count, 15, "{by:?}");
        if by == GroupBy::Tenant {
            assert!(rows.iter().all(|r| r.key == "acme"), "{rows:?}");
        }
    }
    let bill = shared.bill("globex", "2024-03").expect("bill");
    let count: u64 = bill.lines.iter().map(|l| l.count).sum();
    assert_eq!(count, 15);
    assert!(
        shared
            .bill("nobody", "2024-03")
            .expect("bill")
            .lines
            .is_empty()
    );
    let f = shared
        .forecast_through("acme", 2, "2024-03-03")
        .expect("forecast");
    let acme_cost: u64 = acme.iter().map(|e| e.cost_micros).sum();
    assert_eq!(f.daily_history.iter().map(|d| d.1).sum::<u64>(), acme_cost);
}

#[test]
fn sixteen_calls_over_two_stores_never_pass_a_shared_budget() {
    let pg = Postgres::start();
    let url = pg.create_database();
    // Two daemons: two stores, two pools, one database.
    let stores = [open(&url), open(&url)];
    let run = Scope::Run("shared".into());
    let tenant = Scope::Tenant("acme".into());
    let budgets = PgBudgets::new(stores[0].clone(), TTL_MS);
    budgets
        .set_limit(
            &run,
            Some(Limit {
                tokens: Some(2_000),
                micros: None,
            }),
        )
        .expect("set run budget");
    budgets
        .set_limit(
            &tenant,
            Some(Limit {
                tokens: None,
                micros: Some(1_000_000_000),
            }),
        )
        .expect("set tenant budget");
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16u32)
        .map(|t| {
            let store = stores[t as usize % 2].clone();
            let (run, tenant, barrier) = (run.clone(), tenant.clone(), barrier.clone());
            std::thread::spawn(move || {
                let budgets = PgBudgets::new(store.clone(), TTL_MS);
                let ledger = PgLedger::new(store);
                let scopes = [tenant, run];
                barrier.wait();
                let (mut granted, mut refused) = (0u32, 0u32);
                for call in 0..20u32 {
                    match budgets.reserve(&scopes, 50, 0) {
                        Ok(hold) => {
                            granted += 1;
                            // The call used 40 of the 50 tokens it held.
                            let charge = entry(
                                "acme",
                                "shared",
                                &format!("t{t}"),
                                call,
                                0,
                                Kind::LlmTokensOutput,
                                Some("gpt-a"),
                                40,
                                1_000,
                            );
                            let a = budgets
                                .charge(&ledger, std::slice::from_ref(&charge), Some(hold), &scopes)
                                .expect("charge");
                            assert_eq!(a.inserted.len(), 1);
                            // A retried charge (same key) is neither written nor counted.
                            let again = budgets
                                .charge(&ledger, &[charge], None, &scopes)
                                .expect("replay");
                            assert_eq!(again.duplicates, 1);
                        }
                        Err(ReserveError::Refused(reason)) => {
                            assert!(reason.contains("run:shared"), "{reason}");
                            refused += 1;
                        }
                        Err(e) => panic!("reserve failed: {e}"),
                    }
                }
                (granted, refused)
            })
        })
        .collect();
    let (mut granted, mut refused) = (0u64, 0u64);
    for t in threads {
        let (g, r) = t.join().expect("thread");
        granted += u64::from(g);
        refused += u64::from(r);
    }
    let acc = budgets.account(&run).expect("account").expect("run budget");
    assert_eq!(acc.reserved_tokens, 0, "every hold was settled");
    assert_eq!(
        acc.spent_tokens,
        granted * 40,
        "spent = what the ledger holds"
    );
    assert!(acc.spent_tokens <= 2_000, "over budget: {acc:?}");
    // 2000 / 50 held at a time → at least 40 grants, and refusals once full.
    assert!(
        granted >= 40 && refused > 0,
        "{granted} granted, {refused} refused"
    );
    let ledger = PgLedger::new(stores[1].clone());
    let entries = ledger
        .ls(&Filter {
            run: Some("shared".into()),
            ..Filter::default()
        })
        .expect("ls");
    assert_eq!(entries.len() as u64, granted, "exactly one charge per call");
    assert!(ledger.check_integrity().expect("check").ok);
    let t = budgets.account(&tenant).expect("tenant").expect("budget");
    assert_eq!(
        t.spent_micros,
        entries.iter().map(|e| e.cost_micros).sum::<u64>()
    );

    // A new budget starts from what the shared ledger already holds.
    let node = Scope::Node("shared/t3".into());
    budgets
        .set_limit(
            &node,
            Some(Limit {
                tokens: Some(10_000),
                micros: None,
            }),
        )
        .expect("node budget");
    let node_spent: u64 = entries
        .iter()
        .filter(|e| e.node == "t3")
        .map(|e| e.quantity)
        .sum();
    assert_eq!(
        PgBudgets::new(stores[1].clone(), TTL_MS)
            .account(&node)
            .expect("account")
            .map(|a| a.spent_tokens),
        Some(node_spent)
    );
}

/// `[store] hold_ttl_ms` as the tests here use it (the default).
const TTL_MS: u64 = 3_600_000;

/// A daemon that dies mid-call leaves its hold; once older than the TTL,
/// the next reservation on any daemon releases it (and only it: a fresh
/// hold stays), its room comes back, and a late settle of the released
/// hold still charges its spending without freeing room twice.
#[test]
fn a_dead_daemons_hold_is_released_after_its_ttl() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let stores = [open(&url), open(&url)];
    let ttl_ms = 1_500;
    let run = Scope::Run("ttl".into());
    let first = PgBudgets::new(stores[0].clone(), ttl_ms);
    first
        .set_limit(
            &run,
            Some(Limit {
                tokens: Some(100),
                micros: None,
            }),
        )
        .expect("budget");
    let scopes = [run.clone()];
    // The first daemon holds 80 and "dies" (never settles).
    let orphan = first.reserve(&scopes, 80, 0).expect("hold");
    let second = PgBudgets::new(stores[1].clone(), ttl_ms);
    assert!(
        second.reserve(&scopes, 50, 0).is_err(),
        "the orphan's 80 still counts before its TTL"
    );
    let live = second.reserve(&scopes, 20, 0).expect("the 20 left");
    std::thread::sleep(Duration::from_millis(ttl_ms + 200));
    // The live hold is younger than the TTL only if made now: make one.
    second.release(live).expect("release");
    let fresh = second.reserve(&scopes, 10, 0).expect("fresh hold");
    assert_eq!(
        second.release_expired().expect("sweep"),
        1,
        "exactly the orphan (the fresh hold is within its TTL; `live` was released)"
    );
    let account = second.account(&run).expect("account").expect("budget");
    assert_eq!(account.reserved_tokens, 10, "only the fresh hold remains");
    assert!(second.reserve(&scopes, 95, 0).is_err(), "100 - 10 held");
    let big = second
        .reserve(&scopes, 90, 0)
        .expect("the orphan's room is back");
    // The dead daemon comes back and settles its released hold: it is
    // charged (60 spent), no reservation is taken off twice.
    first.settle(orphan, &scopes, 60, 0).expect("late settle");
    let account = second.account(&run).expect("account").expect("budget");
    assert_eq!(account.spent_tokens, 60);
    assert_eq!(account.reserved_tokens, 100, "fresh 10 + big 90");
    second.release(big).expect("release");
    second.release(fresh).expect("release");
    let account = second.account(&run).expect("account").expect("budget");
    assert_eq!((account.reserved_tokens, account.spent_tokens), (0, 60));
}

#[test]
fn tokens_created_or_revoked_on_one_store_hold_on_the_other() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let a = Tokens::load_postgres(PgTokens::new(open(&url))).expect("daemon a");
    let b = Tokens::load_postgres(PgTokens::new(open(&url))).expect("daemon b");
    let (token, record) = a
        .create("acme", &[TokenScope::Run, TokenScope::Read], None)
        .expect("create");
    assert!(
        a.check(&token).is_some(),
        "the creating daemon knows it at once"
    );
    assert!(b.check(&token).is_none(), "not yet refreshed");
    b.refresh().expect("refresh b");
    let who = b.check(&token).expect("b accepts a's token");
    assert_eq!(
        (who.tenant.as_str(), who.token.as_str()),
        ("acme", record.id.as_str())
    );
    assert!(
        b.check(&format!("{token}x")).is_none(),
        "a wrong secret is refused"
    );
    let revoked = b.revoke(&record.id).expect("revoke on b");
    assert!(revoked.revoked);
    assert!(b.check(&token).is_none());
    a.refresh().expect("refresh a");
    assert!(a.check(&token).is_none(), "a refuses it after b revoked it");
    assert_eq!(a.list().expect("list").len(), 1);
}

#[test]
fn postgres_stopped_for_five_seconds_fails_appends_retryably_and_writes_nothing_half() {
    let mut pg = Postgres::start();
    let url = pg.create_database();
    let shared = PgLedger::new(open(&url));
    let writer = shared.writer().expect("writer");
    let batch = |from: u32| -> Vec<Entry> {
        (from..from + 5)
            .map(|s| entry("acme", "outage", "n", s, 0, Kind::Fuel, None, 1000, 3))
            .collect()
    };
    writer.append(batch(0)).expect("before the outage");
    pg.stop();
    let started = Instant::now();
    let mut failures = 0;
    let mut last_err = None;
    while started.elapsed() < Duration::from_secs(5) {
        match writer.append(batch(100)) {
            Ok(a) => panic!("appended while PostgreSQL was down: {a:?}"),
            Err(e) => {
                failures += 1;
                last_err = Some(e);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let err = last_err.expect("an error");
    match &err {
        LedgerError::Postgres(e) => assert!(e.is_retryable(), "{e}"),
        other => panic!("not a store error: {other:?}"),
    }
    assert!(err.to_string().contains("retryable"), "{err}");
    assert!(
        failures >= 3,
        "each failed append answered quickly ({failures})"
    );
    pg.resume();
    // The same batch retried after the outage is written once.
    let done = writer.append(batch(100)).expect("after the outage");
    assert_eq!(done.inserted.len(), 5);
    let again = writer.append(batch(100)).expect("retry");
    assert_eq!(again.duplicates, 5);
    let all = shared.ls(&Filter::default()).expect("ls");
    assert_eq!(all.len(), 10, "the 5 before and the 5 after, nothing else");
    let report = shared.check_integrity().expect("check");
    assert!(report.ok && report.entries == 10, "{report:?}");
    writer.close();
}

/// Group-commit appends/s of the redb and PostgreSQL ledgers with 16 and
/// 64 appenders, one entry per append (a call's charge), in the same run.
/// Prints the figures; asserts that every append landed exactly once.
#[test]
fn ledger_appends_per_second_redb_and_postgres() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let redb: Arc<dyn LedgerStore> = Arc::new(Ledger::open(&DataDir::new(dir.path())));
    let shared: Arc<dyn LedgerStore> = Arc::new(PgLedger::new(open(&pg.create_database())));
    for (name, store) in [("redb", redb), ("postgres", shared)] {
        for appenders in [16u32, 64] {
            let writer = store.writer().expect("writer");
            let per = 2_000 / appenders;
            let started = Instant::now();
            let threads: Vec<_> = (0..appenders)
                .map(|t| {
                    let writer = writer.clone();
                    std::thread::spawn(move || {
                        for i in 0..per {
                            let run = format!("bench-{appenders}");
                            let e =
                                entry("acme", &run, &format!("t{t}"), i, 0, Kind::Fuel, None, 7, 1);
                            let a = writer.append(vec![e]).expect("append");
                            assert_eq!(a.inserted.len(), 1);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("appender");
            }
            let secs = started.elapsed().as_secs_f64();
            let n = f64::from(per * appenders);
            eprintln!(
                "ledger appends/s {name} {appenders} appenders: {:.0} ({n} in {secs:.2} s)",
                n / secs
            );
            writer.close();
            let got = store
                .ls(&Filter {
                    run: Some(format!("bench-{appenders}")),
                    ..Filter::default()
                })
                .expect("ls");
            assert_eq!(got.len() as f64, n);
        }
    }
}
