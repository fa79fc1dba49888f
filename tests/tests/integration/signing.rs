//! Push → sign → pull → verify → run against a real registry, every trust
//! refusal (with nothing cached), and interop both ways with the independent
//! cosign reference in `tests/interop/cosign_ref.py`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use soma_runtime::{
    CallOptions, Digest,
    oci::{self, Auth, OciError, PullOptions, PushOptions, Reference},
    store::DataDir,
    verify::{Admission, KeyPair, Payload, PublicKey, SignedIdentity, TrustPolicy, VerifyError},
};
use soma_tests::{registry::Registry, shared};

const REPO: &str = "soma/calculator";

fn reference(registry: &Registry, tag: &str) -> Reference {
    Reference::parse(&format!("{}/{REPO}:{tag}", registry.host())).expect("reference")
}

fn push(registry: &Registry, tag: &str, component: &str) -> Digest {
    let bytes = std::fs::read(component).expect("read component");
    oci::push(
        &shared().engine,
        &bytes,
        &reference(registry, tag),
        &Auth::Anonymous,
        &PushOptions::default(),
    )
    .expect("push")
}

fn trusting(keys: &[&KeyPair]) -> PullOptions {
    PullOptions {
        trust: TrustPolicy::keys(keys.iter().map(|k| k.public()).collect()),
        ..PullOptions::default()
    }
}

fn pull(data: &DataDir, r: &Reference, options: &PullOptions) -> Result<oci::Pulled, OciError> {
    oci::pull(data, r, &Auth::Anonymous, options)
}

fn nothing_cached(data: &DataDir) -> bool {
    std::fs::read_dir(data.root().join("blobs/sha256")).map_or(true, |mut d| d.next().is_none())
}

fn data_dir() -> (tempfile::TempDir, DataDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    (dir, data)
}

#[test]
fn push_sign_pull_verify_run() {
    let registry = Registry::start();
    let digest = push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let key = KeyPair::generate();
    let r = reference(&registry, "1.0");
    assert_eq!(
        oci::sign(&r, &Auth::Anonymous, &key, &Default::default()).expect("sign"),
        digest
    );

    let (_d, data) = data_dir();
    let pulled = pull(&data, &r, &trusting(&[&key])).expect("signed pull");
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(
        pulled.admission,
        Admission::Keys {
            keys: vec![key.public().id()]
        }
    );

    let t = shared();
    let capsule = t.engine.load_file(&pulled.component).expect("load");
    let out = t.engine.call(
        &capsule,
        r#"{"expr":"2*(3+4)^2"}"#,
        &CallOptions::for_capsule(&t.engine, &capsule),
    );
    assert_eq!(out.result.as_deref(), Ok(r#"{"value":98}"#));

    let (got, admission) = oci::verify_remote(
        &r,
        &Auth::Anonymous,
        &TrustPolicy::keys(vec![key.public()]),
        &Default::default(),
    )
    .expect("verify");
    assert_eq!(
        (got, admission),
        (
            digest,
            Admission::Keys {
                keys: vec![key.public().id()]
            }
        )
    );
}

#[test]
fn unsigned_and_unruled_artifacts_are_refused_and_nothing_is_cached() {
    let registry = Registry::start();
    push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let r = reference(&registry, "1.0");
    let (_d, data) = data_dir();

    // The default policy: signature required, no key trusted.
    match pull(&data, &r, &PullOptions::default()) {
        Err(OciError::Untrusted(VerifyError::NotTrusted { detail, .. })) => {
            assert!(detail.contains("no trust rule matches"), "{detail}")
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    // A key is trusted but the artifact carries no signature.
    let key = KeyPair::generate();
    match pull(&data, &r, &trusting(&[&key])) {
        Err(OciError::Untrusted(VerifyError::Unsigned { tag, .. })) => {
            assert!(tag.ends_with(".sig"))
        }
        other => panic!("expected unsigned, got {other:?}"),
    }
    assert!(nothing_cached(&data));
}

#[test]
fn another_key_or_not_all_keys_are_refused() {
    let registry = Registry::start();
    push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let r = reference(&registry, "1.0");
    let (signer, stranger) = (KeyPair::generate(), KeyPair::generate());
    oci::sign(&r, &Auth::Anonymous, &signer, &Default::default()).expect("sign");
    let (_d, data) = data_dir();

    let err = pull(&data, &r, &trusting(&[&stranger])).expect_err("wrong key");
    assert!(
        matches!(err, OciError::Untrusted(VerifyError::NotTrusted { .. })),
        "{err}"
    );

    let all_of = PullOptions {
        trust: TrustPolicy::from_config(&soma_runtime::verify::TrustConfig {
            rules: vec![soma_runtime::verify::TrustRule {
                repository: "**".into(),
                keys: save_pubs(&[&signer, &stranger]),
                require: soma_runtime::verify::Require::AllOf,
                accept_unsigned: false,
                signed_identity: None,
            }],
            ..Default::default()
        })
        .expect("policy"),
        ..PullOptions::default()
    };
    assert!(
        pull(&data, &r, &all_of).is_err(),
        "all-of needs both signatures"
    );
    assert!(nothing_cached(&data));
    // A second signature is appended to the same .sig manifest; now both verify.
    oci::sign(&r, &Auth::Anonymous, &stranger, &Default::default()).expect("second signature");
    let pulled = pull(&data, &r, &all_of).expect("all-of satisfied");
    assert!(matches!(pulled.admission, Admission::Keys { ref keys } if keys.len() == 2));
}

fn save_pubs(keys: &[&KeyPair]) -> Vec<PathBuf> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let p = dir.join(format!("k{i}.pub"));
            std::fs::write(&p, k.public().to_pem().expect("pem")).expect("write");
            p
        })
        .collect()
}

#[test]
fn a_signature_vouching_for_another_digest_is_refused() {
    let registry = Registry::start();
    let signed = push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let target = push(&registry, "2.0", soma_capsules::WORD_COUNT_COMPONENT);
    let key = KeyPair::generate();
    // A genuine signature by the trusted key over 1.0's payload, filed under 2.0's signature tag.
    let payload = Payload::new(&format!("{}/{REPO}", registry.host()), &signed).to_bytes();
    let layer = registry.put_blob(REPO, &payload);
    let config =
        br#"{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let config_digest = registry.put_blob(REPO, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
        "layers": [{
            "mediaType": oci::SIGNATURE_LAYER_MEDIA_TYPE, "size": payload.len(), "digest": layer,
            "annotations": { oci::SIGNATURE_ANNOTATION: key.sign(&payload) },
        }],
    });
    registry.put_manifest(
        REPO,
        &oci::signature_tag(&target),
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    let (_d, data) = data_dir();
    let err =
        pull(&data, &reference(&registry, "2.0"), &trusting(&[&key])).expect_err("digest mismatch");
    assert!(err.to_string().contains("vouches for"), "{err}");
    assert!(nothing_cached(&data));
}

#[test]
fn a_retagged_manifest_loses_its_signature() {
    let registry = Registry::start();
    push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let key = KeyPair::generate();
    let r = reference(&registry, "1.0");
    oci::sign(&r, &Auth::Anonymous, &key, &Default::default()).expect("sign");
    // Someone with push rights moves the tag to other content.
    push(&registry, "1.0", soma_capsules::WORD_COUNT_COMPONENT);
    let (_d, data) = data_dir();
    let err = pull(&data, &r, &trusting(&[&key])).expect_err("tampered manifest");
    assert!(
        matches!(err, OciError::Untrusted(VerifyError::Unsigned { .. })),
        "{err}"
    );
    assert!(nothing_cached(&data));
}

#[test]
fn a_tampered_layer_under_a_valid_signature_is_refused() {
    let registry = Registry::start();
    push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let key = KeyPair::generate();
    let r = reference(&registry, "1.0");
    oci::sign(&r, &Auth::Anonymous, &key, &Default::default()).expect("sign");
    let layer = Digest::of(&std::fs::read(soma_capsules::CALCULATOR_COMPONENT).expect("read"));
    let path = registry.blob_data_path(&layer.to_string());
    let mut bytes = std::fs::read(&path).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).expect("tamper");
    let (_d, data) = data_dir();
    let err = pull(&data, &r, &trusting(&[&key])).expect_err("tampered layer");
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert!(nothing_cached(&data));
}

#[test]
fn a_cached_artifact_is_readmitted_offline_only_under_a_satisfied_policy() {
    let mut registry = Registry::start();
    let digest = push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let key = KeyPair::generate();
    oci::sign(
        &reference(&registry, "1.0"),
        &Auth::Anonymous,
        &key,
        &Default::default(),
    )
    .expect("sign");
    let by_digest = reference(&registry, "1.0").with_digest(digest);
    let (_d, data) = data_dir();
    pull(&data, &by_digest, &trusting(&[&key])).expect("first pull");
    registry.stop();
    let again = pull(&data, &by_digest, &trusting(&[&key])).expect("offline, same key");
    assert!(again.cached);
    let err = pull(&data, &by_digest, &trusting(&[&KeyPair::generate()]))
        .expect_err("other key needs the registry");
    assert!(matches!(err, OciError::Unreachable { .. }), "{err}");
}

// ---- interop with the independent reference (tests/interop/cosign_ref.py) ----

fn cosign_ref() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/cosign_ref.py")
}

fn reference_tool(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(cosign_ref())
        .args(args)
        .env("COSIGN_PASSWORD", "interop password")
        .output()
        .expect("python3 runs (installed by cargo xtask test)")
}

#[test]
fn keys_load_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Reference key → Soma.
    let prefix = dir.path().join("ref");
    let out = reference_tool(&["keygen", "--out-prefix", prefix.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = KeyPair::load(&prefix.with_extension("key"), b"interop password")
        .expect("Soma reads the reference key");
    let public =
        PublicKey::load(&prefix.with_extension("pub")).expect("Soma reads the reference pub");
    assert_eq!(key.public(), public);
    assert!(matches!(
        KeyPair::load(&prefix.with_extension("key"), b"wrong"),
        Err(VerifyError::WrongPassword)
    ));

    // Soma key → reference.
    let (key_path, pub_path) = KeyPair::generate()
        .save(&dir.path().join("soma"), b"interop password")
        .expect("save");
    let out = reference_tool(&["load-key", "--key", key_path.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = PublicKey::from_pem(&String::from_utf8_lossy(&out.stdout)).expect("pem");
    assert_eq!(printed, PublicKey::load(&pub_path).expect("pub"));
}

#[test]
fn signatures_verify_both_ways() {
    let registry = Registry::start();
    let digest = push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{}", registry.host());

    // Soma signs → the reference verifies.
    let (key_path, pub_path) = KeyPair::generate()
        .save(&dir.path().join("soma"), b"interop password")
        .expect("save");
    let soma_key = KeyPair::load(&key_path, b"interop password").expect("load");
    oci::sign(
        &reference(&registry, "1.0"),
        &Auth::Anonymous,
        &soma_key,
        &Default::default(),
    )
    .expect("sign");
    let out = reference_tool(&[
        "verify",
        "--pub",
        pub_path.to_str().expect("utf8"),
        "--registry",
        &url,
        "--repo",
        REPO,
        "--digest",
        &digest.to_string(),
    ]);
    assert!(
        out.status.success(),
        "reference rejects Soma's signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The reference signs → Soma verifies (and refuses with another key).
    let prefix = dir.path().join("ref");
    assert!(
        reference_tool(&["keygen", "--out-prefix", prefix.to_str().expect("utf8")])
            .status
            .success()
    );
    let out = reference_tool(&[
        "sign",
        "--key",
        prefix.with_extension("key").to_str().expect("utf8"),
        "--registry",
        &url,
        "--repo",
        REPO,
        "--digest",
        &digest.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ref_pub = PublicKey::load(&prefix.with_extension("pub")).expect("pub");
    let policy = TrustPolicy::keys(vec![ref_pub.clone()]);
    let (got, admission) = oci::verify_remote(
        &reference(&registry, "1.0"),
        &Auth::Anonymous,
        &policy,
        &Default::default(),
    )
    .expect("Soma verifies the reference's signature");
    assert_eq!(got, digest);
    assert_eq!(
        admission,
        Admission::Keys {
            keys: vec![ref_pub.id()]
        }
    );
    let (_d, data) = data_dir();
    let pulled = pull(
        &data,
        &reference(&registry, "1.0"),
        &PullOptions {
            trust: policy,
            ..PullOptions::default()
        },
    )
    .expect("pull admitted by the reference's signature");
    assert_eq!(pulled.manifest_digest, digest);
}

// ---- signature layers: caps, any-of, signed identity (issue 12, class 7) ----

/// One layer of a hand-made signature manifest.
struct SigLayer {
    payload: Vec<u8>,
    /// The annotation (None: left out).
    signature: Option<String>,
    /// Declared size (None: the payload's).
    size: Option<u64>,
}

impl SigLayer {
    fn signed(key: &KeyPair, payload: Vec<u8>) -> Self {
        Self {
            signature: Some(key.sign(&payload)),
            payload,
            size: None,
        }
    }
}

/// Write `layers` as the signature manifest of `digest` in `repo`,
/// replacing any there: what someone with push rights to the repository
/// can do.
fn put_signature_manifest(registry: &Registry, repo: &str, digest: &Digest, layers: &[SigLayer]) {
    let config =
        br#"{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let config_digest = registry.put_blob(repo, config);
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let digest = registry.put_blob(repo, &l.payload);
            let mut layer = serde_json::json!({
                "mediaType": oci::SIGNATURE_LAYER_MEDIA_TYPE,
                "size": l.size.unwrap_or(l.payload.len() as u64),
                "digest": digest,
            });
            if let Some(sig) = &l.signature {
                layer["annotations"] = serde_json::json!({ oci::SIGNATURE_ANNOTATION: sig });
            }
            layer
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
        "layers": layers,
    });
    registry.put_manifest(
        repo,
        &oci::signature_tag(digest),
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
}

/// The bad layers an attacker (or a botched signer) can put before a good
/// one: each fails for a different reason.
fn bad_layers(
    registry: &Registry,
    key: &KeyPair,
    stranger: &KeyPair,
    digest: &Digest,
) -> Vec<SigLayer> {
    let name = format!("{}/{REPO}", registry.host());
    let good = Payload::new(&name, digest).to_bytes();
    let other = push(registry, "other", soma_capsules::WORD_COUNT_COMPONENT);
    vec![
        // Not a payload at all, but signed by the trusted key.
        SigLayer::signed(key, b"{not json".to_vec()),
        // The right payload, signed by a stranger.
        SigLayer::signed(stranger, good.clone()),
        // The trusted key's signature over another digest.
        SigLayer::signed(key, Payload::new(&name, &other).to_bytes()),
        // A layer whose descriptor claims 1 MiB (never downloaded: over the
        // layer cap).
        SigLayer {
            payload: vec![b'x'; 16],
            signature: Some(key.sign(&good)),
            size: Some(1024 * 1024),
        },
        // No signature annotation.
        SigLayer {
            payload: good.clone(),
            signature: None,
            size: None,
        },
        // A signature that is not base64.
        SigLayer {
            payload: good,
            signature: Some("%%%".into()),
            size: None,
        },
    ]
}

#[test]
fn one_good_signature_layer_admits_whatever_bad_layers_come_first() {
    let registry = Registry::start();
    let digest = push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let (key, stranger) = (KeyPair::generate(), KeyPair::generate());
    let r = reference(&registry, "1.0");
    let mut layers = bad_layers(&registry, &key, &stranger, &digest);

    // Only bad layers: refused, and the refusal says why for each layer.
    put_signature_manifest(&registry, REPO, &digest, &layers);
    let (_d, data) = data_dir();
    let err = pull(&data, &r, &trusting(&[&key])).expect_err("no good layer");
    let text = err.to_string();
    for want in [
        "6 signature layer(s)",
        "layer 1 (key",
        "not a simple-signing document",
        "layer 2: its signature verifies with none",
        "layer 3 (key",
        "vouches for",
        "layer 4:",
        "pull.max_signature_layer_bytes",
        "layer 5: no dev.cosignproject.cosign/signature annotation",
        "layer 6: its signature verifies with none",
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(nothing_cached(&data));

    // The same bad layers followed by one good one: admitted.
    let name = format!("{}/{REPO}", registry.host());
    layers.push(SigLayer::signed(
        &key,
        Payload::new(&name, &digest).to_bytes(),
    ));
    put_signature_manifest(&registry, REPO, &digest, &layers);
    let pulled = pull(&data, &r, &trusting(&[&key])).expect("the good layer admits it");
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(
        pulled.admission,
        Admission::Keys {
            keys: vec![key.public().id()]
        }
    );
    // all-of over two keys: the stranger's valid layer plus the good one.
    layers.push(SigLayer::signed(
        &stranger,
        Payload::new(&name, &digest).to_bytes(),
    ));
    put_signature_manifest(&registry, REPO, &digest, &layers);
    let all_of = PullOptions {
        trust: TrustPolicy::from_config(&soma_runtime::verify::TrustConfig {
            rules: vec![soma_runtime::verify::TrustRule {
                repository: "**".into(),
                keys: save_pubs(&[&key, &stranger]),
                require: soma_runtime::verify::Require::AllOf,
                accept_unsigned: false,
                signed_identity: None,
            }],
            ..Default::default()
        })
        .expect("policy"),
        ..PullOptions::default()
    };
    let (_d2, data2) = data_dir();
    let pulled = pull(&data2, &r, &all_of).expect("all-of with bad layers around");
    assert!(matches!(pulled.admission, Admission::Keys { ref keys } if keys.len() == 2));
}

/// Many signature layers: only the first `pull.max_signature_layers` are
/// downloaded, the refusal says how many were left and which key raises
/// the cap, and it comes back fast. A signature manifest over its byte cap
/// is refused outright, naming its key.
#[test]
fn signature_layers_are_bounded_in_number_and_size() {
    let registry = Registry::start();
    let digest = push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let (key, stranger) = (KeyPair::generate(), KeyPair::generate());
    let r = reference(&registry, "1.0");
    let name = format!("{}/{REPO}", registry.host());
    let good = Payload::new(&name, &digest).to_bytes();
    // 40 stranger-signed layers, then the good one (layer 41).
    let mut layers: Vec<SigLayer> = (0..40)
        .map(|_| SigLayer::signed(&stranger, good.clone()))
        .collect();
    layers.push(SigLayer::signed(&key, good));
    put_signature_manifest(&registry, REPO, &digest, &layers);
    let (_d, data) = data_dir();
    let start = std::time::Instant::now();
    let err = pull(&data, &r, &trusting(&[&key])).expect_err("the good layer is past the cap");
    let took = start.elapsed();
    let text = err.to_string();
    assert!(
        text.contains("25 more signature layer(s) not examined (pull.max_signature_layers = 16)"),
        "{text}"
    );
    assert!(
        text.contains("layer 16:") && !text.contains("layer 17:"),
        "{text}"
    );
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    assert!(nothing_cached(&data));
    // Raising the cap is what admits it.
    let mut options = trusting(&[&key]);
    options.limits.max_signature_layers = 64;
    pull(&data, &r, &options).expect("admitted under a higher cap");

    // A signature manifest over its byte cap.
    let mut options = trusting(&[&key]);
    options.limits.max_signature_manifest_bytes = 1024;
    let (_d2, data2) = data_dir();
    match pull(&data2, &r, &options) {
        Err(
            e @ OciError::OverLimit {
                key: "pull.max_signature_manifest_bytes",
                ..
            },
        ) => {
            assert!(e.to_string().contains("1024 bytes"), "{e}")
        }
        other => panic!("expected the signature manifest cap, got {other:?}"),
    }
    assert!(nothing_cached(&data2));
}

/// Copy `tag` of `from` (manifest, config and layer blobs) into `to`.
fn copy_artifact(registry: &Registry, from: &str, to: &str, tag: &str) -> Vec<u8> {
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let manifest = registry
        .get(&format!("/v2/{from}/manifests/{tag}"), &accept)
        .expect("get manifest");
    assert_eq!(
        manifest.status,
        200,
        "{}",
        String::from_utf8_lossy(&manifest.body)
    );
    let m: serde_json::Value = serde_json::from_slice(&manifest.body).expect("manifest json");
    let blobs = std::iter::once(&m["config"]).chain(m["layers"].as_array().expect("layers"));
    for blob in blobs {
        let digest = blob["digest"].as_str().expect("digest");
        let data = registry
            .get(&format!("/v2/{from}/blobs/{digest}"), &[])
            .expect("get blob");
        assert_eq!(data.status, 200);
        assert_eq!(registry.put_blob(to, &data.body), digest);
    }
    registry.put_manifest(
        to,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest.body,
    );
    manifest.body
}

/// A digest signed for repository A, copied with its signature into
/// repository B that trusts the same key: admitted by default (cosign's
/// behaviour), refused under `signed_identity = "match-repository"`, which
/// still admits it under A in any spelling of A.
#[test]
fn a_digest_signed_for_one_repository_is_refused_under_another_when_asked() {
    let registry = Registry::start();
    let digest = push(&registry, "1.0", soma_capsules::CALCULATOR_COMPONENT);
    let key = KeyPair::generate();
    let a = reference(&registry, "1.0");
    oci::sign(&a, &Auth::Anonymous, &key, &Default::default()).expect("sign A");
    const B: &str = "globex/calculator";
    let body = copy_artifact(&registry, REPO, B, "1.0");
    assert_eq!(Digest::of(&body), digest);
    copy_artifact(&registry, REPO, B, &oci::signature_tag(&digest));
    let b = Reference::parse(&format!("{}/{B}:1.0", registry.host())).expect("B");

    let (_d, data) = data_dir();
    let lax = trusting(&[&key]);
    let pulled = pull(&data, &b, &lax).expect("cosign-compatible default admits B");
    assert_eq!(pulled.manifest_digest, digest);

    let strict = PullOptions {
        trust: TrustPolicy::keys(vec![key.public()])
            .with_signed_identity(SignedIdentity::MatchRepository),
        ..PullOptions::default()
    };
    let (_d2, data2) = data_dir();
    let err = pull(&data2, &b, &strict).expect_err("signed for A, pulled as B");
    let text = err.to_string();
    let port = registry.host().rsplit_once(':').expect("port").1;
    assert!(
        text.contains(&format!(
            "signed for repository \"localhost:{port}/{REPO}\""
        )) && text.contains(&format!("not \"localhost:{port}/{B}\"")),
        "{text}"
    );
    assert!(nothing_cached(&data2));
    // Pinned by digest, with the artifact already cached by the lax pull:
    // the cache does not vouch for the repository, so B is still refused.
    let err = pull(&data, &b.with_digest(digest), &strict).expect_err("cached, but for A");
    assert!(err.to_string().contains("signed for repository"), "{err}");
    // Under A, in any spelling, the strict policy admits it.
    for spelling in [
        a.clone(),
        Reference::parse(&format!("LOCALHOST:{port}/{REPO}:1.0")).expect("ref"),
    ] {
        let (_d3, data3) = data_dir();
        pull(&data3, &spelling, &strict).unwrap_or_else(|e| panic!("{spelling}: {e}"));
    }
    // The same policy from the config file's global key.
    let from_config = PullOptions {
        trust: TrustPolicy::from_config(&soma_runtime::verify::TrustConfig {
            signed_identity: SignedIdentity::MatchRepository,
            rules: vec![soma_runtime::verify::TrustRule {
                repository: "127.0.0.1:*/**".into(),
                keys: save_pubs(&[&key]),
                require: soma_runtime::verify::Require::AnyOf,
                accept_unsigned: false,
                signed_identity: None,
            }],
        })
        .expect("policy"),
        ..PullOptions::default()
    };
    let (_d4, data4) = data_dir();
    assert!(pull(&data4, &b, &from_config).is_err());
    pull(&data4, &a, &from_config).expect("A under the config policy");
}
