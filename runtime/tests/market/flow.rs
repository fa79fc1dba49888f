//! The submission pipeline through `soma market submit`, against a real
//! `docker-registry` with real keys: submit runs the automated review and
//! records it; each rejection names its reason code (capability mismatch
//! both ways, an example that traps, an output that breaks its schema, a
//! hostile capsule from `capsules/`, a missing license, a wrong author key,
//! a re-submitted version with a new digest); manual approval; publish →
//! search finds it → yank → search does not; the nightly re-test (3
//! failures → under-maintenance → 30 days → deprecated, a pass resets).
//!
//! `runtime/tests/market_review.rs` covers the review's steps at the
//! library level; these go through submit and the store. The harness is
//! the one of `runtime/tests/market.rs` (a node = data directory +
//! soma.toml; the CLI as a subprocess).

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use serde_json::{Value, json};
use soma_runtime::{
    Config, Engine,
    market::{
        error::MarketError,
        flow::{self, Access},
        listing::Listing,
        pipeline::{self, ReviewOptions},
        store::{MAINTENANCE_DEPRECATES_AFTER_MS, Market, SubmissionState, now_ms},
    },
    oci::{self, Auth, PushOptions, Reference},
    store::DataDir,
    verify::KeyPair,
};
use soma_tests::{daemon::soma, registry::Registry};

const PASSWORD: &str = "market-flow-test";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A key pair saved as `dir/NAME.key` (encrypted with [`PASSWORD`]) + `dir/NAME.pub`.
fn keypair(dir: &Path, name: &str) -> (KeyPair, PathBuf, PathBuf) {
    soma_tests::market::keypair(dir, name, PASSWORD)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One marketplace node: its data directory and soma.toml, an author
/// `acme` registered.
struct Node {
    root: PathBuf,
    data: PathBuf,
    config: PathBuf,
    market_section: String,
    author_key: PathBuf,
}

impl Node {
    fn new(root: &Path, registry: &Registry, extra_market: &str) -> Self {
        let (_, market_private, market_public) = keypair(root, "market");
        let (_, author_private, author_public) = keypair(root, "acme");
        let market_section = format!(
            "[market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\n{extra_market}",
            path(&market_private),
            path(&market_public),
            registry.host()
        );
        let config = root.join("soma.toml");
        std::fs::write(&config, &market_section).expect("config");
        let node = Self {
            root: root.to_owned(),
            data: root.join("data"),
            config,
            market_section,
            author_key: author_private.clone(),
        };
        node.json(&[
            "market",
            "author",
            "register",
            "--name",
            "acme",
            "--key-file",
            path(&author_private),
            "--key",
            path(&author_public),
            "--json",
        ]);
        node
    }

    fn soma_with(&self, config: &Path, args: &[&str]) -> Output {
        soma(bin(), &self.data)
            .arg("--config")
            .arg(config)
            .args(args)
            .current_dir(&self.root)
            .env("SOMA_PASSWORD", PASSWORD)
            .output()
            .expect("soma")
    }

    fn soma(&self, args: &[&str]) -> Output {
        self.soma_with(&self.config, args)
    }

    /// Exit 0 and one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.soma(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "soma {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("soma {args:?}: {e}: {}", text(&out.stdout)))
    }

    /// With `--json`: exit `code`, and the JSON document.
    fn exits(&self, args: &[&str], code: i32) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.soma(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "soma {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("soma {args:?}: {e}: {}", text(&out.stdout)))
    }

    /// A listing for `acme/NAME@VERSION` with `examples` (JSON inputs) and,
    /// unless `license` is `None`, a license.
    fn listing(
        &self,
        name: &str,
        version: &str,
        examples: &[Value],
        license: Option<&str>,
    ) -> PathBuf {
        let file = self.root.join(format!("{name}-{version}.toml"));
        let mut toml = format!(
            "name = \"acme/{name}\"\nversion = \"{version}\"\nsummary = \"The {name} capsule for tests.\"\n\
             readme = {{ markdown = \"# {name}\\nA capsule under review.\" }}\nkeywords = [\"{name}\", \"test\"]\n\
             categories = [\"tools\"]\n"
        );
        if let Some(l) = license {
            toml.push_str(&format!("license = \"{l}\"\n"));
        }
        for e in examples {
            toml.push_str(&format!("\n[[examples]]\ninput = {}\n", toml_value(e)));
        }
        std::fs::write(&file, toml).expect("listing");
        file
    }

    /// `soma market submit COMPONENT --listing L --key acme.key --json ARGS`.
    fn submit_args(&self, component: &str, listing: &Path) -> Vec<String> {
        vec![
            "market".into(),
            "submit".into(),
            component.into(),
            "--listing".into(),
            path(listing).into(),
            "--key".into(),
            path(&self.author_key).into(),
        ]
    }

    /// Submit; expect exit `code`; the JSON document.
    fn submit(&self, component: &str, listing: &Path, code: i32) -> Value {
        let args = self.submit_args(component, listing);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exits(&args, code)
    }

    /// `soma market search WORDS --json`.
    fn search(&self, words: &str) -> Value {
        self.json(&["market", "search", words, "--json"])
    }

    fn market(&self) -> Market {
        Market::new(DataDir::new(&self.data).database().clone())
    }

    fn engine(&self, config_text: &str) -> Engine {
        let file = self.root.join("engine.toml");
        std::fs::write(&file, config_text).expect("config");
        let mut config = Config::load(&file).expect("config loads");
        config.data_dir = Some(self.data.clone());
        Engine::new(config, DataDir::new(&self.data)).expect("engine")
    }
}

/// A JSON value as an inline TOML value (objects, arrays, strings, numbers).
fn toml_value(v: &Value) -> String {
    match v {
        Value::Object(o) => format!(
            "{{ {} }}",
            o.iter()
                .map(|(k, v)| format!("{k:?} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

/// The failed reason codes of a report.
fn failed_codes(report: &Value) -> Vec<String> {
    report["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter(|e| e["status"] == json!("failed"))
        .map(|e| e["code"].as_str().expect("code").to_owned())
        .collect()
}

#[test]
fn submit_reviews_and_each_rejection_names_its_reason_code() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &registry, "");

    // The calculator passes: approved, the evidence recorded on the submission.
    let l = node.listing(
        "calc",
        "1.0.0",
        &[json!({"expr": "2*(3+4)"}), json!({"expr": "1/4 + 3"})],
        Some("Apache-2.0"),
    );
    let doc = node.submit(soma_capsules::CALCULATOR_COMPONENT, &l, 0);
    assert_eq!(doc["ok"], json!(true), "{doc}");
    assert_eq!(doc["review"]["verdict"], json!("approved"), "{doc}");
    let s = &doc["submitted"]["submission"];
    assert_eq!(s["state"], json!("approved"));
    assert_eq!(s["review"]["passed"], json!(true));
    assert_eq!(
        s["review"]["evidence"]["evidence"][0]["code"],
        json!("signature-verified"),
        "the author signature verified by accept is the review's first step"
    );
    assert!(
        doc["review"]["cost_profile"]["fuel_max"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{doc}"
    );
    // The human form: one line per step, with its reason code.
    let l2 = node.listing("calc", "1.0.1", &[json!({"expr": "1+1"})], Some("MIT"));
    let args = node.submit_args(soma_capsules::CALCULATOR_COMPONENT, &l2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = node.soma(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "signature-verified",
        "least-privilege",
        "smoke-passed",
        "approved in",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }

    // Each fixture breaks one rule; submit exits 30 naming it, and the
    // store records the rejection with the reason code.
    let cases: [(&str, &str, Value, &str); 5] = [
        (
            "llm-unused",
            soma_capsules::REVIEW_LLM_UNUSED_COMPONENT,
            json!({"text": "hi"}),
            "capability-not-imported",
        ),
        (
            "kv-undeclared",
            soma_capsules::REVIEW_KV_UNDECLARED_COMPONENT,
            json!({}),
            "import-not-declared",
        ),
        (
            "trap",
            soma_capsules::HOSTILE_TRAP_COMPONENT,
            json!({"x": 1}),
            "smoke-trapped",
        ),
        (
            "bad-output",
            soma_capsules::REVIEW_BAD_OUTPUT_COMPONENT,
            json!({"n": 1}),
            "output-schema-mismatch",
        ),
        (
            "memory-hog",
            soma_capsules::HOSTILE_MEMORY_COMPONENT,
            json!({"size": "all of it"}),
            "smoke-limit-exceeded",
        ),
    ];
    for (name, component, example, code) in cases {
        let l = node.listing(name, "1.0.0", &[example], Some("Apache-2.0"));
        let doc = node.submit(component, &l, 30);
        assert_eq!(doc["ok"], json!(false), "{name}: {doc}");
        assert_eq!(doc["error"]["class"], json!("review-rejected"), "{doc}");
        assert_eq!(doc["error"]["exit_code"], json!(30), "{doc}");
        let message = doc["error"]["message"].as_str().expect("message");
        assert!(message.contains(code), "{name}: {message}");
        let failed = failed_codes(&doc["review"]);
        assert!(failed.iter().any(|c| c == code), "{name}: {failed:?}");
        // Every failed reason is named, not only the first.
        for c in &failed {
            assert!(message.contains(c.as_str()), "{name}: {c} in {message}");
        }
        let stored = node
            .market()
            .get(&format!("acme/{name}@1.0.0"))
            .expect("get")
            .expect("recorded");
        assert_eq!(stored.state, SubmissionState::Rejected, "{name}");
        let reasons = stored.review.expect("review").reasons;
        assert!(reasons.iter().any(|r| r == code), "{name}: {reasons:?}");
    }
    // A rejected version cannot be published.
    let doc = node.exits(&["market", "publish", "acme/trap@1.0.0"], 29);
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("review must approve"),
        "{doc}"
    );

    // `soma market review ID` re-runs it: the same verdict, recorded again.
    let doc = node.exits(&["market", "review", "acme/bad-output@1.0.0"], 30);
    assert!(failed_codes(&doc["review"]).contains(&"output-schema-mismatch".to_owned()));
    let history = node
        .market()
        .get("acme/bad-output@1.0.0")
        .expect("get")
        .expect("some")
        .history;
    assert_eq!(
        history.len(),
        3,
        "submitted, rejected, rejected again: {history:?}"
    );

    // Missing license: the listing parser refuses it before anything is
    // pushed (exit 26, naming the field) …
    let l = node.listing("nolicense", "1.0.0", &[json!({"expr": "1"})], None);
    let doc = node.submit(soma_capsules::CALCULATOR_COMPONENT, &l, 26);
    let message = doc["error"]["message"].as_str().expect("message");
    assert!(message.contains("license"), "{message}");
    assert!(
        node.market()
            .get("acme/nolicense@1.0.0")
            .expect("get")
            .is_none()
    );
    // … and the review itself, given no license, fails with license-missing.
    let examples = dir.path().join("examples.json");
    std::fs::write(&examples, r#"[{"expr": "1+2"}]"#).expect("examples");
    let readme = dir.path().join("README.md");
    std::fs::write(&readme, "# calc\n").expect("readme");
    let doc = node.exits(
        &[
            "review",
            soma_capsules::CALCULATOR_COMPONENT,
            "--examples",
            path(&examples),
            "--readme",
            path(&readme),
        ],
        30,
    );
    assert_eq!(
        failed_codes(&doc),
        vec!["license-missing".to_owned()],
        "{doc}"
    );

    // A re-submitted version with a new digest: refused, named.
    let l = node.listing("calc", "1.0.0", &[json!({"expr": "1"})], Some("Apache-2.0"));
    let doc = node.submit(soma_capsules::ECHO_COMPONENT, &l, 29);
    let message = doc["error"]["message"].as_str().expect("message");
    assert!(message.contains("version-immutable"), "{message}");
    // The same component again is not a change: the review on record is shown.
    let l = node.listing(
        "calc",
        "1.0.0",
        &[json!({"expr": "2*(3+4)"}), json!({"expr": "1/4 + 3"})],
        Some("Apache-2.0"),
    );
    let doc = node.submit(soma_capsules::CALCULATOR_COMPONENT, &l, 0);
    assert_eq!(doc["submitted"]["created"], json!(false));
    assert_eq!(doc["review"]["verdict"], json!("approved"));
}

#[test]
fn a_wrong_author_key_is_refused_as_signature_invalid() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &registry, "");

    // Through submit: a key that is not acme's registered one.
    let (_, stranger_private, _) = keypair(dir.path(), "stranger");
    let l = node.listing("calc", "1.0.0", &[json!({"expr": "1"})], Some("MIT"));
    let mut args = node.submit_args(soma_capsules::CALCULATOR_COMPONENT, &l);
    args[6] = path(&stranger_private).to_owned();
    args.push("--json".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = node.soma(&args);
    assert_eq!(out.status.code(), Some(21), "{}", text(&out.stdout));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let message = doc["error"]["message"].as_str().expect("message");
    assert!(message.contains("signature-invalid"), "{message}");
    assert!(node.market().get("acme/calc@1.0.0").expect("get").is_none());

    // Through accept (what the daemon's submit route calls): an artifact
    // the stranger pushed and signed is refused before anything is recorded.
    let engine = node.engine(&node.market_section);
    let market = Market::new(engine.data().database().clone());
    let stranger = KeyPair::generate();
    let reference =
        Reference::parse(&format!("{}/acme/calc:1.0.0", registry.host())).expect("reference");
    let bytes = std::fs::read(soma_capsules::CALCULATOR_COMPONENT).expect("calculator");
    oci::push(
        &engine,
        &bytes,
        &reference,
        &Auth::Anonymous,
        &PushOptions::default(),
    )
    .expect("push");
    let digest =
        oci::sign(&reference, &Auth::Anonymous, &stranger, &Default::default()).expect("sign");
    let listing = Listing::load(&l).expect("listing");
    let e = flow::accept(
        &engine,
        &market,
        listing,
        reference.with_digest(digest),
        &Access::default(),
    )
    .expect_err("the stranger's signature is not acme's");
    assert!(
        matches!(e, MarketError::AuthorSignature { ref author, .. } if author == "acme"),
        "{e}"
    );
    assert!(e.to_string().contains("signature-invalid"), "{e}");
    assert!(market.get("acme/calc@1.0.0").expect("get").is_none());
}

#[test]
fn manual_approval_waits_for_a_reviewer() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &registry, "manual_approval = true\n");

    let l = node.listing("calc", "1.0.0", &[json!({"expr": "6*7"})], Some("MIT"));
    let doc = node.submit(soma_capsules::CALCULATOR_COMPONENT, &l, 0);
    assert_eq!(
        doc["submitted"]["submission"]["state"],
        json!("awaiting-approval"),
        "{doc}"
    );
    // Not publishable before a reviewer decides.
    let doc = node.exits(&["market", "publish", "acme/calc@1.0.0"], 29);
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("awaits a reviewer"),
        "{doc}"
    );
    // A rejection needs a reason (clap refuses without one; the library refuses a blank one).
    let out = node.soma(&["market", "review", "reject", "acme/calc@1.0.0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(matches!(
        node.market().reject("acme/calc@1.0.0", "alice", "  "),
        Err(MarketError::ReasonRequired { .. })
    ));
    // A failed review cannot be approved.
    let l = node.listing("trap", "1.0.0", &[json!({"x": 1})], Some("MIT"));
    node.submit(soma_capsules::HOSTILE_TRAP_COMPONENT, &l, 30);
    let doc = node.exits(&["market", "review", "approve", "acme/trap@1.0.0"], 29);
    let message = doc["error"]["message"].as_str().expect("message");
    assert!(message.contains("review failed"), "{message}");

    // The reviewer approves; who and why are in the history; publish works.
    let doc = node.json(&[
        "market",
        "review",
        "approve",
        "acme/calc@1.0.0",
        "--reviewer",
        "alice",
        "--reason",
        "read the source",
        "--json",
    ]);
    let v = &doc["version"];
    assert_eq!(v["state"], json!("approved"));
    assert_eq!(v["review"]["manual"]["reviewer"], json!("alice"));
    let notes: Vec<&str> = v["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| t["note"].as_str())
        .collect();
    assert!(
        notes.contains(&"approved by alice: read the source"),
        "{notes:?}"
    );
    node.json(&["market", "publish", "acme/calc@1.0.0", "--json"]);

    // Another version: the reviewer rejects it with a reason.
    let l = node.listing("calc", "1.1.0", &[json!({"expr": "1"})], Some("MIT"));
    node.submit(soma_capsules::CALCULATOR_COMPONENT, &l, 0);
    let doc = node.json(&[
        "market",
        "review",
        "reject",
        "acme/calc@1.1.0",
        "--reason",
        "same as 1.0.0",
        "--reviewer",
        "bob",
        "--json",
    ]);
    assert_eq!(doc["version"]["state"], json!("rejected"));
    assert_eq!(
        doc["version"]["review"]["reasons"],
        json!(["reviewer-rejected"])
    );
    assert_eq!(
        doc["version"]["review"]["manual"]["reason"],
        json!("same as 1.0.0")
    );
    // Rejected by a reviewer is final for approval.
    node.exits(&["market", "review", "approve", "acme/calc@1.1.0"], 29);
}

#[test]
fn publish_reaches_search_and_yank_removes_it() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &registry, "");
    let l = node.listing("calc", "1.0.0", &[json!({"expr": "6*7"})], Some("MIT"));
    node.submit(soma_capsules::CALCULATOR_COMPONENT, &l, 0);
    // Approved but not published: search does not know it.
    let out = node.soma(&["market", "search", "calc", "--json"]);
    assert_ne!(out.status.code(), Some(0), "no index before a publish");

    node.json(&["market", "publish", "acme/calc@1.0.0", "--json"]);
    let doc = node.search("calc");
    assert_eq!(doc["total"], json!(1), "{doc}");
    let hit = &doc["hits"][0];
    assert_eq!(hit["listing"], json!("acme/calc"));
    assert_eq!(hit["version"], json!("1.0.0"));
    assert_eq!(hit["review"], json!("verified"));
    assert_eq!(hit["license"], json!("MIT"));
    // The interface facets come from the component itself.
    let by_import = |interface: &str| {
        node.json(&["market", "search", "--imports", interface, "--json"])["total"].clone()
    };
    assert_eq!(by_import("soma:capsule/types"), json!(1));
    assert_eq!(by_import("soma:capsule/llm"), json!(0), "it imports no llm");
    let doc = node.json(&["market", "search", "--exports", "run", "--json"]);
    assert_eq!(doc["total"], json!(1), "{doc}");
    // Typo tolerance reaches it too.
    assert_eq!(node.search("calcc")["total"], json!(1));

    node.json(&["market", "yank", "acme/calc@1.0.0", "--json"]);
    let doc = node.search("calc");
    assert_eq!(
        doc["total"],
        json!(0),
        "a yanked version is not shown: {doc}"
    );

    // reindex rebuilds the same view from the store.
    let doc = node.json(&["market", "reindex", "--json"]);
    assert_eq!(doc["indexed"], json!(1));
    assert_eq!(node.search("calc")["total"], json!(0));
}

#[test]
fn retest_failures_put_a_version_under_maintenance_then_deprecate_it() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &registry, "");
    let l = node.listing(
        "calc",
        "1.0.0",
        &[json!({"expr": "2*(3+4)^2"})],
        Some("MIT"),
    );
    node.submit(soma_capsules::CALCULATOR_COMPONENT, &l, 0);
    node.json(&["market", "publish", "acme/calc@1.0.0", "--json"]);

    // Under this node's normal limits the re-test passes.
    let doc = node.json(&["market", "retest", "--json"]);
    assert_eq!(doc["retested"][0]["passed"], json!(true), "{doc}");
    assert_eq!(doc["retested"][0]["consecutive_failures"], json!(0));

    // The operator tightens the fuel limit below what the examples need:
    // the same smoke step now fails (exit 30, the reason code named).
    let tight_text = format!("{}\n[limits]\nfuel = 400\n", node.market_section);
    let tight = dir.path().join("tight.toml");
    std::fs::write(&tight, &tight_text).expect("tight config");
    let retest_tight = |expect_failures: u64, state: &str| {
        let out = node.soma_with(&tight, &["market", "retest", "acme/calc", "--json"]);
        assert_eq!(out.status.code(), Some(30), "{}", text(&out.stderr));
        let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
        let r = &doc["retested"][0];
        assert_eq!(r["passed"], json!(false), "{doc}");
        assert_eq!(r["consecutive_failures"], json!(expect_failures), "{doc}");
        assert_eq!(r["state"], json!(state), "{doc}");
        assert!(
            !r["reasons"].as_array().expect("reasons").is_empty(),
            "{doc}"
        );
        doc
    };
    retest_tight(1, "published");
    retest_tight(2, "published");
    // A pass resets the count.
    let doc = node.json(&["market", "retest", "--json"]);
    assert_eq!(
        doc["retested"][0]["consecutive_failures"],
        json!(0),
        "{doc}"
    );
    retest_tight(1, "published");
    retest_tight(2, "published");
    let doc = retest_tight(3, "under-maintenance");
    assert_eq!(doc["retested"][0]["state_before"], json!("published"));
    // Still installable and shown, ranked as under maintenance.
    let doc = node.search("calc");
    assert_eq!(
        doc["hits"][0]["review"],
        json!("under-maintenance"),
        "{doc}"
    );
    let buyer = dir.path().join("buyer");
    std::fs::create_dir_all(&buyer).expect("buyer");
    let lock = buyer.join("soma.lock");
    node.json(&[
        "market",
        "install",
        "acme/calc@^1",
        "--lock",
        path(&lock),
        "--json",
    ]);

    // A pass brings it back; three more failures put it under maintenance again.
    let doc = node.json(&["market", "retest", "--json"]);
    assert_eq!(doc["retested"][0]["state"], json!("published"), "{doc}");
    assert_eq!(node.search("calc")["hits"][0]["review"], json!("verified"));
    retest_tight(1, "published");
    retest_tight(2, "published");
    retest_tight(3, "under-maintenance");

    // 30 days later (the library's clock is injected; nothing sleeps),
    // a failing re-test deprecates it: hidden from search and ranges.
    {
        let engine = node.engine(&tight_text);
        let market = Market::new(engine.data().database().clone());
        let since = market
            .get("acme/calc@1.0.0")
            .expect("get")
            .expect("some")
            .retest
            .expect("retest record")
            .maintenance_since_ms
            .expect("under maintenance since");
        let almost = since + MAINTENANCE_DEPRECATES_AFTER_MS - 60_000;
        let r = pipeline::retest(&engine, &market, None, &ReviewOptions::default(), almost)
            .expect("retest");
        assert_eq!(
            r[0].state,
            SubmissionState::UnderMaintenance,
            "a minute short of 30 days"
        );
        let later = since + MAINTENANCE_DEPRECATES_AFTER_MS + 1;
        assert!(later > now_ms());
        let r = pipeline::retest(&engine, &market, None, &ReviewOptions::default(), later)
            .expect("retest");
        assert_eq!(r[0].state, SubmissionState::Deprecated, "{:?}", r[0]);
        assert!(r[0].error.is_none(), "{:?}", r[0].error);
        let history = market
            .get("acme/calc@1.0.0")
            .expect("get")
            .expect("some")
            .history;
        assert_eq!(
            history.last().and_then(|t| t.note.clone()).as_deref(),
            Some("under maintenance for 30 days")
        );
    }
    assert_eq!(
        node.search("calc")["total"],
        json!(0),
        "deprecated is hidden"
    );
    let doc = node.exits(&["market", "install", "acme/calc@^1"], 29);
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("deprecated"),
        "{doc}"
    );
    // Deprecated versions are not re-tested any more.
    let doc = node.json(&["market", "retest", "--json"]);
    assert_eq!(doc["retested"], json!([]));
}

/// Issue 19's whole pipeline for a Python capsule, as for a Rust one:
/// `py-word-count` pushed to a real registry, signed with the author's key,
/// pulled and verified under a trust rule (and refused under a rule that
/// wants another key), run in a DAG from its registry reference with the same
/// answers as the Rust `word-count`, every call metered in the ledger
/// under its component digest, and submitted to the marketplace, whose
/// automated review runs every step on it and approves it.
#[test]
fn a_python_capsule_walks_the_whole_pipeline() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::new(dir.path(), &registry, "");
    let component = soma_capsules::PY_WORD_COUNT_COMPONENT;
    let reference = format!("{}/acme/py-word-count:0.1.0", registry.host());

    // Push, and sign with the author's key.
    let out = node.soma(&["push", component, &reference]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = node.soma(&["sign", &reference, "--key", path(&node.author_key)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A trust rule: every loopback acme/* capsule must carry the signature
    // of `signer`.
    let trusting = |signer: &str| {
        let file = dir.path().join(format!("trust-{signer}.toml"));
        std::fs::write(
            &file,
            format!(
                "{}\n[[trust.rules]]\nrepository = \"127.0.0.1:*/acme/*\"\nkeys = [{:?}]\n",
                node.market_section,
                path(&dir.path().join(format!("{signer}.pub")))
            ),
        )
        .expect("trust config");
        file
    };
    let trusted = trusting("acme");
    keypair(dir.path(), "stranger");
    let strangers = trusting("stranger");
    let out = node.soma_with(&trusted, &["pull", &reference, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let pulled: Value = serde_json::from_slice(&out.stdout).expect("pull json");
    assert!(pulled["digest"].is_string(), "{pulled}");
    // Under a rule that wants another key's signature: refused (untrusted).
    let out = node.soma_with(&strangers, &["pull", &reference, "--json"]);
    assert_eq!(out.status.code(), Some(21), "{}", text(&out.stdout));

    // A DAG from the registry reference: two texts counted in parallel.
    let texts = [
        "the cat and the dog and THE bird",
        "héllo wörld, don't stop 🦀",
    ];
    let spec = dir.path().join("count.json");
    let spec_doc = json!({
        "version": 1,
        "name": "count",
        "capsules": {"wc": reference},
        "nodes": [
            {"id": "a", "capsule": "wc", "input": {"text": texts[0]}},
            {"id": "b", "capsule": "wc", "input": {"text": texts[1]}},
        ],
        "output": {"a": "{{ nodes.a.output }}", "b": "{{ nodes.b.output }}"},
    });
    std::fs::write(&spec, spec_doc.to_string()).expect("spec");
    let out = node.soma_with(
        &trusted,
        &[
            "dag",
            "run",
            path(&spec),
            "--run-id",
            "py-pipeline",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run: Value = serde_json::from_slice(&out.stdout).expect("dag json");
    assert_eq!(run["status"], json!("succeeded"), "{run}");
    for (id, t) in ["a", "b"].iter().zip(texts) {
        let out = node.soma(&[
            "run",
            soma_capsules::WORD_COUNT_COMPONENT,
            "--input",
            &json!({ "text": t }).to_string(),
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let rust: Value = serde_json::from_slice(&out.stdout).expect("run json");
        let rust: Value = match &rust["output"] {
            Value::String(s) => serde_json::from_str(s).expect("word-count output"),
            other => other.clone(),
        };
        let python = match &run["output"][id] {
            Value::String(s) => serde_json::from_str(s).expect("py-word-count output"),
            other => other.clone(),
        };
        assert_eq!(python, rust, "node {id}");
    }

    // Metered: fuel for each node, under the component's digest (the one
    // `soma run` reports for the file that was pushed).
    let out = node.soma(&["run", component, "--input", r#"{"text": ""}"#, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let local: Value = serde_json::from_slice(&out.stdout).expect("run json");
    let digest = local["capsule"]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    let entries = node.json(&["ledger", "ls", "--run", "py-pipeline", "--json"]);
    let entries = entries.as_array().expect("entries");
    for id in ["a", "b"] {
        let fuel = entries
            .iter()
            .find(|e| e["node"] == json!(id) && e["kind"] == json!("fuel"))
            .unwrap_or_else(|| panic!("no fuel entry for {id}: {entries:?}"));
        assert_eq!(fuel["capsule"], json!(digest), "{fuel}");
        assert!(fuel["quantity"].as_u64().unwrap_or(0) > 0, "{fuel}");
    }
    let check = node.json(&["ledger", "check", "--json"]);
    assert_eq!(check["ok"], json!(true), "{check}");

    // The marketplace review, with the default limits (32 MiB fits a ~19 MB
    // CPython component). Every step runs as for a Rust capsule: the
    // signature verifies, the component compiles, describe() answers, the
    // secret scan finds no credential in CPython's data (its SHA-crypt test
    // vectors are hashes), the example runs under a quarter of the limits,
    // hostile inputs are refused, and least privilege holds: the build
    // linked no Soma capability describe() does not ask for, and the WASI
    // filesystem and sockets CPython's libc links are listed as inert.
    let l = node.listing(
        "py-word-count",
        "0.1.0",
        &[json!({"text": "to be or not to be"})],
        Some("Apache-2.0"),
    );
    let doc = node.submit(component, &l, 0);
    let review = &doc["review"];
    assert_eq!(review["verdict"], json!("approved"), "{doc}");
    let privilege = review["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .find(|e| e["code"] == json!("least-privilege"))
        .expect("least-privilege evidence");
    let imports = privilege["measured"]["imports"].to_string();
    for capability in [
        "soma:capsule/kv",
        "soma:capsule/llm",
        "soma:capsule/secrets",
        "wasi:http/",
    ] {
        assert!(
            !imports.contains(capability),
            "{capability} linked: {imports}"
        );
    }
    let inert = privilege["measured"]["inert"].to_string();
    assert!(inert.contains("wasi:sockets/"), "{privilege}");
    let passed: Vec<&str> = review["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter(|e| e["status"] == json!("passed"))
        .filter_map(|e| e["code"].as_str())
        .collect();
    for code in [
        "signature-verified",
        "compiled",
        "world-supported",
        "smoke-passed",
        "hostile-handled",
    ] {
        assert!(passed.contains(&code), "{code}: {passed:?}");
    }
}
