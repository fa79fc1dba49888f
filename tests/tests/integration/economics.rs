//! Token economics end to end: a capsule calls an OpenAI-compatible provider
//! (the local fixture — the one allowed stand-in), is charged exactly the
//! provider's usage × the configured price, durably and once; budgets hold
//! under parallel load; failures degrade gracefully.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;
use soma_host_api::llm::ProviderConfig;
use soma_runtime::{
    CallOptions, Config,
    budget::{Limit, Scope},
    config::{Allocator, Metering},
    ledger::{Filter, GroupBy, Kind},
};
use soma_tests::{TestEngine, config, llm_fixture::LlmFixture};

const IN_PRICE: u64 = 1_500; // micro-units per 1k prompt tokens
const OUT_PRICE: u64 = 2_000; // micro-units per 1k completion tokens

/// An engine whose `default` model is the fixture's `model` (also the
/// Python capsules' LLM engine, `python.rs`).
pub(crate) fn engine(fixture: &LlmFixture, model: &str) -> TestEngine {
    let mut c: Config = config(Allocator::OnDemand, Metering::Fuel);
    c.policy.llm_models = vec!["default".into()];
    c.llm.providers = vec![ProviderConfig {
        name: "fixture".into(),
        base_url: fixture.base_url(),
        api_key_env: None,
        models: vec![model.into()],
        aliases: BTreeMap::from([("default".to_owned(), model.to_owned())]),
        timeout_ms: 5_000,
        max_retries: 1,
        price_input_per_1k_micros: IN_PRICE,
        price_output_per_1k_micros: OUT_PRICE,
    }];
    TestEngine::new(c)
}

fn summarize(t: &TestEngine, options: &CallOptions, text: &str) -> Value {
    let c = t.load(soma_capsules::SUMMARIZE_COMPONENT);
    let input = serde_json::json!({ "text": text, "max_words": 20 }).to_string();
    let out = t
        .engine
        .call(&c, &input, options)
        .result
        .expect("summarize never fails on provider trouble");
    serde_json::from_str(&out).expect("json")
}

#[test]
fn a_capsule_is_charged_exactly_usage_times_price() {
    let fixture = LlmFixture::start();
    let t = engine(&fixture, "fixture-ok");
    let c = t.load(soma_capsules::SUMMARIZE_COMPONENT);
    let options = CallOptions::for_capsule(&t.engine, &c);
    let out = summarize(
        &t,
        &options,
        "The quick brown fox jumps over the lazy dog. It was fun.",
    );
    assert_eq!(out["source"], "llm", "{out}");
    let (prompt, completion) = (
        out["usage"]["prompt_tokens"].as_u64().expect("prompt"),
        out["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion"),
    );
    assert_eq!(out["usage"]["estimated"], false);

    let ledger = t.engine.metering().ledger();
    let entries = ledger
        .ls(&Filter {
            run: Some(options.run_id.to_string()),
            ..Filter::default()
        })
        .expect("ls");
    let find = |k: Kind| {
        entries
            .iter()
            .find(|e| e.kind == k)
            .unwrap_or_else(|| panic!("{k} entry"))
    };
    let input = find(Kind::LlmTokensInput);
    let output = find(Kind::LlmTokensOutput);
    assert_eq!((input.quantity, output.quantity), (prompt, completion));
    assert_eq!(input.cost_micros, (prompt * IN_PRICE).div_ceil(1000));
    assert_eq!(output.cost_micros, (completion * OUT_PRICE).div_ceil(1000));
    assert_eq!(input.model.as_deref(), Some("fixture-ok"));
    assert_eq!(input.capsule, c.digest().to_string());
    assert!(
        entries
            .iter()
            .any(|e| e.kind == Kind::Fuel && e.quantity > 0),
        "fuel is metered too"
    );
    assert!(
        entries.iter().any(|e| e.kind == Kind::WallTime),
        "wall time is metered too"
    );

    let rows = ledger
        .summary(GroupBy::Capsule, None, None, None)
        .expect("summary");
    let row = rows
        .iter()
        .find(|r| r.key == c.digest().to_string())
        .expect("row");
    assert_eq!(row.cost_micros, input.cost_micros + output.cost_micros);
    assert_eq!((row.tokens_in, row.tokens_out), (prompt, completion));

    // Replaying the same call identity charges nothing more.
    summarize(
        &t,
        &options,
        "The quick brown fox jumps over the lazy dog. It was fun.",
    );
    let again = ledger
        .summary(GroupBy::Capsule, None, None, None)
        .expect("summary");
    assert_eq!(again, rows);
    assert!(ledger.check_integrity().expect("check").ok);
}

#[test]
fn a_run_budget_holds_under_16_parallel_calls() {
    let fixture = LlmFixture::start();
    let t = Arc::new(engine(&fixture, "fixture-ok"));
    let c = t.load(soma_capsules::SUMMARIZE_COMPONENT);
    let base = CallOptions::for_capsule(&t.engine, &c);
    let budget = 1_000;
    t.engine
        .metering()
        .set_limit(
            Scope::Run(base.run_id.to_string()),
            Some(Limit {
                tokens: Some(budget),
                micros: None,
            }),
        )
        .expect("budget");
    let text = "one two three four five six seven eight nine ten. ".repeat(3);
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (t, mut options, text) = (t.clone(), base.clone(), text.clone());
                options.node = format!("worker{i}").into();
                s.spawn(move || summarize(&t, &options, &text))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let granted = results.iter().filter(|r| r["source"] == "llm").count();
    let refused: Vec<&Value> = results
        .iter()
        .filter(|r| r["source"] == "extractive")
        .collect();
    assert!(granted > 0, "some calls fit");
    assert!(!refused.is_empty(), "the budget refuses the rest");
    for r in &refused {
        assert!(
            r["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("budget exceeded")),
            "{r}"
        );
    }
    let account = t
        .engine
        .metering()
        .budgets()
        .account(&Scope::Run(base.run_id.to_string()))
        .expect("account");
    // One reservation is estimated prompt + max_tokens (40); the fixture's
    // actual usage can exceed the estimate by a little, never by a whole call.
    let one_reservation = 200;
    assert!(
        account.spent_tokens <= budget + one_reservation,
        "spent {} of {budget}",
        account.spent_tokens
    );
    assert_eq!(
        account.reserved_tokens, 0,
        "every hold was released or settled"
    );
    let ledger_tokens: u64 = t
        .engine
        .metering()
        .ledger()
        .ls(&Filter {
            run: Some(base.run_id.to_string()),
            ..Filter::default()
        })
        .expect("ls")
        .iter()
        .filter(|e| matches!(e.kind, Kind::LlmTokensInput | Kind::LlmTokensOutput))
        .map(|e| e.quantity)
        .sum();
    assert_eq!(
        ledger_tokens, account.spent_tokens,
        "budget and ledger agree"
    );
}

#[test]
fn provider_trouble_degrades_to_an_extractive_summary() {
    for (model, expect) in [
        ("fixture-500", "llm unavailable"),
        ("fixture-malformed", "malformed"),
    ] {
        let fixture = LlmFixture::start();
        let t = engine(&fixture, model);
        let c = t.load(soma_capsules::SUMMARIZE_COMPONENT);
        let out = summarize(
            &t,
            &CallOptions::for_capsule(&t.engine, &c),
            "First sentence here. Second one.",
        );
        assert_eq!(out["source"], "extractive", "{model}: {out}");
        assert!(
            out["note"].as_str().is_some_and(|n| n.contains(expect)),
            "{model}: {out}"
        );
        let tokens: u64 = t
            .engine
            .metering()
            .ledger()
            .summary(GroupBy::Kind, None, None, None)
            .expect("summary")
            .iter()
            .map(|r| r.tokens_in + r.tokens_out)
            .sum();
        assert_eq!(
            tokens, 0,
            "{model}: nothing charged for a failed provider call"
        );
    }
}

#[test]
fn budgets_survive_a_restart() {
    let fixture = LlmFixture::start();
    let t = engine(&fixture, "fixture-ok");
    let c = t.load(soma_capsules::SUMMARIZE_COMPONENT);
    let options = CallOptions::for_capsule(&t.engine, &c);
    let tenant = Scope::Tenant("local".into());
    t.engine
        .metering()
        .set_limit(
            tenant.clone(),
            Some(Limit {
                tokens: Some(100_000),
                micros: None,
            }),
        )
        .expect("set");
    summarize(&t, &options, "Some text to summarize. More text.");
    let spent = t
        .engine
        .metering()
        .budgets()
        .account(&tenant)
        .expect("account")
        .spent_tokens;
    assert!(spent > 0);
    // A new engine on the same data directory rebuilds spending from the ledger.
    let again = soma_runtime::Engine::new(t.engine.config().clone(), t.engine.data().clone())
        .expect("engine");
    drop(t.engine);
    let listed = again.metering().list_budgets().expect("list");
    let (_, account) = listed
        .iter()
        .find(|(s, _)| *s == tenant)
        .expect("budget persisted");
    assert_eq!(account.limit.tokens, Some(100_000));
    assert_eq!(account.spent_tokens, spent);
}
