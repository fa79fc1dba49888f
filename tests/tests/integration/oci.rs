//! Capsules pushed to and pulled from a real registry (docker-registry on
//! loopback): the artifact format, the verified cache, and every refusal.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use soma_runtime::{
    CallOptions, Digest,
    oci::{
        self, ANNOTATION_KIND, ANNOTATION_NAME, Auth, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE,
        MANIFEST_MEDIA_TYPE, OciError, PullOptions, PushOptions, Reference,
    },
    store::DataDir,
};
use soma_tests::{registry::Registry, shared};

fn calculator() -> Vec<u8> {
    std::fs::read(soma_capsules::CALCULATOR_COMPONENT).expect("read calculator")
}

fn reference(text: &str) -> Reference {
    Reference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn push_calculator(registry: &Registry, tag: &str, auth: &Auth) -> Digest {
    let r = reference(&format!("{}/soma/calculator:{tag}", registry.host()));
    oci::push(
        &shared().engine,
        &calculator(),
        &r,
        auth,
        &PushOptions::default(),
    )
    .unwrap_or_else(|e| panic!("push {r}: {e}"))
}

/// A fresh node data directory.
fn data_dir() -> (tempfile::TempDir, DataDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    (dir, data)
}

/// Files in the blob cache (including temp files).
fn cached_files(data: &DataDir) -> Vec<PathBuf> {
    match std::fs::read_dir(data.root().join("blobs/sha256")) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn pull(data: &DataDir, text: &str) -> Result<oci::Pulled, OciError> {
    oci::pull(data, &reference(text), &Auth::Anonymous, &unsigned())
}

/// Pull options whose trust policy accepts unsigned artifacts: these tests
/// are about transport and the cache; signatures are tested in `signing.rs`.
fn unsigned() -> PullOptions {
    PullOptions {
        trust: soma_runtime::verify::TrustPolicy::accept_unsigned(),
        ..PullOptions::default()
    }
}

fn run(path: &Path, input: &str) -> Value {
    let t = shared();
    let capsule = t
        .engine
        .load_file(path)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    let options = CallOptions::for_capsule(&t.engine, &capsule);
    let out = t
        .engine
        .call(&capsule, input, &options)
        .result
        .expect("call");
    serde_json::from_str(&out).expect("json output")
}

#[test]
fn push_then_pull_by_tag_and_by_digest_runs_the_capsule() {
    let registry = Registry::start();
    let digest = push_calculator(&registry, "1.0", &Auth::Anonymous);
    let bytes = calculator();

    let (_dir, data) = data_dir();
    let by_tag = pull(&data, &format!("{}/soma/calculator:1.0", registry.host())).expect("pull");
    assert_eq!(by_tag.manifest_digest, digest);
    assert_eq!(by_tag.layer_digest, Digest::of(&bytes));
    assert!(!by_tag.cached);
    assert_eq!(by_tag.size, bytes.len() as u64);
    assert_eq!(
        by_tag.component,
        data.root()
            .join("blobs/sha256")
            .join(Digest::of(&bytes).hex())
    );
    assert_eq!(std::fs::read(&by_tag.component).expect("read"), bytes);
    assert_eq!(by_tag.annotations[ANNOTATION_NAME], "calculator");
    assert_eq!(
        run(&by_tag.component, r#"{"expr":"2*(3+4)^2"}"#),
        json!({"value": 98})
    );

    let (_dir2, data2) = data_dir();
    let by_digest = pull(
        &data2,
        &format!("{}/soma/calculator@{digest}", registry.host()),
    )
    .expect("pull by digest");
    assert_eq!(by_digest.manifest_digest, digest);
    assert_eq!(std::fs::read(&by_digest.component).expect("read"), bytes);

    // A digest that is not the tag's manifest is refused.
    let other = Digest::of(b"not the manifest");
    let (_dir3, data3) = data_dir();
    match pull(
        &data3,
        &format!("{}/soma/calculator:1.0@{other}", registry.host()),
    ) {
        Err(OciError::DigestMismatch { .. } | OciError::NotFound { .. }) => {}
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(cached_files(&data3).is_empty());
}

#[test]
fn the_artifact_has_the_wasm_media_types_and_annotations() {
    let registry = Registry::start();
    let digest = push_calculator(&registry, "v1", &Auth::Anonymous);
    let bytes = calculator();

    let r = registry
        .get(
            "/v2/soma/calculator/manifests/v1",
            &[("Accept", MANIFEST_MEDIA_TYPE)],
        )
        .expect("GET manifest");
    assert_eq!(r.status, 200);
    assert_eq!(Digest::of(&r.body), digest);
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(digest.to_string().as_str())
    );
    let manifest: Value = serde_json::from_slice(&r.body).expect("manifest json");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
    assert_eq!(layers[0]["digest"], Digest::of(&bytes).to_string());
    assert_eq!(layers[0]["size"], bytes.len());
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.opencontainers.image.title"], "calculator");
    assert_eq!(annotations[ANNOTATION_NAME], "calculator");
    assert_eq!(annotations[ANNOTATION_KIND], "worker");
    for key in [
        "org.opencontainers.image.version",
        "org.opencontainers.image.description",
        "org.opencontainers.image.created",
    ] {
        assert!(annotations[key].is_string(), "{key} missing: {annotations}");
    }

    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let r = registry
        .get(&format!("/v2/soma/calculator/blobs/{config_digest}"), &[])
        .expect("GET config");
    assert_eq!(r.status, 200);
    let config: Value = serde_json::from_slice(&r.body).expect("config json");
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(
        config["layerDigests"],
        json!([Digest::of(&bytes).to_string()])
    );
    let created = config["created"].as_str().expect("created");
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    assert_eq!(created, annotations["org.opencontainers.image.created"]);
    let exports = config["component"]["exports"].as_array().expect("exports");
    assert!(exports.iter().any(|e| e == "run"), "{exports:?}");
    assert!(config["component"]["imports"].is_array());
    assert!(config["component"]["target"].is_null());
}

#[test]
fn a_second_pull_is_served_from_the_cache() {
    let mut registry = Registry::start();
    let digest = push_calculator(&registry, "1.0", &Auth::Anonymous);
    let (_dir, data) = data_dir();
    let tag = format!("{}/soma/calculator:1.0", registry.host());
    let first = pull(&data, &tag).expect("first pull");
    assert!(!first.cached);
    let mtime = std::fs::metadata(&first.component)
        .and_then(|m| m.modified())
        .expect("mtime");

    let second = pull(&data, &tag).expect("second pull");
    assert!(second.cached, "the layer was downloaded again");
    assert_eq!(second.component, first.component);

    // With the registry gone, a pull by digest still works from the cache...
    registry.stop();
    let third = pull(
        &data,
        &format!("{}/soma/calculator@{digest}", registry.host()),
    )
    .expect("pull by digest from cache");
    assert!(third.cached);
    assert_eq!(third.annotations, first.annotations);
    assert_eq!(
        std::fs::metadata(&third.component)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );
    // ...while a tag still needs the registry.
    assert!(matches!(
        pull(&data, &tag),
        Err(OciError::Unreachable { .. })
    ));

    let listed = oci::cache_ls(&data).expect("ls");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].digest, first.layer_digest);
    assert_eq!(listed[0].manifest_digest, digest.to_string());
    assert!(listed[0].present);
    assert_eq!(cached_files(&data), vec![first.component.clone()]);
}

#[test]
fn gc_reconciles_files_and_index() {
    let registry = Registry::start();
    push_calculator(&registry, "1.0", &Auth::Anonymous);
    let (_dir, data) = data_dir();
    let tag = format!("{}/soma/calculator:1.0", registry.host());
    let pulled = pull(&data, &tag).expect("pull");

    let stray = data
        .root()
        .join("blobs/sha256")
        .join(Digest::of(b"stray").hex());
    std::fs::write(&stray, b"stray").expect("stray");
    let report = oci::cache_gc(&data).expect("gc");
    assert_eq!(report.removed_files, vec![stray.clone()]);
    assert_eq!(report.removed_entries, 0);
    assert!(pulled.component.exists());

    std::fs::remove_file(&pulled.component).expect("rm");
    let report = oci::cache_gc(&data).expect("gc");
    assert_eq!(report.removed_entries, 2, "layer and manifest entries");
    assert!(oci::cache_ls(&data).expect("ls").is_empty());
    // And the next pull downloads again.
    assert!(!pull(&data, &tag).expect("pull").cached);
}

#[test]
fn a_tampered_layer_is_refused_and_nothing_is_cached() {
    let registry = Registry::start();
    push_calculator(&registry, "1.0", &Auth::Anonymous);
    let mut bytes = calculator();
    let blob = registry.blob_data_path(&Digest::of(&bytes).to_string());
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("tamper");

    let (_dir, data) = data_dir();
    match pull(&data, &format!("{}/soma/calculator:1.0", registry.host())) {
        Err(OciError::DigestMismatch { expected, found }) => {
            assert_eq!(expected, Digest::of(&calculator()).to_string());
            assert_eq!(found, Digest::of(&bytes).to_string());
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(cached_files(&data).is_empty());
    assert!(oci::cache_ls(&data).expect("ls").is_empty());
}

#[test]
fn other_media_types_are_refused() {
    let registry = Registry::start();
    let bytes = calculator();
    let layer = registry.put_blob("soma/image", &bytes);
    let config = b"{}";
    let config_digest = registry.put_blob("soma/image", config);
    let put = |tag: &str, config_type: &str, layer_type: &str| {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": layer, "size": bytes.len()}],
        });
        registry.put_manifest(
            "soma/image",
            tag,
            MANIFEST_MEDIA_TYPE,
            &serde_json::to_vec(&manifest).expect("json"),
        );
    };
    put(
        "image-config",
        "application/vnd.oci.image.config.v1+json",
        LAYER_MEDIA_TYPE,
    );
    put(
        "tar-layer",
        CONFIG_MEDIA_TYPE,
        "application/vnd.oci.image.layer.v1.tar",
    );

    let (_dir, data) = data_dir();
    match pull(
        &data,
        &format!("{}/soma/image:image-config", registry.host()),
    ) {
        Err(OciError::WrongMediaType { found, expected }) => {
            assert_eq!(found, "application/vnd.oci.image.config.v1+json");
            assert_eq!(expected, CONFIG_MEDIA_TYPE);
        }
        other => panic!("expected WrongMediaType, got {other:?}"),
    }
    match pull(&data, &format!("{}/soma/image:tar-layer", registry.host())) {
        Err(OciError::WrongMediaType { found, expected }) => {
            assert_eq!(found, "application/vnd.oci.image.layer.v1.tar");
            assert_eq!(expected, LAYER_MEDIA_TYPE);
        }
        other => panic!("expected WrongMediaType, got {other:?}"),
    }
    assert!(cached_files(&data).is_empty());
}

#[test]
fn an_oversized_layer_is_refused_before_download() {
    let registry = Registry::start();
    push_calculator(&registry, "1.0", &Auth::Anonymous);
    let (_dir, data) = data_dir();
    let options = PullOptions {
        max_layer_bytes: 1024,
        ..unsigned()
    };
    let r = reference(&format!("{}/soma/calculator:1.0", registry.host()));
    match oci::pull(&data, &r, &Auth::Anonymous, &options) {
        Err(OciError::TooLarge { size, limit }) => {
            assert_eq!(size, calculator().len() as u64);
            assert_eq!(limit, 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(cached_files(&data).is_empty());
    // The default cap comes from the validate config (64 MiB).
    assert_eq!(PullOptions::default().max_layer_bytes, 64 * 1024 * 1024);
}

#[test]
fn an_unknown_tag_is_not_found() {
    let registry = Registry::start();
    push_calculator(&registry, "1.0", &Auth::Anonymous);
    let (_dir, data) = data_dir();
    for text in [
        format!("{}/soma/calculator:nope", registry.host()),
        format!("{}/soma/absent:1.0", registry.host()),
    ] {
        match pull(&data, &text) {
            Err(e @ OciError::NotFound { .. }) => {
                assert!(e.to_string().contains(&text), "{e}");
            }
            other => panic!("expected NotFound for {text}, got {other:?}"),
        }
    }
    assert!(cached_files(&data).is_empty());
}

#[test]
fn a_registry_that_is_down_is_unreachable() {
    let host = format!("127.0.0.1:{}", soma_tests::registry::free_port());
    let (_dir, data) = data_dir();
    let started = std::time::Instant::now();
    match pull(&data, &format!("{host}/soma/calculator:1.0")) {
        Err(OciError::Unreachable { registry, .. }) => assert_eq!(registry, host),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Three attempts with 100 ms and 400 ms pauses between them.
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
    assert!(cached_files(&data).is_empty());
    let r = reference(&format!("{host}/soma/calculator:1.0"));
    assert!(matches!(
        oci::push(
            &shared().engine,
            &calculator(),
            &r,
            &Auth::Anonymous,
            &PushOptions::default()
        ),
        Err(OciError::Unreachable { .. })
    ));
}

#[test]
fn an_auth_registry_needs_credentials() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let good = Auth::basic("alice", "s3cret");
    let r = reference(&format!("{}/soma/calculator:1.0", registry.host()));
    let engine = &shared().engine;
    let options = PushOptions::default();
    for bad in [Auth::Anonymous, Auth::basic("alice", "wrong")] {
        match oci::push(engine, &calculator(), &r, &bad, &options) {
            Err(OciError::Unauthorized { registry: host }) => assert_eq!(host, registry.host()),
            other => panic!("expected Unauthorized pushing with {bad:?}, got {other:?}"),
        }
    }
    let digest =
        oci::push(engine, &calculator(), &r, &good, &options).expect("push with credentials");

    let (_dir, data) = data_dir();
    for bad in [Auth::Anonymous, Auth::basic("alice", "wrong")] {
        match oci::pull(&data, &r, &bad, &unsigned()) {
            Err(OciError::Unauthorized { .. }) => {}
            other => panic!("expected Unauthorized pulling with {bad:?}, got {other:?}"),
        }
    }
    assert!(cached_files(&data).is_empty());
    let pulled = oci::pull(&data, &r, &good, &unsigned()).expect("pull with credentials");
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(
        run(&pulled.component, r#"{"expr":"2*(3+4)^2"}"#),
        json!({"value": 98})
    );
}

#[test]
fn pushing_an_invalid_component_uploads_nothing() {
    let registry = Registry::start();
    let r = reference(&format!("{}/soma/garbage:1.0", registry.host()));
    let random: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    match oci::push(
        &shared().engine,
        &random,
        &r,
        &Auth::Anonymous,
        &PushOptions::default(),
    ) {
        Err(e @ OciError::Invalid(_)) => {
            // The chain (what `soma push` prints) names the cause once.
            let chain = soma_host_api::error_chain(&e);
            assert_eq!(chain.matches("invalid component").count(), 1, "{chain}");
            assert!(chain.starts_with("refusing to push"), "{chain}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(
        !registry
            .storage_dir()
            .join("docker/registry/v2/repositories")
            .exists(),
        "something was uploaded"
    );
    // A digest reference cannot be pushed to.
    let pinned = reference(&format!(
        "{}/soma/calculator@{}",
        registry.host(),
        Digest::of(b"x")
    ));
    assert!(matches!(
        oci::push(
            &shared().engine,
            &calculator(),
            &pinned,
            &Auth::Anonymous,
            &PushOptions::default()
        ),
        Err(OciError::BadReference { .. })
    ));
}

#[test]
fn bad_references_are_typed_errors() {
    for bad in [
        "calculator",
        "127.0.0.1:5000/Calc",
        "127.0.0.1:5000/calc@sha256:12",
    ] {
        match Reference::parse(bad) {
            Err(e @ OciError::BadReference { .. }) => assert!(e.to_string().contains(bad)),
            other => panic!("expected BadReference for {bad}, got {other:?}"),
        }
    }
}

#[test]
fn registry_500_is_retried_then_reported() {
    let registry = Registry::start();
    push_calculator(&registry, "1.0", &Auth::Anonymous);
    // A corrupt tag link makes docker-registry answer 500 for that manifest.
    let link = registry
        .storage_dir()
        .join("docker/registry/v2/repositories/soma/calculator/_manifests/tags/1.0/current/link");
    std::fs::write(&link, "garbage").expect("corrupt the tag link");
    let (_dir, data) = data_dir();
    let started = std::time::Instant::now();
    match pull(&data, &format!("{}/soma/calculator:1.0", registry.host())) {
        Err(OciError::Server { status, .. }) => assert_eq!(status, 500),
        other => panic!("expected a 500, got {other:?}"),
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "retried with backoff"
    );
    assert!(cached_files(&data).is_empty());
}

// ---- size caps (issue 12, class 7) ----

/// This process's resident set, KiB.
fn own_rss_kib() -> u64 {
    soma_tests::daemon::ProcessUsage::of(std::process::id()).rss_kib
}

/// A manifest the real registry accepts (Distribution takes up to 4 MiB)
/// but that is over a lowered `pull.max_manifest_bytes` is refused with the
/// cap and its key named, before it is parsed; nothing is cached. Under the
/// default cap the same manifest is read and parsed (and refused for what it
/// is: not a capsule).
#[test]
fn a_manifest_over_the_cap_is_refused_before_parsing() {
    let registry = Registry::start();
    let config = br#"{"architecture":"wasm","os":"wasip2","layerDigests":[]}"#;
    let config_digest = registry.put_blob("soma/padded", config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
        "layers": [],
        "annotations": {"pad": " ".repeat(3 * 1024 * 1024)},
    });
    let body = serde_json::to_vec(&manifest).expect("json");
    registry.put_manifest("soma/padded", "1", MANIFEST_MEDIA_TYPE, &body);
    let (_d, data) = data_dir();
    let r = reference(&format!("{}/soma/padded:1", registry.host()));
    let mut options = unsigned();
    options.limits.max_manifest_bytes = 1024 * 1024;
    match oci::pull(&data, &r, &Auth::Anonymous, &options) {
        Err(e @ OciError::OverLimit { key, limit, .. }) => {
            assert_eq!((key, limit), ("pull.max_manifest_bytes", 1024 * 1024));
            let text = e.to_string();
            assert!(
                text.contains("pull.max_manifest_bytes") && text.contains("1048576"),
                "{text}"
            );
        }
        other => panic!("expected the manifest cap, got {other:?}"),
    }
    assert!(cached_files(&data).is_empty());
    // The default cap (4 MiB) reads it; it is then refused as not a capsule.
    assert_eq!(
        PullOptions::default().limits.max_manifest_bytes,
        4 * 1024 * 1024
    );
    match oci::pull(&data, &r, &Auth::Anonymous, &unsigned()) {
        Err(OciError::WrongMediaType { .. }) => {}
        other => panic!("expected a parsed, refused manifest, got {other:?}"),
    }
}

/// The attack: a registry answering with a 400 MiB manifest, announced in
/// `Content-Length` or streamed without one. The pull is refused at the cap
/// within seconds, having read at most the cap, and this process's memory
/// grows by far less than 100 MiB.
#[test]
fn a_400_mib_manifest_is_refused_fast_and_memory_stays_bounded() {
    const CLAIMED: u64 = 400 * 1024 * 1024;
    for declare_length in [true, false] {
        let server = soma_tests::registry::HugeManifestServer::start(CLAIMED, declare_length);
        let (_d, data) = data_dir();
        let r = reference(&format!("{}/acme/huge:1", server.host()));
        let before = own_rss_kib();
        let start = std::time::Instant::now();
        let result = oci::pull(&data, &r, &Auth::Anonymous, &unsigned());
        let took = start.elapsed();
        let grew_kib = own_rss_kib().saturating_sub(before);
        match result {
            Err(
                e @ OciError::OverLimit {
                    key: "pull.max_manifest_bytes",
                    ..
                },
            ) => {
                let text = e.to_string();
                assert!(text.contains("4194304"), "{text}");
                if declare_length {
                    assert!(text.contains("declares 419430400 bytes"), "{text}");
                }
            }
            other => panic!("expected the manifest cap, got {other:?}"),
        }
        eprintln!(
            "declared length {declare_length}: refused in {took:?}, server wrote {} bytes, RSS grew {grew_kib} KiB",
            server.sent()
        );
        assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
        assert!(grew_kib < 100 * 1024, "RSS grew {grew_kib} KiB");
        // The client stopped reading at the cap (plus socket buffers).
        assert!(
            server.sent() < 64 * 1024 * 1024,
            "server wrote {} bytes",
            server.sent()
        );
        assert_eq!(
            server.manifest_requests(),
            1,
            "a cap refusal is not retried"
        );
        assert!(cached_files(&data).is_empty());
    }
}

/// A registry that answers the manifest request and then goes silent
/// (a slowloris registry): the read is cut off at `pull.request_timeout_ms`,
/// and the error names that key, instead of holding the pull for the
/// 60 s between-bytes timeout per attempt.
#[test]
fn a_registry_that_stalls_is_cut_off_at_the_request_timeout() {
    let server = soma_tests::registry::HugeManifestServer::stalling();
    let (_d, data) = data_dir();
    let r = reference(&format!("{}/acme/slow:1", server.host()));
    let mut options = unsigned();
    assert_eq!(options.limits.request_timeout_ms, 300_000);
    options.limits.request_timeout_ms = 300;
    let start = std::time::Instant::now();
    let err = oci::pull(&data, &r, &Auth::Anonymous, &options).expect_err("stalled");
    let took = start.elapsed();
    assert!(matches!(err, OciError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("pull.request_timeout_ms"), "{err}");
    // Three attempts of 300 ms plus 100 + 400 ms of backoff.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert!(server.manifest_requests() >= 1);
    assert!(cached_files(&data).is_empty());
}

/// A registry that wants a bearer token (distribution's token auth): the
/// token is fetched from the challenge's realm with the repository's scope
/// (pull for reads, pull+push for pushes) and sent on every request.
#[test]
fn a_bearer_token_is_negotiated_for_pulls_and_pushes() {
    let realm = soma_tests::registry::TokenRealm::start(200, true);
    let (_d, data) = data_dir();
    let r = reference(&format!("{}/acme/tokened:1", realm.host()));
    match oci::pull(&data, &r, &Auth::Anonymous, &unsigned()) {
        // The realm answers 404 only to requests that carry its token.
        Err(OciError::NotFound { .. }) => {}
        other => panic!("expected NotFound (token accepted), got {other:?}"),
    }
    assert!(realm.bearer_requests() >= 1);
    let queries = realm.token_queries();
    assert!(
        queries
            .iter()
            .any(|q| q.contains("scope=repository%3Aacme%2Ftokened%3Apull")
                && q.contains("service=soma-test")),
        "{queries:?}"
    );
    let before = realm.bearer_requests();
    // The realm has no upload endpoint: the push fails, but after asking
    // for a push-scoped token and presenting it.
    let _ = oci::push(
        &shared().engine,
        &calculator(),
        &r,
        &Auth::Anonymous,
        &PushOptions::default(),
    );
    assert!(
        realm
            .token_queries()
            .iter()
            .any(|q| q.contains("%3Apull%2Cpush")),
        "{:?}",
        realm.token_queries()
    );
    assert!(realm.bearer_requests() > before);
}

/// The attack: a token realm answering with 400 MiB (announced or not).
/// The token reply is read through a 64 KiB cap, so a pull or push is
/// refused fast, having read at most the cap, and nothing is sent to the
/// registry with a token.
#[test]
fn an_endless_token_reply_is_cut_off_at_its_cap() {
    const CLAIMED: u64 = 400 * 1024 * 1024;
    for declare_length in [true, false] {
        let realm = soma_tests::registry::TokenRealm::start(CLAIMED, declare_length);
        let (_d, data) = data_dir();
        let r = reference(&format!("{}/acme/tokened:1", realm.host()));
        let before = own_rss_kib();
        let start = std::time::Instant::now();
        let result = oci::pull(&data, &r, &Auth::Anonymous, &unsigned());
        let took = start.elapsed();
        let grew_kib = own_rss_kib().saturating_sub(before);
        match result {
            Err(e @ OciError::Protocol { .. }) => {
                let text = e.to_string();
                assert!(text.contains("token reply"), "{text}");
                assert!(text.contains("65536"), "{text}");
                if declare_length {
                    assert!(text.contains("declares 419430400 bytes"), "{text}");
                }
            }
            other => panic!("expected the token cap, got {other:?}"),
        }
        let push = oci::push(
            &shared().engine,
            &calculator(),
            &r,
            &Auth::Anonymous,
            &PushOptions::default(),
        );
        assert!(
            matches!(&push, Err(OciError::Protocol { message, .. }) if message.contains("token reply")),
            "{push:?}"
        );
        eprintln!(
            "declared length {declare_length}: refused in {took:?}, realm wrote {} bytes, RSS grew {grew_kib} KiB",
            realm.sent()
        );
        assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
        assert!(grew_kib < 100 * 1024, "RSS grew {grew_kib} KiB");
        assert!(
            realm.sent() < 64 * 1024 * 1024,
            "realm wrote {} bytes",
            realm.sent()
        );
        assert_eq!(realm.bearer_requests(), 0);
        assert!(cached_files(&data).is_empty());
    }
}
