//! The marketplace's core against a real `docker-registry` with real keys:
//! an author registers, submits (push + author signature verified against
//! the registered key), the review is recorded, the operator publishes
//! (marketplace countersignature: two signatures on one digest), a buyer
//! installs by range (lockfile pin), `soma run` and `soma dag run` resolve
//! `market:` names through the pin and record the pinned digest, `update`
//! moves pins, a yank hides a version from ranges while its pin still runs;
//! and the refusals: an immutable version, a foreign namespace, a wrong
//! author key, an invalid listing.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use serde_json::{Value, json};
use soma_runtime::{
    dag::journal::Journal,
    market::store::Market,
    oci::{self, Auth, Reference},
    store::DataDir,
    verify::{Admission, KeyPair, TrustPolicy},
};
use soma_tests::{daemon::soma, registry::Registry};

const PASSWORD: &str = "market-test";

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

/// One marketplace node: its data directory and soma.toml.
struct Node {
    data: PathBuf,
    config: PathBuf,
}

impl Node {
    fn new(dir: &Path, registry: &Registry, market_key: &Path, market_pub: &Path) -> Self {
        let config = dir.join("soma.toml");
        std::fs::write(
            &config,
            format!(
                "[market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\n",
                market_key.display().to_string(),
                market_pub.display().to_string(),
                registry.host()
            ),
        )
        .expect("config");
        Self {
            data: dir.join("data"),
            config,
        }
    }

    /// `soma --config … ARGS` in `cwd`, with the key password in the environment.
    fn soma(&self, cwd: &Path, args: &[&str]) -> Output {
        soma(bin(), &self.data)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(cwd)
            .env("SOMA_PASSWORD", PASSWORD)
            .output()
            .expect("soma")
    }

    /// Like [`Node::soma`], expecting exit 0 and one JSON document.
    fn json(&self, cwd: &Path, args: &[&str]) -> Value {
        let out = self.soma(cwd, args);
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

    /// Like [`Node::soma`] with `--json`, expecting `code` and the error document.
    fn refused(&self, cwd: &Path, args: &[&str], code: i32) -> String {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.soma(cwd, &args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "soma {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).expect("json error");
        assert_eq!(doc["ok"], json!(false), "{doc}");
        assert_eq!(doc["error"]["exit_code"], json!(code), "{doc}");
        doc["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn market(&self) -> Market {
        Market::new(DataDir::new(&self.data).database().clone())
    }
}

/// A listing for `acme/echo` (or `name`) at `version`.
fn listing(dir: &Path, name: &str, version: &str) -> PathBuf {
    let path = dir.join(format!("{}-{version}.toml", name.replace('/', "-")));
    std::fs::write(
        &path,
        format!(
            r##"name = "{name}"
version = "{version}"
summary = "Echo the input back."
readme = {{ markdown = "# echo\nReturns its input." }}
keywords = ["echo", "test"]
categories = ["text"]
license = "Apache-2.0"
source = "https://example.com/acme/echo"

[[examples]]
input = "hi"

[price]
model = "per-call"
micros = 2000
"##
        ),
    )
    .expect("listing");
    path
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[test]
fn submit_review_publish_install_run_update_and_yank() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (author_key, author_private, author_public) = keypair(root, "acme");
    let (market_key, market_private, market_public) = keypair(root, "market");
    let node = Node::new(root, &registry, &market_private, &market_public);

    // Register the author.
    let doc = node.json(
        root,
        &[
            "market",
            "author",
            "register",
            "--name",
            "acme",
            "--key-file",
            author_private.to_str().expect("utf-8"),
            "--key",
            author_public.to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(doc["author"]["key_id"], json!(author_key.public().id()));

    // Submit 1.0.0: pushed, signed as the author, verified, recorded.
    let l1 = listing(root, "acme/echo", "1.0.0");
    let doc = node.json(
        root,
        &[
            "market",
            "submit",
            soma_capsules::ECHO_COMPONENT,
            "--listing",
            l1.to_str().expect("utf-8"),
            "--key",
            author_private.to_str().expect("utf-8"),
            "--json",
        ],
    );
    let submitted = &doc["submitted"];
    assert_eq!(submitted["created"], json!(true));
    assert_eq!(submitted["pushed"], json!(true));
    // Submit ran the automated review and recorded it: approved.
    assert_eq!(submitted["submission"]["state"], json!("approved"));
    assert_eq!(doc["review"]["verdict"], json!("approved"), "{doc}");
    assert_eq!(
        submitted["submission"]["listing"]["price"],
        json!({"model": "per-call", "micros": 2000})
    );
    let digest_1 = s(&submitted["submission"]["digest"]).to_owned();
    // The author's signature is in the registry, by the registered key.
    let reference_1 =
        Reference::parse(&format!("{}/acme/echo@{digest_1}", registry.host())).expect("ref");
    oci::verify_remote(
        &reference_1,
        &Auth::Anonymous,
        &TrustPolicy::keys(vec![author_key.public()]),
        &Default::default(),
    )
    .expect("author signature");

    // The review's evidence is on the submission, every step with its code.
    let reviewed = node
        .market()
        .get("acme/echo@1.0.0")
        .expect("get")
        .expect("recorded");
    let review = reviewed.review.as_ref().expect("review recorded");
    assert!(review.passed && review.reasons.is_empty(), "{review:?}");
    let steps: Vec<&str> = review.evidence["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    assert!(
        steps.contains(&"signature") && steps.contains(&"smoke"),
        "{steps:?}"
    );

    // Publish: the marketplace countersigns the same digest.
    let doc = node.json(root, &["market", "publish", "acme/echo@1.0.0", "--json"]);
    assert_eq!(doc["version"]["state"], json!("published"));
    assert_eq!(doc["version"]["digest"], json!(digest_1));
    let both = TrustPolicy::all_of(vec![author_key.public(), market_key.public()], "test");
    let (_, admission) =
        oci::verify_remote(&reference_1, &Auth::Anonymous, &both, &Default::default())
            .expect("two signatures");
    match admission {
        Admission::Keys { keys } => {
            assert!(
                keys.contains(&author_key.public().id())
                    && keys.contains(&market_key.public().id()),
                "{keys:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A key that signed nothing is not satisfied by them (the check can fail).
    let stranger = TrustPolicy::all_of(
        vec![author_key.public(), KeyPair::generate().public()],
        "test",
    );
    oci::verify_remote(
        &reference_1,
        &Auth::Anonymous,
        &stranger,
        &Default::default(),
    )
    .expect_err("a third key never signed");

    // A buyer installs with a range: pinned in soma.lock.
    let buyer = root.join("buyer");
    std::fs::create_dir_all(&buyer).expect("buyer dir");
    let doc = node.json(&buyer, &["market", "install", "acme/echo@^1", "--json"]);
    assert_eq!(doc["installed"]["pin"]["version"], json!("1.0.0"));
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(buyer.join("soma.lock")).expect("soma.lock"))
            .expect("lockfile toml");
    assert_eq!(
        lock["capsules"]["acme/echo"]["digest"].as_str(),
        Some(digest_1.as_str())
    );
    assert_eq!(lock["capsules"]["acme/echo"]["range"].as_str(), Some("^1"));

    // `soma run market:…` resolves through the pin and reports the pinned digest.
    let doc = node.json(
        &buyer,
        &["run", "market:acme/echo@^1", "--input", "hi", "--json"],
    );
    assert_eq!(doc["output"], json!("hi"));
    assert_eq!(doc["capsule"]["manifest_digest"], json!(digest_1));

    // 1.1.0 (another component), reviewed and published.
    let l2 = listing(root, "acme/echo", "1.1.0");
    // word-count takes {"text": …}: its example says so (the review runs it).
    let l2_text = std::fs::read_to_string(&l2).expect("listing");
    std::fs::write(
        &l2,
        l2_text.replace("input = \"hi\"", "input = { text = \"a b\" }"),
    )
    .expect("listing");
    let doc = node.json(
        root,
        &[
            "market",
            "submit",
            soma_capsules::WORD_COUNT_COMPONENT,
            "--listing",
            l2.to_str().expect("utf-8"),
            "--key",
            author_private.to_str().expect("utf-8"),
            "--json",
        ],
    );
    let digest_2 = s(&doc["submitted"]["submission"]["digest"]).to_owned();
    assert_ne!(digest_1, digest_2);
    assert_eq!(doc["submitted"]["submission"]["state"], json!("approved"));
    node.json(root, &["market", "publish", "acme/echo@1.1.0", "--json"]);

    // The pin holds until `update` moves it within its range.
    let doc = node.json(
        &buyer,
        &["run", "market:acme/echo@^1", "--input", "hi", "--json"],
    );
    assert_eq!(
        doc["capsule"]["manifest_digest"],
        json!(digest_1),
        "the pin holds"
    );
    let doc = node.json(&buyer, &["market", "update", "--json"]);
    assert_eq!(doc["updated"][0]["previous"], json!("1.0.0"));
    assert_eq!(doc["updated"][0]["pin"]["version"], json!("1.1.0"));
    let doc = node.json(
        &buyer,
        &[
            "run",
            "market:acme/echo@^1",
            "--input",
            "{\"text\": \"a b\"}",
            "--json",
        ],
    );
    assert_eq!(doc["capsule"]["manifest_digest"], json!(digest_2));
    assert_eq!(doc["output"]["words"], json!(2));

    // A DAG spec beside the lockfile: the journal records the pinned digest.
    let spec = buyer.join("spec.json");
    std::fs::write(
        &spec,
        json!({
            "version": 1,
            "name": "market",
            "capsules": {"w": "market:acme/echo@^1"},
            "nodes": [{"id": "a", "capsule": "w", "input": {"text": "x y z"}}],
        })
        .to_string(),
    )
    .expect("spec");
    node.json(
        &buyer,
        &[
            "dag",
            "run",
            spec.to_str().expect("utf-8"),
            "--run-id",
            "m1",
            "--json",
        ],
    );
    let records = Journal::new(DataDir::new(&node.data).database().clone())
        .pinned_capsules("m1")
        .expect("journal");
    assert_eq!(
        records["w"].reference,
        format!("market:acme/echo@{digest_2}")
    );

    // Yank 1.1.0: ranges pass over it; the pin (and its digest) still run.
    node.json(
        root,
        &[
            "market",
            "yank",
            "acme/echo@1.1.0",
            "--reason",
            "bad release",
            "--json",
        ],
    );
    let fresh = root.join("fresh");
    std::fs::create_dir_all(&fresh).expect("fresh dir");
    let doc = node.json(&fresh, &["market", "install", "acme/echo@^1", "--json"]);
    assert_eq!(
        doc["installed"]["pin"]["version"],
        json!("1.0.0"),
        "yanked is hidden from ranges"
    );
    let doc = node.json(
        &buyer,
        &[
            "run",
            "market:acme/echo@^1",
            "--input",
            "{\"text\": \"a\"}",
            "--json",
        ],
    );
    assert_eq!(
        doc["capsule"]["manifest_digest"],
        json!(digest_2),
        "the pinned yanked digest runs"
    );
    let by_digest = format!("market:acme/echo@{digest_2}");
    let doc = node.json(
        &fresh,
        &["run", &by_digest, "--input", "{\"text\": \"a\"}", "--json"],
    );
    assert_eq!(doc["capsule"]["manifest_digest"], json!(digest_2));
    // Without a lockfile, a range resolves through the store, passing over the yank.
    let nolock = root.join("nolock");
    std::fs::create_dir_all(&nolock).expect("dir");
    let doc = node.json(
        &nolock,
        &["run", "market:acme/echo@^1", "--input", "hi", "--json"],
    );
    assert_eq!(doc["capsule"]["manifest_digest"], json!(digest_1));
    // A range nothing matches is refused, typed.
    let message = node.refused(&nolock, &["market", "install", "acme/echo@^2"], 29);
    assert!(message.contains("no installable version"), "{message}");

    // A pin whose marketplace signature is missing is refused: a node
    // trusting another marketplace key cannot run it.
    let (_, _, other_public) = keypair(root, "other-market");
    let other = root.join("other.toml");
    std::fs::write(
        &other,
        format!(
            "[market]\npublic_key = {:?}\n",
            other_public.display().to_string()
        ),
    )
    .expect("config");
    let out = soma(bin(), &node.data)
        .arg("--config")
        .arg(&other)
        .args(["run", &by_digest, "--input", "{\"text\": \"a\"}"])
        .current_dir(&fresh)
        .output()
        .expect("soma run");
    // The cache recorded author + marketplace keys; the other key is not among them.
    assert_eq!(out.status.code(), Some(21), "{}", text(&out.stderr));
}

#[test]
fn immutable_versions_foreign_namespaces_wrong_keys_and_bad_listings_are_refused() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (_, _, acme_public) = keypair(root, "acme");
    let acme_private = root.join("acme.key");
    let (_, evil_private, evil_public) = keypair(root, "evil");
    let (_, stray_private, _) = keypair(root, "stray");
    let (_, market_private, market_public) = keypair(root, "market");
    let node = Node::new(root, &registry, &market_private, &market_public);
    // `--key PUB` is accepted only with the private key that proves it: a
    // public key that is not `--key-file`'s other half is refused.
    let message = node.refused(
        root,
        &[
            "market",
            "author",
            "register",
            "--name",
            "acme",
            "--key-file",
            evil_private.to_str().expect("utf-8"),
            "--key",
            acme_public.to_str().expect("utf-8"),
        ],
        1,
    );
    assert!(message.contains("not the public half"), "{message}");
    for (name, private, public) in [
        ("acme", &acme_private, &acme_public),
        ("evil", &evil_private, &evil_public),
    ] {
        node.json(
            root,
            &[
                "market",
                "author",
                "register",
                "--name",
                name,
                "--key-file",
                private.to_str().expect("utf-8"),
                "--key",
                public.to_str().expect("utf-8"),
                "--json",
            ],
        );
    }
    // The same name with another key is refused; the same key again is idempotent.
    let message = node.refused(
        root,
        &[
            "market",
            "author",
            "register",
            "--name",
            "acme",
            "--key-file",
            evil_private.to_str().expect("utf-8"),
        ],
        29,
    );
    assert!(message.contains("already registered"), "{message}");
    node.json(
        root,
        &[
            "market",
            "author",
            "register",
            "--name",
            "acme",
            "--key-file",
            acme_private.to_str().expect("utf-8"),
            "--json",
        ],
    );

    let l1 = listing(root, "acme/echo", "1.0.0");
    let submit = |component: &str, key: &Path| -> Vec<String> {
        [
            "market",
            "submit",
            component,
            "--listing",
            l1.to_str().expect("utf-8"),
            "--key",
            key.to_str().expect("utf-8"),
        ]
        .map(str::to_owned)
        .to_vec()
    };

    // Another author cannot submit into acme's namespace.
    let message = node.refused(
        root,
        &args(&submit(soma_capsules::ECHO_COMPONENT, &evil_private)),
        18,
    );
    assert!(
        message.contains("cannot submit into the namespace `acme/`"),
        "{message}"
    );
    // An unregistered key is not acme's key.
    let message = node.refused(
        root,
        &args(&submit(soma_capsules::ECHO_COMPONENT, &stray_private)),
        21,
    );
    assert!(
        message.contains("not author `acme`'s registered key"),
        "{message}"
    );
    // Nothing was pushed by the refused submissions.
    let tags = registry.get("/v2/acme/echo/tags/list", &[]).expect("tags");
    assert_eq!(tags.status, 404, "{}", text(&tags.body));

    // The author's own submission; again with the same component is idempotent.
    let mut ok = submit(soma_capsules::ECHO_COMPONENT, &acme_private);
    ok.push("--json".into());
    let first = node.json(root, &args(&ok));
    assert_eq!(first["submitted"]["created"], json!(true));
    let again = node.json(root, &args(&ok));
    assert_eq!(again["submitted"]["created"], json!(false));
    assert_eq!(
        again["submitted"]["submission"]["digest"],
        first["submitted"]["submission"]["digest"]
    );
    // The same version with a different component is refused: versions are immutable.
    let message = node.refused(
        root,
        &args(&submit(soma_capsules::WORD_COUNT_COMPONENT, &acme_private)),
        29,
    );
    assert!(message.contains("immutable"), "{message}");
    let versions = node.market().versions(Some("acme/echo")).expect("versions");
    assert_eq!(versions.len(), 1);

    // A listing without a license is refused, naming the field.
    let bad = root.join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&l1)
            .expect("read")
            .replace("license = \"Apache-2.0\"\n", ""),
    )
    .expect("write");
    let message = node.refused(
        root,
        &[
            "market",
            "submit",
            soma_capsules::ECHO_COMPONENT,
            "--listing",
            bad.to_str().expect("utf-8"),
            "--key",
            acme_private.to_str().expect("utf-8"),
        ],
        26,
    );
    assert!(message.contains("license"), "{message}");

    // A rejected review is recorded with its reason codes and blocks publishing.
    node.market()
        .record_review(
            "acme/echo@1.0.0",
            false,
            vec!["capability-mismatch".into()],
            json!({"imports": ["http"]}),
        )
        .expect("reject");
    let doc = node.json(root, &["market", "ls", "acme/echo", "--json"]);
    assert_eq!(doc["versions"][0]["state"], json!("rejected"));
    assert_eq!(
        doc["versions"][0]["review"]["reasons"],
        json!(["capability-mismatch"])
    );
    let message = node.refused(root, &["market", "publish", "acme/echo@1.0.0"], 29);
    assert!(message.contains("rejected"), "{message}");
}
