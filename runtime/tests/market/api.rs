//! The marketplace over the daemon (`/v1/market/...`) against a real
//! `soma daemon` process, a real `docker-registry` and real keys: an author
//! tenant registers its namespace with a proof of possession, submits a
//! signed calculator (reviewed on submit), the operator publishes it, a
//! buyer tenant searches, reads the listing, installs it (pinned for that
//! tenant only) and runs it in a DAG by `market:` name; the journal records
//! the pinned digest. Every `/v1/market` route is also tried by the wrong
//! tenant or scope, and the resource bounds are hit: an oversized listing
//! body (413) and concurrent submissions past `[market]
//! max_concurrent_reviews` (429 with `Retry-After`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};
use soma_runtime::{dag::journal::Journal, store::DataDir, verify::KeyPair};
use soma_tests::{
    daemon::{DaemonProcess, token},
    market::{author_body, push_signed},
    registry::Registry,
};

const PASSWORD: &str = "market-api-test";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// A calculator listing for `name@version`.
fn listing(name: &str, version: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "summary": "Evaluate arithmetic expressions.",
        "readme": "# calculator\nEvaluates `+ - * / ^` with parentheses.",
        "keywords": ["math", "calculator"],
        "categories": ["math"],
        "license": "Apache-2.0",
        "source": "https://example.com/acme/calc",
        "examples": [{"input": {"expr": "2*(3+4)^2"}}, {"input": {"expr": "1/4 + 3"}}],
        "price": {"model": "per-call", "micros": 1000},
    })
}

struct Setup {
    registry: Registry,
    dir: tempfile::TempDir,
    acme_key: KeyPair,
    beta_key: KeyPair,
    /// Tenant `tenant-a` (the author), admin.
    a: String,
    /// Tenant `tenant-a`, read only.
    a_reader: String,
    /// Tenant `tenant-b` (the buyer), admin.
    b: String,
    /// The operator (marketplace staff).
    ops: String,
}

impl Setup {
    fn new() -> Self {
        let registry = Registry::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data");
        let a = token(bin(), &data, "tenant-a", "admin");
        let a_reader = token(bin(), &data, "tenant-a", "read");
        let b = token(bin(), &data, "tenant-b", "admin");
        let ops = token(bin(), &data, "ops", "operator");
        Self {
            registry,
            dir,
            acme_key: KeyPair::generate(),
            beta_key: KeyPair::generate(),
            a,
            a_reader,
            b,
            ops,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Start the daemon with `[market]` (the marketplace key, its public
    /// key, the registry) and `extra` market keys; the key's password in
    /// its environment if `password`.
    fn daemon(&self, market_keys: &str, password: bool) -> DaemonProcess {
        let market = KeyPair::generate();
        let (private, public) = market
            .save(&self.dir.path().join("market"), PASSWORD.as_bytes())
            .expect("market key");
        let extra = format!(
            "[market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\n{market_keys}\n",
            private.display().to_string(),
            public.display().to_string(),
            self.registry.host()
        );
        DaemonProcess::start_with_env(
            bin(),
            &self.data(),
            "",
            &extra,
            if password {
                &[("SOMA_PASSWORD", PASSWORD)]
            } else {
                &[]
            },
        )
    }
}

fn id_path(id: &str) -> String {
    id.replace('/', "%2F")
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn the_whole_flow_over_http_and_tenant_isolation_on_every_market_route() {
    let setup = Setup::new();
    let d = setup.daemon("max_concurrent_reviews = 2\n", true);
    let (a, b, ops) = (&setup.a, &setup.b, &setup.ops);

    // --- Authors: proof of possession, bound to the caller's tenant.
    let (s, v) = d.post(
        "/v1/market/authors",
        a,
        &author_body("acme", &setup.acme_key, "tenant-a"),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["yours"], json!(true));
    assert_eq!(v["tenant"], json!("tenant-a"));
    assert_eq!(v["key_id"], json!(setup.acme_key.public().id()));
    // Again: the same record (idempotent).
    let (s, v) = d.post(
        "/v1/market/authors",
        a,
        &author_body("acme", &setup.acme_key, "tenant-a"),
    );
    assert_eq!(s, 200, "{v}");
    // A read-only token of the same tenant may not register.
    let (s, _) = d.post(
        "/v1/market/authors",
        &setup.a_reader,
        &author_body("acme-two", &setup.acme_key, "tenant-a"),
    );
    assert_eq!(s, 403);
    // B replays A's request: the proof names tenant-a, so it does not
    // prove anything for tenant-b.
    let (s, v) = d.post(
        "/v1/market/authors",
        b,
        &author_body("acme", &setup.acme_key, "tenant-a"),
    );
    assert_eq!((s, code(&v)), (400, "bad-proof"), "{v}");
    // B registers A's namespace with a key it holds: taken.
    let (s, v) = d.post(
        "/v1/market/authors",
        b,
        &author_body("acme", &setup.beta_key, "tenant-b"),
    );
    assert_eq!((s, code(&v)), (409, "namespace-taken"), "{v}");
    // B claims A's public key for a new name, signing with its own key: refused.
    let mut stolen = author_body("beta", &setup.beta_key, "tenant-b");
    stolen["public_key"] = json!(setup.acme_key.public().to_pem().expect("pem"));
    let (s, v) = d.post("/v1/market/authors", b, &stolen);
    assert_eq!((s, code(&v)), (400, "bad-proof"), "{v}");
    let (s, v) = d.post(
        "/v1/market/authors",
        b,
        &author_body("beta", &setup.beta_key, "tenant-b"),
    );
    assert_eq!(s, 201, "{v}");
    // Anyone may look a namespace up; only its tenant (and operators) see the owner.
    let (s, v) = d.get("/v1/market/authors/acme", b);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["yours"].clone(), v["tenant"].clone()),
        (json!(false), Value::Null)
    );
    assert_eq!(
        d.get("/v1/market/authors/acme", ops).1["tenant"],
        json!("tenant-a")
    );
    assert_eq!(d.get("/v1/market/authors/nobody", b).0, 404);

    // --- Submit: the author pushed and signed; the review runs on submit.
    let reference = push_signed(
        &setup.registry,
        "acme/calc",
        "1.0.0",
        soma_capsules::CALCULATOR_COMPONENT,
        &setup.acme_key,
    );
    let body = json!({"listing": listing("acme/calc", "1.0.0"), "reference": reference});
    // B may not submit into A's namespace (even with A's signed reference).
    let (s, v) = d.post("/v1/market/submissions", b, &body);
    assert_eq!((s, code(&v)), (403, "foreign-namespace"), "{v}");
    let (s, v) = d.post("/v1/market/submissions", a, &body);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["id"], json!("acme/calc@1.0.0"));
    assert_eq!(v["submission"]["state"], json!("approved"), "{v}");
    assert!(v["review"].is_object(), "{v}");
    let digest = v["submission"]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    assert!(v["submission"]["review"]["evidence"].is_object(), "{v}");
    // The same version and component again: 200, nothing changes.
    let (s, v) = d.post("/v1/market/submissions", a, &body);
    assert_eq!((s, v["created"].clone()), (200, json!(false)), "{v}");
    // A reference signed by another key is refused for acme's namespace
    // (another component, so no signature of acme's is on its digest).
    let forged = push_signed(
        &setup.registry,
        "acme/calc",
        "1.0.1",
        soma_capsules::ECHO_COMPONENT,
        &setup.beta_key,
    );
    let (s, v) = d.post(
        "/v1/market/submissions",
        a,
        &json!({"listing": listing("acme/calc", "1.0.1"), "reference": forged}),
    );
    assert_eq!((s, code(&v)), (422, "untrusted"), "{v}");
    // An invalid listing names its field.
    let mut bad = listing("acme/calc", "1.0.2");
    bad["license"] = json!("Not A License");
    let (s, v) = d.post(
        "/v1/market/submissions",
        a,
        &json!({"listing": bad, "reference": reference}),
    );
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("listing.license")),
        "{v}"
    );

    // --- Reading submissions: A sees its unpublished version with evidence; B gets 404.
    let path = format!("/v1/market/submissions/{}", id_path("acme/calc@1.0.0"));
    let (s, v) = d.get(&path, a);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["yours"], json!(true));
    assert!(v["submission"]["review"]["evidence"].is_object(), "{v}");
    let (s, v) = d.get(&path, b);
    assert_eq!((s, code(&v)), (404, "not-found"), "{v}");
    let (s, v) = d.get("/v1/market/submissions", b);
    assert_eq!(s, 200);
    assert_eq!(v, json!([]), "B lists none of A's unpublished versions");
    let (s, v) = d.get("/v1/market/submissions?name=acme/calc", a);
    assert_eq!(s, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");

    // Not yet published: nobody finds it, lists it or installs it — A included.
    for token in [a, b] {
        let (s, v) = d.get("/v1/market/search?q=calculator", token);
        assert_eq!((s, v["total"].clone()), (200, json!(0)), "{v}");
        assert_eq!(d.get("/v1/market/listings/acme/calc", token).0, 404);
    }
    let (s, v) = d.post("/v1/market/installs", b, &json!({"name": "acme/calc@^1"}));
    assert_eq!((s, code(&v)), (404, "not-found"), "{v}");
    let (s, v) = d.post(
        "/v1/market/installs",
        b,
        &json!({"name": format!("acme/calc@{digest}")}),
    );
    assert_eq!(s, 404, "an unpublished digest does not install: {v}");

    // --- Publish: marketplace staff only.
    let publish = format!("{path}/publish");
    for token in [a, b] {
        let (s, v) = d.post(&publish, token, &json!({}));
        assert_eq!(s, 403, "{v}");
    }
    for action in ["yank", "deprecate"] {
        for token in [a, b] {
            let (s, v) = d.post(&format!("{path}/{action}"), token, &json!({}));
            assert_eq!(s, 403, "{action}: {v}");
        }
    }
    let (s, v) = d.post(&publish, ops, &json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["submission"]["state"], json!("published"));
    // Published: B sees it now, without the review's evidence.
    let (s, v) = d.get(&path, b);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["yours"], json!(false));
    assert_eq!(v["submission"]["review"]["evidence"], Value::Null, "{v}");

    // --- Search and listing.
    let (s, v) = d.get("/v1/market/search?q=calculater&category=math", b);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["hits"][0]["listing"], json!("acme/calc"), "{v}");
    let (s, v) = d.get("/v1/market/search?q=calculator&category=text", b);
    assert_eq!((s, v["total"].clone()), (200, json!(0)), "{v}");
    let (s, v) = d.get("/v1/market/search?kind=nonsense", b);
    assert_eq!(s, 400, "{v}");
    let (s, v) = d.get("/v1/market/listings/acme/calc", b);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["versions"][0]["digest"], json!(digest));
    // The measured cost card: nothing called it on this node yet (the
    // review's smoke runs are on a throwaway engine, not the node's ledger).
    assert_eq!(v["versions"][0]["cost_card"]["calls"], json!(0), "{v}");
    assert_eq!(
        v["versions"][0]["cost_card"]["success_rate"],
        Value::Null,
        "{v}"
    );
    assert_eq!(v["listing"]["license"], json!("Apache-2.0"));
    assert_eq!(d.get("/v1/market/listings/beta/nothing", b).0, 404);

    // --- Install for B only.
    let (s, v) = d.post(
        "/v1/market/installs",
        &setup.a_reader,
        &json!({"name": "acme/calc@^1"}),
    );
    assert_eq!(s, 403, "a read token does not install: {v}");
    let (s, v) = d.post("/v1/market/installs", b, &json!({"name": "acme/calc@^1"}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["install"]["digest"], json!(digest));
    assert_eq!(v["install"]["version"], json!("1.0.0"));
    let (s, v) = d.get("/v1/market/installs", b);
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)), "{v}");
    let (s, v) = d.get("/v1/market/installs", a);
    assert_eq!((s, v), (200, json!([])), "A sees none of B's installs");
    let (s, v, _) = d.request(
        reqwest::Method::DELETE,
        "/v1/market/installs/acme/calc",
        Some(a),
        None,
    );
    assert_eq!(s, 404, "A cannot delete B's install: {v}");

    // --- Runs: B's DAG names market:acme/calc; A's (no pin) is refused.
    let spec = json!({
        "version": 1,
        "name": "market-api",
        "capsules": {"calc": "market:acme/calc@^1"},
        "nodes": [{"id": "n", "capsule": "calc", "input": {"expr": "6*7"}}],
    });
    let (s, v) = d.post("/v1/runs", b, &json!({"dag": spec}));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let done = d.wait_finished(b, &run, Duration::from_secs(60));
    assert_eq!(done["status"], json!("succeeded"), "{done}");
    let (s, v) = d.post("/v1/runs", a, &json!({"dag": spec}));
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("dag.capsules")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("has not installed"),
        "{v}"
    );

    // A single call by market: name, likewise through the caller's pin only.
    let call = json!({"capsule": "market:acme/calc@^1", "input": {"expr": "6*7"}});
    let (s, v) = d.post("/v1/runs", b, &call);
    assert_eq!((s, v["ok"].clone()), (200, json!(true)), "{v}");
    let (s, v) = d.post("/v1/runs", a, &call);
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("capsule")),
        "{v}"
    );

    // --- Yank (staff): B's pin still resolves by digest.
    let (s, v) = d.post(&format!("{path}/yank"), ops, &json!({"reason": "test"}));
    assert_eq!(
        (s, v["submission"]["state"].clone()),
        (200, json!("yanked")),
        "{v}"
    );
    // A yanked version stays yanked: deprecating it is a typed conflict.
    let (s, v) = d.post(&format!("{path}/deprecate"), ops, &json!({}));
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");
    let (s, v) = d.post("/v1/runs", b, &json!({"dag": spec}));
    assert_eq!(s, 202, "a pin outlives a yank: {v}");
    let pinned_run = v["run"].as_str().expect("run").to_owned();
    assert_eq!(
        d.wait_finished(b, &pinned_run, Duration::from_secs(60))["status"],
        json!("succeeded")
    );
    // Yanked: hidden from search.
    let (_, v) = d.get("/v1/market/search?q=calculator", b);
    assert_eq!(v["total"], json!(0), "{v}");

    // --- Uninstall: B's market: name no longer resolves.
    let (s, v, _) = d.request(
        reqwest::Method::DELETE,
        "/v1/market/installs/acme/calc",
        Some(b),
        None,
    );
    assert_eq!(s, 200, "{v}");
    let (s, _) = d.post("/v1/runs", b, &json!({"dag": spec}));
    assert_eq!(s, 400);

    // The journal recorded the pinned manifest digest.
    d.stop();
    let records = Journal::new(DataDir::new(setup.data()).database().clone())
        .pinned_capsules(&run)
        .expect("journal");
    assert_eq!(
        records["calc"].reference,
        format!("market:acme/calc@{digest}")
    );
}

#[test]
fn oversized_listings_and_submissions_past_the_review_cap_are_refused() {
    let setup = Setup::new();
    // No SOMA_PASSWORD: the daemon starts, and refuses to publish, naming the key.
    let d = setup.daemon("max_concurrent_reviews = 1\n", false);
    let a = &setup.a;
    let (s, v) = d.post(
        "/v1/market/authors",
        a,
        &author_body("acme", &setup.acme_key, "tenant-a"),
    );
    assert_eq!(s, 201, "{v}");

    // A listing body over daemon.max_body_bytes (64 KiB here): 413, typed.
    let mut huge = listing("acme/calc", "1.0.0");
    huge["readme"] = json!("x".repeat(100 * 1024));
    let (s, v) = d.post(
        "/v1/market/submissions",
        a,
        &json!({"listing": huge, "reference": "127.0.0.1:1/acme/calc:1.0.0"}),
    );
    assert_eq!((s, code(&v)), (413, "body-too-large"), "{v}");

    // Eight submissions at once with one review slot: the slot's holder
    // runs; the others are told to come back (429, Retry-After), never queued.
    let references: Vec<String> = (0..8)
        .map(|k| {
            push_signed(
                &setup.registry,
                "acme/calc",
                &format!("2.0.{k}"),
                soma_capsules::CALCULATOR_COMPONENT,
                &setup.acme_key,
            )
        })
        .collect();
    let answers: Vec<(u16, Value, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = references
            .iter()
            .enumerate()
            .map(|(k, reference)| {
                let d = &d;
                scope.spawn(move || {
                    let body = json!({
                        "listing": listing("acme/calc", &format!("2.0.{k}")),
                        "reference": reference,
                    });
                    let (s, v, headers) = d.request(
                        reqwest::Method::POST,
                        "/v1/market/submissions",
                        Some(a),
                        Some(body.to_string()),
                    );
                    let retry = headers
                        .get("retry-after")
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned);
                    (s, v, retry)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("submitter"))
            .collect()
    });
    let refused: Vec<_> = answers.iter().filter(|(s, ..)| *s == 429).collect();
    let reviewed = answers.iter().filter(|(s, ..)| *s == 201).count();
    assert!(reviewed >= 1, "{answers:?}");
    assert!(
        !refused.is_empty(),
        "no submission was refused: {answers:?}"
    );
    for (_, v, retry) in &refused {
        assert_eq!(code(v), "too-many-reviews", "{v}");
        assert!(retry.is_some(), "429 without Retry-After: {v}");
    }
    assert_eq!(refused.len() + reviewed, answers.len(), "{answers:?}");
    // The slot is free again afterwards.
    let (s, v) = d.post(
        "/v1/market/submissions",
        a,
        &json!({"listing": listing("acme/calc", "2.0.0"), "reference": references[0]}),
    );
    assert!(s == 200 || s == 201, "{v}");
    let (s, v) = d.post(
        &format!(
            "/v1/market/submissions/{}/publish",
            id_path("acme/calc@2.0.0")
        ),
        &setup.ops,
        &json!({}),
    );
    assert_eq!((s, code(&v)), (503, "not-configured"), "{v}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("[market] key") && message.contains("SOMA_PASSWORD"),
        "{v}"
    );
}

/// `[market] manual_approval = true` over HTTP: a passed review waits for
/// marketplace staff; a tenant admin (even the author's) cannot approve,
/// reject needs a reason, publish is refused until approved, and the
/// reviewer's token is recorded.
#[test]
fn manual_approval_over_http_is_staff_only_and_gates_publish() {
    let setup = Setup::new();
    let d = setup.daemon("manual_approval = true\n", true);
    let (a, b, ops) = (&setup.a, &setup.b, &setup.ops);
    let (s, v) = d.post(
        "/v1/market/authors",
        a,
        &author_body("acme", &setup.acme_key, "tenant-a"),
    );
    assert_eq!(s, 201, "{v}");
    let reference = push_signed(
        &setup.registry,
        "acme/calc",
        "1.0.0",
        soma_capsules::CALCULATOR_COMPONENT,
        &setup.acme_key,
    );
    let body = json!({"listing": listing("acme/calc", "1.0.0"), "reference": reference});
    let (s, v) = d.post("/v1/market/submissions", a, &body);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["submission"]["state"], json!("awaiting-approval"), "{v}");
    let id = id_path("acme/calc@1.0.0");
    let publish = format!("/v1/market/submissions/{id}/publish");
    let approve = format!("/v1/market/submissions/{id}/approve");
    let reject = format!("/v1/market/submissions/{id}/reject");
    // Publish before a reviewer decided: refused.
    let (s, v) = d.post(&publish, ops, &json!({}));
    assert_eq!(s, 409, "{v}");
    // Tenants (the author's own admin, another tenant) cannot decide.
    for t in [a, b] {
        assert_eq!(d.post(&approve, t, &json!({})).0, 403);
        assert_eq!(d.post(&reject, t, &json!({"reason": "no"})).0, 403);
    }
    // Reject needs a reason.
    let (s, v) = d.post(&reject, ops, &json!({}));
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("reason")),
        "{v}"
    );
    let (s, v) = d.post(&approve, ops, &json!({"reason": "checked by hand"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["submission"]["state"], json!("approved"), "{v}");
    assert!(
        v["submission"]["history"]
            .to_string()
            .contains("checked by hand"),
        "{v}"
    );
    let (s, v) = d.post(&publish, ops, &json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["submission"]["state"], json!("published"), "{v}");
    // Once published, a reviewer's rejection is refused.
    let (s, v) = d.post(&reject, ops, &json!({"reason": "too late"}));
    assert_eq!(s, 409, "{v}");
}
