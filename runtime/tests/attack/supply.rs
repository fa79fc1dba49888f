//! Supply-chain attacks on a real `soma daemon` (issue 12, class 7), through
//! the admin route that pulls a capsule into the catalog
//! (`POST /v1/capsules/pull`), against a real `docker-registry` or a hostile
//! server answering the registry API.
//!
//! - Respelling the registry (`LOCALHOST:`, `127.1`, `2130706433`, `0x7f.0.0.1`,
//!   `0.0.0.0`) must not walk around a trust rule written for `localhost:*`
//!   into a weaker fallback rule.
//! - A 400 MiB manifest (announced or streamed) is cut off at
//!   `pull.max_manifest_bytes`: the daemon's memory stays bounded and another
//!   tenant's calls keep their latency.

use std::time::{Duration, Instant};

use serde_json::json;
use soma_runtime::{
    oci::{self, Auth, Reference},
    verify::KeyPair,
};
use soma_tests::{
    daemon::{Bystander, DaemonProcess, assert_unharmed, soma, time_calls, token},
    registry::{HugeManifestServer, Registry},
};

// The tests of this file run alone (`crate::alone`): the latency one
// measures a bystander, and the other's registry and daemon would compete
// for the same (small) CPU.
use crate::alone as serial;

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// A strict rule for every loopback registry, then a weak catch-all: the
/// shape of policy the attack of issue 12 walked around.
#[test]
fn respelled_registries_do_not_reach_a_weaker_rule() {
    let _serial = serial();
    let registry = Registry::start();
    let port = registry.host().rsplit_once(':').expect("port").1.to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = format!("{}/acme/echo:1", registry.host());
    let push = soma(bin(), &dir.path().join("pusher"))
        .args(["push", soma_capsules::ECHO_COMPONENT, &reference])
        .output()
        .expect("push");
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let key = KeyPair::generate();
    let public = dir.path().join("acme.pub");
    std::fs::write(&public, key.public().to_pem().expect("pem")).expect("write pub");

    let data = dir.path().join("node");
    std::fs::create_dir_all(&data).expect("data dir");
    let admin = token(bin(), &data, "ops", "operator");
    let acme = token(bin(), &data, "acme", "run,read");
    let trust = format!(
        "[[trust.rules]]\nrepository = \"localhost:*/**\"\nkeys = [{:?}]\n\
         [[trust.rules]]\nrepository = \"**\"\naccept_unsigned = true\n",
        public.display().to_string()
    );
    let d = DaemonProcess::start(bin(), &data, "", &trust);

    // Unsigned: every spelling of this host must get the strict rule.
    let spellings = [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f.0.0.1:{port}"),
        format!("0.0.0.0:{port}"),
    ];
    for (i, host) in spellings.iter().enumerate() {
        let body = json!({"name": format!("echo-{i}"), "reference": format!("{host}/acme/echo:1")});
        let (s, v) = d.post("/v1/capsules/pull", &admin, &body);
        let text = v.to_string();
        assert_eq!(s, 502, "{host} was admitted: {text}");
        assert!(text.contains("is not signed"), "{host}: {text}");
    }
    let (_, list) = d.get("/v1/capsules", &acme);
    assert!(
        list.as_array()
            .expect("list")
            .iter()
            .all(|c| !c["name"].as_str().unwrap_or("").starts_with("echo-")),
        "{list}"
    );
    // Signed by the trusted key: the strict rule admits every spelling.
    oci::sign(
        &Reference::parse(&reference).expect("reference"),
        &Auth::Anonymous,
        &key,
        &Default::default(),
    )
    .expect("sign");
    for (i, host) in spellings.iter().enumerate() {
        let name = format!("signed-{i}");
        let body = json!({"name": name, "reference": format!("{host}/acme/echo:1")});
        let (s, v) = d.post("/v1/capsules/pull", &admin, &body);
        assert_eq!(s, 201, "{host}: {v}");
    }
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"capsule": "signed-1", "input": "hi"}),
    );
    assert_eq!((s, v["output"].clone()), (200, json!("hi")), "{v}");
}

/// A registry that answers with a 400 MiB manifest, announced or streamed:
/// each pull is refused at the cap, naming `pull.max_manifest_bytes`, within
/// seconds; the daemon's peak RSS grows by far less than 100 MiB and another
/// tenant's echo calls keep their latency.
#[test]
fn a_400_mib_manifest_is_refused_and_the_daemon_stays_small() {
    let _serial = serial();
    const CLAIMED: u64 = 400 * 1024 * 1024;
    let announced = HugeManifestServer::start(CLAIMED, true);
    let streamed = HugeManifestServer::start(CLAIMED, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let other = token(bin(), dir.path(), "globex", "run,read");
    // The weakest policy: nothing but the cap stands in the way.
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "",
        "[[trust.rules]]\nrepository = \"**\"\naccept_unsigned = true\n",
    );
    let idle = time_calls(&d.url, &other, 60);
    let before = d.usage();
    let bystander = Bystander::start(&d.url, &other, Duration::from_millis(5));
    for server in [&announced, &streamed].iter().cycle().take(12) {
        let body = json!({"name": "huge", "reference": format!("{}/acme/huge:1", server.host())});
        let start = Instant::now();
        let (s, v) = d.post("/v1/capsules/pull", &admin, &body);
        let took = start.elapsed();
        let text = v.to_string();
        assert_eq!(s, 502, "{text}");
        assert!(
            text.contains("pull.max_manifest_bytes") && text.contains("4194304"),
            "{text}"
        );
        assert!(took < Duration::from_secs(10), "a refusal took {took:?}");
    }
    let during = bystander.finish();
    let after = d.usage();
    let grew_kib = after.hwm_kib.saturating_sub(before.rss_kib);
    eprintln!(
        "RSS {} KiB → peak {} KiB; announced server wrote {} B, streamed server wrote {} B; bystander median idle {:?}, during {:?} ({} calls)",
        before.rss_kib,
        after.hwm_kib,
        announced.sent(),
        streamed.sent(),
        idle.median(),
        during.median(),
        during.ok.len()
    );
    assert!(
        grew_kib < 100 * 1024,
        "the daemon's peak RSS grew {grew_kib} KiB"
    );
    // Three pulls each; the daemon stopped reading at the cap.
    assert!(
        streamed.sent() < 3 * 32 * 1024 * 1024,
        "{}",
        streamed.sent()
    );
    assert!(
        announced.sent() < 3 * 32 * 1024 * 1024,
        "{}",
        announced.sent()
    );
    assert_unharmed(&idle, &during, 3.0);
}
