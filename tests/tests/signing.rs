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
    verify::{Admission, KeyPair, Payload, PublicKey, TrustPolicy, VerifyError},
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
            }],
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
