//! Analytics tests against a real redb file in a temp directory, through
//! the real ledger write path.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::{
    analytics::event::MAX_CAPSULE_PAYLOAD_BYTES,
    ledger::{Entry, FailedCall, Kind, Ledger},
    store::DataDir,
};

/// 2024-03-01T00:00:00Z.
const MAR_1: u64 = 1_709_251_200_000;
const HOUR: u64 = 3_600_000;

fn site(run: &str) -> Site {
    Site {
        run: run.into(),
        node: "n".into(),
        attempt: 0,
        capsule_digest: format!("sha256:{:064x}", 1),
    }
}

/// One event of every type.
fn samples() -> Vec<Event> {
    let t = "acme";
    let at = MAR_1;
    vec![
        Event::new(
            "r1",
            t,
            at,
            Body::RunStarted {
                run: "r1".into(),
                dag: Some("etl".into()),
            },
        ),
        Event::new(
            "r1",
            t,
            at,
            Body::RunFinished {
                run: "r1".into(),
                outcome: "succeeded".into(),
            },
        ),
        Event::new(
            "r1/n/0",
            t,
            at,
            Body::NodeStarted {
                run: "r1".into(),
                node: "n".into(),
                attempt: 0,
            },
        ),
        Event::new(
            "r1/n/0",
            t,
            at,
            Body::NodeSucceeded {
                run: "r1".into(),
                node: "n".into(),
                attempt: 0,
            },
        ),
        Event::new(
            "r1/n/1",
            t,
            at,
            Body::NodeFailed {
                run: "r1".into(),
                node: "n".into(),
                attempt: 1,
                failure_class: "trap".into(),
            },
        ),
        Event::new(
            "r1/n/0/0",
            t,
            at,
            Body::Call {
                site: site("r1"),
                capsule_name: Some("calc".into()),
                fuel: Some(1000),
                wall_us: 250,
                peak_memory_bytes: Some(65536),
                cost_micros: 7,
            },
        ),
        Event::new(
            "r1/n/1",
            t,
            at,
            Body::CallFailed {
                site: site("r1"),
                failure_class: "out-of-fuel".into(),
            },
        ),
        Event::new(
            "r1/n/0/1/llm-tokens-input",
            t,
            at,
            Body::LlmTokens {
                site: site("r1"),
                direction: "input".into(),
                tokens: 120,
                provider: Some("openai".into()),
                model: Some("gpt-x".into()),
                cost_micros: 60,
                estimated: false,
            },
        ),
        Event::new(
            "r1/gate",
            t,
            at,
            Body::GateVerdict {
                run: "r1".into(),
                node: "gate".into(),
                score: Some(0.8),
                approved: true,
            },
        ),
        Event::new(
            "r1/tenant",
            t,
            at,
            Body::BudgetExceeded {
                scope: "tenant:acme".into(),
                run: Some("r1".into()),
                node: Some("fetch".into()),
                attempt: Some(0),
                unit: "micros".into(),
                limit: 1000,
                spent: 990,
                held: 0,
                needed: 20,
            },
        ),
        Event::new(
            "acme/x@1.0.0",
            t,
            at,
            Body::MarketInstall {
                listing: "acme/x".into(),
                version: "1.0.0".into(),
                capsule_digest: site("r1").capsule_digest,
            },
        ),
        Event::new(
            "r1/n/0/2/marketplace-fee",
            t,
            at,
            Body::MarketFee {
                site: site("r1"),
                units: 1,
                cost_micros: 500,
            },
        ),
        Event::capsule_event(
            "r1/n/0/0",
            t,
            at,
            &site("r1").capsule_digest,
            "calc",
            "computed",
            json!({"x": 1}),
        ),
    ]
}

fn schema_validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(&event::json_schema()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn committed_json_schema_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/analytics/events.schema.json");
    let generated = event::json_schema();
    if std::env::var_os("SOMA_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/analytics/events.schema.json is out of date with the event types; regenerate it with \
         `SOMA_BLESS=1 cargo test --release -p soma-runtime --lib analytics` and commit it"
    );
}

#[test]
fn a_sample_of_every_event_type_validates_against_the_schema_and_round_trips() {
    let validator = schema_validator();
    let samples = samples();
    let mut kinds: Vec<&str> = samples.iter().map(|e| e.body.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), 13, "one sample per event type: {kinds:?}");
    for e in &samples {
        let value = serde_json::to_value(e).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
        assert_eq!(value["type"], e.body.kind());
        assert_eq!(value["v"], SCHEMA_VERSION);
        assert!(value["id"].as_str().unwrap().starts_with(e.body.kind()));
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(&back, e);
    }
    // The schema refuses what is not an event.
    let mut bad = serde_json::to_value(&samples[5]).unwrap();
    bad.as_object_mut().unwrap().remove("tenant");
    assert!(
        !validator.is_valid(&bad),
        "an event without a tenant is refused"
    );
    let mut bad = serde_json::to_value(&samples[5]).unwrap();
    bad["type"] = json!("no-such-type");
    assert!(!validator.is_valid(&bad), "an unknown type is refused");
    let mut bad = serde_json::to_value(&samples[5]).unwrap();
    bad["wall_us"] = json!("fast");
    assert!(!validator.is_valid(&bad), "a mistyped field is refused");
}

#[test]
fn capsule_events_are_capped() {
    let big = json!({"blob": "x".repeat(MAX_CAPSULE_PAYLOAD_BYTES)});
    let name = "é".repeat(event::MAX_CAPSULE_NAME_BYTES);
    let e = Event::capsule_event("k", "t", 1, "sha256:0", &name, "n", big);
    let Body::CapsuleEvent {
        namespace, payload, ..
    } = &e.body
    else {
        panic!("not a capsule event")
    };
    assert!(namespace.len() <= event::MAX_CAPSULE_NAME_BYTES && !namespace.is_empty());
    assert!(payload["truncated"].as_u64().unwrap() > MAX_CAPSULE_PAYLOAD_BYTES as u64);
    let small = Event::capsule_event("k", "t", 1, "sha256:0", "ns", "n", json!({"a": 1}));
    let Body::CapsuleEvent { payload, .. } = &small.body else {
        panic!()
    };
    assert_eq!(payload, &json!({"a": 1}));
}

fn call_entries(tenant: &str, run: &str, cap: u32, time_ms: u64, wall_us: u64) -> Vec<Entry> {
    let base = |kind, quantity, seq| Entry {
        id: 0,
        time_ms,
        tenant: tenant.into(),
        run: run.into(),
        node: "n".into(),
        attempt: 0,
        seq,
        capsule: format!("sha256:{cap:064x}"),
        kind,
        quantity,
        unit_price_micros: 1000,
        cost_micros: quantity,
        provider: None,
        model: None,
        estimated: false,
    };
    let mut input = base(Kind::LlmTokensInput, 40, 1);
    input.model = Some("gpt-x".into());
    input.provider = Some("openai".into());
    let mut output = base(Kind::LlmTokensOutput, 10, 1);
    output.model = Some("gpt-x".into());
    output.provider = Some("openai".into());
    vec![
        base(Kind::WallTime, wall_us, 0),
        base(Kind::Fuel, 500, 0),
        input,
        output,
    ]
}

fn pending(db: &redb::Database) -> Vec<Event> {
    use redb::{ReadableDatabase, ReadableTable};
    let txn = db.begin_read().unwrap();
    let Ok(t) = txn.open_table(outbox::OUTBOX) else {
        return Vec::new();
    };
    t.iter()
        .unwrap()
        .map(|r| serde_json::from_slice(r.unwrap().1.value()).unwrap())
        .collect()
}

#[test]
fn ledger_appends_write_their_events_once_in_the_same_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    let appended = ledger
        .append(&call_entries("acme", "r1", 1, MAR_1, 300))
        .unwrap();
    assert_eq!(appended.inserted.len(), 4);
    let db = data.database().get().unwrap();
    let events = pending(&db);
    let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(kinds, ["call", "llm-tokens", "llm-tokens"]);
    let Body::Call {
        fuel,
        wall_us,
        cost_micros,
        site,
        ..
    } = &events[0].body
    else {
        panic!("{events:?}")
    };
    assert_eq!((*fuel, *wall_us, *cost_micros), (Some(500), 300, 800));
    assert_eq!(site.run, "r1");
    assert_eq!(events[0].id, "call:r1/n/0/0");
    assert_eq!(events[1].id, "llm-tokens:r1/n/0/1/llm-tokens-input");
    // A replay charges nothing and makes no event.
    let again = ledger
        .append(&call_entries("acme", "r1", 1, MAR_1, 300))
        .unwrap();
    assert_eq!(again.duplicates, 4);
    assert_eq!(pending(&db).len(), 3);
    // A failure is an event too, once per attempt.
    let failed = FailedCall {
        tenant: "acme",
        class: "trap",
    };
    let cap = format!("sha256:{:064x}", 1);
    assert!(
        ledger
            .record_call_failure("r1", "n", 0, &cap, MAR_1, &failed)
            .unwrap()
    );
    assert!(
        !ledger
            .record_call_failure("r1", "n", 0, &cap, MAR_1, &failed)
            .unwrap()
    );
    let events = pending(&db);
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].id, "call-failed:r1/n/0");
    // Ids are unique.
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[test]
fn a_calls_facts_name_it_and_its_emitted_events_go_out_once_with_its_charge() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    let entries = call_entries("acme", "r2", 1, MAR_1, 300);
    let facts = CallFacts {
        capsule_name: Some("notebook".into()),
        peak_memory_bytes: Some(65_536),
        emitted: vec![
            ("progress".into(), json!({"done": 1, "of": 2})),
            ("dump".into(), json!("x".repeat(MAX_CAPSULE_PAYLOAD_BYTES))),
        ],
    };
    let writer = ledger.writer().unwrap();
    let first = writer
        .append_call(entries.clone(), Some(Box::new(facts.clone())))
        .unwrap();
    assert_eq!(first.inserted.len(), 4);
    let db = data.database().get().unwrap();
    let events = pending(&db);
    let kinds: Vec<&str> = events.iter().map(|e| e.body.kind()).collect();
    assert_eq!(
        kinds,
        [
            "call",
            "capsule-event",
            "capsule-event",
            "llm-tokens",
            "llm-tokens"
        ]
    );
    let Body::Call {
        capsule_name,
        peak_memory_bytes,
        ..
    } = &events[0].body
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (capsule_name.as_deref(), *peak_memory_bytes),
        (Some("notebook"), Some(65_536))
    );
    assert_eq!(events[1].id, "capsule-event:r2/n/0/0/0");
    assert_eq!(events[2].id, "capsule-event:r2/n/0/0/1");
    let Body::CapsuleEvent {
        capsule_digest,
        namespace,
        name,
        payload,
    } = &events[1].body
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (capsule_digest.as_str(), namespace.as_str(), name.as_str()),
        (entries[0].capsule.as_str(), "notebook", "progress")
    );
    assert_eq!(payload, &json!({"done": 1, "of": 2}));
    let Body::CapsuleEvent { payload, .. } = &events[2].body else {
        panic!("{events:?}")
    };
    assert!(payload["truncated"].as_u64().unwrap() > MAX_CAPSULE_PAYLOAD_BYTES as u64);
    assert_eq!(events[1].tenant, "acme");
    // The replayed charge (a retried commit) writes neither the call nor
    // its capsule's events again.
    let again = writer.append_call(entries, Some(Box::new(facts))).unwrap();
    assert_eq!(again.duplicates, 4);
    assert_eq!(pending(&db).len(), 5);
    // Events without entries (a budget's refusal) share the group commit.
    let refusal = samples()
        .into_iter()
        .find(|e| e.body.kind() == "budget-exceeded")
        .unwrap();
    writer.record(vec![refusal.clone()]);
    // `record` returns at once; an append after it is committed after it.
    writer
        .append(call_entries("acme", "r4", 1, MAR_1, 300))
        .unwrap();
    let events = pending(&db);
    assert!(events.contains(&refusal), "{events:?}");
    writer.close();
}

#[test]
fn a_refused_reservation_says_which_budget_in_which_unit() {
    use crate::budget::{Budgets, Limit, Scope, Unit};
    let b = Budgets::default();
    let node = Scope::Node("r/n".into());
    b.set_limit(
        node.clone(),
        Limit {
            tokens: Some(10),
            micros: None,
        },
    );
    let r = b.reserve(std::slice::from_ref(&node), 11, 0).unwrap_err();
    assert_eq!(
        (r.scope, r.unit, r.limit, r.spent, r.held, r.needed),
        (node, Unit::Tokens, 10, 0, 0, 11)
    );
}

#[test]
fn the_shipper_folds_the_outbox_into_rollups_that_keep_tenants_apart() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    // acme: 10 calls of capsule 1 (100..1000 µs) and 2 of capsule 2; globex: 5 of capsule 1.
    for i in 0..10u64 {
        ledger
            .append(&call_entries(
                "acme",
                &format!("a{i}"),
                1,
                MAR_1 + i * 1000,
                100 * (i + 1),
            ))
            .unwrap();
    }
    for i in 0..2u64 {
        ledger
            .append(&call_entries("acme", &format!("b{i}"), 2, MAR_1 + HOUR, 50))
            .unwrap();
    }
    for i in 0..5u64 {
        ledger
            .append(&call_entries("globex", &format!("g{i}"), 1, MAR_1, 5000))
            .unwrap();
    }
    let cap1 = format!("sha256:{:064x}", 1);
    ledger
        .record_call_failure(
            "a0",
            "n",
            0,
            &cap1,
            MAR_1,
            &FailedCall {
                tenant: "acme",
                class: "trap",
            },
        )
        .unwrap();
    let db = data.database().get().unwrap();
    assert_eq!(
        ship_all(&db, 7).unwrap(),
        17 * 3 + 1,
        "every event shipped, in batches of 7"
    );
    assert!(
        pending(&db).is_empty(),
        "shipping deletes what it folded in"
    );
    assert_eq!(ship_once(&db, 7).unwrap(), 0);
    let q = |tenant: Option<&str>, by: Dim| Query {
        tenant: tenant.map(Into::into),
        by,
        bucket: Gran::Hour,
        since_ms: MAR_1,
        until_ms: MAR_1 + 2 * HOUR,
        series: false,
        top: None,
    };
    let acme = rollup::query(&db, &q(Some("acme"), Dim::All)).unwrap();
    assert_eq!(acme.len(), 1);
    assert_eq!((acme[0].calls, acme[0].errors), (12, 1));
    assert_eq!((acme[0].tokens_in, acme[0].tokens_out), (12 * 40, 12 * 10));
    let globex = rollup::query(&db, &q(Some("globex"), Dim::All)).unwrap();
    assert_eq!((globex[0].calls, globex[0].errors), (5, 0));
    let everyone = rollup::query(&db, &q(None, Dim::All)).unwrap();
    assert_eq!(everyone[0].calls, 17);
    assert_eq!(
        everyone[0].cost_micros,
        acme[0].cost_micros + globex[0].cost_micros
    );
    // By capsule, top first; percentiles from the histogram.
    let by_capsule = rollup::query(&db, &q(Some("acme"), Dim::Capsule)).unwrap();
    assert_eq!(by_capsule.len(), 2);
    assert_eq!(by_capsule[0].key, cap1);
    assert_eq!(by_capsule[0].calls, 10);
    let p50 = by_capsule[0].p50_us.unwrap();
    assert!(
        (500..=600).contains(&p50),
        "p50 of 100..1000 µs is in 500's bucket: {p50}"
    );
    let p99 = by_capsule[0].p99_us.unwrap();
    assert!((1000..=1200).contains(&p99), "{p99}");
    let top = rollup::query(
        &db,
        &Query {
            top: Some(1),
            ..q(Some("acme"), Dim::Capsule)
        },
    )
    .unwrap();
    assert_eq!(top.len(), 1);
    // globex's capsule-1 numbers are not in acme's.
    assert!(by_capsule.iter().all(|r| r.p99_us.unwrap() < 5000));
    let by_model = rollup::query(&db, &q(Some("acme"), Dim::Model)).unwrap();
    assert_eq!(by_model[0].key, "gpt-x");
    let by_class = rollup::query(&db, &q(Some("acme"), Dim::Class)).unwrap();
    assert_eq!((by_class[0].key.as_str(), by_class[0].errors), ("trap", 1));
    assert!(
        rollup::query(&db, &q(Some("globex"), Dim::Class))
            .unwrap()
            .is_empty()
    );
    // A series has one row per hour.
    let series = rollup::query(
        &db,
        &Query {
            series: true,
            ..q(Some("acme"), Dim::All)
        },
    )
    .unwrap();
    let buckets: Vec<_> = series
        .iter()
        .map(|r| (r.bucket_ms.unwrap(), r.calls))
        .collect();
    assert_eq!(buckets, [(MAR_1, 10), (MAR_1 + HOUR, 2)]);
    // Minutes and days agree with hours.
    let days = rollup::query(
        &db,
        &Query {
            bucket: Gran::Day,
            ..q(None, Dim::All)
        },
    )
    .unwrap();
    assert_eq!(days[0].calls, 17);
    let minutes = rollup::query(
        &db,
        &Query {
            bucket: Gran::Minute,
            ..q(None, Dim::All)
        },
    )
    .unwrap();
    assert_eq!(minutes[0].calls, 17);
    // Bad windows are refused with what to change.
    let err = rollup::query(
        &db,
        &Query {
            until_ms: MAR_1,
            ..q(None, Dim::All)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("until"), "{err}");
    let err = rollup::query(
        &db,
        &Query {
            bucket: Gran::Minute,
            until_ms: MAR_1 + 365 * 24 * HOUR,
            ..q(None, Dim::All)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("wider bucket"), "{err}");
}

#[test]
fn a_full_outbox_drops_the_oldest_or_pauses_admission() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    let db = data.database().get().unwrap();
    outbox::configure(&db, 5, FullPolicy::DropOldest, true).unwrap();
    for i in 0..3u64 {
        ledger
            .append(&call_entries("acme", &format!("r{i}"), 1, MAR_1, 10))
            .unwrap();
    }
    let s = outbox::status(&db).unwrap();
    assert_eq!((s.pending, s.max, s.dropped, s.paused), (5, 5, 4, false));
    let ids: Vec<String> = pending(&db).into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids[0], "llm-tokens:r1/n/0/1/llm-tokens-input",
        "the oldest went first"
    );
    assert_eq!(ids[4], "llm-tokens:r2/n/0/1/llm-tokens-output");

    outbox::configure(&db, 6, FullPolicy::PauseAdmission, true).unwrap();
    ledger
        .append(&call_entries("acme", "r3", 1, MAR_1, 10))
        .unwrap();
    let s = outbox::status(&db).unwrap();
    assert_eq!(
        (s.pending, s.dropped, s.paused),
        (8, 4, true),
        "nothing lost, admission paused"
    );
    ship_all(&db, 100).unwrap();
    let s = outbox::status(&db).unwrap();
    assert_eq!((s.pending, s.paused), (0, false));
    // Turned off: charges are written, events are not.
    outbox::configure(&db, 6, FullPolicy::DropOldest, false).unwrap();
    let appended = ledger
        .append(&call_entries("acme", "r4", 1, MAR_1, 10))
        .unwrap();
    assert_eq!(appended.inserted.len(), 4);
    assert_eq!(outbox::status(&db).unwrap().pending, 0);
}

#[test]
fn config_refuses_zero_bounds() {
    assert!(AnalyticsConfig::default().check().is_ok());
    let zero = AnalyticsConfig {
        max_outbox_events: 0,
        ..AnalyticsConfig::default()
    };
    assert!(zero.check().unwrap_err().contains("max_outbox_events"));
    let parsed: AnalyticsConfig =
        toml::from_str("max_outbox_events = 10\nwhen_full = \"pause-admission\"").unwrap();
    assert_eq!(parsed.when_full, FullPolicy::PauseAdmission);
    assert!(toml::from_str::<AnalyticsConfig>("when_full = \"explode\"").is_err());
}

#[test]
fn rows_past_their_retention_are_deleted_per_bucket_width() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    const DAY: u64 = 24 * HOUR;
    // Calls 10 days ago and today, for two tenants (one a prefix of the other).
    for (tenant, run, at) in [
        ("acme", "old", MAR_1),
        ("acme", "new", MAR_1 + 10 * DAY),
        ("acme2", "old2", MAR_1),
        ("acme2", "new2", MAR_1 + 10 * DAY),
    ] {
        ledger
            .append(&call_entries(tenant, run, 1, at, 100))
            .unwrap();
    }
    let db = data.database().get().unwrap();
    ship_all(&db, 100).unwrap();
    let calls = |tenant: Option<&str>, bucket: Gran, since: u64, until: u64| -> u64 {
        rollup::query(
            &db,
            &Query {
                tenant: tenant.map(Into::into),
                by: Dim::All,
                bucket,
                since_ms: since,
                until_ms: until,
                series: false,
                top: None,
            },
        )
        .unwrap()
        .iter()
        .map(|r| r.calls)
        .sum()
    };
    let old = (MAR_1, MAR_1 + DAY);
    assert_eq!(calls(Some("acme"), Gran::Minute, old.0, old.1), 1);
    // Minute rows kept 7 days, hour rows 90, day rows 800: at MAR_1 + 10
    // days the old minute rows go, everything else stays.
    let config = AnalyticsConfig::default();
    prune_once(&db, MAR_1 + 10 * DAY, config.retention_ms()).unwrap();
    for tenant in [Some("acme"), Some("acme2"), None] {
        assert_eq!(calls(tenant, Gran::Minute, old.0, old.1), 0, "{tenant:?}");
        assert!(calls(tenant, Gran::Hour, old.0, old.1) >= 1, "{tenant:?}");
        assert!(calls(tenant, Gran::Day, old.0, old.1) >= 1, "{tenant:?}");
        let new = (MAR_1 + 10 * DAY, MAR_1 + 11 * DAY);
        assert!(calls(tenant, Gran::Minute, new.0, new.1) >= 1, "{tenant:?}");
    }
    // 100 days on, the old hour rows go too; the day rows stay.
    prune_once(&db, MAR_1 + 100 * DAY, config.retention_ms()).unwrap();
    assert_eq!(calls(Some("acme"), Gran::Hour, old.0, old.1), 0);
    assert_eq!(calls(Some("acme"), Gran::Day, old.0, old.1), 1);
    assert!(
        AnalyticsConfig {
            minute_retention_days: 0,
            ..AnalyticsConfig::default()
        }
        .check()
        .is_err()
    );
}

fn seqs(db: &redb::Database, sink: &str) -> Vec<u64> {
    outbox::pending_for(db, sink, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|h| h.seq)
        .collect()
}

#[test]
fn every_sink_has_its_own_cursor_and_events_go_once_all_have_passed() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    let db = data.database().get().unwrap();
    outbox::register_sinks(&db, &["kafka", "clickhouse"]).unwrap();
    ledger
        .append(&call_entries("acme", "r1", 1, MAR_1, 10))
        .unwrap();
    assert_eq!(ship_all(&db, 100).unwrap(), 3);
    assert_eq!(pending(&db).len(), 3, "the external sinks still need them");
    assert_eq!(seqs(&db, "kafka"), [1, 2, 3]);
    assert!(seqs(&db, "rollup").is_empty());
    outbox::advance(&db, "kafka", 3).unwrap();
    outbox::advance(&db, "clickhouse", 1).unwrap();
    assert_eq!(seqs(&db, "clickhouse"), [2, 3]);
    assert_eq!(pending(&db).len(), 2, "1 was everyone's");
    let s = outbox::status(&db).unwrap();
    let lag: Vec<(String, u64)> = s.sinks.iter().map(|l| (l.name.clone(), l.lag)).collect();
    assert_eq!(
        lag,
        [
            ("clickhouse".to_owned(), 2),
            ("kafka".to_owned(), 0),
            ("rollup".to_owned(), 0)
        ]
    );
    // A cursor never goes back.
    outbox::advance(&db, "kafka", 1).unwrap();
    assert!(seqs(&db, "kafka").is_empty());
    outbox::advance(&db, "clickhouse", 3).unwrap();
    assert!(pending(&db).is_empty());
    // Seqs never repeat once the outbox is empty: the cursors stay valid.
    ledger
        .append(&call_entries("acme", "r2", 1, MAR_1, 10))
        .unwrap();
    assert_eq!(seqs(&db, "kafka"), [4, 5, 6]);
    // A sink no longer configured holds nothing.
    outbox::register_sinks(&db, &["kafka"]).unwrap();
    ship_all(&db, 100).unwrap();
    outbox::advance(&db, "kafka", 6).unwrap();
    assert!(pending(&db).is_empty());
    let names: Vec<String> = outbox::status(&db)
        .unwrap()
        .sinks
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["kafka", "rollup"]);
    // An unregistered sink's advance does not bring it back.
    outbox::advance(&db, "clickhouse", 6).unwrap();
    assert_eq!(outbox::status(&db).unwrap().sinks.len(), 2);
}

#[test]
fn a_sink_that_is_down_holds_events_up_to_the_bound_then_skips_the_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    let db = data.database().get().unwrap();
    outbox::configure(&db, 6, FullPolicy::DropOldest, true).unwrap();
    outbox::register_sinks(&db, &["kafka"]).unwrap();
    for i in 0..3u64 {
        ledger
            .append(&call_entries("acme", &format!("r{i}"), 1, MAR_1, 10))
            .unwrap();
        ship_all(&db, 100).unwrap();
    }
    let s = outbox::status(&db).unwrap();
    assert_eq!(
        (s.pending, s.dropped),
        (6, 3),
        "kafka's events wait, bounded"
    );
    assert_eq!(seqs(&db, "kafka"), [4, 5, 6, 7, 8, 9]);
    assert!(
        seqs(&db, "rollup").is_empty(),
        "the rollups are not held up"
    );
}

/// A sink that fails its first `fail` deliveries, then records what it gets.
struct Flaky {
    fail: usize,
    got: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl sink::Sink for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn pace(&self) -> sink::Pace {
        sink::Pace {
            max: 3,
            min: 1,
            linger: Duration::ZERO,
        }
    }
    fn deliver(&mut self, events: &[outbox::Held]) -> Result<(), sink::SinkError> {
        if self.fail > 0 {
            self.fail -= 1;
            return Err(sink::SinkError::ClickHouse {
                status: 503,
                body: "down".into(),
            });
        }
        self.got
            .lock()
            .unwrap()
            .extend(events.iter().map(|h| h.seq));
        Ok(())
    }
}

#[test]
fn a_sink_thread_retries_a_failed_delivery_and_delivers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    let db = data.database().clone();
    outbox::register_sinks(&db.get().unwrap(), &["flaky"]).unwrap();
    ledger
        .append(&call_entries("acme", "r1", 1, MAR_1, 10))
        .unwrap();
    ledger
        .append(&call_entries("beta", "r2", 1, MAR_1, 10))
        .unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = sink::spawn(
        db.clone(),
        Box::new(Flaky {
            fail: 2,
            got: got.clone(),
        }),
        Duration::from_millis(5),
    )
    .unwrap();
    let start = std::time::Instant::now();
    while got.lock().unwrap().len() < 6 && start.elapsed().as_secs() < 20 {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*got.lock().unwrap(), (1..=6).collect::<Vec<u64>>());
    assert_eq!(running.stats.failures.load(Ordering::Relaxed), 2);
    assert_eq!(running.stats.delivered.load(Ordering::Relaxed), 6);
    assert_eq!(
        running.stats.batches.load(Ordering::Relaxed),
        2,
        "at most 3 a batch"
    );
    drop(running);
    let d = db.get().unwrap();
    assert!(seqs(&d, "flaky").is_empty());
}
