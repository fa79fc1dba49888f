//! Ledger tests against a real redb file in a temp directory.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use super::*;

const DAY_MS: u64 = 86_400_000;
/// 2024-03-01T00:00:00Z.
const MAR_1: u64 = 1_709_251_200_000;

fn ledger() -> (Ledger, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Ledger::open(&DataDir::new(dir.path())), dir)
}

fn capsule(n: u32) -> String {
    format!("sha256:{n:064x}")
}

#[allow(clippy::too_many_arguments)]
fn entry(
    tenant: &str,
    run: &str,
    seq: u32,
    time_ms: u64,
    cap: u32,
    kind: Kind,
    model: Option<&str>,
    quantity: u64,
    price: u64,
) -> Entry {
    Entry {
        id: 0,
        time_ms,
        tenant: tenant.into(),
        run: run.into(),
        node: "node".into(),
        attempt: 0,
        seq,
        capsule: capsule(cap),
        kind,
        quantity,
        unit_price_micros: price,
        cost_micros: Entry::cost_for(quantity, price),
        provider: model.map(|_| "openai".into()),
        model: model.map(Into::into),
        estimated: seq.is_multiple_of(3),
    }
    .tagged_if_fee()
}

impl Entry {
    /// A marketplace fee names its listing version and author share.
    fn tagged_if_fee(mut self) -> Self {
        if self.kind == Kind::MarketplaceFee {
            let (provider, model) = fee_tags("acme/x@1.0.0", 80);
            self.provider = Some(provider);
            self.model = Some(model);
        }
        self
    }
}

/// A small mixed ledger: 2 tenants, 2 capsules, 2 models, 3 days.
fn mixed() -> Vec<Entry> {
    let mut v = Vec::new();
    let mut seq = 0;
    for day in 0..3u64 {
        for (tenant, cap) in [("acme", 1), ("acme", 2), ("globex", 1)] {
            let t = MAR_1 + day * DAY_MS + 3_600_000;
            let run = format!("r-{tenant}-{day}");
            for (kind, model, q, p) in [
                (Kind::LlmTokensInput, Some("gpt-a"), 1200, 2_500),
                (Kind::LlmTokensOutput, Some("gpt-a"), 300, 10_000),
                (Kind::LlmTokensInput, Some("gpt-b"), 999, 150),
                (Kind::Fuel, None, 5_000_000, 1),
                (Kind::WallTime, None, 42, 20),
                (Kind::MarketplaceFee, None, 1, 50_000),
            ] {
                seq += 1;
                v.push(entry(tenant, &run, seq, t, cap, kind, model, q, p));
            }
        }
    }
    v
}

fn assert_ok(l: &Ledger) -> IntegrityReport {
    let r = l.check_integrity().unwrap();
    assert!(r.ok, "{:#?}", r.problems);
    r
}

#[test]
fn ledger_cost_for_rounds_up_and_saturates() {
    assert_eq!(Entry::cost_for(0, 5), 0);
    assert_eq!(Entry::cost_for(1, 1), 1);
    assert_eq!(Entry::cost_for(1000, 1), 1);
    assert_eq!(Entry::cost_for(1001, 1), 2);
    assert_eq!(Entry::cost_for(1200, 2_500), 3_000);
    assert_eq!(Entry::cost_for(u64::MAX, u64::MAX), u64::MAX);
    assert_eq!(Entry::cost_for(u64::MAX, 1000), u64::MAX);
}

#[test]
fn ledger_kind_serde_names() {
    assert_eq!(
        serde_json::to_string(&Kind::LlmTokensInput).unwrap(),
        "\"llm-tokens-input\""
    );
    for k in Kind::ALL {
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", k.name()));
        assert_eq!(Kind::from_code(k.code()), Some(k));
        assert_eq!(Kind::from_name(k.name()), Some(k));
    }
}

#[test]
fn ledger_idempotent_replay() {
    let (l, _dir) = ledger();
    let batch = mixed();
    let first = l.append(&batch).unwrap();
    assert_eq!(first.inserted.len(), batch.len());
    assert_eq!(first.duplicates, 0);
    assert!(first.inserted.windows(2).all(|w| w[0] < w[1]));
    let before = l.summary(GroupBy::Tenant, None, None, None).unwrap();

    // The same batch again, and a batch holding an internal duplicate.
    let replay = l.append(&batch).unwrap();
    assert_eq!(
        replay,
        Appended {
            inserted: vec![],
            duplicates: batch.len()
        }
    );
    let mut retried = entry("acme", "r-new", 1, MAR_1, 1, Kind::Fuel, None, 10, 1);
    let again = retried.clone();
    retried.quantity = 999; // a retry with a different measurement is still the same charge
    let r = l.append(&[again, retried]).unwrap();
    assert_eq!(r.inserted.len(), 1);
    assert_eq!(r.duplicates, 1);
    assert!(r.inserted[0] > *first.inserted.last().unwrap());

    let after = l.summary(GroupBy::Tenant, None, None, None).unwrap();
    let acme = |rows: &[SummaryRow]| rows.iter().find(|r| r.key == "acme").unwrap().clone();
    assert_eq!(acme(&after).fuel, acme(&before).fuel + 10);
    assert_eq!(acme(&after).count, acme(&before).count + 1);
    let report = assert_ok(&l);
    assert_eq!(report.entries, batch.len() as u64 + 1);
    assert_eq!(report.keys, report.entries);

    // Stored entries read back exactly, newest first, with their ids.
    let all = l.ls(&Filter::default()).unwrap();
    assert_eq!(all.len(), batch.len() + 1);
    assert_eq!(all[0].quantity, 10);
    let oldest = all.last().unwrap();
    assert_eq!(oldest.id, first.inserted[0]);
    assert_eq!(
        Entry {
            id: 0,
            ..oldest.clone()
        },
        batch[0]
    );
}

#[test]
fn ledger_refuses_ambiguous_entries_whole_batch() {
    let (l, _dir) = ledger();
    let good = entry("acme", "r", 1, MAR_1, 1, Kind::Fuel, None, 1, 1);
    let mut slash = good.clone();
    slash.run = "a/b".into();
    slash.seq = 2;
    let err = l.append(&[good.clone(), slash]).unwrap_err();
    assert!(
        matches!(err, LedgerError::InvalidEntry { index: 1, .. }),
        "{err}"
    );
    let mut micros = good.clone();
    micros.time_ms = MAR_1 * 1000;
    assert!(l.append(&[micros]).is_err());
    assert!(l.ls(&Filter::default()).unwrap().is_empty());
    assert_eq!(l.append(&[]).unwrap(), Appended::default());
}

#[test]
fn ledger_ls_filters_newest_first() {
    let (l, _dir) = ledger();
    l.append(&mixed()).unwrap();
    let acme = l
        .ls(&Filter {
            tenant: Some("acme".into()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(acme.len(), 36);
    assert!(acme.windows(2).all(|w| w[0].id > w[1].id));
    let day2 = l
        .ls(&Filter {
            since_ms: Some(MAR_1 + DAY_MS),
            until_ms: Some(MAR_1 + 2 * DAY_MS),
            capsule: Some(capsule(1)),
            limit: Some(4),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(day2.len(), 4);
    assert!(
        day2.iter()
            .all(|e| e.day() == "2024-03-02" && e.capsule == capsule(1))
    );
    let run = l
        .ls(&Filter {
            run: Some("r-globex-0".into()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(run.len(), 6);
}

#[test]
fn ledger_summary_by_each_group() {
    let (l, _dir) = ledger();
    let entries = mixed();
    l.append(&entries).unwrap();
    let total_cost: u64 = entries.iter().map(|e| e.cost_micros).sum();
    let per_unit = [3_000, 3_000, 150, 5_000, 1, 50];
    assert_eq!(total_cost, 9 * per_unit.iter().sum::<u64>());

    for by in [
        GroupBy::Capsule,
        GroupBy::Tenant,
        GroupBy::Model,
        GroupBy::Day,
        GroupBy::Kind,
    ] {
        let rows = l.summary(by, None, None, None).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.cost_micros).sum::<u64>(),
            total_cost,
            "{by:?}"
        );
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 54, "{by:?}");
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        match by {
            GroupBy::Capsule => {
                assert_eq!(rows.len(), 2);
                // capsule 1 has acme + globex: twice capsule 2's cost, listed first.
                assert_eq!(keys[0], capsule(1));
                assert_eq!(rows[0].cost_micros, 2 * rows[1].cost_micros);
            }
            GroupBy::Tenant => {
                assert_eq!(keys, ["acme", "globex"]);
                assert_eq!(rows[1].tokens_in, 3 * (1200 + 999));
                assert_eq!(rows[1].tokens_out, 3 * 300);
                assert_eq!(rows[1].fuel, 3 * 5_000_000);
                assert_eq!(rows[1].wall_us, 3 * 42);
                assert_eq!(rows[1].fee_units, 3);
                assert_eq!(
                    rows[1].estimated,
                    entries
                        .iter()
                        .filter(|e| e.tenant == "globex" && e.estimated)
                        .count() as u64
                );
            }
            GroupBy::Model => {
                let mut sorted = keys.clone();
                sorted.sort();
                // Fees are grouped under their listing version.
                assert_eq!(sorted, ["-", "acme/x@1.0.0", "gpt-a", "gpt-b"]);
                let a = rows.iter().find(|r| r.key == "gpt-a").unwrap();
                assert_eq!((a.tokens_in, a.tokens_out, a.fuel), (9 * 1200, 9 * 300, 0));
            }
            GroupBy::Day => {
                assert_eq!(keys, ["2024-03-01", "2024-03-02", "2024-03-03"]);
                assert!(rows.iter().all(|r| r.cost_micros == total_cost / 3));
            }
            GroupBy::Kind => {
                assert_eq!(rows.len(), 5);
                let fee = rows.iter().find(|r| r.key == "marketplace-fee").unwrap();
                assert_eq!((fee.cost_micros, fee.fee_units), (9 * 50, 9));
                assert_eq!(keys[0], "fuel");
            }
        }
    }

    // Day bounds are inclusive; the tenant filter applies.
    let one = l
        .summary(
            GroupBy::Tenant,
            Some("2024-03-02"),
            Some("2024-03-02"),
            Some("acme"),
        )
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].count, 12);
    let from = l
        .summary(GroupBy::Day, Some("2024-03-02"), None, None)
        .unwrap();
    assert_eq!(from.len(), 2);
    assert!(
        l.summary(GroupBy::Day, Some("2024-3-2"), None, None)
            .is_err()
    );
    assert!(
        l.summary(GroupBy::Day, None, Some("2024-02-30"), None)
            .is_err()
    );
}

#[test]
fn ledger_bill_totals_equal_sum_of_lines() {
    let (l, _dir) = ledger();
    let mut entries = mixed();
    // A price change mid-month is a separate line; April is not on March's bill.
    entries.push(entry(
        "acme",
        "r-late",
        1,
        MAR_1 + 20 * DAY_MS,
        1,
        Kind::LlmTokensInput,
        Some("gpt-a"),
        1000,
        3_000,
    ));
    entries.push(entry(
        "acme",
        "r-apr",
        1,
        MAR_1 + 31 * DAY_MS,
        1,
        Kind::Fuel,
        None,
        7,
        1_000,
    ));
    l.append(&entries).unwrap();
    let inv = l.bill("acme", "2024-03").unwrap();
    assert_eq!(
        inv.total_micros,
        inv.lines.iter().map(|x| x.cost_micros).sum::<u64>()
    );
    let march_acme: u64 = entries
        .iter()
        .filter(|e| e.tenant == "acme" && e.day().starts_with("2024-03"))
        .map(|e| e.cost_micros)
        .sum();
    assert_eq!(inv.total_micros, march_acme);
    // 2 capsules × 6 (model, kind, price) + the new price.
    assert_eq!(inv.lines.len(), 13);
    let gpt_a_in: Vec<&InvoiceLine> = inv
        .lines
        .iter()
        .filter(|x| {
            x.capsule == capsule(1)
                && x.model.as_deref() == Some("gpt-a")
                && x.kind == Kind::LlmTokensInput
        })
        .collect();
    assert_eq!(gpt_a_in.len(), 2);
    assert_eq!(
        (gpt_a_in[0].unit_price_micros, gpt_a_in[0].quantity),
        (2_500, 3600)
    );
    assert_eq!(
        (gpt_a_in[1].unit_price_micros, gpt_a_in[1].cost_micros),
        (3_000, 3_000)
    );
    let fuel = inv.lines.iter().find(|x| x.kind == Kind::Fuel).unwrap();
    assert_eq!(fuel.model, None);

    let april = l.bill("acme", "2024-04").unwrap();
    assert_eq!(april.total_micros, 7);
    assert!(l.bill("nobody", "2024-03").unwrap().lines.is_empty());
    assert!(matches!(
        l.bill("acme", "2024-3"),
        Err(LedgerError::InvalidMonth(_))
    ));
}

#[test]
fn ledger_forecast_linear_history() {
    let (l, _dir) = ledger();
    // 40 days of cost 100_000 + 5_000·d micros, with a gap day at d = 10 for another tenant only.
    let mut entries = Vec::new();
    for d in 0..40u32 {
        let t = MAR_1 + u64::from(d) * DAY_MS + 1000;
        let cost = 100_000 + 5_000 * u64::from(d);
        // Two entries per day so the day sum is what counts.
        entries.push(entry(
            "acme",
            &format!("r{d}"),
            1,
            t,
            1,
            Kind::Fuel,
            None,
            cost / 2,
            1000,
        ));
        entries.push(entry(
            "acme",
            &format!("r{d}"),
            2,
            t + 5,
            2,
            Kind::WallTime,
            None,
            cost - cost / 2,
            1000,
        ));
    }
    entries.push(entry(
        "other",
        "x",
        1,
        MAR_1 - 50 * DAY_MS,
        1,
        Kind::Fuel,
        None,
        1,
        1000,
    ));
    l.append(&entries).unwrap();
    let last = civil::format_day(civil::day_number(MAR_1) + 39);
    let f = l.forecast_through("acme", 10, &last).unwrap();
    assert_eq!(f.daily_history.len(), 40);
    assert_eq!(f.daily_history[0], ("2024-03-01".to_string(), 100_000));
    assert_eq!(f.daily_history[39].1, 100_000 + 5_000 * 39);
    assert_eq!(f.projected_daily.len(), 10);
    let mut want_total = 0;
    for (h, got) in f.projected_daily.iter().enumerate() {
        let want = 100_000 + 5_000 * (40 + h as u64);
        want_total += want;
        assert!(got.abs_diff(want) <= want / 100, "day {h}: {got} vs {want}");
    }
    assert!(f.projected_total_micros.abs_diff(want_total) <= want_total / 100);
    assert_eq!(
        f.projected_total_micros,
        f.projected_daily.iter().sum::<u64>()
    );
    assert!(
        f.backtest_mape_percent.unwrap() < 1.0,
        "{:?}",
        f.backtest_mape_percent
    );
    assert!(f.method.contains("alpha=0.3"));

    // Missing days are zeros; short history has no backtest.
    let g = l.forecast_through("acme", 3, "2024-03-05").unwrap();
    assert_eq!(g.daily_history.len(), 5);
    assert_eq!(g.backtest_mape_percent, None);
    let gap = l.forecast_through("other", 1, "2024-01-12").unwrap();
    assert_eq!(gap.daily_history.len(), 2);
    assert_eq!(gap.daily_history[1].1, 0);
    let none = l.forecast_through("nobody", 4, &last).unwrap();
    assert!(none.daily_history.is_empty());
    assert_eq!(none.projected_daily, vec![0; 4]);
    assert!(l.forecast("acme", MAX_FORECAST_DAYS + 1).is_err());
    assert!(l.forecast("acme", 7).is_ok());
}

#[test]
fn ledger_concurrent_writer_16_threads() {
    let (l, _dir) = ledger();
    let w = l.writer().unwrap();
    const THREADS: u32 = 16;
    const PER: u32 = 150;
    let results: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let w = w.clone();
                s.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..PER {
                        let e = entry(
                            &format!("t{}", t % 4),
                            &format!("run{t}"),
                            i,
                            MAR_1 + u64::from(i) * 60_000,
                            t % 3,
                            Kind::ALL[(i % 5) as usize],
                            i.is_multiple_of(2).then_some("m"),
                            u64::from(i) + 1,
                            7,
                        );
                        let a = w.append(vec![e.clone()]).unwrap();
                        assert_eq!(a.inserted.len(), 1);
                        ids.extend(a.inserted);
                        // Every fifth charge is retried: acknowledged as a duplicate.
                        if i.is_multiple_of(5) {
                            let again = w.append(vec![e]).unwrap();
                            assert_eq!(
                                again,
                                Appended {
                                    inserted: vec![],
                                    duplicates: 1
                                }
                            );
                        }
                    }
                    ids
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<u64> = results.into_iter().flatten().collect();
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), (THREADS * PER) as usize);
    assert_eq!(unique.len(), all.len());
    let report = assert_ok(&l);
    assert_eq!(report.entries, u64::from(THREADS * PER));
    let rows = l.summary(GroupBy::Tenant, None, None, None).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.count).sum::<u64>(),
        u64::from(THREADS * PER)
    );
    drop(w);
}

#[test]
fn ledger_integrity_detects_corrupted_rollup_and_orphan_key() {
    let (l, _dir) = ledger();
    l.append(&mixed()).unwrap();
    assert_ok(&l);
    let raw = l.db.get().unwrap();
    // Overwrite one real rollup row with a wrong cost.
    let txn = raw.begin_write().unwrap();
    {
        let mut daily = txn.open_table(LEDGER_DAILY).unwrap();
        let (k, v) = {
            let (k, v) = daily.first().unwrap().unwrap();
            (OwnedDailyKey::from_row(k.value()), v.value())
        };
        daily.insert(k.as_row(), (v.0, v.1 + 1, v.2, v.3)).unwrap();
    }
    txn.commit().unwrap();
    let r = l.check_integrity().unwrap();
    assert!(!r.ok);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].contains("entries sum to"), "{:?}", r.problems);

    // A rollup row no entry explains, and a key without an entry.
    let txn = raw.begin_write().unwrap();
    {
        let mut daily = txn.open_table(LEDGER_DAILY).unwrap();
        daily
            .insert(("2030-01-01", "ghost", "c", "-", "fuel", 1), (1, 1, 1, 0))
            .unwrap();
        let mut keys = txn.open_table(LEDGER_KEYS).unwrap();
        keys.insert("ghost/n/0/0/fuel", 999_999).unwrap();
    }
    txn.commit().unwrap();
    let r = l.check_integrity().unwrap();
    assert!(!r.ok);
    assert_eq!(r.keys, r.entries + 1);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("no entry has that key")),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("idempotency keys for")),
        "{:?}",
        r.problems
    );
}

#[test]
fn ledger_empty_database_reads() {
    let (l, _dir) = ledger();
    assert!(l.ls(&Filter::default()).unwrap().is_empty());
    assert!(
        l.summary(GroupBy::Capsule, None, None, None)
            .unwrap()
            .is_empty()
    );
    assert_eq!(l.bill("acme", "2024-03").unwrap().total_micros, 0);
    let r = assert_ok(&l);
    assert_eq!((r.entries, r.keys, r.rollup_rows), (0, 0, 0));
}

#[test]
fn run_and_tenant_lookups_use_the_indexes_and_old_databases_get_them_built() {
    let (l, dir) = ledger();
    let batch = mixed();
    l.append(&batch).unwrap();
    // Simulate a database written before the indexes existed: drop them
    // and the marker.
    {
        let db = l.db.get().unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(LEDGER_TENANT_STARTS).unwrap();
        txn.delete_table(LEDGER_TENANT_STRETCHES).unwrap();
        txn.delete_table(LEDGER_META).unwrap();
        txn.commit().unwrap();
    }
    drop(l);
    let l = Ledger::open(&DataDir::new(dir.path()));
    let want = |f: &dyn Fn(&Entry) -> bool| batch.iter().filter(|e| f(e)).count();
    let run = batch[4].run.clone();
    let got = l
        .ls(&Filter {
            run: Some(run.clone()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(got.len(), want(&|e| e.run == run));
    assert!(got.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    // Written after the migration: indexed with the entry.
    let mut late = batch[4].clone();
    late.seq = 999;
    l.append(std::slice::from_ref(&late)).unwrap();
    let got = l
        .ls(&Filter {
            tenant: Some("globex".into()),
            limit: Some(2),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.tenant == "globex"));
    let got = l
        .ls(&Filter {
            run: Some(run.clone()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(got.len(), want(&|e| e.run == run) + 1);
    assert_eq!(got[0].seq, 999);
    assert!(
        l.ls(&Filter {
            run: Some("no-such-run".into()),
            ..Filter::default()
        })
        .unwrap()
        .is_empty()
    );
    let report = l.check_integrity().unwrap();
    assert!(report.ok, "{:?}", report.problems);
}

#[test]
fn each_fee_has_its_split_written_with_it_and_the_check_finds_tampering() {
    let (l, _dir) = ledger();
    let fee = |run: &str, cost: u64| {
        entry(
            "buyer",
            run,
            0,
            MAR_1,
            1,
            Kind::MarketplaceFee,
            None,
            1,
            cost * 1000,
        )
    };
    let entries = vec![fee("r1", 999), fee("r2", 1)];
    let a = l.append(&entries).unwrap();
    assert_eq!(a.inserted.len(), 2);
    // A replay writes neither the entry nor a second split.
    let again = l.append(&entries).unwrap();
    assert_eq!((again.inserted.len(), again.duplicates), (0, 2));
    let fees = l.fees_of_month("2024-03").unwrap();
    let splits: Vec<(u64, u64, u64)> = fees
        .iter()
        .map(|(s, _)| (s.fee_micros, s.author_micros, s.platform_micros))
        .collect();
    assert_eq!(splits, [(999, 799, 200), (1, 0, 1)]);
    assert_eq!(fees[0].0.author, "acme");
    assert_eq!(fees[0].0.listing, "acme/x");
    assert_eq!(fees[0].0.version, "1.0.0");
    assert!(l.fees_of_month("2024-04").unwrap().is_empty());
    assert_eq!(l.all_fees().unwrap().len(), 2);
    assert_ok(&l);

    // A fee that does not name its listing and share is refused, whole batch.
    let mut untagged = fee("r3", 5);
    untagged.model = None;
    assert!(matches!(
        l.append(&[fee("r4", 5), untagged]),
        Err(LedgerError::InvalidEntry { index: 1, .. })
    ));
    assert_eq!(
        l.all_fees().unwrap().len(),
        2,
        "nothing of the batch was written"
    );

    // Tampering: a split that does not add up, a missing one, an orphan.
    let raw = l.db.get().unwrap();
    let id = a.inserted[0];
    let txn = raw.begin_write().unwrap();
    {
        let mut t = txn.open_table(fee::FEE_SPLITS).unwrap();
        t.insert(("2024-03", id), ("acme", "acme/x", "1.0.0", 999, 800, 200))
            .unwrap();
    }
    txn.commit().unwrap();
    let r = l.check_integrity().unwrap();
    assert!(!r.ok);
    assert!(
        matches!(r.fee_problems[..], [FeeProblem::SplitMismatch { id: i, author: 800, .. }] if i == id),
        "{:?}",
        r.fee_problems
    );
    let txn = raw.begin_write().unwrap();
    {
        let mut t = txn.open_table(fee::FEE_SPLITS).unwrap();
        t.remove(("2024-03", id)).unwrap();
        t.insert(("2024-03", 777_777), ("acme", "acme/x", "1.0.0", 1, 0, 1))
            .unwrap();
    }
    txn.commit().unwrap();
    let r = l.check_integrity().unwrap();
    assert_eq!(
        r.fee_problems,
        [
            FeeProblem::OrphanSplit { id: 777_777 },
            FeeProblem::MissingSplit { id }
        ]
    );
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
}

#[test]
fn tenant_stretches_cover_interleaved_tenants_and_runs_whose_ids_share_a_prefix() {
    let (l, _dir) = ledger();
    // One group commit of interleaved tenants, and run ids where one is a
    // prefix of another ("r" and "r/x", "r-1").
    let e = |tenant: &str, run: &str, seq: u32| {
        entry(tenant, run, seq, MAR_1, 1, Kind::Fuel, None, 10, 1)
    };
    let batch = [
        vec![e("acme", "r", 0), e("acme", "r", 1)],
        vec![e("acme", "r/x", 0)],
        vec![e("globex", "r-1", 0), e("globex", "r-1", 1)],
        vec![e("acme", "r", 2)],
    ];
    let requests: Vec<Charge<'_>> = batch.iter().map(|b| b.as_slice().into()).collect();
    write_batch(&l.db, &requests).unwrap();
    // A replay charges nothing and adds no span.
    write_batch(&l.db, &requests).unwrap();
    let starts = {
        let txn = l.read().unwrap();
        let t = txn.open_table(LEDGER_TENANT_STARTS).unwrap();
        t.iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value(), v.value().to_owned())
            })
            .collect::<Vec<_>>()
    };
    // Rows only where the tenant changes.
    assert_eq!(
        starts,
        vec![
            (1, "acme".to_owned()),
            (4, "globex".to_owned()),
            (6, "acme".to_owned()),
        ]
    );
    // More of the same tenant later extends its last stretch, writing nothing.
    l.append(&[e("acme", "r", 3)]).unwrap();
    let ls = |run: Option<&str>, tenant: Option<&str>, limit: Option<usize>| {
        l.ls(&Filter {
            run: run.map(Into::into),
            tenant: tenant.map(Into::into),
            limit,
            ..Filter::default()
        })
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect::<Vec<_>>()
    };
    assert_eq!(ls(Some("r"), None, None), vec![7, 6, 2, 1]);
    assert_eq!(ls(Some("r/x"), None, None), vec![3]);
    assert_eq!(ls(Some("r-1"), None, None), vec![5, 4]);
    assert_eq!(ls(Some("r"), None, Some(2)), vec![7, 6]);
    assert_eq!(ls(None, Some("acme"), None), vec![7, 6, 3, 2, 1]);
    assert_eq!(ls(None, Some("acme"), Some(3)), vec![7, 6, 3]);
    assert_eq!(ls(None, Some("globex"), None), vec![5, 4]);
    assert_eq!(ls(Some("r"), Some("globex"), None), Vec::<u64>::new());
    assert!(ls(None, Some("nobody"), None).is_empty());
    {
        let txn = l.read().unwrap();
        assert_eq!(
            txn.open_table(LEDGER_TENANT_STARTS).unwrap().len().unwrap(),
            3
        );
        assert_eq!(
            txn.open_table(LEDGER_TENANT_STRETCHES)
                .unwrap()
                .len()
                .unwrap(),
            3
        );
    }
    assert_ok(&l);
}

#[test]
fn a_version_1_index_is_replaced_by_stretches_and_the_check_finds_a_wrong_start() {
    let (l, dir) = ledger();
    let batch = mixed();
    l.append(&batch).unwrap();
    // Simulate a database indexed by version 1: per-entry rows, marker 1.
    {
        let db = l.db.get().unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(LEDGER_TENANT_STARTS).unwrap();
        txn.delete_table(LEDGER_TENANT_STRETCHES).unwrap();
        {
            let mut by_run = txn.open_table(LEDGER_BY_RUN_V1).unwrap();
            let mut by_tenant = txn.open_table(LEDGER_BY_TENANT_V1).unwrap();
            for e in l.ls(&Filter::default()).unwrap() {
                by_run.insert((e.run.as_str(), e.id), ()).unwrap();
                by_tenant.insert((e.tenant.as_str(), e.id), ()).unwrap();
            }
            txn.open_table(LEDGER_META)
                .unwrap()
                .insert("indexes", 1)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    drop(l);
    let l = Ledger::open(&DataDir::new(dir.path()));
    let globex = l
        .ls(&Filter {
            tenant: Some("globex".into()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(
        globex.len(),
        batch.iter().filter(|e| e.tenant == "globex").count()
    );
    assert!(globex.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    {
        let txn = l.read().unwrap();
        for gone in [LEDGER_BY_RUN_V1, LEDGER_BY_TENANT_V1] {
            assert!(matches!(
                txn.open_table(gone),
                Err(redb::TableError::TableDoesNotExist(_))
            ));
        }
        let meta = txn.open_table(LEDGER_META).unwrap();
        assert_eq!(
            meta.get("indexes").unwrap().map(|g| g.value()),
            Some(INDEX_VERSION)
        );
    }
    assert_ok(&l);
    // Tampering: hand one tenant's first stretch to another tenant.
    {
        let db = l.db.get().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut starts = txn.open_table(LEDGER_TENANT_STARTS).unwrap();
            let first = starts.first().unwrap().unwrap().0.value();
            starts.insert(first, "mallory").unwrap();
        }
        txn.commit().unwrap();
    }
    let r = l.check_integrity().unwrap();
    assert!(!r.ok);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("is not in that tenant's index")),
        "{:?}",
        r.problems
    );
}
