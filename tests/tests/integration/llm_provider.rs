//! The `llm` capability against a local OpenAI-compatible fixture: routing,
//! metering, and every provider failure mapped to an `llm-error` with the
//! reservation released. Drives `llm::State` through the generated `Host`
//! trait, exactly as a capsule's import would.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use soma_host_api::{
    bindings::soma::capsule::llm::{ChatRequest, Completion, Host as _, LlmError, Message, Role},
    llm::{
        self, Config, Grant, Meter, Metered, ProviderConfig, Reservation, Shared, Spender, State,
    },
};
use soma_tests::llm_fixture::{FixtureOptions, LlmFixture};

const KEY_VAR: &str = "SOMA_TEST_FIXTURE_KEY";
const KEY: &str = "sk-test-0123456789abcdef";
const PRICE_IN: u64 = 1_500;
const PRICE_OUT: u64 = 2_500;

/// A meter that records everything and checks the books balance.
#[derive(Debug, Default)]
struct TestMeter {
    refuse: Option<String>,
    fail_settle: Option<String>,
    books: Mutex<Books>,
}

#[derive(Debug, Default)]
struct Books {
    next_id: u64,
    open: HashMap<u64, (u64, u64)>,
    reserved: Vec<(u64, u64)>,
    released: usize,
    settled: Vec<Metered>,
    spenders: Vec<String>,
}

impl TestMeter {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every reservation was released or settled exactly once.
    fn assert_balanced(&self) {
        let b = self.books();
        assert!(b.open.is_empty(), "open reservations: {:?}", b.open);
        assert_eq!(
            b.reserved.len(),
            b.released + b.settled.len(),
            "reserved == released + settled"
        );
    }
}

impl Meter for TestMeter {
    fn reserve(&self, spender: &Spender, tokens: u64, micros: u64) -> Result<Reservation, String> {
        if let Some(reason) = &self.refuse {
            return Err(reason.clone());
        }
        let mut b = self.books();
        b.next_id += 1;
        let id = b.next_id;
        b.open.insert(id, (tokens, micros));
        b.reserved.push((tokens, micros));
        b.spenders
            .push(format!("{}/{}", spender.tenant, spender.run));
        Ok(Reservation { id, tokens, micros })
    }

    fn settle(&self, _: &Spender, r: Reservation, metered: &Metered) -> Result<(), String> {
        let mut b = self.books();
        let held = b.open.remove(&r.id).expect("settle of an open reservation");
        assert_eq!(held, (r.tokens, r.micros), "reservation came back intact");
        b.settled.push(metered.clone());
        match &self.fail_settle {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    fn release(&self, _: &Spender, r: Reservation) {
        let mut b = self.books();
        let held = b
            .open
            .remove(&r.id)
            .expect("release of an open reservation");
        assert_eq!(held, (r.tokens, r.micros), "reservation came back intact");
        b.released += 1;
    }
}

fn provider(fixture: &LlmFixture, models: &[&str]) -> ProviderConfig {
    ProviderConfig {
        name: "fixture".into(),
        base_url: fixture.base_url(),
        api_key_env: Some(KEY_VAR.into()),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        timeout_ms: 5_000,
        price_input_per_1k_micros: PRICE_IN,
        price_output_per_1k_micros: PRICE_OUT,
        ..ProviderConfig::default()
    }
}

/// Keys come from a fixed map: tests must not mutate the process environment.
fn shared(config: &Config) -> Arc<Shared> {
    Shared::with_env(config.clone(), |var| {
        (var == KEY_VAR).then(|| KEY.to_owned())
    })
}

fn state(config: &Config, models: &[&str], meter: Arc<TestMeter>) -> State {
    State::new(
        config,
        shared(config),
        Grant {
            models: models.iter().map(|m| (*m).to_owned()).collect(),
        },
        meter,
        Spender::local("run-1".into(), "sha256:abc".into()),
    )
}

fn config(p: ProviderConfig) -> Config {
    Config {
        providers: vec![p],
        ..Config::default()
    }
}

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            Message {
                role: Role::System,
                content: "be brief".into(),
            },
            Message {
                role: Role::User,
                content: "hello there world".into(),
            },
        ],
        max_tokens: Some(64),
        temperature: Some(0.0),
        stop: Vec::new(),
    }
}

/// Run one chat for `model` (granted, served by the fixture with `tweak`).
fn chat_once(
    fixture: &LlmFixture,
    model: &str,
    tweak: impl FnOnce(&mut ProviderConfig),
) -> (Result<Completion, LlmError>, Arc<TestMeter>) {
    let mut p = provider(fixture, &[model]);
    tweak(&mut p);
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&config(p), &[model], meter.clone());
    let result = s.chat(request(model));
    meter.assert_balanced();
    (result, meter)
}

fn unavailable(r: Result<Completion, LlmError>) -> String {
    match r {
        Err(LlmError::Unavailable(m)) => {
            assert!(!m.contains(KEY), "error leaks the API key: {m}");
            m
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[test]
fn ok_path_returns_text_exact_usage_and_exact_cost() {
    let fixture = LlmFixture::start();
    let mut p = provider(&fixture, &["fixture-ok"]);
    p.aliases.insert("fast".into(), "fixture-ok".into());
    let cfg = config(p);
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&cfg, &["fast"], meter.clone());

    let c = s.chat(request("fast")).expect("completion");
    assert_eq!(c.text, "echo: hello there world");
    assert_eq!(c.model, "fixture-ok");
    assert_eq!(c.finish_reason, "stop");
    assert!(!c.estimated);
    // prompt = (2 + 3) + (3 + 3) words; completion = 4 words.
    assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (11, 4));

    let second = s.chat(request("fast")).expect("second completion");
    assert_eq!(second.text, c.text);
    meter.assert_balanced();

    let b = meter.books();
    assert_eq!(b.settled.len(), 2);
    assert_eq!(
        b.settled[0],
        Metered {
            provider: "fixture".into(),
            model: "fixture-ok".into(),
            prompt_tokens: 11,
            completion_tokens: 4,
            estimated: false,
            input_price_per_1k_micros: PRICE_IN,
            output_price_per_1k_micros: PRICE_OUT,
            // ceil(11 × 1500 / 1000) = 17, ceil(4 × 2500 / 1000) = 10.
            cost_micros: 27,
            seq: 0,
            // When it answered: checked to be a plausible clock below.
            time_ms: b.settled[0].time_ms,
        }
    );
    assert!(
        b.settled[0].time_ms > 1_700_000_000_000,
        "the answer's time is the wall clock: {}",
        b.settled[0].time_ms
    );
    assert_eq!(
        b.settled[1].seq, 1,
        "seq counts chat calls within one capsule call"
    );
    // Reserved: tiktoken's prompt estimate + max_tokens, priced the same way.
    let (tokens, micros) = b.reserved[0];
    assert!(
        tokens > 64,
        "reservation covers prompt + max_tokens: {tokens}"
    );
    let prompt_est = tokens - 64;
    assert_eq!(
        micros,
        llm::cost_micros(prompt_est, 64, PRICE_IN, PRICE_OUT)
    );
    assert_eq!(b.spenders[0], "local/run-1");
    drop(b);

    let r = fixture.recorded();
    assert_eq!(r.count, 2);
    assert_eq!(
        r.models,
        ["fixture-ok", "fixture-ok"],
        "alias resolved before sending"
    );
    assert_eq!(
        r.last_authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    let body = r.last_body.expect("body");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "hello there world");
}

#[test]
fn max_tokens_truncates_and_defaults() {
    let fixture = LlmFixture::start();
    let cfg = config(provider(&fixture, &["fixture-ok"]));
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&cfg, &["fixture-ok"], meter.clone());
    let mut r = request("fixture-ok");
    r.max_tokens = Some(2);
    let c = s.chat(r).expect("completion");
    assert_eq!(
        (c.text.as_str(), c.finish_reason.as_str()),
        ("echo: hello", "length")
    );

    let mut r = request("fixture-ok");
    r.max_tokens = None;
    s.chat(r).expect("completion");
    assert_eq!(
        fixture.recorded().last_body.expect("body")["max_tokens"],
        512
    );
    meter.assert_balanced();
}

#[test]
fn missing_usage_is_counted_with_tiktoken_and_flagged() {
    let fixture = LlmFixture::start();
    let (r, meter) = chat_once(&fixture, "fixture-no-usage", |_| {});
    let c = r.expect("completion");
    assert!(c.estimated);
    assert!(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0);
    let b = meter.books();
    let m = &b.settled[0];
    assert!(m.estimated);
    assert_eq!(
        (m.prompt_tokens, m.completion_tokens),
        (
            u64::from(c.usage.prompt_tokens),
            u64::from(c.usage.completion_tokens)
        )
    );
    assert_eq!(
        m.cost_micros,
        llm::cost_micros(m.prompt_tokens, m.completion_tokens, PRICE_IN, PRICE_OUT)
    );
}

#[test]
fn slow_provider_times_out_within_the_timeout() {
    let fixture = LlmFixture::start();
    let start = Instant::now();
    let (r, meter) = chat_once(&fixture, "fixture-slow", |p| p.timeout_ms = 300);
    let elapsed = start.elapsed();
    let m = unavailable(r);
    assert!(m.contains("timed out after 300 ms"), "{m}");
    assert!(
        elapsed < Duration::from_millis(300 + 2_000),
        "took {elapsed:?}"
    );
    assert_eq!(meter.books().released, 1);
}

#[test]
fn rate_limit_is_retried_after_retry_after() {
    let fixture = LlmFixture::start_with(FixtureOptions {
        rate_limited: 1,
        ..FixtureOptions::default()
    });
    let start = Instant::now();
    let (r, meter) = chat_once(&fixture, "fixture-429", |p| p.max_retries = 2);
    let c = r.expect("completion after one 429");
    assert_eq!(c.text, "echo: hello there world");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "honoured Retry-After: 1"
    );
    assert_eq!(fixture.requests(), 2);
    assert_eq!(meter.books().settled.len(), 1);
}

#[test]
fn rate_limit_without_retries_names_429() {
    let fixture = LlmFixture::start();
    let (r, meter) = chat_once(&fixture, "fixture-429", |p| p.max_retries = 0);
    let m = unavailable(r);
    assert!(m.contains("429") && m.contains("Retry-After: 1 s"), "{m}");
    assert_eq!(fixture.requests(), 1);
    assert_eq!(meter.books().released, 1);
}

#[test]
fn rate_limit_wait_that_exceeds_the_timeout_is_not_waited() {
    let fixture = LlmFixture::start();
    let start = Instant::now();
    let (r, _) = chat_once(&fixture, "fixture-429", |p| p.timeout_ms = 500);
    let m = unavailable(r);
    assert!(m.contains("429"), "{m}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "did not sleep past the timeout"
    );
    assert_eq!(fixture.requests(), 1);
}

#[test]
fn server_errors_are_retried_then_unavailable() {
    let fixture = LlmFixture::start();
    let (r, meter) = chat_once(&fixture, "fixture-500", |p| p.max_retries = 2);
    let m = unavailable(r);
    assert!(m.contains("HTTP 500") && m.contains("3 attempt"), "{m}");
    assert!(
        m.contains("internal fixture error"),
        "quotes the provider: {m}"
    );
    assert_eq!(fixture.requests(), 3, "1 try + 2 retries");
    assert_eq!(meter.books().released, 1);
}

#[test]
fn malformed_responses_are_unavailable() {
    let fixture = LlmFixture::start();
    for model in ["fixture-malformed", "fixture-no-choices"] {
        let (r, meter) = chat_once(&fixture, model, |_| {});
        let m = unavailable(r);
        assert!(m.contains("malformed JSON"), "{model}: {m}");
        assert_eq!(meter.books().released, 1);
    }
}

#[test]
fn rejected_key_is_unavailable_and_never_echoed() {
    let fixture = LlmFixture::start();
    let (r, meter) = chat_once(&fixture, "fixture-401", |_| {});
    let m = unavailable(r);
    assert!(m.contains("rejected the API key"), "{m}");
    assert_eq!(
        fixture.recorded().last_authorization.as_deref(),
        Some(&*format!("Bearer {KEY}")),
        "the key is sent as a bearer token"
    );
    assert_eq!(fixture.requests(), 1, "401 is not retried");
    assert_eq!(meter.books().released, 1);
}

#[test]
fn bad_request_is_invalid_with_the_providers_message() {
    let fixture = LlmFixture::start();
    let (r, meter) = chat_once(&fixture, "fixture-400", |_| {});
    match r {
        Err(LlmError::Invalid(m)) => assert!(m.contains("bad request from fixture"), "{m}"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert_eq!(meter.books().released, 1);
}

#[test]
fn ungranted_model_is_denied_before_anything_is_sent_or_reserved() {
    let fixture = LlmFixture::start();
    let cfg = config(provider(&fixture, &["fixture-ok", "fixture-500"]));
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&cfg, &["fixture-500"], meter.clone());
    let r = s.chat(request("fixture-ok"));
    assert!(
        matches!(r, Err(LlmError::Denied(ref m)) if m.contains("fixture-ok")),
        "{r:?}"
    );
    assert_eq!(fixture.requests(), 0);
    assert!(meter.books().reserved.is_empty());
}

#[test]
fn budget_refusal_is_budget_exceeded_and_nothing_is_sent() {
    let fixture = LlmFixture::start();
    let cfg = config(provider(&fixture, &["fixture-ok"]));
    let meter = Arc::new(TestMeter {
        refuse: Some("run budget of 100 micros exhausted".into()),
        ..TestMeter::default()
    });
    let mut s = state(&cfg, &["fixture-ok"], meter.clone());
    let r = s.chat(request("fixture-ok"));
    assert!(
        matches!(r, Err(LlmError::BudgetExceeded(ref m)) if m == "run budget of 100 micros exhausted"),
        "{r:?}"
    );
    assert_eq!(fixture.requests(), 0);
}

#[test]
fn settle_failure_withholds_the_answer() {
    let fixture = LlmFixture::start();
    let cfg = config(provider(&fixture, &["fixture-ok"]));
    let meter = Arc::new(TestMeter {
        fail_settle: Some("ledger disk full".into()),
        ..TestMeter::default()
    });
    let mut s = state(&cfg, &["fixture-ok"], meter.clone());
    let m = unavailable(s.chat(request("fixture-ok")));
    assert!(m.contains("ledger disk full"), "{m}");
    meter.assert_balanced();
}

#[test]
fn invalid_requests_never_reach_the_provider() {
    let fixture = LlmFixture::start();
    let cfg = config(provider(&fixture, &["fixture-ok"]));
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&cfg, &["fixture-ok"], meter.clone());
    let mut empty = request("fixture-ok");
    empty.messages.clear();
    let mut zero = request("fixture-ok");
    zero.max_tokens = Some(0);
    let mut huge = request("fixture-ok");
    huge.max_tokens = Some(1_000_000);
    let mut hot = request("fixture-ok");
    hot.temperature = Some(f32::NAN);
    for r in [empty, zero, huge, hot] {
        let result = s.chat(r);
        assert!(matches!(result, Err(LlmError::Invalid(_))), "{result:?}");
    }
    assert_eq!(fixture.requests(), 0);
    assert!(meter.books().reserved.is_empty());
}

#[test]
fn missing_api_key_env_makes_the_provider_unavailable() {
    let fixture = LlmFixture::start();
    let mut p = provider(&fixture, &["fixture-ok"]);
    p.api_key_env = Some("SOMA_TEST_SURELY_UNSET_KEY".into());
    let cfg = config(p);
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&cfg, &["fixture-ok"], meter.clone());
    let m = unavailable(s.chat(request("fixture-ok")));
    assert!(
        m.contains("SOMA_TEST_SURELY_UNSET_KEY") && m.contains("not set"),
        "{m}"
    );
    assert_eq!(fixture.requests(), 0);
    assert!(meter.books().reserved.is_empty());
}

#[test]
fn api_key_is_read_from_the_process_environment() {
    // Cargo sets CARGO_PKG_NAME for the test process; reading it exercises
    // `Shared::new`'s real environment lookup without mutating the environment.
    let fixture = LlmFixture::start();
    let mut p = provider(&fixture, &["fixture-ok"]);
    p.api_key_env = Some("CARGO_PKG_NAME".into());
    let cfg = config(p);
    let mut s = State::new(
        &cfg,
        Shared::new(cfg.clone()),
        Grant {
            models: vec!["fixture-ok".into()],
        },
        Arc::new(llm::NoMeter),
        Spender::local("run".into(), "capsule".into()),
    );
    s.chat(request("fixture-ok")).expect("completion");
    assert_eq!(
        fixture.recorded().last_authorization.as_deref(),
        Some("Bearer soma-tests")
    );
}

#[test]
fn unconfigured_and_unreachable_providers_are_unavailable() {
    // Granted but served by no provider.
    let fixture = LlmFixture::start();
    let cfg = config(provider(&fixture, &["fixture-ok"]));
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&cfg, &["other-model"], meter.clone());
    let m = unavailable(s.chat(request("other-model")));
    assert!(m.contains("no configured LLM provider serves"), "{m}");

    // A port nobody listens on.
    let port = soma_tests::registry::free_port();
    let mut p = provider(&fixture, &["fixture-ok"]);
    p.base_url = format!("http://127.0.0.1:{port}/v1");
    p.max_retries = 1;
    let cfg = config(p);
    let meter = Arc::new(TestMeter::default());
    let mut s = state(&cfg, &["fixture-ok"], meter.clone());
    let m = unavailable(s.chat(request("fixture-ok")));
    assert!(m.contains("could not be reached after 2 attempt"), "{m}");
    meter.assert_balanced();
    assert_eq!(meter.books().released, 1);
}
